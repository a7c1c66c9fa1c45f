//! Events that cannot succeed go to `dlq.<function>` in stream `DLQ`: after
//! one attempt for a permanent failure, after exactly `max_attempts` for a
//! retryable one; the body byte for byte, the publisher's headers kept, and
//! every `Jetrun-*` header of DESIGN.md added.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::HeaderMap;
use jetrun_e2e::{
    consumer_info, header, holds_for, parse_rfc3339, publish_with_headers, record_then,
    stream_messages, unix_now, wait_for_consumer, wait_until, Runner, TestBed,
};

/// Not UTF-8, not JSON, with a NUL, CR/LF and a truncated multi-byte sequence.
const BODY: &[u8] = b"\x00\xff\xfe{\"order_id\": 7}\x80\r\n\x7f\xc3";

/// A function's only dead letter, with the world that made it (kept alive so
/// that a failing assertion still prints the runner's log).
struct DeadLettered {
    bed: TestBed,
    _runner: Runner,
    letter: StreamMessage,
}

/// Publishes [`BODY`] with a header of the publisher's own on `ev.<function>`
/// to a function running `script` with `extra` config; returns the dead
/// letter once it is there and the ledger is final.
async fn dead_letter_of(function: &str, script: &str, extra: &str) -> DeadLettered {
    let bed = TestBed::new();
    let script = bed.write_script("fn.sh", &record_then(script));
    let subject = format!("ev.{function}");
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function(function, &[&subject], &script, extra)
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, function).await;

    let started = unix_now();
    let mut headers = HeaderMap::new();
    headers.insert("X-Trace-Id", "trace-42");
    publish_with_headers(&client, &subject, headers, BODY).await;

    wait_until(
        Duration::from_secs(20),
        "a dead letter in DLQ",
        || async move { !stream_messages(js, "DLQ").await.is_empty() },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the original is no longer pending",
        || async move {
            consumer_info(js, TestBed::STREAM, function)
                .await
                .is_some_and(|i| {
                    i.num_pending == 0 && i.num_ack_pending == 0 && i.ack_floor.stream_sequence == 1
                })
        },
    )
    .await;
    let ledger = &bed.ledger;
    let calls = ledger.len();
    holds_for(
        Duration::from_millis(1000),
        "no call after the dead letter",
        || async move { ledger.len() == calls },
    )
    .await;

    let letters = stream_messages(js, "DLQ").await;
    assert_eq!(letters.len(), 1, "exactly one dead letter: {letters:?}");
    let letter = letters.into_iter().next().expect("one dead letter");
    let failed_at = header(&letter.headers, "Jetrun-Failed-At").unwrap_or_default();
    let failed_at = parse_rfc3339(&failed_at)
        .unwrap_or_else(|| panic!("Jetrun-Failed-At {failed_at:?} is not RFC 3339"));
    assert!(
        failed_at >= started - 1.0 && failed_at <= unix_now() + 1.0,
        "Jetrun-Failed-At is the time of the failure, not {failed_at}"
    );
    DeadLettered {
        bed,
        _runner: runner,
        letter,
    }
}

/// The checks every dead letter passes, whatever its reason.
fn assert_dead_letter(letter: &StreamMessage, function: &str, reason: &str, attempts: u32) {
    let h = |name: &str| header(&letter.headers, name);
    let all = format!("{:?}", letter.headers);
    assert_eq!(
        letter.subject.as_str(),
        format!("dlq.{function}"),
        "subject"
    );
    assert_eq!(letter.payload.as_ref(), BODY, "the body, byte for byte");
    assert_eq!(
        h("X-Trace-Id").as_deref(),
        Some("trace-42"),
        "publisher header kept: {all}"
    );
    assert_eq!(h("Jetrun-Function").as_deref(), Some(function), "{all}");
    assert_eq!(h("Jetrun-Reason").as_deref(), Some(reason), "{all}");
    assert_eq!(h("Jetrun-Attempts"), Some(attempts.to_string()), "{all}");
    assert_eq!(
        h("Jetrun-Original-Subject"),
        Some(format!("ev.{function}")),
        "{all}"
    );
    assert_eq!(
        h("Jetrun-Original-Stream").as_deref(),
        Some(TestBed::STREAM),
        "{all}"
    );
    assert_eq!(h("Jetrun-Original-Sequence").as_deref(), Some("1"), "{all}");
    let id = h("Nats-Msg-Id").unwrap_or_default();
    let created = id
        .strip_prefix(&format!("{}@", TestBed::STREAM))
        .and_then(|rest| rest.strip_suffix(&format!(":1:{function}")));
    assert!(
        created.is_some_and(|c| c.parse::<u64>().is_ok_and(|n| n > 0)),
        "the dedup id <stream>@<created>:<sequence>:<function>: {all}"
    );
    let error = h("Jetrun-Error").unwrap_or_default();
    assert!(
        !error.trim().is_empty() && !error.contains('\n') && error.len() <= 1024,
        "Jetrun-Error is the last error, one line, at most 1 KiB: {error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_is_dead_lettered_after_one_attempt() {
    let dead = dead_letter_of(
        "reject",
        r#"echo "order 7 is malformed" >&2; exit 65"#,
        r#"retry = { max_attempts = 5 }"#,
    )
    .await;
    assert_dead_letter(&dead.letter, "reject", "permanent", 1);
    let attempts: Vec<u32> = dead
        .bed
        .ledger
        .entries()
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, [1], "a permanent failure is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_is_dead_lettered_after_max_attempts() {
    let dead = dead_letter_of(
        "flop",
        r#"echo "downstream unavailable" >&2; exit 1"#,
        r#"retry = { max_attempts = 3, initial_delay = "200ms", multiplier = 2.0, jitter = 0.0 }"#,
    )
    .await;
    assert_dead_letter(&dead.letter, "flop", "exhausted", 3);
    let attempts: Vec<u32> = dead
        .bed
        .ledger
        .entries()
        .iter()
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3], "exactly max_attempts calls");
}
