//! SIGTERM drains: during a burst of 1,000 events the runner stops
//! fetching, lets what is in flight finish, exits 0, and after a restart
//! every event has been handled at least once.

use std::time::Duration;

use jetrun_e2e::{
    publish_bare_burst, record_then, stream_len, wait_for_consumer, wait_until, Runner, TestBed,
};

const EVENTS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_loses_no_event() {
    let bed = TestBed::new();
    // Slow on purpose (a process per event plus 50ms), so the burst is still
    // going when SIGTERM arrives.
    let script = bed.write_script("slow.sh", &record_then("sleep 0.05"));
    let config = bed.write_config(&format!(
        "shutdown_timeout = \"20s\"\n{}{}",
        bed.base_config(),
        bed.sh_function(
            "burst",
            &["ev.burst"],
            &script,
            "concurrency = 8\nack_wait = \"5s\""
        )
    ));
    let mut first = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "burst").await;

    publish_bare_burst(&client, "ev.burst", EVENTS).await;
    wait_until(
        Duration::from_secs(10),
        "the stream holds the burst",
        || async move { stream_len(js, TestBed::STREAM).await == EVENTS },
    )
    .await;
    let ledger = &bed.ledger;
    wait_until(
        Duration::from_secs(20),
        "50 events handled",
        || async move { ledger.len() >= 50 },
    )
    .await;

    first.sigterm();
    let handled_at_sigterm = bed.ledger.sequences().len() as u64;
    let status = first.wait_exit(Duration::from_secs(30)).await;

    assert!(
        handled_at_sigterm < EVENTS,
        "SIGTERM came after the burst was done ({handled_at_sigterm} handled); the test shows nothing"
    );
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "the drained runner exits 0 within shutdown_timeout; log:\n{}",
        first.log()
    );

    let _second = Runner::start(&config);
    bed.expect_every_event_handled("burst", EVENTS, Duration::from_secs(90))
        .await;
    eprintln!(
        "{handled_at_sigterm} events handled before SIGTERM; {} calls in all",
        bed.ledger.len()
    );
}
