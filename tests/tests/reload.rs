//! Hot reload on SIGHUP while events flow: an added function starts, a
//! removed one stops after draining, a changed one is rebound, an unchanged
//! one is never paused; no event is lost and none is handled twice because
//! of the reload. A config that does not validate leaves the running one in
//! place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jetrun_e2e::{
    consumer_info, holds_for, metric, publish_bare, scrape, wait_for_consumer, wait_until, Runner,
    TestBed,
};

const STEADY: &str = "\n[functions.steady]\nsubjects = [\"ev.steady\"]\nbuiltin = \"noop\"\n";
const LEAVING: &str = "\n[functions.leaving]\nsubjects = [\"ev.leave\"]\nbuiltin = \"noop\"\n";
const ARRIVING: &str = "\n[functions.arriving]\nsubjects = [\"ev.arrive\"]\nbuiltin = \"noop\"\n";
fn changing(concurrency: u32) -> String {
    format!(
        "\n[functions.changing]\nsubjects = [\"ev.change\"]\nbuiltin = \"noop\"\nconcurrency = {concurrency}\n"
    )
}

/// Each flowing subject gets this many events while the reload happens.
const FLOW: u64 = 1000;

async fn counts(bed: &TestBed, function: &str) -> (f64, f64) {
    let text = scrape(bed.metrics).await;
    let received = metric(
        &text,
        "jetrun_events_received_total",
        &[("function", function)],
    );
    let success = metric(
        &text,
        "jetrun_events_processed_total",
        &[("function", function), ("outcome", "success")],
    );
    (received.unwrap_or(0.0), success.unwrap_or(0.0))
}

async fn wait_handled(bed: &TestBed, function: &str, n: u64) {
    wait_until(
        Duration::from_secs(60),
        &format!("{function} handled {n} events"),
        || async move { counts(bed, function).await.1 as u64 >= n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_changes_functions_while_events_flow() {
    let bed = TestBed::new();
    let base = bed.base_config();
    let config = bed.write_config(&format!("{base}{STEADY}{}{LEAVING}", changing(2)));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    for f in ["steady", "changing", "leaving"] {
        wait_for_consumer(js, TestBed::STREAM, f).await;
    }
    for n in 0..100 {
        publish_bare(&client, "ev.leave", format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_handled(&bed, "leaving", 100).await;

    // 2,000 events flow to steady and changing while the config changes.
    let published = Arc::new(AtomicU64::new(0));
    let flow = {
        let (client, published) = (client.clone(), published.clone());
        tokio::spawn(async move {
            for n in 0..FLOW {
                for subject in ["ev.steady", "ev.change"] {
                    let body = format!(r#"{{"n":{n}}}"#);
                    client.publish(subject, body.into()).await.expect("publish");
                }
                published.fetch_add(1, Ordering::Relaxed);
                if n % 10 == 0 {
                    client.flush().await.expect("flush");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            client.flush().await.expect("flush");
        })
    };
    let published = &published;
    wait_until(
        Duration::from_secs(20),
        "the flow under way",
        || async move { published.load(Ordering::Relaxed) >= FLOW / 4 },
    )
    .await;
    std::fs::write(&config, format!("{base}{STEADY}{}{ARRIVING}", changing(8))).unwrap();
    runner.sighup();
    let runner = &runner;
    wait_until(
        Duration::from_secs(10),
        "the reload starts",
        || async move { runner.log().contains("SIGHUP: reloading the config.") },
    )
    .await;
    assert!(
        !flow.is_finished(),
        "the flow ended before the reload started; the test shows nothing"
    );
    flow.await.expect("publisher");
    wait_until(
        Duration::from_secs(30),
        "the reload is done",
        || async move { runner.log().contains("Config reloaded.") },
    )
    .await;

    wait_for_consumer(js, TestBed::STREAM, "arriving").await;
    for n in 0..50 {
        publish_bare(&client, "ev.arrive", format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_handled(&bed, "steady", FLOW).await;
    wait_handled(&bed, "changing", FLOW).await;
    wait_handled(&bed, "arriving", 50).await;

    let log = runner.log();
    for function in ["steady", "changing"] {
        assert_eq!(
            counts(&bed, function).await,
            (FLOW as f64, FLOW as f64),
            "{function}: every event received once and handled\n{log}"
        );
        let info = consumer_info(js, TestBed::STREAM, function).await.unwrap();
        assert_eq!(
            info.num_redelivered, 0,
            "{function}: no redelivery: {info:?}"
        );
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0), "{info:?}");
    }
    let changed = consumer_info(js, TestBed::STREAM, "changing")
        .await
        .unwrap();
    assert_eq!(changed.config.max_ack_pending, 10_000);
    let bound = |f: &str| {
        log.matches(&format!("Consumer bound. function={f} "))
            .count()
    };
    let stopped = |f: &str| {
        log.matches(&format!("Function stopped. function={f}"))
            .count()
    };
    assert_eq!(
        (bound("steady"), stopped("steady")),
        (1, 0),
        "steady was never paused\n{log}"
    );
    assert_eq!(
        (bound("changing"), stopped("changing")),
        (2, 1),
        "changing was rebound\n{log}"
    );
    assert_eq!(stopped("leaving"), 1, "leaving was stopped\n{log}");

    // The removed function's consumer stays on the server, but nothing pulls it.
    for n in 0..5 {
        publish_bare(&client, "ev.leave", format!(r#"{{"n":{n}}}"#)).await;
    }
    holds_for(
        Duration::from_secs(2),
        "leaving handles nothing more",
        || async { counts(&bed, "leaving").await == (100.0, 100.0) },
    )
    .await;

    // A config that does not validate leaves the running one in place.
    std::fs::write(
        &config,
        format!("{base}{STEADY}\n[functions.broken]\nbuiltin = \"noop\"\n"),
    )
    .unwrap();
    runner.sighup();
    let metrics = bed.metrics;
    wait_until(
        Duration::from_secs(10),
        "the failed reload is counted",
        || async move {
            let text = scrape(metrics).await;
            metric(
                &text,
                "jetrun_config_reloads_total",
                &[("result", "failure")],
            ) == Some(1.0)
        },
    )
    .await;
    for n in 0..10 {
        publish_bare(&client, "ev.steady", format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_handled(&bed, "steady", FLOW + 10).await;
    let text = scrape(metrics).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
    let log = runner.log();
    assert!(
        log.contains("Config reload refused")
            && log.contains("functions.broken.subjects is required"),
        "the refused reload is logged with its key path:\n{log}"
    );
}
