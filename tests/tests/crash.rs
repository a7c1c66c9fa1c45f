//! `kill -9` of the runner during a burst of 5,000 events, then a restart:
//! what the dead runner had not acked is redelivered after the ack wait,
//! and every event is handled at least once.

use std::time::Duration;

use jetrun_e2e::{publish_bare_burst, stream_len, wait_for_consumer, wait_until, Runner, TestBed};

const EVENTS: u64 = 5000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_event() {
    let bed = TestBed::new();
    // Worker mode: a process per event would be too slow for 5,000. The
    // worker writes each event's id (`EVENTS:<sequence>`) to the ledger. A
    // short ack wait makes what the dead runner held come back soon.
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.worker_function(
            "crashy",
            &["ev.crash"],
            4,
            "concurrency = 16\nack_wait = \"2s\""
        )
    ));
    let mut first = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "crashy").await;

    publish_bare_burst(&client, "ev.crash", EVENTS).await;
    wait_until(
        Duration::from_secs(20),
        "the stream holds the burst",
        || async move { stream_len(js, TestBed::STREAM).await == EVENTS },
    )
    .await;
    let ledger = &bed.ledger;
    wait_until(
        Duration::from_secs(30),
        "500 events handled",
        || async move { ledger.len() >= 500 },
    )
    .await;

    first.kill9();
    let handled_at_kill = bed.ledger.sequences().len() as u64;
    assert!(
        handled_at_kill < EVENTS,
        "the kill came after the burst was done ({handled_at_kill} handled); the test shows nothing"
    );

    let _second = Runner::start(&config);
    bed.expect_every_event_handled("crashy", EVENTS, Duration::from_secs(120))
        .await;
    eprintln!(
        "{handled_at_kill} events handled before the kill; {} calls in all",
        bed.ledger.len()
    );
}
