//! `on_dead_letter = "park"`: a key's event dead-lettered parks the key, its
//! 5 later events are dead-lettered as `parked` behind it without running,
//! the other keys flow on; once the function is fixed, `jetrun dlq replay`
//! of the first dead letter runs all 6, in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use jetrun_e2e::faults::publish_numbered;
use jetrun_e2e::{
    free_port, header, metric, run_command, scrape, stream_messages, toml_str, wait_ready,
    wait_until, write_config, Ledger, NatsServer, Runner,
};

const FUNCTION: &str = "apply";
const PARKED: &str = "acct-parked";

/// A worker that fails an event whose data says `poison` for good while
/// file `BROKEN` exists, and writes one ledger line per handled event:
/// `<n> <attempt> <start> <end> <account>`.
const WORKER: &str = r#"import json, os, sys, time
ledger, broken = os.environ["LEDGER"], os.environ["BROKEN"]
for line in sys.stdin:
    request = json.loads(line)
    data = request["event"]["data"]
    if data.get("poison") and os.path.exists(broken):
        reply = {"id": request["id"], "ok": False, "retryable": False, "error": "poison"}
    else:
        start = time.time()
        time.sleep(0.002)
        with open(ledger, "a") as f:
            f.write(f"{data['n']} {request['attempt']} {start:.6f} {time.time():.6f} {data['account']}\n")
        reply = {"id": request["id"], "ok": True}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;

fn config(url: &str, metrics: SocketAddr, worker: &Path, ledger: &Ledger, broken: &Path) -> String {
    format!(
        r#"shutdown_timeout = "5s"

[nats]
url = {url}

[metrics]
listen = {metrics}

[streams.PAY]
subjects = ["pay.>"]

[functions.{FUNCTION}]
subjects = ["pay.>"]
exec = {{ command = ["python3", {worker}], mode = "worker", workers = 4, env = {{ LEDGER = {ledger}, BROKEN = {broken} }} }}
key = "/account"
on_dead_letter = "park"
concurrency = 16
"#,
        url = toml_str(url),
        metrics = toml_str(metrics.to_string()),
        worker = toml_str(worker.to_string_lossy()),
        ledger = toml_str(ledger.path().to_string_lossy()),
        broken = toml_str(broken.to_string_lossy()),
    )
}

/// The function's dead letters, oldest first.
async fn dead_letters(js: &async_nats::jetstream::Context) -> Vec<StreamMessage> {
    stream_messages(js, "DLQ")
        .await
        .into_iter()
        .filter(|m| m.subject.as_str() == format!("dlq.{FUNCTION}"))
        .collect()
}

/// Handled events by account: (n, start, end) in the order they started.
fn handled(ledger: &Ledger) -> BTreeMap<String, Vec<(u64, f64, f64)>> {
    let mut by_account: BTreeMap<String, Vec<(u64, f64, f64)>> = BTreeMap::new();
    for entry in ledger.entries() {
        by_account.entry(entry.extra[1].clone()).or_default().push((
            entry.key.parse().expect("n"),
            entry.at,
            entry.extra[0].parse().expect("end"),
        ));
    }
    for calls in by_account.values_mut() {
        calls.sort_by(|a, b| a.1.total_cmp(&b.1));
    }
    by_account
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_key_waits_for_the_replay_of_its_first_dead_letter() {
    let nats = NatsServer::start();
    let dir = tempfile::Builder::new()
        .prefix("jetrun-park-")
        .tempdir()
        .expect("temp dir");
    let worker = dir.path().join("worker.py");
    std::fs::write(&worker, WORKER).expect("write worker");
    let broken: PathBuf = dir.path().join("broken");
    std::fs::write(&broken, "").expect("break the function");
    let ledger = Ledger::new(dir.path().join("ledger"));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = write_config(
        dir.path(),
        &config(&nats.url(), metrics, &worker, &ledger, &broken),
    );
    let _runner = Runner::start(&config);
    wait_ready(metrics).await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);

    // Six rounds: in each, one event of the parked key (the first one
    // poisoned), then one of each of five other keys.
    publish_numbered(&js, "pay.made", 0..36, 1_000, |n| {
        let (round, slot) = (n / 6, n % 6);
        let account = match slot {
            0 => PARKED.to_string(),
            other => format!("acct-{other}"),
        };
        let poison = if n == 0 { r#","poison":true"# } else { "" };
        format!(r#"{{"n":{n},"account":"{account}","round":{round}{poison}}}"#)
    })
    .await;

    wait_until(
        Duration::from_secs(60),
        "6 dead letters, 30 events handled",
        || {
            let (js, ledger) = (&js, &ledger);
            async move { dead_letters(js).await.len() == 6 && ledger.len() == 30 }
        },
    )
    .await;
    let letters = dead_letters(&js).await;
    let h = |m: &StreamMessage, name: &str| header(&m.headers, name);
    let first = &letters[0];
    assert_eq!(h(first, "Jetrun-Reason").as_deref(), Some("permanent"));
    assert_eq!(h(first, "Jetrun-Key").as_deref(), Some(PARKED));
    let blocker = format!(
        "PAY:{}",
        h(first, "Jetrun-Original-Sequence").expect("original sequence")
    );
    let mut parked_numbers = Vec::new();
    for letter in &letters[1..] {
        assert_eq!(h(letter, "Jetrun-Reason").as_deref(), Some("parked"));
        assert_eq!(h(letter, "Jetrun-Key").as_deref(), Some(PARKED));
        assert_eq!(
            h(letter, "Jetrun-Parked-Behind").as_deref(),
            Some(blocker.as_str())
        );
        let body: serde_json::Value = serde_json::from_slice(&letter.payload).expect("JSON body");
        parked_numbers.push(body["n"].as_u64().expect("n"));
    }
    assert_eq!(
        parked_numbers,
        [6, 12, 18, 24, 30],
        "parked in stream order"
    );
    let by_account = handled(&ledger);
    assert!(!by_account.contains_key(PARKED), "the parked key never ran");
    for slot in 1..6 {
        let numbers: Vec<u64> = by_account[&format!("acct-{slot}")]
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(
            numbers,
            (0..6).map(|round| round * 6 + slot).collect::<Vec<_>>(),
            "acct-{slot} ran unaffected, in order"
        );
    }
    let text = scrape(metrics).await;
    assert_eq!(
        metric(&text, "jetrun_parked_keys", &[("function", FUNCTION)]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "jetrun_dead_letters_total",
            &[("function", FUNCTION), ("reason", "parked")]
        ),
        Some(5.0)
    );

    // Fixed; the replay of the first dead letter brings the 5 behind it.
    std::fs::remove_file(&broken).expect("fix the function");
    let seq = first.sequence.to_string();
    let config_arg = config.to_string_lossy().into_owned();
    let (code, stdout, stderr) =
        run_command(&["dlq", "replay", FUNCTION, "--seq", &seq, "-c", &config_arg]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with(&format!("parked behind {blocker}")))
            .count(),
        5,
        "{stdout}"
    );

    wait_until(
        Duration::from_secs(30),
        "the parked key's 6 events handled",
        || {
            let ledger = &ledger;
            async move { handled(ledger).get(PARKED).map_or(0, Vec::len) == 6 }
        },
    )
    .await;
    let calls = &handled(&ledger)[PARKED];
    let numbers: Vec<u64> = calls.iter().map(|c| c.0).collect();
    assert_eq!(numbers, [0, 6, 12, 18, 24, 30], "all 6, in order");
    for pair in calls.windows(2) {
        assert!(pair[0].2 <= pair[1].1, "one at a time: {calls:?}");
    }
    assert!(
        dead_letters(&js).await.is_empty(),
        "every dead letter replayed"
    );
    wait_until(Duration::from_secs(10), "the key unparked", || async move {
        metric(
            &scrape(metrics).await,
            "jetrun_parked_keys",
            &[("function", FUNCTION)],
        ) == Some(0.0)
    })
    .await;
}
