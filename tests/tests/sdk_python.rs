//! The Python SDK (`sdk/python`, module `jetrun`) under the real runner, and
//! the examples of `docs/functions.md`, run as the page writes them: a
//! handler's emits arrive per event and in worker mode, `Permanent`
//! dead-letters at once with its reason, any other exception is retried, a
//! `print` is a log line and never a reply (where a hand-written worker
//! loses its event to it), and the aggregate, projection and query helpers
//! work with jetrun's aggregates and projections. Also the SDK's own unit
//! tests, and that `pip install ./sdk/python` works in a fresh venv.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::Context;
use jetrun_e2e::{
    header, publish_bare, repo_root, stream_messages, toml_str, wait_acked, wait_for_consumer,
    wait_ready, wait_until, Runner, TestBed,
};
use serde_json::{json, Value};

/// The code block of `docs/functions.md` marked `<!-- file: NAME -->`.
fn doc_file(name: &str) -> String {
    let page = std::fs::read_to_string(repo_root().join("docs/functions.md"))
        .expect("read docs/functions.md");
    let marker = format!("<!-- file: {name} -->");
    let after = page
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/functions.md has no {marker}"))
        .1;
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(
        fence.starts_with("```"),
        "{marker} is not followed by a code block: {fence:?}"
    );
    let body: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    body.join("\n") + "\n"
}

/// Writes the page's `files` into the bed's folder, and the SDK next to
/// them (Python finds a module in the script's folder first), as the page
/// says a script without the SDK installed may.
fn write_doc_files(bed: &TestBed, files: &[&str]) {
    for name in files {
        bed.write_script(name, &doc_file(name));
    }
    let sdk = std::fs::read_to_string(repo_root().join("sdk/python/jetrun.py"))
        .expect("read sdk/python/jetrun.py");
    bed.write_script("jetrun.py", &sdk);
}

/// `toml` after this bed's `[nats]`, `[metrics]` and fast `[defaults]`
/// retries (200 ms, 400 ms, ...; 5 attempts).
fn config(bed: &TestBed, toml: &str) -> PathBuf {
    bed.write_config(&format!(
        r#"[nats]
url = {url}

[metrics]
listen = {metrics}

[defaults]
retry = {{ max_attempts = 5, initial_delay = "200ms", multiplier = 2.0, max_delay = "5s", jitter = 0.0 }}

{toml}"#,
        url = toml_str(bed.nats.url()),
        metrics = toml_str(bed.metrics.to_string()),
    ))
}

fn data(message: &StreamMessage) -> Value {
    serde_json::from_slice(&message.payload).unwrap_or(Value::Null)
}

/// The dead letter whose body is `body`'s JSON.
fn dead_letter<'a>(dead: &'a [StreamMessage], body: &Value) -> &'a StreamMessage {
    dead.iter()
        .find(|m| data(m) == *body)
        .unwrap_or_else(|| panic!("no dead letter of {body}: {dead:?}"))
}

/// (`Jetrun-Reason`, `Jetrun-Attempts`, `Jetrun-Error`) of a dead letter.
fn why(letter: &StreamMessage) -> (String, String, String) {
    let h = |name: &str| header(&letter.headers, name).unwrap_or_default();
    (h("Jetrun-Reason"), h("Jetrun-Attempts"), h("Jetrun-Error"))
}

/// Runs the page's price function with `config`: a priced order is
/// emitted, an order without items is dead-lettered after one attempt with
/// the reason.
async fn price_example(bed: &TestBed, config: &Path) {
    let runner = Runner::start(config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, "ORDERS", "price").await;

    let order =
        json!({"order_id": 1, "items": [{"sku": "book", "qty": 2}, {"sku": "pen", "qty": 1}]});
    publish_bare(&client, "order.placed", order.to_string()).await;
    publish_bare(&client, "order.placed", r#"{"order_id":2,"items":[]}"#).await;

    wait_until(
        Duration::from_secs(30),
        "an order priced and one dead letter",
        || async move {
            stream_messages(js, "ORDERS").await.len() == 3
                && stream_messages(js, "DLQ").await.len() == 1
        },
    )
    .await;
    let orders = stream_messages(js, "ORDERS").await;
    let priced: Vec<Value> = orders
        .iter()
        .filter(|m| m.subject.as_str() == "order.priced")
        .map(data)
        .collect();
    assert_eq!(
        priced,
        [json!({"order_id": 1, "total": 26.5})],
        "{}",
        runner.log()
    );
    let dead = stream_messages(js, "DLQ").await;
    let (reason, attempts, error) = why(dead_letter(&dead, &json!({"order_id": 2, "items": []})));
    assert_eq!((reason.as_str(), attempts.as_str()), ("permanent", "1"));
    assert!(
        error.ends_with("order event ORDERS:2 has no items"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_per_event_function_runs() {
    let bed = TestBed::new();
    write_doc_files(&bed, &["price.py"]);
    let config = config(&bed, &doc_file("price.toml"));
    price_example(&bed, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_worker_runs() {
    let bed = TestBed::new();
    write_doc_files(&bed, &["price_worker.py"]);
    let config = config(&bed, &doc_file("price_worker.toml"));
    price_example(&bed, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_sdk_function_runs_as_a_worker() {
    let bed = TestBed::new();
    write_doc_files(&bed, &["price_sdk.py"]);
    let config = config(&bed, &doc_file("price_sdk.toml"));
    price_example(&bed, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_sdk_function_runs_per_event() {
    let bed = TestBed::new();
    write_doc_files(&bed, &["price_sdk.py"]);
    // The page: `exec = ["python3", "price_sdk.py"]` runs it per event.
    let toml = doc_file("price.toml");
    let from = r#"exec = ["python3", "price.py"]"#;
    assert!(toml.contains(from), "price.toml changed: {toml}");
    let toml = toml.replace(from, r#"exec = ["python3", "price_sdk.py"]"#);
    price_example(&bed, &config(&bed, &toml)).await;
}

/// A handler using every part of the SDK's contract: emits, `Permanent`,
/// an exception on the first attempt only, one on every attempt, and
/// `print` (and a child process writing to stdout) on every event.
const CONTRACT_PY: &str = r#"import os
import jetrun

@jetrun.handler
def handle(event):
    data = jetrun.data(event)
    print("handling", data, "attempt", jetrun.attempt())
    os.system("echo a child process writes to stdout too")
    if data.get("bad"):
        raise jetrun.Permanent(f"event {data['n']} is bad\nand that is final")
    if data.get("flaky") and jetrun.attempt() == 1:
        raise RuntimeError("the first attempt fails")
    if data.get("broken"):
        raise ValueError(f"event {data['n']} always fails")
    return [jetrun.emit("ev.out", {"n": data["n"], "attempt": jetrun.attempt()})]

if __name__ == "__main__":
    handle.run()
"#;

async fn sdk_contract(exec: &str) -> Runner {
    let bed = TestBed::new();
    let script = bed.write_script("contract.py", CONTRACT_PY);
    let sdk = repo_root().join("sdk/python");
    let exec = exec
        .replace("SCRIPT", &toml_str(script.to_string_lossy()))
        .replace("SDK", &toml_str(sdk.to_string_lossy()));
    let config = bed.write_config(&format!(
        r#"{base}
[functions.contract]
subjects = ["ev.in"]
exec = {exec}
retry = {{ max_attempts = 3 }}
"#,
        base = bed.base_config(),
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "contract").await;

    let events = [
        json!({"n": 1}),
        json!({"n": 2, "bad": true}),
        json!({"n": 3, "flaky": true}),
        json!({"n": 4, "broken": true}),
    ];
    for event in &events {
        publish_bare(&client, "ev.in", event.to_string()).await;
    }
    wait_acked(js, TestBed::STREAM, "contract", 4).await;
    wait_until(Duration::from_secs(30), "two dead letters", || async move {
        stream_messages(js, "DLQ").await.len() == 2
    })
    .await;

    let log = runner.log();
    let mut outs: Vec<Value> = stream_messages(js, TestBed::STREAM)
        .await
        .iter()
        .filter(|m| m.subject.as_str() == "ev.out")
        .map(data)
        .collect();
    outs.sort_by_key(|o| o["n"].as_u64());
    assert_eq!(
        outs,
        [json!({"n": 1, "attempt": 1}), json!({"n": 3, "attempt": 2})],
        "emits arrive; the flaky event succeeds on its retry: {log}"
    );
    let dead = stream_messages(js, "DLQ").await;
    let (reason, attempts, error) = why(dead_letter(&dead, &events[1]));
    assert_eq!(
        (reason.as_str(), attempts.as_str()),
        ("permanent", "1"),
        "Permanent dead-letters at once: {error}"
    );
    assert!(
        error.ends_with("event 2 is bad and that is final"),
        "the reason, on one line: {error}"
    );
    let (reason, attempts, error) = why(dead_letter(&dead, &events[3]));
    assert_eq!(
        (reason.as_str(), attempts.as_str()),
        ("exhausted", "3"),
        "an exception is retried: {error}"
    );
    assert!(
        error.contains("ValueError: event 4 always fails"),
        "{error}"
    );
    assert!(
        log.contains("handling") && log.contains("a child process writes to stdout too"),
        "print and a child's stdout reach jetrun's log: {log}"
    );
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_handler_per_event_emits_fails_for_good_and_is_retried() {
    sdk_contract(r#"{ command = ["python3", SCRIPT], env = { PYTHONPATH = SDK } }"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_handler_in_worker_mode_emits_fails_for_good_and_is_retried() {
    let runner = sdk_contract(
        r#"{ command = ["python3", SCRIPT], mode = "worker", workers = 1, env = { PYTHONPATH = SDK } }"#,
    )
    .await;
    let log = runner.log();
    assert_eq!(
        log.matches("Started exec worker.").count(),
        1,
        "prints, Permanent and exceptions never cost the worker: {log}"
    );
}

/// A worker printing a debug line for each event, hand-written.
const PRINTING_WORKER_PY: &str = r#"import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    data = request["event"]["data"]
    print("handling", data)
    reply = {"id": request["id"], "ok": True, "emit": [{"type": "ev.out", "data": data}]}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;

/// The same worker with the SDK.
const PRINTING_SDK_PY: &str = r#"import jetrun

@jetrun.handler
def handle(event):
    print("handling", jetrun.data(event))
    return [jetrun.emit("ev.out", jetrun.data(event))]

if __name__ == "__main__":
    handle.run()
"#;

/// Runs `script` as a worker on three events, each retried twice at most;
/// returns the events it emitted and the dead letters, once all three are
/// acked.
async fn printing_worker(script: &str) -> (Vec<Value>, Vec<StreamMessage>, Runner) {
    let bed = TestBed::new();
    let script = bed.write_script("printing.py", script);
    let sdk = repo_root().join("sdk/python");
    let config = bed.write_config(&format!(
        r#"{base}
[functions.printing]
subjects = ["ev.in"]
exec = {{ command = ["python3", {script}], mode = "worker", workers = 1, env = {{ PYTHONPATH = {sdk} }} }}
retry = {{ max_attempts = 2 }}
"#,
        base = bed.base_config(),
        script = toml_str(script.to_string_lossy()),
        sdk = toml_str(sdk.to_string_lossy()),
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js: &Context = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "printing").await;
    for n in 1..=3 {
        publish_bare(&client, "ev.in", json!({"n": n}).to_string()).await;
    }
    wait_acked(js, TestBed::STREAM, "printing", 3).await;
    let outs = stream_messages(js, TestBed::STREAM)
        .await
        .iter()
        .filter(|m| m.subject.as_str() == "ev.out")
        .map(data)
        .collect();
    (outs, stream_messages(js, "DLQ").await, runner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_in_an_sdk_worker_is_a_log_line_not_a_reply() {
    let (outs, dead, runner) = printing_worker(PRINTING_SDK_PY).await;
    assert_eq!(
        outs,
        [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})],
        "{}",
        runner.log()
    );
    assert!(dead.is_empty(), "no dead letters: {dead:?}");
    assert!(runner.log().contains("handling"), "{}", runner.log());
}

/// What the SDK fixes: the same worker written by hand loses every event
/// to its `print`, as docs/functions.md says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_in_a_hand_written_worker_costs_its_event() {
    let (outs, dead, _runner) = printing_worker(PRINTING_WORKER_PY).await;
    assert!(outs.is_empty(), "{outs:?}");
    assert_eq!(dead.len(), 3, "{dead:?}");
    for letter in &dead {
        let (reason, _, error) = why(letter);
        assert_eq!(reason, "exhausted");
        assert!(
            error.contains("wrote a line that is not a reply"),
            "{error}"
        );
    }
}

/// Whether `answer` is error 400 whose message ends in `why` (per request
/// it is `python3 exited with status 65 (bad input): <why>`; from a worker,
/// `<why>` itself).
fn refused(answer: &Result<Value, String>, why: &str) -> bool {
    answer
        .as_ref()
        .err()
        .is_some_and(|e| e.starts_with("400: ") && e.ends_with(why))
}

/// A request and its answer: `Ok(reply)` or `Err("code: message")`.
async fn ask(client: &async_nats::Client, subject: &str, body: Value) -> Result<Value, String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .expect("an answer within 20 s")
    .expect("a reply");
    let headers = reply.headers.clone().unwrap_or_default();
    if let Some(code) = headers.get("Nats-Service-Error-Code") {
        let message = headers.get("Nats-Service-Error").map(|m| m.to_string());
        return Err(format!("{code}: {}", message.unwrap_or_default()));
    }
    Ok(serde_json::from_slice(&reply.payload).expect("a JSON reply"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_request_function_answers_per_request_and_as_a_worker() {
    let bed = TestBed::new();
    write_doc_files(&bed, &["greet.py"]);
    let runner = Runner::start(&config(&bed, &doc_file("greet.toml")));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    for subject in ["greet", "greet.worker"] {
        assert_eq!(
            ask(&client, subject, json!({"name": "Ada"})).await,
            Ok(json!({"greeting": "hello Ada"})),
            "{subject}: {}",
            runner.log()
        );
        let answer = ask(&client, subject, json!({})).await;
        assert!(
            refused(&answer, "name is required"),
            "{subject}: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_aggregate_projection_and_query_work() {
    let bed = TestBed::new();
    write_doc_files(&bed, &["account.py"]);
    let runner = Runner::start(&config(&bed, &doc_file("account.toml")));
    wait_ready(bed.metrics).await;
    let client = &bed.client().await;

    let deposit = |amount: i64| json!({"account": "a-1", "amount": amount});
    assert_eq!(
        ask(client, "cmd.account.deposit", deposit(5)).await,
        Ok(json!({"balance": 5})),
        "{}",
        runner.log()
    );
    // Past snapshot_every = 2: the SDK's Decision asks for a snapshot, whose
    // state is checked below (that a load reads it back is the runner's,
    // shown in aggregate.rs).
    assert_eq!(
        ask(client, "cmd.account.deposit", deposit(10)).await,
        Ok(json!({"balance": 15}))
    );
    let answer = ask(client, "cmd.account.withdraw", deposit(20)).await;
    assert!(
        refused(&answer, "account a-1 holds 15, less than 20"),
        "{answer:?}"
    );
    let answer = ask(client, "cmd.account.withdraw", deposit(0)).await;
    assert!(
        refused(&answer, "amount must be a whole number above 0"),
        "{answer:?}"
    );
    assert_eq!(
        ask(client, "cmd.account.withdraw", deposit(4)).await,
        Ok(json!({"balance": 11}))
    );
    let js = bed.jetstream().await;
    let snapshots = js
        .get_key_value("jetrun_snapshots_account")
        .await
        .expect("the snapshot bucket");
    let snapshot: Value = serde_json::from_slice(
        &snapshots
            .get("a-1")
            .await
            .expect("read the snapshot")
            .expect("a snapshot"),
    )
    .expect("JSON");
    assert_eq!(snapshot["state"], 15, "the Decision's snapshot: {snapshot}");

    wait_until(
        Duration::from_secs(20),
        "the projection caught up",
        || async move {
            ask(client, "q.account.balance", json!({"account": "a-1"})).await
                == Ok(json!({"account": "a-1", "balance": 11}))
        },
    )
    .await;
    let answer = ask(client, "cmd.account.close", json!({"account": "a-1"})).await;
    assert_eq!(
        answer,
        Err("400: account a-1 is not empty".to_string()),
        "from a worker, the message itself"
    );
    assert_eq!(
        ask(client, "cmd.account.withdraw", deposit(11)).await,
        Ok(json!({"balance": 0}))
    );
    assert_eq!(
        ask(client, "cmd.account.close", json!({"account": "a-1"})).await,
        Ok(json!({"version": 5, "appended": 1})),
        "no reply in the Decision: jetrun's own"
    );
    wait_until(
        Duration::from_secs(20),
        "the projection deleted the key",
        || async move {
            ask(client, "q.account.balance", json!({"account": "a-1"})).await
                == Ok(json!({"account": "a-1", "balance": 0, "open": false}))
        },
    )
    .await;
    let balances = js.get_key_value("balances").await.expect("the read model");
    assert_eq!(
        balances.get("a-1").await.expect("read the key"),
        None,
        "jetrun.DELETE deletes the key"
    );
}

#[test]
fn the_sdk_unit_tests_pass() {
    let output = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(repo_root().join("sdk/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3 -m unittest");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    // unittest exits 0 having found nothing: the tests must have run.
    let ran: u32 = stderr
        .lines()
        .find_map(|line| line.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(ran >= 14, "only {ran} SDK unit tests ran:\n{stderr}");
}

#[test]
fn pip_installs_the_sdk_into_a_fresh_venv_with_nothing_downloaded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let venv = dir.path().join("venv");
    let run = |cmd: &mut Command| {
        let output = cmd.output().expect("run");
        assert!(
            output.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--no-index", "--no-cache-dir"])
        .arg(repo_root().join("sdk/python"))
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"));
    let found = run(Command::new(venv.join("bin/python"))
        .args(["-c", "import jetrun; print(jetrun.__file__)"])
        .current_dir(dir.path()));
    assert!(
        found
            .trim()
            .starts_with(&venv.to_string_lossy().into_owned()),
        "imported from the venv: {found}"
    );
}
