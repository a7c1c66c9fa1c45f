//! Emitted events: published once per input even when the handler runs
//! again after a failure and a crash (each has a deterministic
//! `Nats-Msg-Id`, so the stream's duplicate window drops the repeat); an
//! emit to a subject no stream captures is a retryable failure that says so;
//! an emit outside the function's `emits` is a permanent failure naming it.

use std::time::Duration;

use async_nats::jetstream::stream::Config as StreamConfig;
use jetrun_e2e::{
    header, publish_bare, record_then, stream_messages, wait_for_consumer, wait_until, Runner,
    TestBed,
};

fn emitting(bed: &TestBed, name: &str, subject: &str, emits: &str, extra: &str) -> String {
    let script = bed.write_script(
        &format!("{name}.sh"),
        &record_then(&format!("echo '{{\"emit\": [{emits}]}}'")),
    );
    bed.sh_function(name, &[subject], &script, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_emitted_before_a_failure_and_a_crash_is_stored_once() {
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        emitting(
            &bed,
            "fanout",
            "ev.in",
            r#"{"type": "ev.out.one", "data": {"n": 1}}, {"type": "late.two", "data": {"n": 2}}"#,
            "retry = { max_attempts = 20, initial_delay = \"200ms\", max_delay = \"500ms\" }",
        )
    ));
    let mut first = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "fanout").await;
    publish_bare(&client, "ev.in", r#"{"order_id":1}"#).await;

    // ev.out.one is stored; late.two has no stream yet: a retryable failure.
    let ledger = &bed.ledger;
    wait_until(
        Duration::from_secs(20),
        "the handler ran twice",
        || async move { ledger.len() >= 2 },
    )
    .await;
    assert!(
        first.log().contains("no stream captures subject late.two"),
        "{}",
        first.log()
    );
    first.kill9();

    js.create_stream(StreamConfig {
        name: "LATE".into(),
        subjects: vec!["late.>".into()],
        ..Default::default()
    })
    .await
    .expect("create LATE");
    let second = Runner::start(&config);
    wait_until(
        Duration::from_secs(20),
        "late.two is stored",
        || async move { !stream_messages(js, "LATE").await.is_empty() },
    )
    .await;

    let calls = bed.ledger.len();
    assert!(
        calls >= 3,
        "the handler ran again after the crash ({calls} calls)"
    );
    let ones: Vec<_> = stream_messages(js, TestBed::STREAM)
        .await
        .into_iter()
        .filter(|m| m.subject.as_str() == "ev.out.one")
        .collect();
    assert_eq!(
        ones.len(),
        1,
        "ev.out.one stored once after {calls} calls\n{}",
        second.log()
    );
    assert_eq!(stream_messages(js, "LATE").await.len(), 1);
    let id = header(&ones[0].headers, "ce-id").expect("ce-id");
    assert_eq!(
        header(&ones[0].headers, "Nats-Msg-Id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        header(&ones[0].headers, "ce-causationid").as_deref(),
        Some("EVENTS:1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_outside_emits_is_a_permanent_failure() {
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        emitting(
            &bed,
            "bounded",
            "ev.in",
            r#"{"type": "ev.out.ok", "data": {}}, {"type": "ev.elsewhere", "data": {}}"#,
            "emits = [\"ev.out.>\"]",
        )
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "bounded").await;
    publish_bare(&client, "ev.in", "{}").await;

    wait_until(Duration::from_secs(20), "a dead letter", || async move {
        !stream_messages(js, "DLQ").await.is_empty()
    })
    .await;
    let letters = stream_messages(js, "DLQ").await;
    let error = header(&letters[0].headers, "Jetrun-Error").unwrap_or_default();
    assert!(
        error.contains("ev.elsewhere") && error.contains("emits"),
        "{error}\n{}",
        runner.log()
    );
    assert_eq!(
        header(&letters[0].headers, "Jetrun-Attempts").as_deref(),
        Some("1")
    );
    let subjects: Vec<String> = stream_messages(js, TestBed::STREAM)
        .await
        .into_iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(
        subjects,
        ["ev.in"],
        "nothing was emitted, not even the allowed event"
    );
}
