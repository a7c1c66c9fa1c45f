//! Sagas that stay right where they used to go wrong: replies matched only by
//! their correlation id, answered faster than the saga could index it; an
//! instance that grows too big to store; a reply type added by a reload; and
//! a restart over many ended instances with running ones still to time out.

use std::time::{Duration, Instant};

use futures::StreamExt;
use jetrun_e2e::{
    metric, publish_bare, scrape, stream_messages, wait_ready, wait_until, Runner, TestBed,
};
use serde_json::{json, Value};

/// Answers `inventory.reserve` with `inventory.reserved` carrying nothing
/// but the correlation id the emit inherits (no key, no `sagakey`), as fast
/// as it can; with `"blob": n` in the command's data, a reply of n bytes;
/// with `"silent": true`, no reply.
const PARTICIPANT_PY: &str = r#"import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    event = request["event"]
    blob = (event.get("data") or {}).get("blob", 0)
    emit = []
    if (event.get("data") or {}).get("silent"):
        pass
    elif event["type"] == "inventory.reserve":
        emit.append({"type": "inventory.reserved", "data": {"blob": "x" * blob} if blob else {}})
    elif event["type"] == "payment.charge":
        emit.append({"type": "payment.completed", "data": {"blob": "y" * blob} if blob else {}})
    sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "emit": emit}) + "\n")
    sys.stdout.flush()
"#;

/// Streams, the participant, and saga `fulfil` (reserve, then charge), its
/// reserve step answered by `success`.
fn config(bed: &TestBed, success: &str) -> std::path::PathBuf {
    config_with(bed, success, "")
}

/// `config`, with `saga` (more keys) in saga `fulfil`'s table.
fn config_with(bed: &TestBed, success: &str, saga: &str) -> std::path::PathBuf {
    let script = bed.write_script("participant.py", PARTICIPANT_PY);
    bed.write_config(&format!(
        r#"{base}
[streams.ORDERS]
subjects = ["order.>"]

[streams.FULFILLMENT]
subjects = ["inventory.>", "payment.>"]

[functions.participant]
subjects = ["inventory.reserve", "payment.charge"]
exec = {{ command = ["python3", {script:?}], mode = "worker", workers = 2 }}
concurrency = 16

[sagas.fulfil]
start = "order.placed"
key = "order_id"
completed = "order.fulfilled"
failed = "order.cancelled"
{saga}

[[sagas.fulfil.steps]]
name = "reserve"
command = "inventory.reserve"
success = {success}
timeout = "60s"

[[sagas.fulfil.steps]]
name = "charge"
command = "payment.charge"
success = "payment.completed"
timeout = "60s"
"#,
        base = bed.base_config(),
        script = script.to_string_lossy(),
    ))
}

async fn bucket(bed: &TestBed) -> async_nats::jetstream::kv::Store {
    jetrun_e2e::wait_for_bucket(&bed.jetstream().await, "jetrun_saga_fulfil").await
}

async fn state(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<String> {
    let bytes = kv.get(key).await.ok()??;
    let stored: Value = serde_json::from_slice(&bytes).ok()?;
    stored["instance"]["state"].as_str().map(str::to_string)
}

/// Replies matched by correlation id alone, sent back at once: none is lost
/// to a race with the index naming their instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_matched_by_correlation_id_alone_are_never_lost() {
    const SAGAS: u64 = 60;
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed, "\"inventory.reserved\""));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let kv = bucket(&bed).await;
    for n in 0..SAGAS {
        publish_bare(
            &client,
            "order.placed",
            json!({"order_id": format!("c-{n}")}).to_string(),
        )
        .await;
    }
    let kv = &kv;
    wait_until(
        Duration::from_secs(60),
        "every saga completed",
        || async move {
            for n in 0..SAGAS {
                if state(kv, &format!("c-{n}")).await.as_deref() != Some("completed") {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let text = scrape(bed.metrics).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_saga_replies_ignored_total",
            &[("saga", "fulfil"), ("reason", "unknown")]
        ),
        Some(0.0),
        "{}",
        runner.log()
    );
}

/// An instance that ended is purged from the bucket after the saga's
/// retention, and so is the index entry its replies were matched by; one
/// still running is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_instances_and_their_index_are_purged_after_the_retention() {
    let bed = TestBed::new();
    let config = config_with(&bed, "\"inventory.reserved\"", "retention = \"3s\"");
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let kv = bucket(&bed).await;
    publish_bare(
        &client,
        "order.placed",
        json!({"order_id": "gone"}).to_string(),
    )
    .await;
    // Its reserve step is never answered: still running when the other is gone.
    publish_bare(
        &client,
        "order.placed",
        json!({"order_id": "kept", "silent": true}).to_string(),
    )
    .await;
    let kv = &kv;
    wait_until(
        Duration::from_secs(30),
        "saga gone completed",
        || async move { state(kv, "gone").await.as_deref() == Some("completed") },
    )
    .await;
    let keys = |kv: &async_nats::jetstream::kv::Store| {
        let kv = kv.clone();
        async move {
            let mut keys: Vec<String> = kv
                .keys()
                .await
                .unwrap()
                .filter_map(|k| async { k.ok() })
                .collect()
                .await;
            keys.sort();
            keys
        }
    };
    let before = keys(kv).await;
    assert_eq!(
        before.iter().filter(|k| k.starts_with("corr_")).count(),
        2,
        "one index entry per instance: {before:?}"
    );
    wait_until(
        Duration::from_secs(30),
        "the ended instance and its index purged",
        || async move {
            let now = keys(kv).await;
            !now.contains(&"gone".to_string())
                && now.iter().filter(|k| k.starts_with("corr_")).count() == 1
        },
    )
    .await;
    let after = keys(kv).await;
    assert!(
        after.contains(&"kept".to_string()),
        "{after:?}\n{}",
        runner.log()
    );
}

/// An instance whose data would outgrow what a message may hold cannot be
/// stored: the input that would make it so is dead-lettered and counted,
/// not retried as a conflict for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_too_big_to_store_is_dead_lettered_and_counted() {
    let bed = TestBed::new();
    let _runner = Runner::start(&config(&bed, "\"inventory.reserved\""));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    publish_bare(
        &client,
        "order.placed",
        json!({"order_id": "big", "blob": 600_000}).to_string(),
    )
    .await;
    let metrics = bed.metrics;
    wait_until(
        Duration::from_secs(60),
        "the input that would overgrow the instance dead-lettered",
        || async move {
            let text = scrape(metrics).await;
            metric(
                &text,
                "jetrun_saga_instances_too_big_total",
                &[("saga", "fulfil")],
            ) == Some(1.0)
        },
    )
    .await;
    let js = bed.jetstream().await;
    let letters = stream_messages(&js, "DLQ").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].subject.as_str(), "dlq.saga-fulfil");
    let error = jetrun_e2e::header(&letters[0].headers, "Jetrun-Error").unwrap();
    assert!(
        error.contains("more than the server's max_payload"),
        "{error}"
    );
    assert_eq!(
        jetrun_e2e::header(&letters[0].headers, "Jetrun-Reason").as_deref(),
        Some("permanent")
    );
}

/// A reload that adds a reply type reaches the saga's consumers: replies of
/// the new type arrive (consumers used to keep their first filters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_type_added_by_a_reload_reaches_the_saga() {
    let bed = TestBed::new();
    let first = config(&bed, "\"inventory.held\"");
    let runner = Runner::start(&first);
    wait_ready(bed.metrics).await;
    // The participant answers `inventory.reserved`, which the saga does not
    // know yet: the instance waits at its first step.
    let client = bed.client().await;
    let kv = bucket(&bed).await;
    publish_bare(
        &client,
        "order.placed",
        json!({"order_id": "r-1"}).to_string(),
    )
    .await;
    let kv = &kv;
    wait_until(Duration::from_secs(20), "r-1 started", || async move {
        state(kv, "r-1").await.as_deref() == Some("running")
    })
    .await;
    config(&bed, "[\"inventory.held\", \"inventory.reserved\"]");
    runner.sighup();
    let runner = &runner;
    wait_until(
        Duration::from_secs(20),
        "the reload applied",
        || async move { runner.log().contains("Config reloaded.") },
    )
    .await;
    // A second order, answered with the type the reload added.
    publish_bare(
        &client,
        "order.placed",
        json!({"order_id": "r-2"}).to_string(),
    )
    .await;
    wait_until(Duration::from_secs(30), "r-2 completed", || async move {
        state(kv, "r-2").await.as_deref() == Some("completed")
    })
    .await;
}

/// A saga instance as the runtime stores it: `state`, and for a running
/// one a step deadline `deadline_ms`.
fn stored(key: &str, state: &str, deadline_ms: Option<u64>, now_ms: u64) -> Value {
    json!({
        "instance": {
            "saga": "fulfil", "key": key, "state": state, "step": 0,
            "data": {"order_id": key}, "correlation_id": key,
            "started_ms": now_ms, "updated_ms": now_ms,
            "step_deadline_ms": deadline_ms, "saga_deadline_ms": null,
            "completed": [], "compensation": null, "transitions": [],
        },
        "outbox": [],
        "steps": ["reserve", "charge"],
    })
}

/// A runner starting over a bucket of many ended instances and some running
/// ones: it gets ready, stays small, and every running instance's deadline
/// still fires. 10,000 ended and 200 running (100,000 and 1,000 with
/// `JETRUN_SOAK=1`); the time to ready and the RSS are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_over_many_instances_fires_every_running_deadline() {
    let soak = std::env::var_os("JETRUN_SOAK").is_some();
    let (ended, running) = if soak {
        (100_000, 1_000)
    } else {
        (10_000, 200)
    };
    let bed = TestBed::new();
    let config = config(&bed, "\"inventory.reserved\"");
    let js = bed.jetstream().await;
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "jetrun_saga_fulfil".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("create the saga bucket");
    let now_ms = (jetrun_e2e::unix_now() * 1000.0) as u64;
    let deadline = now_ms + 15_000;
    let mut acks = futures::stream::FuturesUnordered::new();
    for n in 0..ended + running {
        let (key, value) = if n < ended {
            let state = if n % 2 == 0 { "completed" } else { "failed" };
            (
                format!("e-{n}"),
                stored(&format!("e-{n}"), state, None, now_ms),
            )
        } else {
            let key = format!("r-{n}");
            let value = stored(&key, "running", Some(deadline), now_ms);
            (key, value)
        };
        let subject = format!("$KV.jetrun_saga_fulfil.{key}");
        let js = js.clone();
        acks.push(async move {
            js.publish(subject, value.to_string().into())
                .await
                .expect("publish")
                .await
                .expect("stored")
        });
        if acks.len() >= 512 {
            acks.next().await;
        }
    }
    while acks.next().await.is_some() {}

    let started = Instant::now();
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let ready_after = started.elapsed();
    let text = scrape(bed.metrics).await;
    // Ready means every instance was read: each is counted in some state.
    let counted: f64 = text
        .lines()
        .filter(|line| line.starts_with(r#"jetrun_saga_instances{saga="fulfil","#))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        counted as u64,
        ended + running,
        "ready before every instance was read: {text}"
    );
    let rss = metric(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0);
    let kv = &kv;
    wait_until(
        Duration::from_secs(90),
        "every running instance timed out",
        || async move {
            let mut keys = kv.keys().await.unwrap();
            let mut left = 0;
            while let Some(Ok(key)) = keys.next().await {
                if key.starts_with("r-") && state(kv, &key).await.as_deref() == Some("running") {
                    left += 1;
                }
            }
            left == 0
        },
    )
    .await;
    let text = scrape(bed.metrics).await;
    let rss_after = metric(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0);
    let timeouts = metric(
        &text,
        "jetrun_saga_transitions_total",
        &[
            ("saga", "fulfil"),
            ("step", "reserve"),
            ("outcome", "timeout"),
        ],
    );
    assert_eq!(timeouts, Some(running as f64), "{}", runner.log());
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    eprintln!(
        "{ended} ended and {running} running instances: ready after {ready_after:?}, RSS \
         {:.1} MiB at ready and {:.1} MiB once every deadline fired",
        mib(rss),
        mib(rss_after)
    );
    assert!(mib(rss_after) < 100.0, "RSS {:.1} MiB", mib(rss_after));
    jetrun_e2e::faults::Row {
        scenario: &format!(
            "a saga runner started over {ended} ended and {running} running instances"
        ),
        acknowledged: format!("{running} running instances' deadlines"),
        lost: "0 deadlines unfired".into(),
        more_than_once: "0 timeouts fired twice".into(),
        dead_lettered: "-".into(),
        recovery: Some(ready_after),
        notes: format!(
            "recovery = start to /readyz 200 (every instance read); RSS {:.1} MiB at ready, \
             {:.1} MiB after every deadline fired",
            mib(rss),
            mib(rss_after)
        ),
    }
    .record();
}
