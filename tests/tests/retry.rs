//! Retryable failures are redelivered after the exponential delays the
//! config asks for, computed by the runner and sent as NAK-with-delay.

use std::time::Duration;

use jetrun_e2e::{
    consumer_info, holds_for, publish_bare, record_then, stream_messages, wait_for_consumer,
    wait_until, Runner, TestBed,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_is_called_three_times_with_exponential_gaps() {
    const INITIAL: f64 = 1.0;
    const MULTIPLIER: f64 = 2.0;

    let bed = TestBed::new();
    let script = bed.write_script(
        "flaky.sh",
        &record_then(r#"[ "$JETRUN_ATTEMPT" -ge 3 ] || { echo "not yet" >&2; exit 1; }"#),
    );
    let retry = format!(
        r#"retry = {{ max_attempts = 5, initial_delay = "{INITIAL}s", multiplier = {MULTIPLIER:.1}, jitter = 0.0 }}"#
    );
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("flaky", &["ev.flaky"], &script, &retry)
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "flaky").await;

    publish_bare(&client, "ev.flaky", "{}").await;

    let ledger = &bed.ledger;
    wait_until(Duration::from_secs(20), "three calls", || async move {
        ledger.len() >= 3
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "the event is acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "flaky")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0)
        },
    )
    .await;
    holds_for(
        Duration::from_millis(500),
        "no fourth call",
        || async move { ledger.len() == 3 },
    )
    .await;

    let entries = bed.ledger.entries();
    let attempts: Vec<u32> = entries.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "attempts in order: {entries:?}");
    // The gap before attempt n+1 is the delay after attempt n:
    // initial_delay * multiplier^(n-1), i.e. 1s then 2s.
    //
    // Lower bound 0.9 x delay: jetrun NAKs with the delay and JetStream does
    // not redeliver before it, so the measured gap (delay + the time to run
    // the script, NAK, redeliver and spawn again) is never shorter; the 10%
    // only absorbs the `date` stamps' granularity. A gap below it means the
    // delay was not applied (a plain NAK redelivers at once).
    //
    // Upper bound delay + 1.5s: process spawn, the NAK round trip and
    // scheduling on a loaded 2-core machine (cargo may be building beside
    // us). A gap above it means a wrong delay (the next power, say).
    for n in 1..entries.len() {
        let gap = entries[n].at - entries[n - 1].at;
        let delay = INITIAL * MULTIPLIER.powi(n as i32 - 1);
        assert!(
            gap >= 0.9 * delay && gap <= delay + 1.5,
            "gap before attempt {} was {gap:.3}s; expected {delay}s (within [{:.2}, {:.2}]): {entries:?}",
            n + 1,
            0.9 * delay,
            delay + 1.5
        );
    }
    assert!(
        stream_messages(js, "DLQ").await.is_empty(),
        "a success leaves no dead letter"
    );
}
