//! `rate = "200/s"` across replicas: 2,000 events take 10 s ± 10% from the
//! first handler start to the last, with one runner and with two sharing the
//! function (each paces itself at half the rate once it counts the other).
//! Waiting events are kept alive: with an ack wait shorter than the queue's
//! wait none is delivered twice. Each runner reports its wait in
//! `jetrun_rate_limited_seconds_total`.

use std::time::Duration;

use jetrun_e2e::faults::{publish_numbered, Replicas, FUNCTION, STREAM};
use jetrun_e2e::{metric, scrape, wait_acked, wait_for_bucket, wait_until, NatsServer};

const EVENTS: u64 = 2_000;
const RATE: f64 = 200.0;

/// Runs 2,000 events through `count` replicas of a function limited to
/// 200 calls a second, and checks how long they took.
async fn rate_holds_across(count: usize) {
    let nats = NatsServer::start();
    // 400 in flight at 200/s: the last of them waits 2 s for its turn, longer
    // than the ack wait; only in-progress acks keep it from redelivery.
    let mut replicas = Replicas::new(
        &[nats.url()],
        count,
        "",
        "rate = \"200/s\"\nconcurrency = 400\nack_wait = \"2s\"",
    );
    replicas.start_all_ready().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    // Every replica has joined: its heartbeat is in the bucket.
    let bucket = wait_for_bucket(&js, "jetrun_replicas").await;
    wait_until(
        Duration::from_secs(10),
        "every replica's heartbeat",
        || async {
            let Ok(keys) = bucket.keys().await else {
                return false;
            };
            let keys: Vec<String> = futures::StreamExt::collect::<Vec<_>>(keys)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect();
            keys.iter()
                .filter(|k| k.starts_with(&format!("{FUNCTION}.")))
                .count()
                == count
        },
    )
    .await;
    // And every replica counts the others (it says so when the count changes).
    if count > 1 {
        let counted = format!("replicas={count}");
        wait_until(
            Duration::from_secs(10),
            "each replica counting the others",
            || {
                let counted = counted.clone();
                let logs: Vec<String> = (0..count).map(|i| replicas.runner(i).log()).collect();
                async move { logs.iter().all(|log| log.contains(&counted)) }
            },
        )
        .await;
    }

    // One event first, so the handler's own start-up is not timed.
    let warm_up = publish_numbered(&js, "ev.fault", 0..1, 1, |n| format!(r#"{{"n":{n}}}"#)).await;
    replicas
        .wait_all_handled(&warm_up.numbers, Duration::from_secs(30))
        .await;

    let published = publish_numbered(&js, "ev.fault", 1..EVENTS + 1, 20_000, |n| {
        format!(r#"{{"n":{n}}}"#)
    })
    .await;
    replicas
        .wait_all_handled(&published.numbers, Duration::from_secs(60))
        .await;
    wait_acked(&js, STREAM, FUNCTION, published.last_sequence).await;

    let entries: Vec<_> = (replicas.ledgers.iter())
        .flat_map(|l| l.entries())
        .filter(|e| e.key != "fault-0")
        .collect();
    assert_eq!(entries.len() as u64, EVENTS, "each event handled once");
    assert!(
        entries.iter().all(|e| e.attempt == 1),
        "no event redelivered while it waited its turn"
    );
    let first = entries.iter().map(|e| e.at).fold(f64::INFINITY, f64::min);
    let last = entries.iter().map(|e| e.at).fold(0.0, f64::max);
    let took = last - first;
    let expected = (EVENTS - 1) as f64 / RATE;
    let shares: Vec<usize> = replicas.ledgers.iter().map(|l| l.len()).collect();
    eprintln!("{count} replica(s): {EVENTS} calls in {took:.2} s; calls per replica: {shares:?}");
    assert!(
        shares
            .iter()
            .all(|&share| share as u64 >= EVENTS / (4 * count as u64)),
        "every replica takes a share of the calls: {shares:?}"
    );
    assert!(
        (took - expected).abs() <= expected * 0.1,
        "{EVENTS} calls at {RATE}/s over {count} replica(s) took {took:.2} s, not {expected:.2} s ± 10% \
         (calls per replica: {shares:?})"
    );
    for (index, &addr) in replicas.metrics.iter().enumerate() {
        let text = scrape(addr).await;
        let waited = metric(
            &text,
            "jetrun_rate_limited_seconds_total",
            &[("function", FUNCTION)],
        )
        .unwrap_or_else(|| panic!("replica {index} exports no jetrun_rate_limited_seconds_total"));
        assert!(waited > 1.0, "replica {index} waited {waited} s in all");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_keeps_the_rate() {
    rate_holds_across(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_share_the_rate() {
    rate_holds_across(2).await;
}
