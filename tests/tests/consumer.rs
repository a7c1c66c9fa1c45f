//! A function's consumer deleted out of band is detected and recreated from
//! the config, resuming just past the last ack floor the runner saw: the
//! events it had handled are not handled again, and new ones keep flowing.
//! A stream deleted and made again (its sequences start over) is read from
//! its beginning, and its dead letters are not taken for the old stream's.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use jetrun_e2e::{
    consumer_info, holds_for, publish_bare, record_then, stream_len, stream_messages, wait_acked,
    wait_for_consumer, wait_until, Runner, TestBed,
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
    wait_acked(js, TestBed::STREAM, "record", 10).await;
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

/// The stream deleted and made again while the runner runs: the consumer,
/// recreated, starts at the new stream's beginning (its first sequences are
/// below the old ack floor), and a poison event there is dead-lettered
/// though the old stream's event of the same sequence was too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_again_is_read_from_its_beginning() {
    let bed = TestBed::new();
    let script = bed.write_script(
        "record.sh",
        &record_then(r#"if grep -q poison; then echo "poison" >&2; exit 65; fi"#),
    );
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("record", &["ev.ok"], &script, "")
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = async_nats::jetstream::new(client.clone());
    wait_for_consumer(&js, TestBed::STREAM, "record").await;

    publish_bare(&client, "ev.ok", r#"{"poison":true}"#.to_string()).await;
    for n in 2..=10 {
        publish_bare(&client, "ev.ok", format!(r#"{{"n":{n}}}"#)).await;
    }
    let (js, ledger) = (&js, &bed.ledger);
    wait_acked(js, TestBed::STREAM, "record", 10).await;
    // The runner reads the ack floor every 2s; give it time to see 10.
    holds_for(
        Duration::from_secs(3),
        "no event handled twice",
        || async move { ledger.len() == 10 },
    )
    .await;
    assert_eq!(stream_messages(js, "DLQ").await.len(), 1);

    let stream = js.get_stream(TestBed::STREAM).await.expect("stream");
    let stream_config = stream.cached_info().config.clone();
    js.delete_stream(TestBed::STREAM)
        .await
        .expect("delete the stream");
    js.create_stream(stream_config)
        .await
        .expect("make the stream again");
    publish_bare(&client, "ev.ok", r#"{"poison":true}"#.to_string()).await;
    for n in 2..=5 {
        publish_bare(&client, "ev.ok", format!(r#"{{"n":{n}}}"#)).await;
    }
    wait_until(
        Duration::from_secs(30),
        "the new stream's 5 events handled",
        || async move { ledger.len() >= 15 },
    )
    .await;
    let info = consumer_info(js, TestBed::STREAM, "record").await.unwrap();
    assert_eq!(
        info.config.deliver_policy,
        DeliverPolicy::All,
        "made again at the new stream's beginning: {info:?}\n{}",
        runner.log()
    );
    wait_until(
        Duration::from_secs(20),
        "the new stream's poison event dead-lettered",
        || async move { stream_messages(js, "DLQ").await.len() == 2 },
    )
    .await;
    holds_for(
        Duration::from_secs(2),
        "each event handled once",
        || async move { ledger.len() == 15 },
    )
    .await;
    assert!(
        runner.log().contains("deleted and made again"),
        "{}",
        runner.log()
    );
    jetrun_e2e::faults::Row {
        scenario: "the stream deleted and made again under a running function",
        acknowledged: "15 (10 before, 5 after)".into(),
        lost: "0".into(),
        more_than_once: "0 events".into(),
        dead_lettered: "2 (a poison event at sequence 1 of each stream)".into(),
        recovery: None,
        notes: "the consumer recreated with deliver policy all on the new stream, though its \
                sequences are below the old ack floor (10)"
            .into(),
    }
    .record();
}

/// The way to start a function past its stream's history, as the README
/// gives it: make its consumer first, delivering new events only, described
/// as jetrun's. jetrun keeps where it starts and handles only what comes
/// after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_made_first_keeps_its_start() {
    let bed = TestBed::new();
    let script = bed.write_script("record.sh", &record_then("exit 0"));
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("record", &["ev.ok"], &script, "")
    ));
    let client = bed.client().await;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: TestBed::STREAM.into(),
        subjects: vec!["ev.>".into()],
        ..Default::default()
    })
    .await
    .expect("create the stream");
    for n in 1..=3 {
        publish_bare(&client, "ev.ok", format!(r#"{{"history":{n}}}"#)).await;
    }
    // A bare publish is stored after the flush returns, in its own time:
    // the history must be stored before the consumer that skips it is made
    // (else, on a loaded machine, it is "new" to that consumer).
    let js_ref = &js;
    wait_until(
        Duration::from_secs(10),
        "the 3 history events stored",
        || async move { stream_len(js_ref, TestBed::STREAM).await == 3 },
    )
    .await;
    js.get_stream(TestBed::STREAM)
        .await
        .expect("stream")
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("record".into()),
            description: Some("jetrun function record".into()),
            filter_subject: "ev.ok".into(),
            deliver_policy: DeliverPolicy::New,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            // Not jetrun's (it counts attempts itself): updated from the config.
            max_deliver: 5,
            ..Default::default()
        })
        .await
        .expect("make the consumer first");

    let runner = Runner::start(&config);
    jetrun_e2e::wait_ready(bed.metrics).await;
    for n in 1..=2 {
        publish_bare(&client, "ev.ok", format!(r#"{{"new":{n}}}"#)).await;
    }
    let js = &js;
    wait_until(
        Duration::from_secs(20),
        "the 2 new events acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "record")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 5)
        },
    )
    .await;
    assert_eq!(
        bed.ledger.sequences().into_iter().collect::<Vec<_>>(),
        [4, 5],
        "{}",
        runner.log()
    );
    let info = consumer_info(js, TestBed::STREAM, "record").await.unwrap();
    assert_eq!(info.config.deliver_policy, DeliverPolicy::New);
    assert_eq!(
        info.config.max_deliver, -1,
        "the rest updated from the config"
    );
}
