//! `jetrun dlq`: dead letters listed, shown, replayed (the function then
//! sees the event again and succeeds), never delivered twice by a second
//! replay, and purged by age; run as an operator would, against the dead
//! letters a real runner made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::HeaderMap;
use jetrun_e2e::{
    header, holds_for, publish_with_headers, record_then, run_command, stream_len, stream_messages,
    toml_str, unix_now, wait_acked, wait_for_consumer, wait_until, write_config, Runner, TestBed,
};
use serde_json::Value;

/// `jetrun ARGS... -c CONFIG`: exit code, stdout, stderr.
fn jetrun(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_str().expect("UTF-8 temp path");
    let mut argv = args.to_vec();
    argv.extend(["-c", config]);
    run_command(&argv)
}

/// `jetrun ARGS... -c CONFIG` that must exit 0; its stdout.
fn jetrun_ok(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = jetrun(config, args);
    assert_eq!(
        code, 0,
        "jetrun {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// `dlq list FUNCTION --json`, parsed.
fn list_json(config: &Path, function: &str) -> Vec<Value> {
    let stdout = jetrun_ok(config, &["dlq", "list", function, "--json"]);
    match serde_json::from_str(&stdout) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("dlq list --json is not a JSON array: {other:?}\n{stdout}"),
    }
}

/// A function `flaky` on `ev.flaky` that records every call in the ledger
/// and saves the event it got as `seen.<sequence>`, then fails permanently
/// (exit 65) unless the file `marker` exists. One event at a time, so dead
/// letters are in the order of their events.
struct World {
    bed: TestBed,
    config: PathBuf,
    runner: Runner,
}

impl World {
    async fn start() -> World {
        let bed = TestBed::new();
        let dir = bed.dir().to_string_lossy().into_owned();
        let script = bed.write_script(
            "flaky.sh",
            &record_then(&format!(
                r#"cat > "{dir}/seen.$JETRUN_SEQUENCE"
[ -f "{dir}/marker" ] || {{ echo "no marker yet for event $JETRUN_SEQUENCE" >&2; exit 65; }}"#
            )),
        );
        let config = bed.write_config(&format!(
            "{}{}",
            bed.base_config(),
            bed.sh_function("flaky", &["ev.flaky"], &script, "concurrency = 1")
        ));
        let runner = Runner::start(&config);
        wait_for_consumer(&bed.jetstream().await, TestBed::STREAM, "flaky").await;
        World {
            bed,
            config,
            runner,
        }
    }

    /// Publishes `{"n": n}` for each n, with header `X-Trace-Id: trace-<n>`,
    /// and waits until each is a dead letter.
    async fn dead_letters(&self, ns: &[u64]) {
        let client = self.bed.client().await;
        let js = &self.bed.jetstream().await;
        let before = stream_len(js, "DLQ").await;
        for n in ns {
            let mut headers = HeaderMap::new();
            headers.insert("X-Trace-Id", format!("trace-{n}").as_str());
            publish_with_headers(&client, "ev.flaky", headers, format!(r#"{{"n":{n}}}"#)).await;
        }
        let want = before + ns.len() as u64;
        wait_until(
            Duration::from_secs(20),
            &format!("{want} dead letters in DLQ"),
            || async move { stream_len(js, "DLQ").await == want },
        )
        .await;
    }

    /// The `n` of the event the function saw at stream sequence `seq`.
    fn seen(&self, seq: u64) -> Option<u64> {
        let text = std::fs::read_to_string(self.bed.path(&format!("seen.{seq}"))).ok()?;
        let event: Value = serde_json::from_str(&text).ok()?;
        event["data"]["n"].as_u64()
    }
}

/// `replayed DLQ <dlq> to ev.flaky (stream EVENTS sequence <n>)`: the `n`.
fn replayed_to(line: &str, dlq: u64) -> u64 {
    let prefix = format!("replayed DLQ {dlq} to ev.flaky (stream EVENTS sequence ");
    line.strip_prefix(&prefix)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a replay line for DLQ {dlq}: {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_and_replayed_once() {
    let world = World::start().await;
    let config = &world.config;
    let js = &world.bed.jetstream().await;
    world.dead_letters(&[1, 2, 3]).await;

    // list: a table with one row per dead letter, and the same as JSON.
    let table = jetrun_ok(config, &["dlq", "list", "flaky"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 5, "header, 3 rows, total:\n{table}");
    assert!(
        lines[0].starts_with("SEQ  FAILED AT") && lines[0].ends_with("SUBJECT   ERROR"),
        "{table}"
    );
    for (row, n) in lines[1..4].iter().zip(1..) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], n.to_string(), "{table}");
        assert_eq!(cells[2..5], ["permanent", "1", "ev.flaky"], "{table}");
        assert!(
            row.ends_with(&format!(
                "sh exited with status 65 (bad input): no marker yet for event {n}"
            )),
            "{table}"
        );
    }
    assert_eq!(
        lines[4],
        "3 dead letters of flaky (subject dlq.flaky in stream DLQ)"
    );
    let rows = list_json(config, "flaky");
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, n) in rows.iter().zip(1u64..) {
        assert_eq!(row["sequence"], n, "{row}");
        assert_eq!(row["reason"], "permanent", "{row}");
        assert_eq!(row["attempts"], 1, "{row}");
        assert_eq!(row["original_subject"], "ev.flaky", "{row}");
        assert_eq!(row["original_stream"], "EVENTS", "{row}");
        assert_eq!(row["original_sequence"], n, "{row}");
        assert_eq!(
            row["error"],
            format!("sh exited with status 65 (bad input): no marker yet for event {n}")
        );
        let failed_at = row["failed_at"].as_str().unwrap_or_default();
        let failed_at = jetrun_e2e::parse_rfc3339(failed_at)
            .unwrap_or_else(|| panic!("failed_at is RFC 3339: {row}"));
        assert!((unix_now() - failed_at).abs() < 60.0, "{row}");
    }

    // show: every header and the body.
    let shown = jetrun_ok(config, &["dlq", "show", "flaky", "1"]);
    for expected in [
        "DLQ sequence 1 (subject dlq.flaky, stored ",
        "\nheaders:\n  Jetrun-Function: flaky\n  Jetrun-Reason: permanent\n",
        "\n  Jetrun-Original-Subject: ev.flaky\n  Jetrun-Original-Stream: EVENTS\n  \
         Jetrun-Original-Sequence: 1\n",
        "\n  Nats-Msg-Id: EVENTS@",
        ":1:flaky\n",
        "\n  X-Trace-Id: trace-1\n",
        "\nbody (7 bytes, UTF-8 text):\n{\"n\":1}\n",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }
    let (code, stdout, stderr) = jetrun(config, &["dlq", "show", "flaky", "99"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: DLQ 99: no dead letter of flaky at this sequence (already replayed or purged?)\n"
    );

    // replay once: the function sees event 1 again, and succeeds.
    std::fs::write(world.bed.path("marker"), "").expect("create the marker");
    let out = jetrun_ok(config, &["dlq", "replay", "flaky", "--seq", "1"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let replayed = replayed_to(out.trim_end(), 1);
    assert_eq!(replayed, 4, "the next sequence of EVENTS: {out}");
    wait_acked(js, TestBed::STREAM, "flaky", replayed).await;
    assert_eq!(world.seen(replayed), Some(1), "the function saw event 1");
    assert_eq!(
        world.bed.ledger.attempts_of("4"),
        [1],
        "one call, a success"
    );
    let left: Vec<u64> = list_json(config, "flaky")
        .iter()
        .filter_map(|row| row["sequence"].as_u64())
        .collect();
    assert_eq!(left, [2, 3], "the replayed dead letter is gone");
    assert_eq!(stream_len(js, "DLQ").await, 2, "and no new one");

    // replay the same dead letter again: an error, and nothing delivered.
    let calls = world.bed.ledger.len();
    let (code, stdout, stderr) = jetrun(config, &["dlq", "replay", "flaky", "--seq", "1"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: DLQ 1: no dead letter of flaky at this sequence (already replayed or purged?)\n"
    );
    let ledger = &world.bed.ledger;
    holds_for(
        Duration::from_secs(2),
        "no second delivery of the replayed event",
        || async move { ledger.len() == calls && stream_len(js, TestBed::STREAM).await == 4 },
    )
    .await;

    // A replay cut short after its publish (before the delete) runs again
    // without a second delivery: the target stream drops the repeat.
    // Its id: `replay:<DLQ sequence>:<the dead letter's own Nats-Msg-Id>`.
    let letter = js
        .get_stream("DLQ")
        .await
        .expect("DLQ")
        .get_raw_message(2)
        .await
        .expect("dead letter 2");
    let letter_id = header(&letter.headers, "Nats-Msg-Id").expect("the dead letter's id");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("replay:2:{letter_id}").as_str());
    let first = js
        .publish_with_headers("ev.flaky", headers, r#"{"n":2}"#.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(first.sequence, 5);
    let out = jetrun_ok(config, &["dlq", "replay", "flaky", "--all"]);
    assert_eq!(
        out,
        "replayed DLQ 2 to ev.flaky (stream EVENTS sequence 5): duplicate, already replayed\n\
         replayed DLQ 3 to ev.flaky (stream EVENTS sequence 6)\n"
    );
    wait_acked(js, TestBed::STREAM, "flaky", 6).await;
    assert_eq!(world.seen(5), Some(2));
    assert_eq!(world.seen(6), Some(3));
    let ledger = &world.bed.ledger;
    holds_for(
        Duration::from_secs(1),
        "each replayed event handled once",
        || async move {
            ledger.attempts_of("5") == [1]
                && ledger.attempts_of("6") == [1]
                && stream_len(js, TestBed::STREAM).await == 6
        },
    )
    .await;
    assert!(stream_messages(js, "DLQ").await.is_empty(), "DLQ is empty");
    assert_eq!(
        jetrun_ok(config, &["dlq", "list", "flaky"]),
        "no dead letters for flaky (subject dlq.flaky in stream DLQ)\n"
    );
    assert_eq!(list_json(config, "flaky"), Vec::<Value>::new());
    drop(world.runner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_by_age_then_all() {
    let world = World::start().await;
    let config = &world.config;
    let js = &world.bed.jetstream().await;
    world.dead_letters(&[1, 2, 3]).await;

    // A dead letter from two days ago, as a runner would have written it.
    let client = world.bed.client().await;
    let mut headers = HeaderMap::new();
    headers.insert("Jetrun-Function", "flaky");
    headers.insert("Jetrun-Reason", "exhausted");
    headers.insert("Jetrun-Failed-At", "2000-01-01T00:00:00.000Z");
    headers.insert("Jetrun-Original-Subject", "ev.flaky");
    publish_with_headers(&client, "dlq.flaky", headers, "old").await;
    wait_until(Duration::from_secs(5), "4 dead letters", || async move {
        stream_len(js, "DLQ").await == 4
    })
    .await;

    assert_eq!(
        jetrun_ok(config, &["dlq", "purge", "flaky", "--older-than", "1h"]),
        "purged 1 dead letter of flaky older than 1h (3 newer kept)\n"
    );
    let left: Vec<u64> = list_json(config, "flaky")
        .iter()
        .filter_map(|row| row["sequence"].as_u64())
        .collect();
    assert_eq!(left, [1, 2, 3], "the old one is gone, the new ones kept");
    assert_eq!(
        jetrun_ok(config, &["dlq", "purge", "flaky", "--older-than", "7d"]),
        "purged 0 dead letters of flaky older than 7d (3 newer kept)\n"
    );
    assert_eq!(stream_len(js, "DLQ").await, 3);
    assert_eq!(
        jetrun_ok(config, &["dlq", "purge", "flaky"]),
        "purged 3 dead letters of flaky\n"
    );
    assert_eq!(stream_len(js, "DLQ").await, 0);
    assert_eq!(
        jetrun_ok(config, &["dlq", "purge", "flaky"]),
        "purged 0 dead letters of flaky\n"
    );
    drop(world.runner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_dead_letter_is_not_replayed() {
    let world = World::start().await;
    let config = &world.config;
    let js = &world.bed.jetstream().await;
    let client = world.bed.client().await;
    let mut headers = HeaderMap::new();
    headers.insert("Jetrun-Function", "flaky");
    headers.insert("Jetrun-Original-Subject", "ev.flaky");
    headers.insert("Jetrun-Original-Stream", "EVENTS");
    headers.insert("Jetrun-Original-Sequence", "42");
    headers.insert("Jetrun-Body-Truncated", "9000000");
    publish_with_headers(&client, "dlq.flaky", headers, "cut").await;
    wait_until(Duration::from_secs(5), "the dead letter", || async move {
        stream_len(js, "DLQ").await == 1
    })
    .await;

    let (code, stdout, stderr) = jetrun(config, &["dlq", "replay", "flaky", "--all"]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: DLQ 1: not replayed: its body is cut (3 of 9000000 bytes, \
         Jetrun-Body-Truncated); the whole event is in stream EVENTS at sequence 42, \
         republish it from there\n"
    );
    assert_eq!(stream_len(js, "DLQ").await, 1, "kept");
    assert_eq!(
        stream_len(js, TestBed::STREAM).await,
        0,
        "nothing published"
    );
    let shown = jetrun_ok(config, &["dlq", "show", "flaky", "1"]);
    assert!(
        shown.contains(
            "body (3 bytes, UTF-8 text; cut from 9000000 bytes, the whole event is in stream \
             EVENTS at sequence 42):\ncut\n"
        ),
        "{shown}"
    );
    drop(world.runner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_name_what_is_wrong() {
    let bed = TestBed::new();
    let script = bed.write_script("ok.sh", &record_then("exit 0"));
    let functions = format!(
        "{}{}",
        bed.sh_function("alpha", &["ev.alpha"], &script, ""),
        bed.sh_function("beta", &["ev.beta"], &script, "")
    );
    let config = bed.write_config(&format!("{}{functions}", bed.base_config()));

    let (code, stdout, stderr) = jetrun(&config, &["dlq", "list", "gamma"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "jetrun: {} declares no function \"gamma\"; its functions: alpha, beta\n",
            config.display()
        )
    );

    // The DLQ stream does not exist yet: nothing to list, not an error.
    assert_eq!(
        jetrun_ok(&config, &["dlq", "list", "alpha"]),
        "no dead letters for alpha (subject dlq.alpha in stream DLQ)\n"
    );

    // No server: a quick, clear error naming the URL.
    let dead = bed.path("dead");
    std::fs::create_dir(&dead).expect("mkdir");
    let url = format!("nats://127.0.0.1:{}", jetrun_e2e::free_port());
    let unreachable = write_config(
        &dead,
        &format!(
            "[nats]\nurl = {}\n[streams.EVENTS]\nsubjects = [\"ev.>\"]\n{functions}",
            toml_str(&url)
        ),
    );
    let started = std::time::Instant::now();
    let (code, _, stderr) = jetrun(&unreachable, &["dlq", "list", "alpha"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("jetrun: cannot reach NATS at {url} (")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded wait");
}
