//! A worker's reply is never paired with another event than its own: a
//! worker that writes a stray line (a debug `print`) before its reply is
//! killed and replaced, its event retried; every other event's emit carries
//! that event's own data, never a neighbour's.

use std::collections::BTreeMap;
use std::time::Duration;

use jetrun_e2e::{
    header, metric, publish_bare, scrape, stream_messages, wait_ready, wait_until, Runner, TestBed,
};

/// Emits `ev.out {"n"}` for each `ev.in {"n"}`; for `"chatty": true` it
/// prints a debug line on stdout first, as a stray `print()` would.
const WORKER_PY: &str = r#"import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    data = request["event"]["data"]
    if data.get("chatty"):
        sys.stdout.write("debug: got %s\n" % data)
    reply = {"id": request["id"], "ok": True, "emit": [{"type": "ev.out", "data": {"n": data["n"]}}]}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_line_never_shifts_replies_onto_other_events() {
    const EVENTS: u64 = 40;
    let bed = TestBed::new();
    let script = bed.write_script("worker.py", WORKER_PY);
    let config = bed.write_config(&format!(
        r#"{base}
[functions.work]
subjects = ["ev.in"]
exec = {{ command = ["python3", {script:?}], mode = "worker", workers = 1 }}
concurrency = 1
retry = {{ max_attempts = 3, initial_delay = "100ms", jitter = 0.0 }}
"#,
        base = bed.base_config(),
        script = script.to_string_lossy(),
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    for n in 0..EVENTS {
        let chatty = n == EVENTS / 2;
        publish_bare(
            &client,
            "ev.in",
            format!(r#"{{"n":{n},"chatty":{chatty}}}"#),
        )
        .await;
    }
    let metrics = bed.metrics;
    wait_until(
        Duration::from_secs(60),
        "every event handled, the chatty one dead-lettered",
        || async move {
            let text = scrape(metrics).await;
            let count = |outcome| {
                metric(
                    &text,
                    "jetrun_events_processed_total",
                    &[("function", "work"), ("outcome", outcome)],
                )
            };
            count("success") == Some(EVENTS as f64 - 1.0) && count("dead_letter") == Some(1.0)
        },
    )
    .await;

    // Each input's emit carries the input's own n: its causation id (the
    // input's id, `EVENTS:<sequence>`, sequence n + 1) says which input made it.
    let js = bed.jetstream().await;
    let mut emitted: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for message in stream_messages(&js, "EVENTS").await {
        if message.subject.as_str() != "ev.out" {
            continue;
        }
        let cause = header(&message.headers, "ce-causationid").unwrap();
        let sequence: u64 = cause.trim_start_matches("EVENTS:").parse().unwrap();
        let data: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        emitted
            .entry(sequence - 1)
            .or_default()
            .push(data["n"].as_u64().unwrap());
    }
    for n in (0..EVENTS).filter(|n| *n != EVENTS / 2) {
        assert_eq!(
            emitted.get(&n),
            Some(&vec![n]),
            "input {n} emitted its own data once: {emitted:?}\n{}",
            runner.log()
        );
    }
    assert_eq!(
        emitted.get(&(EVENTS / 2)),
        None,
        "the chatty event emitted nothing"
    );
    let letters = stream_messages(&js, "DLQ").await;
    let error = header(&letters[0].headers, "Jetrun-Error").unwrap();
    assert!(
        error.contains("wrote a line that is not a reply"),
        "{error}"
    );
}
