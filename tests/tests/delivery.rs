//! The happy path: an event published as `nats pub` sends it (a bare core
//! publish, no headers) reaches its function exactly once and is acked.

use std::time::Duration;

use jetrun_e2e::{
    consumer_info, holds_for, publish_bare, record_then, stream_len, wait_for_consumer, wait_until,
    Runner, TestBed,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_publish_reaches_its_function_once_and_is_acked() {
    let bed = TestBed::new();
    let script = bed.write_script("record.sh", &record_then("exit 0"));
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("record", &["ev.ok"], &script, r#"ack_wait = "1s""#)
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = async_nats::jetstream::new(client.clone());
    wait_for_consumer(&js, TestBed::STREAM, "record").await;

    publish_bare(&client, "ev.ok", r#"{"order_id":1}"#).await;

    let ledger = &bed.ledger;
    wait_until(
        Duration::from_secs(10),
        "the function was called",
        || async move { !ledger.is_empty() },
    )
    .await;
    let js = &js;
    wait_until(
        Duration::from_secs(10),
        "the event is acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "record")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0)
        },
    )
    .await;

    // The ack wait is 1s: had the ack been lost or never sent, JetStream would
    // redeliver within that. Watch for 1.5s more.
    holds_for(
        Duration::from_millis(1500),
        "exactly one call",
        || async move { ledger.len() == 1 },
    )
    .await;

    let entries = bed.ledger.entries();
    assert_eq!(
        entries[0].key, "1",
        "JETRUN_SEQUENCE is the stream sequence"
    );
    assert_eq!(entries[0].attempt, 1, "JETRUN_ATTEMPT counts from 1");
    let info = consumer_info(js, TestBed::STREAM, "record")
        .await
        .expect("consumer");
    assert_eq!(info.num_pending, 0, "nothing left to deliver: {info:?}");
    assert_eq!(
        info.num_ack_pending, 0,
        "nothing waiting for an ack: {info:?}"
    );
    assert_eq!(info.num_redelivered, 0, "no redelivery: {info:?}");
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "one delivery in all: {info:?}"
    );
    assert_eq!(
        stream_len(js, TestBed::STREAM).await,
        1,
        "the event is in the stream"
    );
}
