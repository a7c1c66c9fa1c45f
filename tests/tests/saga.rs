//! Orchestrated sagas against a real nats-server: reserve stock, take
//! payment, ship, with compensations. The participants are exec workers in
//! the same config, answering each command by the start event's script
//! (`fail_at`, `silent_at`). Each instance's state is read from its KV
//! bucket, where the runtime stores it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use jetrun_e2e::{
    consumer_info, free_port, metric, publish_bare, scrape, wait_ready, wait_until, Runner, TestBed,
};
use serde_json::{json, Value};

/// Answers every step command and undo: a reply carrying the order id, the
/// failure when the data's `fail_at` names the step, none at all when
/// `silent_at` does. Undos of `reserve` and `payment` are confirmed.
const PARTICIPANT_PY: &str = r#"import json
import sys

steps = {
    "inventory.reserve": ("reserve", "inventory.reserved", "inventory.insufficient"),
    "payment.charge": ("payment", "payment.completed", "payment.failed"),
    "shipping.ship": ("ship", "shipping.shipped", "shipping.failed"),
}
undos = {"inventory.release": "inventory.released", "payment.refund": "payment.refunded"}
for line in sys.stdin:
    request = json.loads(line)
    event = request["event"]
    data = event.get("data") or {}
    emit = []
    if event["type"] in steps:
        step, success, failure = steps[event["type"]]
        if data.get("silent_at") != step:
            kind = failure if data.get("fail_at") == step else success
            emit.append({"type": kind, "data": {"order_id": data["order_id"], "by": step}})
    elif event["type"] in undos:
        emit.append({"type": undos[event["type"]], "data": {"order_id": data["order_id"]}})
    sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "emit": emit}) + "\n")
    sys.stdout.flush()
"#;

/// How long things may take: the saga's and each step's timeout, and the
/// ack wait of the participant's and the saga's own consumers.
struct Timing {
    saga: &'static str,
    step: &'static str,
    ack_wait: &'static str,
}

/// Steps time out after 2 s: for the tests of timeouts.
const QUICK: Timing = Timing {
    saga: "1m",
    step: "2s",
    ack_wait: "5s",
};

/// Steps have room for a redelivery of anything in flight on a replica
/// killed with `kill -9` (after its 2 s ack wait), on a loaded machine too.
const ROOMY: Timing = Timing {
    saga: "10m",
    step: "60s",
    ack_wait: "2s",
};

fn config(bed: &TestBed, metrics: Option<std::net::SocketAddr>) -> std::path::PathBuf {
    config_timed(bed, metrics, &QUICK)
}

fn config_timed(
    bed: &TestBed,
    metrics: Option<std::net::SocketAddr>,
    timing: &Timing,
) -> std::path::PathBuf {
    let script = bed.write_script("participant.py", PARTICIPANT_PY);
    let mut base = bed.base_config().replace(
        "[defaults]\n",
        &format!("[defaults]\nack_wait = {:?}\n", timing.ack_wait),
    );
    let name = match metrics {
        Some(other) => {
            base = base.replace(&bed.metrics.to_string(), &other.to_string());
            "jetrun-2.toml"
        }
        None => "jetrun.toml",
    };
    let text = format!(
        r#"{base}
[streams.ORDERS]
subjects = ["order.>"]

[streams.FULFILLMENT]
subjects = ["inventory.>", "payment.>", "shipping.>"]

[functions.participant]
subjects = ["inventory.reserve", "inventory.release", "payment.charge", "payment.refund", "shipping.ship", "shipping.cancel"]
exec = {{ command = ["python3", {script:?}], mode = "worker", workers = 2 }}
concurrency = 32
ack_wait = {ack_wait:?}

[sagas.fulfil]
start = "order.placed"
key = "order_id"
timeout = {saga_timeout:?}
completed = "order.fulfilled"
failed = "order.cancelled"

[[sagas.fulfil.steps]]
name = "reserve"
command = "inventory.reserve"
success = "inventory.reserved"
failure = "inventory.insufficient"
compensate = "inventory.release"
compensated = "inventory.released"
timeout = {step_timeout:?}

[[sagas.fulfil.steps]]
name = "payment"
command = "payment.charge"
success = "payment.completed"
failure = "payment.failed"
compensate = "payment.refund"
compensated = "payment.refunded"
timeout = {step_timeout:?}

[[sagas.fulfil.steps]]
name = "ship"
command = "shipping.ship"
success = "shipping.shipped"
failure = "shipping.failed"
compensate = "shipping.cancel"
timeout = {step_timeout:?}
"#,
        script = script.to_string_lossy(),
        ack_wait = timing.ack_wait,
        saga_timeout = timing.saga,
        step_timeout = timing.step,
    );
    let path = bed.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The stored instance of `key`, if any.
async fn instance(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<Value> {
    let bytes = kv.get(key).await.ok()??;
    let stored: Value = serde_json::from_slice(&bytes).ok()?;
    Some(stored["instance"].clone())
}

/// Waits until instance `key` is in `state`; returns it.
async fn wait_state(
    kv: &async_nats::jetstream::kv::Store,
    key: &str,
    state: &str,
    within: Duration,
) -> Value {
    wait_until(within, &format!("saga {key} is {state}"), || async move {
        instance(kv, key).await.is_some_and(|i| i["state"] == state)
    })
    .await;
    instance(kv, key).await.unwrap()
}

/// `kind step` for each transition.
fn timeline(instance: &Value) -> Vec<String> {
    instance["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["kind"].as_str().unwrap_or("?"),
                t["step"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

async fn start(client: &async_nats::Client, data: Value) {
    publish_bare(client, "order.placed", data.to_string()).await;
}

async fn bucket(bed: &TestBed) -> async_nats::jetstream::kv::Store {
    jetrun_e2e::wait_for_bucket(&bed.jetstream().await, "jetrun_saga_fulfil").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_completes_and_failures_compensate_in_reverse() {
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed, None));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let kv = bucket(&bed).await;

    start(&client, json!({"order_id": "ok-1", "total": 10})).await;
    start(&client, json!({"order_id": "fail-3", "fail_at": "ship"})).await;
    start(
        &client,
        json!({"order_id": "late-2", "silent_at": "payment"}),
    )
    .await;

    let done = wait_state(&kv, "ok-1", "completed", Duration::from_secs(20)).await;
    assert_eq!(
        timeline(&done),
        [
            "command reserve",
            "reply reserve",
            "command payment",
            "reply payment",
            "command ship",
            "reply ship",
            "completed -"
        ],
        "{}",
        runner.log()
    );
    assert_eq!(
        done["data"]["reserve"]["by"], "reserve",
        "each reply's data kept under its step"
    );

    let failed = wait_state(&kv, "fail-3", "failed", Duration::from_secs(20)).await;
    assert_eq!(
        timeline(&failed),
        [
            "command reserve",
            "reply reserve",
            "command payment",
            "reply payment",
            "command ship",
            "reply ship",
            "compensate payment",
            "compensated payment",
            "compensate reserve",
            "compensated reserve",
            "failed -"
        ]
    );

    let timed_out = wait_state(&kv, "late-2", "failed", Duration::from_secs(20)).await;
    assert_eq!(
        timeline(&timed_out),
        [
            "command reserve",
            "reply reserve",
            "command payment",
            "timeout payment",
            "compensate payment",
            "compensated payment",
            "compensate reserve",
            "compensated reserve",
            "failed -"
        ]
    );

    // The end events, with the saga's correlation and extensions.
    let js = bed.jetstream().await;
    let ends = jetrun_e2e::stream_messages(&js, "ORDERS").await;
    let types: Vec<String> = ends
        .iter()
        .map(|m| {
            m.headers
                .get("ce-type")
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(types.contains(&"order.fulfilled".into()), "{types:?}");
    assert_eq!(
        types.iter().filter(|t| *t == "order.cancelled").count(),
        2,
        "{types:?}"
    );
    let fulfilled = ends
        .iter()
        .find(|m| {
            m.headers
                .get("ce-type")
                .is_some_and(|v| v.as_str() == "order.fulfilled")
        })
        .unwrap();
    assert_eq!(
        fulfilled.headers.get("ce-saga").map(|v| v.as_str()),
        Some("fulfil")
    );
    assert_eq!(
        fulfilled.headers.get("ce-sagakey").map(|v| v.as_str()),
        Some("ok-1")
    );

    // A duplicate reply and a reply for no instance change nothing.
    let before = instance(&kv, "ok-1").await.unwrap();
    publish_bare(
        &client,
        "inventory.reserved",
        json!({"order_id": "ok-1"}).to_string(),
    )
    .await;
    publish_bare(
        &client,
        "inventory.reserved",
        json!({"order_id": "nobody"}).to_string(),
    )
    .await;
    let metrics = bed.metrics;
    wait_until(
        Duration::from_secs(10),
        "both replies counted",
        || async move {
            let text = scrape(metrics).await;
            let ignored = |reason| {
                metric(
                    &text,
                    "jetrun_saga_replies_ignored_total",
                    &[("saga", "fulfil"), ("reason", reason)],
                )
                .unwrap_or(0.0)
            };
            ignored("late") + ignored("duplicate") >= 1.0 && ignored("unknown") >= 1.0
        },
    )
    .await;
    assert_eq!(instance(&kv, "ok-1").await.unwrap(), before);
    assert!(instance(&kv, "nobody").await.is_none());
    // The reply for no instance was retried, then dead-lettered: not lost.
    let js = &bed.jetstream().await;
    let saga_letters = || async move {
        jetrun_e2e::stream_messages(js, "DLQ")
            .await
            .into_iter()
            .filter(|m| m.subject.as_str() == "dlq.saga-fulfil")
            .collect::<Vec<_>>()
    };
    wait_until(
        Duration::from_secs(10),
        "the unknown reply dead-lettered",
        || async move { !saga_letters().await.is_empty() },
    )
    .await;
    let letters = saga_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = jetrun_e2e::header(&letters[0].headers, "Jetrun-Error").unwrap_or_default();
    assert!(error.contains("no instance of saga fulfil"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_kept_across_a_runner_restart() {
    let bed = TestBed::new();
    let config = config(&bed, None);
    let mut runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let kv = bucket(&bed).await;

    start(&client, json!({"order_id": "r-1", "silent_at": "payment"})).await;
    let kv_ref = &kv;
    wait_until(
        Duration::from_secs(20),
        "payment commanded",
        || async move {
            instance(kv_ref, "r-1")
                .await
                .is_some_and(|i| timeline(&i).contains(&"command payment".to_string()))
        },
    )
    .await;
    runner.kill9();
    // The deadline (2 s) passes while no runner is up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _again = Runner::start(&config);
    let failed = wait_state(&kv, "r-1", "failed", Duration::from_secs(30)).await;
    let steps = timeline(&failed);
    assert!(steps.contains(&"timeout payment".to_string()), "{steps:?}");
    assert_eq!(steps.last().map(String::as_str), Some("failed -"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sagas_over_two_replicas_and_a_kill_end_as_scripted() {
    let bed = TestBed::new();
    let second_metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let first = config_timed(&bed, None, &ROOMY);
    let second = config_timed(&bed, Some(second_metrics), &ROOMY);
    let mut one = Runner::start(&first);
    let _two = Runner::start(&second);
    wait_ready(bed.metrics).await;
    wait_ready(second_metrics).await;
    let client = bed.client().await;
    let kv = bucket(&bed).await;

    let sagas = 500u64;
    let expected = |n: u64| if n % 10 == 0 { "failed" } else { "completed" };
    for n in 1..=sagas {
        let mut data = json!({"order_id": format!("o-{n}")});
        if n % 10 == 0 {
            data["fail_at"] = json!("ship");
        }
        client
            .publish("order.placed", data.to_string().into())
            .await
            .unwrap();
        if n == sagas / 2 {
            client.flush().await.unwrap();
            one.kill9();
        }
    }
    client.flush().await.unwrap();
    let _one_again = Runner::start(&first);

    let kv_ref = &kv;
    wait_until(
        Duration::from_secs(120),
        "every saga ended",
        || async move {
            let mut keys = match kv_ref.keys().await {
                Ok(keys) => keys,
                Err(_) => return false,
            };
            let mut ended = 0;
            while let Some(Ok(key)) = keys.next().await {
                if key.starts_with("corr_") {
                    continue;
                }
                if let Some(i) = instance(kv_ref, &key).await {
                    if i["state"] == "completed" || i["state"] == "failed" {
                        ended += 1;
                    }
                }
            }
            ended == sagas
        },
    )
    .await;

    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for n in 1..=sagas {
        let i = instance(&kv, &format!("o-{n}")).await.expect("an instance");
        let state = i["state"].as_str().unwrap().to_string();
        assert_eq!(state, expected(n), "o-{n}: {:?}", timeline(&i));
        // Advanced once: no transition twice.
        let steps = timeline(&i);
        let mut seen = std::collections::BTreeSet::new();
        for step in &steps {
            assert!(
                seen.insert(step.clone()),
                "o-{n} did {step} twice: {steps:?}"
            );
        }
        *outcomes.entry(state).or_default() += 1;
    }
    let js = bed.jetstream().await;
    let dead_letters = jetrun_e2e::stream_messages(&js, "DLQ").await.len();
    jetrun_e2e::faults::Row {
        scenario: "500 sagas over 2 replicas, one killed (kill -9) halfway and restarted",
        acknowledged: format!("{sagas} start events"),
        lost: "0 sagas unended or off script".into(),
        more_than_once: "0 sagas advanced twice (no transition twice in any timeline)".into(),
        dead_lettered: dead_letters.to_string(),
        recovery: None,
        notes: format!(
            "ended {outcomes:?}, as scripted: every 10th fails at its last step and is \
             compensated; steps time out after 60 s, participants' ack_wait 2 s"
        ),
    }
    .record();
}

/// A saga's consumers drain on SIGTERM like a function's: every input the
/// runner had pulled is applied and acked before it exits, none is left to
/// wait out its ack wait (consumers aborted mid-pull left hundreds so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_sagas_consumers() {
    const SAGAS: u64 = 1500;
    let bed = TestBed::new();
    let config = config(&bed, None);
    let client = bed.client().await;
    let js = bed.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["order.>".into()],
        ..Default::default()
    })
    .await
    .expect("create ORDERS");
    // A backlog, so that SIGTERM comes while the saga is busy with it.
    for n in 0..SAGAS {
        let data = json!({"order_id": format!("d-{n}")});
        let ack = js
            .publish("order.placed", data.to_string().into())
            .await
            .expect("publish");
        if n % 100 == 99 {
            ack.await.expect("stored");
        }
    }
    let mut runner = Runner::start(&config);
    let js = &js;
    wait_until(
        Duration::from_secs(30),
        "the saga applied 50 start events",
        || async move {
            consumer_info(js, "ORDERS", "saga-fulfil")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence >= 50)
        },
    )
    .await;
    runner.sigterm();
    let applied_at_sigterm = consumer_info(js, "ORDERS", "saga-fulfil")
        .await
        .map_or(0, |i| i.ack_floor.stream_sequence);
    let status = runner.wait_exit(Duration::from_secs(40)).await;
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "the drained runner exits 0; log:\n{}",
        runner.log()
    );
    assert!(
        applied_at_sigterm < SAGAS,
        "SIGTERM came after the backlog was done; the test shows nothing"
    );
    wait_until(
        Duration::from_secs(5),
        "no saga input left unacknowledged",
        || async move {
            consumer_info(js, "ORDERS", "saga-fulfil")
                .await
                .is_some_and(|i| i.num_ack_pending == 0)
        },
    )
    .await;
    drop(client);
}

/// A saga consumer deleted behind jetrun's back is made again, and the
/// saga goes on with new instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_saga_consumer_is_recreated() {
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed, None));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let kv = bucket(&bed).await;
    start(&client, json!({"order_id": "before"})).await;
    wait_state(&kv, "before", "completed", Duration::from_secs(20)).await;

    let js = bed.jetstream().await;
    let orders = js.get_stream("ORDERS").await.expect("ORDERS");
    orders
        .delete_consumer("saga-fulfil")
        .await
        .expect("delete the saga's consumer");
    let js = &js;
    wait_until(
        Duration::from_secs(20),
        "the saga's consumer is recreated",
        || async move { consumer_info(js, "ORDERS", "saga-fulfil").await.is_some() },
    )
    .await;

    start(&client, json!({"order_id": "after"})).await;
    let after = wait_state(&kv, "after", "completed", Duration::from_secs(20)).await;
    assert_eq!(
        timeline(&after).last().map(String::as_str),
        Some("completed -")
    );
    assert!(
        runner.log().contains("Consumer was deleted"),
        "{}",
        runner.log()
    );
}
