//! `jetrun schedule list` and `jetrun schedule trigger` against a real
//! nats-server and the real binary: a runner with a function scheduled
//! `@every 1h` (so no tick comes by itself during the test); `list` shows
//! the schedule missing before the runner stored it (exit 3), then stored,
//! with a next fire time within the hour, with and without the config;
//! `trigger` makes the function run once on a tick carrying the trigger's
//! `scheduled_at`, which `list` then shows as the last tick; a function
//! without a schedule, or unknown, is a usage error (exit 2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jetrun_e2e::{
    holds_for, parse_rfc3339, run_command, run_command_in, toml_str, unix_now, wait_until, Runner,
    TestBed,
};
use serde_json::Value;

/// A config scheduling `hourly` (`@every 1h`, an exec function appending
/// each event it gets to the file `ticks`, one JSON document per line) and
/// `idle`, a function on a subject.
fn config(bed: &TestBed) -> (PathBuf, PathBuf) {
    let ticks = bed.path("ticks");
    let script = bed.write_script("tick.sh", "cat >> \"$TICKS\"\necho >> \"$TICKS\"\n");
    let config = bed.write_config(&format!(
        r#"{base}
[functions.hourly]
schedule = "@every 1h"
exec = {{ command = ["sh", {script}], env = {{ TICKS = {ticks} }} }}

[functions.idle]
subjects = ["ev.idle"]
builtin = "noop"
"#,
        base = bed.base_config(),
        script = toml_str(script.to_string_lossy()),
        ticks = toml_str(ticks.to_string_lossy()),
    ));
    (config, ticks)
}

/// `jetrun schedule ARGS... -c CONFIG`: exit code, stdout, stderr.
fn schedule(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut argv = vec!["schedule"];
    argv.extend(args);
    argv.extend(["-c", config.to_str().expect("UTF-8 temp path")]);
    run_command(&argv)
}

/// The rows of `schedule list --json`.
fn rows(stdout: &str) -> Vec<Value> {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a JSON array ({e}): {stdout}"))
}

/// The events the function got so far.
fn handled(ticks: &Path) -> Vec<Value> {
    std::fs::read_to_string(ticks)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("an event as JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_runs_a_scheduled_function_once_and_list_shows_it() {
    let bed = TestBed::new();
    let (config, ticks) = config(&bed);

    // No runner yet: nothing stored, which `list` says with exit status 3.
    let (code, out, err) = schedule(&config, &["list", "--json"]);
    assert_eq!(code, 3, "stdout:\n{out}\nstderr:\n{err}");
    let before = rows(&out);
    assert_eq!(before.len(), 1, "one scheduled function: {out}");
    assert_eq!(before[0]["function"], "hourly");
    assert_eq!(before[0]["stored"], "missing");
    assert!(err.contains("hourly"), "stderr names the function: {err}");

    let runner = Runner::start(&config);
    wait_until(
        Duration::from_secs(30),
        "the runner stores the schedule",
        || {
            let (code, _, _) = schedule(&config, &["list", "--json"]);
            async move { code == 0 }
        },
    )
    .await;

    let (code, out, err) = schedule(&config, &["list", "--json"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let listed = rows(&out);
    assert_eq!(listed.len(), 1, "{out}");
    let row = &listed[0];
    assert_eq!(row["function"], "hourly");
    assert_eq!(row["schedule"], "@every 1h");
    assert_eq!(row["time_zone"], Value::Null);
    assert_eq!(row["stored"], "yes");
    assert_eq!(row["stream"], "JETRUN_SCHEDULES");
    assert_eq!(row["last_tick"], Value::Null, "no tick yet: {out}");
    let next = parse_rfc3339(row["next"].as_str().expect("a next fire time"))
        .unwrap_or_else(|| panic!("next is not RFC 3339: {out}"));
    let now = unix_now();
    assert!(
        next > now && next <= now + 3600.0 + 1.0,
        "next fire time {} is not within the next hour: {out}",
        row["next"]
    );

    let (code, table, err) = schedule(&config, &["list"]);
    assert_eq!(code, 0, "{err}");
    let header = table.lines().next().unwrap_or_default();
    for column in ["FUNCTION", "SCHEDULE", "NEXT", "LAST TICK", "STORED"] {
        assert!(header.contains(column), "{column} missing: {table}");
    }
    assert!(
        table.contains("hourly") && table.contains("@every 1h"),
        "{table}"
    );

    // Without a config: the stored schedules, found in the stream.
    let empty = tempfile::tempdir().expect("temp dir");
    let url = bed.nats.url();
    let (code, out, err) = run_command_in(
        Some(empty.path()),
        &["schedule", "list", "--json"],
        &[("NATS_URL", url.as_str())],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let stored = rows(&out);
    assert_eq!(stored.len(), 1, "{out}");
    assert_eq!(stored[0]["function"], "hourly");
    assert_eq!(stored[0]["service"], "jetrun");
    assert_eq!(stored[0]["schedule"], "@every 1h");

    // Usage errors, before anything is published.
    let (code, _, err) = schedule(&config, &["trigger", "idle"]);
    assert_eq!(code, 2, "a function without a schedule: {err}");
    assert!(err.contains("idle has no schedule"), "{err}");
    let (code, _, err) = schedule(&config, &["trigger", "nope"]);
    assert_eq!(code, 2, "an unknown function: {err}");
    assert!(err.contains("nope"), "{err}");

    let (code, out, err) = schedule(&config, &["trigger", "hourly", "--json"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let fired: Value = serde_json::from_str(&out).expect("trigger --json is JSON");
    let at = fired["scheduled_at"]
        .as_str()
        .expect("scheduled_at")
        .to_string();
    let sequence = fired["sequence"].as_u64().expect("sequence");
    assert_eq!(fired["stream"], "JETRUN_SCHEDULES");
    assert_eq!(fired["id"], format!("hourly@{at}"));
    let at_unix = parse_rfc3339(&at).expect("scheduled_at is RFC 3339");
    assert!(
        (unix_now() - at_unix).abs() < 30.0,
        "scheduled_at is now: {at}"
    );

    wait_until(
        Duration::from_secs(30),
        "the function handles the tick",
        || {
            let n = handled(&ticks).len();
            async move { n >= 1 }
        },
    )
    .await;
    holds_for(
        Duration::from_secs(2),
        "one handling, no other tick",
        || {
            let n = handled(&ticks).len();
            async move { n == 1 }
        },
    )
    .await;
    let event = &handled(&ticks)[0];
    assert_eq!(event["type"], "jetrun.schedule.tick", "{event}");
    assert_eq!(event["source"], "jetrun", "{event}");
    assert_eq!(event["id"], format!("hourly@{at}"), "{event}");
    assert_eq!(event["data"]["function"], "hourly", "{event}");
    assert_eq!(event["data"]["scheduled_at"], at.as_str(), "{event}");

    let (code, out, err) = schedule(&config, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let last = &rows(&out)[0]["last_tick"];
    assert_eq!(last["sequence"], sequence, "{out}");
    assert_eq!(last["scheduled_at"], at.as_str(), "{out}");
    drop(runner);
}
