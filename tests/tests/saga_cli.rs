//! `jetrun saga list|show`: a saga's instances as the runtime stores them
//! (KV bucket `jetrun_saga_NAME`, `{"instance": ..., "outbox": [...]}` at
//! the instance's key, `corr_*` index entries beside them), put there
//! directly so that the commands are checked without running the saga:
//! rows sorted by start, `--state`, `--json`, the timeline of `show`, and
//! the exit statuses (2 for a saga the config does not declare, 1 for an
//! instance that is not there or cannot be read).

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_nats::jetstream::kv::{self, Store};
use jetrun_e2e::{run_command, TestBed};
use serde_json::{json, Value};

/// 2024-05-01T10:00:00Z, in milliseconds.
const T0: u64 = 1_714_557_600_000;
const SECOND: u64 = 1_000;

/// `jetrun saga ARGS... -c CONFIG`: exit code, stdout, stderr.
fn saga(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_str().expect("UTF-8 temp path");
    let mut argv = vec!["saga"];
    argv.extend(args);
    argv.extend(["-c", config]);
    let started = Instant::now();
    let out = run_command(&argv);
    eprintln!("jetrun {argv:?} took {:?}", started.elapsed());
    out
}

/// A bed whose config declares saga `fulfil` (reserve, then charge) on
/// stream `EVENTS`; no runner is started.
fn bed() -> (TestBed, PathBuf) {
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        r#"{base}
[functions.idle]
subjects = ["ev.idle"]
builtin = "noop"

[sagas.fulfil]
start = "ev.order.placed"
key = "order_id"
completed = "ev.order.fulfilled"
failed = "ev.order.cancelled"

[[sagas.fulfil.steps]]
name = "reserve"
command = "ev.inventory.reserve"
success = "ev.inventory.reserved"
compensate = "ev.inventory.release"
compensated = "ev.inventory.released"

[[sagas.fulfil.steps]]
name = "charge"
command = "ev.payment.charge"
success = "ev.payment.charged"
failure = "ev.payment.declined"
"#,
        base = bed.base_config()
    ));
    (bed, config)
}

fn transition(at: u64, kind: &str, step: Option<&str>, event: Option<(&str, &str)>) -> Value {
    json!({
        "at_ms": T0 + at,
        "kind": kind,
        "step": step,
        "event_type": event.map(|(t, _)| t),
        "event_id": event.map(|(_, id)| id),
    })
}

/// An instance waiting for `charge`, started `started` after T0.
fn running(key: &str, started: u64) -> Value {
    json!({
        "saga": "fulfil",
        "key": key,
        "state": "running",
        "step": 1,
        "data": { "order_id": key, "reserve": { "reservation": "r-1" } },
        "correlation_id": format!("c-{key}"),
        "started_ms": T0 + started,
        "updated_ms": T0 + started + SECOND,
        "step_deadline_ms": T0 + started + 31 * SECOND,
        "saga_deadline_ms": null,
        "completed": [0],
        "compensation": null,
        "transitions": [
            transition(started, "command", Some("reserve"), Some(("ev.inventory.reserve", "e-0"))),
            transition(started + SECOND, "reply", Some("reserve"), Some(("ev.inventory.reserved", "r-0"))),
            transition(started + SECOND, "command", Some("charge"), Some(("ev.payment.charge", "e-2"))),
        ],
    })
}

/// Charge declined; reserve's release published 3 times, never confirmed.
fn stuck(key: &str) -> Value {
    let mut instance = running(key, 0);
    instance["state"] = json!("stuck");
    instance["step"] = json!(0);
    instance["step_deadline_ms"] = Value::Null;
    instance["updated_ms"] = json!(T0 + 200 * SECOND);
    instance["compensation"] = json!({
        "cause": { "kind": "failure", "step": 1 },
        "pending": [0],
        "undone": [],
        "attempts": 3,
    });
    let transitions = instance["transitions"].as_array_mut().unwrap();
    transitions.extend([
        transition(
            2 * SECOND,
            "reply",
            Some("charge"),
            Some(("ev.payment.declined", "p-9")),
        ),
        transition(
            2 * SECOND,
            "compensate",
            Some("reserve"),
            Some(("ev.inventory.release", "e-4")),
        ),
        transition(200 * SECOND, "timeout", Some("reserve"), None),
    ]);
    instance
}

fn completed(key: &str, started: u64) -> Value {
    let mut instance = running(key, started);
    instance["state"] = json!("completed");
    instance["step_deadline_ms"] = Value::Null;
    instance["completed"] = json!([0, 1]);
    instance
}

async fn put(store: &Store, key: &str, instance: &Value) {
    let stored = json!({ "instance": instance, "outbox": [] });
    store
        .put(key, stored.to_string().into())
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

async fn bucket(bed: &TestBed) -> Store {
    bed.jetstream()
        .await
        .create_key_value(kv::Config {
            bucket: "jetrun_saga_fulfil".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("create the saga's bucket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_list_and_show_read_the_instances_the_runtime_stores() {
    let (bed, config) = bed();

    // No bucket yet: nothing to list, nothing to show.
    let (code, stdout, stderr) = saga(&config, &["list", "fulfil"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert!(
        stdout.starts_with(
            "no instances of saga fulfil: its bucket jetrun_saga_fulfil does not exist yet"
        ),
        "{stdout}"
    );
    let (code, stdout, _) = saga(&config, &["list", "fulfil", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), json!([]));
    let (code, _, stderr) = saga(&config, &["show", "fulfil", "o-1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("saga fulfil has no instance \"o-1\""),
        "{stderr}"
    );

    let store = bucket(&bed).await;
    put(&store, "o-3", &completed("o-3", 9 * SECOND)).await;
    put(&store, "o-1", &stuck("o-1")).await;
    put(&store, "o-2", &running("o-2", 5 * SECOND)).await;
    put(&store, "o-gone", &running("o-gone", 0)).await;
    store.delete("o-gone").await.expect("delete");
    // The runtime's correlation index: not an instance.
    store
        .put("corr_5f1c0e", "o-1".into())
        .await
        .expect("put index");

    // One row per instance, oldest first.
    let (code, stdout, stderr) = saga(&config, &["list", "fulfil"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert_eq!(
        stdout,
        "KEY  STATE      STEP     STARTED                   UPDATED\n\
         o-1  stuck      reserve  2024-05-01T10:00:00.000Z  2024-05-01T10:03:20.000Z\n\
         o-2  running    charge   2024-05-01T10:00:05.000Z  2024-05-01T10:00:06.000Z\n\
         o-3  completed  charge   2024-05-01T10:00:09.000Z  2024-05-01T10:00:10.000Z\n\
         3 instances of saga fulfil\n"
    );

    // Without a config file, the saga's bucket by its name: steps by number.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let url = bed.nats.url();
    let (code, listed, stderr) = jetrun_e2e::run_command_in(
        Some(elsewhere.path()),
        &["saga", "ls", "fulfil", "-s", &url],
        &[],
    );
    assert_eq!(code, 0, "{listed}{stderr}");
    assert!(
        listed.contains("o-1  stuck      #0") && listed.contains("3 instances of saga fulfil"),
        "{listed}"
    );

    let (code, stdout, _) = saga(&config, &["list", "fulfil", "--state", "stuck"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[1].starts_with("o-1  stuck"), "{stdout}");
    assert_eq!(lines[2], "1 stuck instance of saga fulfil (3 in all)");
    let (code, stdout, _) = saga(&config, &["list", "fulfil", "--state", "failed"]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "no failed instances of saga fulfil (3 in all)\n")
    );

    let (code, stdout, stderr) = saga(&config, &["list", "fulfil", "--json", "--state", "running"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!([{
            "key": "o-2",
            "state": "running",
            "step": "charge",
            "started": "2024-05-01T10:00:05.000Z",
            "updated": "2024-05-01T10:00:06.000Z",
        }])
    );

    // The timeline, then the state and the data.
    let (code, stdout, stderr) = saga(&config, &["show", "fulfil", "o-1"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "TIME                      KIND        STEP     EVENT TYPE             EVENT ID",
            "2024-05-01T10:00:00.000Z  command     reserve  ev.inventory.reserve   e-0",
            "2024-05-01T10:00:01.000Z  reply       reserve  ev.inventory.reserved  r-0",
            "2024-05-01T10:00:01.000Z  command     charge   ev.payment.charge      e-2",
            "2024-05-01T10:00:02.000Z  reply       charge   ev.payment.declined    p-9",
            "2024-05-01T10:00:02.000Z  compensate  reserve  ev.inventory.release   e-4",
            "2024-05-01T10:03:20.000Z  timeout     reserve  -                      -",
        ],
        "{stdout}"
    );
    for fact in [
        "state:          stuck",
        "step:           reserve",
        "cause:          step charge answered failure",
        "to undo:        reserve (published 3 times, awaiting ev.inventory.released)",
        "correlation id: c-o-1",
        "  \"order_id\": \"o-1\",",
        "  jetrun publish -c",
    ] {
        assert!(
            lines.iter().any(|line| line.starts_with(fact)),
            "no line {fact:?} in\n{stdout}"
        );
    }

    // --json: the instance as stored.
    let (code, stdout, _) = saga(&config, &["show", "fulfil", "o-2", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        running("o-2", 5 * SECOND)
    );

    // No such instance (a deleted one, an index entry, a key KV refuses): 1.
    for key in ["o-gone", "corr_5f1c0e", "no such key"] {
        let (code, stdout, stderr) = saga(&config, &["show", "fulfil", key]);
        assert_eq!((code, stdout.as_str()), (1, ""), "{key}: {stderr}");
        assert!(
            stderr.contains(&format!("saga fulfil has no instance {key:?}")),
            "{stderr}"
        );
    }

    // A saga the config does not declare: 2, naming the ones it does.
    for args in [&["list", "fulfill"][..], &["show", "fulfill", "o-1"]] {
        let (code, stdout, stderr) = saga(&config, args);
        assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
        assert!(
            stderr.contains("declares no saga \"fulfill\"; its sagas: fulfil"),
            "{stderr}"
        );
    }

    // An instance that cannot be read is named; the others are listed: 1.
    store
        .put("o-bad", r#"{"instance": {"state": "dancing"}}"#.into())
        .await
        .expect("put");
    let (code, stdout, stderr) = saga(&config, &["list", "fulfil"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("instance o-bad of saga fulfil is not a saga instance jetrun can read"),
        "{stderr}"
    );
    assert!(stdout.ends_with("3 instances of saga fulfil\n"), "{stdout}");
    let (code, _, stderr) = saga(&config, &["show", "fulfil", "o-bad"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("`--json` prints it as stored"), "{stderr}");
    let (code, stdout, _) = saga(&config, &["show", "fulfil", "o-bad", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({ "state": "dancing" })
    );
}
