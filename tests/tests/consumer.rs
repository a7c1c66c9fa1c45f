//! A function's consumer deleted out of band is detected and recreated from
//! the config, resuming just past the last ack floor the runner saw: the
//! events it had handled are not handled again, and new ones keep flowing.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use jetrun_e2e::{
    consumer_info, holds_for, publish_bare, record_then, wait_for_consumer, wait_until, Runner,
    TestBed,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_recreated_where_it_was() {
    let bed = TestBed::new();
    let script = bed.write_script("record.sh", &record_then("exit 0"));
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("record", &["ev.ok"], &script, "")
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = async_nats::jetstream::new(client.clone());
    wait_for_consumer(&js, TestBed::STREAM, "record").await;

    for n in 1..=10 {
        publish_bare(&client, "ev.ok", format!(r#"{{"n":{n}}}"#)).await;
    }
    let (js, ledger) = (&js, &bed.ledger);
    wait_until(Duration::from_secs(20), "10 events acked", || async move {
        consumer_info(js, TestBed::STREAM, "record")
            .await
            .is_some_and(|i| i.ack_floor.stream_sequence == 10)
    })
    .await;
    // The runner reads the ack floor every 2s; give it time to see 10.
    holds_for(
        Duration::from_secs(3),
        "no event handled twice",
        || async move { ledger.len() == 10 },
    )
    .await;

    let stream = js.get_stream(TestBed::STREAM).await.expect("stream");
    stream
        .delete_consumer("record")
        .await
        .expect("delete consumer");

    wait_until(
        Duration::from_secs(20),
        "the consumer is recreated",
        || async move { consumer_info(js, TestBed::STREAM, "record").await.is_some() },
    )
    .await;
    let info = consumer_info(js, TestBed::STREAM, "record").await.unwrap();
    assert_eq!(
        info.config.deliver_policy,
        DeliverPolicy::ByStartSequence { start_sequence: 11 },
        "recreated just past the ack floor: {info:?}\n{}",
        runner.log()
    );

    for n in 11..=15 {
        publish_bare(&client, "ev.ok", format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_until(
        Duration::from_secs(20),
        "15 events handled",
        || async move { ledger.sequences().len() == 15 },
    )
    .await;
    assert_eq!(
        bed.ledger.len(),
        15,
        "each event handled once: {:?}\n{}",
        bed.ledger.entries(),
        runner.log()
    );
    assert!(
        runner.log().contains("Consumer was deleted"),
        "{}",
        runner.log()
    );
}
