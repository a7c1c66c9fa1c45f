//! `jetrun status`: the numbers it reports are the ones the test drove (a
//! function with successes and a dead letter, one with a backlog behind a
//! slow, once-retried handler), and a configured function with no consumer
//! makes it exit 1 naming that function.

use std::path::Path;
use std::time::Duration;

use jetrun_e2e::{
    consumer_info, record_then, run_command, unix_now, wait_acked, wait_for_consumer, wait_until,
    write_config, Runner, TestBed,
};
use serde_json::Value;

/// `jetrun status --json -c CONFIG`: exit code, one row per function by
/// name, stderr.
fn status_json(config: &Path) -> (i32, serde_json::Map<String, Value>, String) {
    let config = config.to_str().expect("UTF-8 temp path");
    let (code, stdout, stderr) = run_command(&["status", "--json", "-c", config]);
    let Ok(Value::Array(rows)) = serde_json::from_str(&stdout) else {
        panic!("status --json is not a JSON array (exit {code}):\n{stdout}\nstderr:\n{stderr}");
    };
    let by_name = rows
        .into_iter()
        .map(|row| {
            (
                row["function"].as_str().unwrap_or_default().to_string(),
                row,
            )
        })
        .collect();
    (code, by_name, stderr)
}

/// The fields of a row that the test drives, in order: consumer, pending,
/// ack_pending, redelivered, dead_letters.
fn numbers(row: &Value) -> (bool, Value, Value, Value, Value) {
    (
        row["consumer"].as_bool().unwrap_or_else(|| panic!("{row}")),
        row["pending"].clone(),
        row["ack_pending"].clone(),
        row["redelivered"].clone(),
        row["dead_letters"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_what_the_test_drove() {
    let bed = TestBed::new();
    let dir = bed.dir().to_string_lossy().into_owned();
    // `mixed`: succeeds, but fails permanently on an event saying "bad".
    let mixed = bed.write_script(
        "mixed.sh",
        &record_then(r#"if grep -q '"bad"'; then echo "bad order" >&2; exit 65; fi"#),
    );
    // `slow`: the very first call fails (retryable), every other one waits
    // for the file `release`; one event at a time.
    let slow = bed.write_script(
        "slow.sh",
        &record_then(&format!(
            r#"if [ ! -f "{dir}/failed-once" ]; then : > "{dir}/failed-once"; exit 1; fi
while [ ! -f "{dir}/release" ]; do sleep 0.05; done"#
        )),
    );
    let functions = format!(
        "{}{}",
        bed.sh_function("mixed", &["ev.mixed"], &mixed, ""),
        bed.sh_function(
            "slow",
            &["ev.slow"],
            &slow,
            "concurrency = 1\ntimeout = \"60s\""
        ),
    );
    let config = bed.write_config(&format!("{}{functions}", bed.base_config()));

    // Before the runner: no consumer at all, exit 3 naming each function.
    let (code, rows, stderr) = status_json(&config);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: function mixed has no consumer on stream EVENTS; is `jetrun run` running with \
         this config?\n\
         jetrun: function slow has no consumer on stream EVENTS; is `jetrun run` running with \
         this config?\n"
    );
    assert_eq!(
        numbers(&rows["mixed"]),
        (false, Value::Null, Value::Null, Value::Null, 0.into())
    );

    let _runner = Runner::start(&config);
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "mixed").await;
    wait_for_consumer(js, TestBed::STREAM, "slow").await;
    let publish = |subject: &'static str, body: &'static str| async move {
        js.publish(subject, body.into())
            .await
            .expect("publish")
            .await
            .expect("ack")
            .sequence
    };

    // mixed: 2 successes and 1 dead letter.
    publish("ev.mixed", r#"{"order":"good"}"#).await;
    publish("ev.mixed", r#"{"order":"bad"}"#).await;
    let last = publish("ev.mixed", r#"{"order":"good"}"#).await;
    wait_acked(js, TestBed::STREAM, "mixed", last).await;

    // slow: one event fails once and, redelivered, runs on; two more wait
    // behind it.
    let first = publish("ev.slow", "{}").await;
    let ledger = &bed.ledger;
    let key = first.to_string();
    let key = &key;
    wait_until(
        Duration::from_secs(20),
        "the slow event's second attempt",
        || async move { ledger.attempts_of(key) == [1, 2] },
    )
    .await;
    publish("ev.slow", "{}").await;
    let last_slow = publish("ev.slow", "{}").await;
    wait_until(
        Duration::from_secs(10),
        "a backlog of 2 behind the slow event",
        || async move {
            consumer_info(js, TestBed::STREAM, "slow")
                .await
                .is_some_and(|i| i.num_pending == 2 && i.num_ack_pending == 1)
        },
    )
    .await;

    let (code, rows, stderr) = status_json(&config);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        numbers(&rows["mixed"]),
        (true, 0.into(), 0.into(), 0.into(), 1.into()),
        "{}",
        rows["mixed"]
    );
    assert_eq!(
        numbers(&rows["slow"]),
        (true, 2.into(), 1.into(), 1.into(), 0.into()),
        "{}",
        rows["slow"]
    );
    for row in rows.values() {
        let last_active = row["last_active"].as_str().unwrap_or_default();
        let at = jetrun_e2e::parse_rfc3339(last_active)
            .unwrap_or_else(|| panic!("last_active is RFC 3339: {row}"));
        assert!((unix_now() - at).abs() < 60.0, "{row}");
        assert_eq!(row["stream"], "EVENTS");
    }
    assert_eq!(rows["mixed"]["dead_letter_subject"], "dlq.mixed");

    // The table says the same.
    let (code, table, _) = run_command(&["status", "-c", config.to_str().expect("UTF-8")]);
    assert_eq!(code, 0, "{table}");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        table.lines().next(),
        Some(
            "FUNCTION  STREAM  CONSUMER  PENDING  ACK PENDING  REDELIVERED  DEAD LETTERS  \
             LAST ACTIVE"
        ),
        "{table}"
    );
    assert_eq!(
        lines[1][..7],
        ["mixed", "EVENTS", "yes", "0", "0", "0", "1"]
    );
    assert_eq!(lines[2][..7], ["slow", "EVENTS", "yes", "2", "1", "1", "0"]);

    // Released, the backlog drains.
    std::fs::write(bed.path("release"), "").expect("release the slow function");
    wait_acked(js, TestBed::STREAM, "slow", last_slow).await;
    let (code, rows, stderr) = status_json(&config);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        numbers(&rows["slow"]),
        (true, 0.into(), 0.into(), 0.into(), 0.into()),
        "{}",
        rows["slow"]
    );

    // A config naming a function the runner does not run: exit 1, named.
    let other = bed.path("other");
    std::fs::create_dir(&other).expect("mkdir");
    let ghost = bed.sh_function("ghost", &["ev.ghost"], &mixed, "");
    let wider = write_config(&other, &format!("{}{functions}{ghost}", bed.base_config()));
    let (code, rows, stderr) = status_json(&wider);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: function ghost has no consumer on stream EVENTS; is `jetrun run` running with \
         this config?\n"
    );
    assert_eq!(
        numbers(&rows["ghost"]),
        (false, Value::Null, Value::Null, Value::Null, 0.into())
    );
    assert_eq!(numbers(&rows["mixed"]).4, 1, "the others are still there");
}
