//! `jetrun publish --delay/--at`, `jetrun schedule list --delayed` and
//! `jetrun schedule cancel ID` against a real nats-server and the real
//! binary: a delayed publish is listed while held, then stored on its
//! subject 2 to 3.5 s later, once, with its id and correlation id; a
//! cancelled one is never stored; a cancel of an id with nothing held exits
//! 3 saying so; an `--at` already past is stored at once; a bad value is a
//! usage error naming the flag; with no runner up, the event is held (in the
//! config's `[schedules] stream`, made by the publish) and delivered once
//! one starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{stream, Context};
use jetrun_e2e::{
    header, holds_for, parse_rfc3339, run_command, stream_messages, unix_now, wait_ready,
    wait_until, Runner, TestBed,
};
use serde_json::Value;

/// The bed's base config (stream EVENTS on `ev.>`) with an idle function,
/// so that a runner has something to run besides the relay, and `extra`
/// (top-level tables such as `[schedules]`) after it.
fn config(bed: &TestBed, extra: &str) -> PathBuf {
    bed.write_config(&format!(
        r#"{base}
[functions.idle]
subjects = ["ev.idle"]
builtin = "noop"
{extra}
"#,
        base = bed.base_config(),
    ))
}

/// `jetrun ARGS... -c CONFIG`: exit code, stdout, stderr.
fn jetrun(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut argv = args.to_vec();
    argv.extend(["-c", config.to_str().expect("UTF-8 temp path")]);
    run_command(&argv)
}

/// `jetrun publish --json ARGS...` that must succeed: what it printed.
fn publish(config: &Path, args: &[&str]) -> Value {
    let mut argv = vec!["publish", "--json"];
    argv.extend(args);
    let (code, out, err) = jetrun(config, &argv);
    assert_eq!(code, 0, "jetrun {argv:?}:\nstdout:\n{out}\nstderr:\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The rows of `jetrun schedule list --delayed --json`.
fn delayed(config: &Path) -> Vec<Value> {
    let (code, out, err) = jetrun(config, &["schedule", "list", "--delayed", "--json"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a JSON array ({e}): {out}"))
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|row| row["id"].as_str().expect("an id").to_string())
        .collect()
}

/// A message stored on `subject` of stream EVENTS, with its stream time.
struct Stored {
    at: f64,
    id: Option<String>,
    msg_id: Option<String>,
    correlation: Option<String>,
    body: String,
}

async fn stored(js: &Context, subject: &str) -> Vec<Stored> {
    stream_messages(js, TestBed::STREAM)
        .await
        .into_iter()
        .filter(|m| m.subject.as_str() == subject)
        .map(|m| Stored {
            at: m.time.unix_timestamp_nanos() as f64 / 1e9,
            id: header(&m.headers, "ce-id"),
            msg_id: header(&m.headers, "Nats-Msg-Id"),
            correlation: header(&m.headers, "ce-correlationid"),
            body: String::from_utf8_lossy(&m.payload).into_owned(),
        })
        .collect()
}

/// Waits up to `within` for an event on `subject`, then a second more:
/// there is one, and only one.
async fn stored_once(js: &Context, subject: &str, within: Duration) {
    wait_until(within, &format!("an event stored on {subject}"), || {
        let js = js.clone();
        async move { count(&js, subject).await >= 1 }
    })
    .await;
    holds_for(Duration::from_secs(1), "stored once", || {
        let js = js.clone();
        async move { count(&js, subject).await == 1 }
    })
    .await;
}

async fn count(js: &Context, subject: &str) -> usize {
    stored(js, subject).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_publish_is_listed_then_stored_once_on_time() {
    let bed = TestBed::new();
    let config = config(&bed, "");
    let js = bed.jetstream().await;
    let _runner = Runner::start(&config);
    wait_ready(bed.metrics).await;

    let before = unix_now();
    let held = publish(
        &config,
        &[
            "--delay",
            "2s",
            "--id",
            "later-1",
            "--correlation-id",
            "checkout-7",
            "ev.later",
            r#"{"n":1}"#,
        ],
    );
    assert_eq!(held["id"], "later-1", "{held}");
    assert_eq!(held["delayed"], true, "{held}");
    assert_eq!(held["duplicate"], false, "{held}");
    assert_eq!(held["stream"], "JETRUN_SCHEDULES", "{held}");
    assert!(held["sequence"].as_u64().is_some(), "{held}");
    let at_text = held["at"].as_str().expect("at").to_string();
    let at = parse_rfc3339(&at_text).expect("at is RFC 3339");
    assert!(
        at >= before + 2.0 && at <= unix_now() + 2.0,
        "at {at_text} is 2 s from the publish"
    );

    // Held: listed, with what it is and when it is due.
    let rows = delayed(&config);
    assert_eq!(ids(&rows), ["later-1"], "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["subject"], "ev.later", "{row}");
    assert_eq!(row["type"], "ev.later", "{row}");
    assert_eq!(row["due"], at_text.as_str(), "{row}");
    assert_eq!(row["state"], "held", "{row}");
    assert_eq!(row["correlation_id"], "checkout-7", "{row}");
    assert_eq!(row["stream"], "JETRUN_SCHEDULES", "{row}");
    assert_eq!(
        count(&js, "ev.later").await,
        0,
        "not stored before its time"
    );

    stored_once(&js, "ev.later", Duration::from_secs(10)).await;
    let events = stored(&js, "ev.later").await;
    let event = &events[0];
    let after = event.at - before;
    assert!(
        (2.0..=3.5).contains(&after),
        "stored {after:.3} s after the publish, not 2 to 3.5 s"
    );
    assert!(event.at >= at, "stored before its time {at_text}");
    assert_eq!(event.id.as_deref(), Some("later-1"));
    assert_eq!(event.msg_id.as_deref(), Some("later-1"));
    assert_eq!(event.correlation.as_deref(), Some("checkout-7"));
    assert_eq!(event.body, r#"{"n":1}"#);

    // Delivered: no longer listed; the table is its header alone.
    assert!(delayed(&config).is_empty(), "still listed once stored");
    let (code, table, err) = jetrun(&config, &["schedule", "list", "--delayed"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        ["ID  SUBJECT  TYPE  DUE  STATE  CORRELATION"],
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_event_is_never_stored() {
    let bed = TestBed::new();
    let config = config(&bed, "");
    let js = bed.jetstream().await;
    let _runner = Runner::start(&config);
    wait_ready(bed.metrics).await;

    let before = unix_now();
    publish(
        &config,
        &["--delay", "3s", "--id", "short-1", "ev.short", "{}"],
    );
    publish(
        &config,
        &["--delay", "3s", "--id", "kept-1", "ev.kept", "{}"],
    );
    publish(
        &config,
        &["--delay", "30s", "--id", "long-1", "ev.long", "{}"],
    );
    let listed = ids(&delayed(&config));
    assert_eq!(listed, ["short-1", "kept-1", "long-1"], "soonest first");
    let (code, table, err) = jetrun(&config, &["schedule", "list", "--delayed"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("long-1 ") && l.contains("held")),
        "{table}"
    );

    let (code, out, err) = jetrun(&config, &["schedule", "cancel", "short-1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.starts_with("cancelled short-1: ev.short for ev.short, due "),
        "{out}"
    );
    let (code, out, err) = jetrun(&config, &["schedule", "cancel", "long-1", "--json"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let removed: Value = serde_json::from_str(&out).expect("cancel --json is JSON");
    assert_eq!(removed["cancelled"], true, "{removed}");
    assert_eq!(removed["id"], "long-1", "{removed}");
    assert_eq!(removed["subject"], "ev.long", "{removed}");
    let left = ids(&delayed(&config));
    assert!(
        !left.contains(&"short-1".to_string()) && !left.contains(&"long-1".to_string()),
        "cancelled ones still listed: {left:?}"
    );

    // The one not cancelled, due with the cancelled short one, is stored;
    // the cancelled one is not, up to 5 s after the publish.
    wait_until(Duration::from_secs(10), "kept-1 stored", || {
        let js = js.clone();
        async move { count(&js, "ev.kept").await == 1 }
    })
    .await;
    let until = Duration::from_secs_f64((before + 5.0 - unix_now()).max(0.5));
    holds_for(until, "the cancelled events not stored", || {
        let js = js.clone();
        async move { count(&js, "ev.short").await + count(&js, "ev.long").await == 0 }
    })
    .await;
    assert!(delayed(&config).is_empty(), "nothing left held");

    // Nothing held under the id: exit status 3, saying so.
    for id in ["short-1", "kept-1", "never-scheduled"] {
        let (code, out, err) = jetrun(&config, &["schedule", "cancel", id]);
        assert_eq!(code, 3, "cancel {id}:\nstdout:\n{out}\nstderr:\n{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(&format!(
                "no delayed event with id {id} is held in stream JETRUN_SCHEDULES"
            )),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_at_is_stored_at_once_and_bad_values_are_usage_errors() {
    let bed = TestBed::new();
    let config = config(&bed, "");
    let js = bed.jetstream().await;
    let _runner = Runner::start(&config);
    wait_ready(bed.metrics).await;

    let held = publish(
        &config,
        &[
            "--at",
            "2020-01-01T01:00:00+01:00",
            "--id",
            "past-1",
            "ev.past",
        ],
    );
    assert_eq!(held["at"], "2020-01-01T00:00:00.000Z", "{held}");
    wait_until(Duration::from_secs(5), "the past event stored", || {
        let js = js.clone();
        async move { count(&js, "ev.past").await == 1 }
    })
    .await;
    assert_eq!(
        stored(&js, "ev.past").await[0].id.as_deref(),
        Some("past-1")
    );

    // Refused when parsed: NATS is not even looked for.
    let nowhere = ["--server", "nats://127.0.0.1:1"];
    for (args, flag) in [
        (&["--delay", "soon"][..], "'--delay <DURATION>'"),
        (&["--delay", "10"], "'--delay <DURATION>'"),
        (&["--at", "tomorrow"], "'--at <TIME>'"),
        (&["--at", "2026-12-24T18:00:00"], "'--at <TIME>'"),
        (
            &["--delay", "1m", "--at", "2026-12-24T18:00:00Z"],
            "--delay",
        ),
    ] {
        let mut argv = vec!["publish"];
        argv.extend(nowhere);
        argv.extend(args);
        argv.push("ev.bad");
        let (code, out, err) = run_command(&argv);
        assert_eq!(code, 2, "{argv:?}:\nstdout:\n{out}\nstderr:\n{err}");
        assert!(err.contains(flag), "{argv:?} does not name {flag}: {err}");
        assert!(!err.contains("cannot reach NATS"), "{err}");
    }
    assert_eq!(count(&js, "ev.bad").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_with_no_runner_up_and_delivered_once_one_starts() {
    let bed = TestBed::new();
    let config = config(&bed, "\n[schedules]\nstream = \"HELD\"\n");
    let js = bed.jetstream().await;
    // The event's stream, as an operator made it; no runner has run.
    js.create_stream(stream::Config {
        name: TestBed::STREAM.to_string(),
        subjects: vec!["ev.>".to_string()],
        ..Default::default()
    })
    .await
    .expect("create stream EVENTS");
    assert!(
        js.get_stream("HELD").await.is_err(),
        "no schedules stream yet"
    );

    let held = publish(
        &config,
        &["--delay", "1s", "--id", "early-1", "ev.early", r#"{"n":2}"#],
    );
    assert_eq!(
        held["stream"], "HELD",
        "the config's [schedules] stream: {held}"
    );
    publish(
        &config,
        &["--delay", "1s", "--id", "early-2", "ev.early", r#"{"n":3}"#],
    );

    // Their time comes with no runner up: they wait, due, and are not stored.
    wait_until(Duration::from_secs(10), "the held events due", || {
        let rows = delayed(&config);
        async move { rows.len() == 2 && rows.iter().all(|row| row["state"] == "due") }
    })
    .await;
    assert_eq!(count(&js, "ev.early").await, 0, "stored with no runner");
    // Due and not yet stored is not yet delivered: it can be cancelled.
    let (code, out, err) = jetrun(&config, &["schedule", "cancel", "early-2"]);
    assert_eq!(code, 0, "cancel a due event:\n{out}{err}");
    assert!(out.starts_with("cancelled early-2: "), "{out}");

    let _runner = Runner::start(&config);
    stored_once(&js, "ev.early", Duration::from_secs(30)).await;
    let events = stored(&js, "ev.early").await;
    assert_eq!(events[0].id.as_deref(), Some("early-1"));
    assert_eq!(events[0].body, r#"{"n":2}"#);
    wait_until(Duration::from_secs(10), "nothing left pending", || {
        let rows = delayed(&config);
        async move { rows.is_empty() }
    })
    .await;
}
