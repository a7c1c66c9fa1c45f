//! A saga step that waits (`delay`), against a real nats-server (2.12 or
//! later: the command is held in the schedules stream): the second step's
//! command is stored on its subject once, its delay after the first step's
//! reply, and the step's timeout does not count the wait. The test answers
//! each command itself, so it chooses when.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use futures::StreamExt;
use jetrun_e2e::{metric, publish_bare, scrape, stream_messages, wait_ready, wait_until};
use jetrun_e2e::{Runner, TestBed};
use serde_json::{json, Value};

/// `payment` waits 2 s, then has 3 s to answer, and is answered 2 s after
/// it is stored. Counted from reserve's reply at t, its timeout would end it
/// at t + 3 s, before that answer (t + 4 s at the earliest); counted from
/// the command's time, t + 5 s. The margin, up to a second, covers what the
/// answer may take beyond its 2 s: nats-server fires a held message up to
/// 250 ms after its time when it fired another just before.
fn config(bed: &TestBed) -> std::path::PathBuf {
    let text = format!(
        r#"{base}
[streams.ORDERS]
subjects = ["order.>"]

[streams.FULFILLMENT]
subjects = ["inventory.>", "payment.>"]

# A config needs a function; the test is the saga's participant.
[functions.idle]
subjects = ["ev.idle"]
builtin = "noop"

[sagas.fulfil]
start = "order.placed"
key = "order_id"
completed = "order.fulfilled"
failed = "order.cancelled"

[[sagas.fulfil.steps]]
name = "reserve"
command = "inventory.reserve"
success = "inventory.reserved"

[[sagas.fulfil.steps]]
name = "payment"
command = "payment.charge"
success = "payment.completed"
delay = "2s"
timeout = "3s"
"#,
        base = bed.base_config(),
    );
    bed.write_config(&text)
}

/// The stored instance of `key`, if any.
async fn instance(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<Value> {
    let bytes = kv.get(key).await.ok()??;
    let stored: Value = serde_json::from_slice(&bytes).ok()?;
    Some(stored["instance"].clone())
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

/// The messages of `stream` stored on `subject`.
async fn stored_on(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: &str,
) -> Vec<StreamMessage> {
    stream_messages(js, stream)
        .await
        .into_iter()
        .filter(|m| m.subject.as_str() == subject)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_step_is_commanded_later_and_its_timeout_counts_from_delivery() {
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let js = bed.jetstream().await;
    let kv = jetrun_e2e::wait_for_bucket(&js, "jetrun_saga_fulfil").await;
    let mut reserves = client.subscribe("inventory.reserve").await.unwrap();
    let mut charges = client.subscribe("payment.charge").await.unwrap();
    client.flush().await.unwrap();

    publish_bare(
        &client,
        "order.placed",
        json!({"order_id": "d-1"}).to_string(),
    )
    .await;
    let reply = json!({"order_id": "d-1"}).to_string();
    tokio::time::timeout(Duration::from_secs(20), reserves.next())
        .await
        .unwrap_or_else(|_| panic!("no inventory.reserve; log:\n{}", runner.log()))
        .expect("subscribed");
    js.publish("inventory.reserved", reply.clone().into())
        .await
        .unwrap()
        .await
        .expect("the reply stored");

    tokio::time::timeout(Duration::from_secs(20), charges.next())
        .await
        .unwrap_or_else(|_| panic!("no payment.charge; log:\n{}", runner.log()))
        .expect("subscribed");
    // The participant takes 2 s of its 3 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    js.publish("payment.completed", reply.into())
        .await
        .unwrap()
        .await
        .expect("the reply stored");

    let kv = &kv;
    wait_until(Duration::from_secs(10), "the saga ended", || async move {
        instance(kv, "d-1")
            .await
            .is_some_and(|i| i["state"] == "completed" || i["state"] == "failed")
    })
    .await;
    let ended = instance(kv, "d-1").await.unwrap();
    assert_eq!(
        timeline(&ended),
        [
            "command reserve",
            "reply reserve",
            "command payment",
            "reply payment",
            "completed -"
        ],
        "{}",
        runner.log()
    );

    // Stored once, 2 s after reserve's reply was: not before (the due time
    // counts from when the saga applied that reply), and late by what the
    // saga may take to pick the reply up and the server to fire.
    let replied = stored_on(&js, "FULFILLMENT", "inventory.reserved").await;
    let commanded = stored_on(&js, "FULFILLMENT", "payment.charge").await;
    assert_eq!((replied.len(), commanded.len()), (1, 1));
    let waited = (commanded[0].time - replied[0].time).as_seconds_f64();
    eprintln!("payment.charge stored {waited:.3} s after inventory.reserved");
    assert!(
        (2.0..=3.5).contains(&waited),
        "payment.charge stored {waited:.3} s after inventory.reserved"
    );
    assert_eq!(
        jetrun_e2e::header(&commanded[0].headers, "ce-sagakey").as_deref(),
        Some("d-1")
    );
    let text = scrape(bed.metrics).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_delayed_events_scheduled_total",
            &[("function", "saga-fulfil")]
        ),
        Some(1.0),
        "{text}"
    );
}
