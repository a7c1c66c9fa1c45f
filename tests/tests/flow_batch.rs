//! `batch`: a function gets up to `size` events in one call and answers per
//! item; each failed item is retried or dead-lettered alone, as if it had
//! come alone. Against a real nats-server and the real binary: an exec
//! worker that records every call and every item it gets, and an HTTP
//! function behind the test server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use jetrun_e2e::{
    header, holds_for, metric, publish_bare_burst, scrape, stream_messages, toml_str, wait_acked,
    wait_for_consumer, HttpServer, Reply, Runner, TestBed,
};

/// An exec worker taking batches: appends each call's size to `$CALLS`
/// and one JSON line per item (`n` of its data, its attempt, when) to
/// `$ITEMS`; answers the item whose `n` is `$PERMANENT` as a permanent
/// failure, and the one whose `n` is `$RETRY` as retryable on its first
/// attempt. A request that is not a batch is failed: this function must
/// only ever get batches.
const BATCH_WORKER_PY: &str = r#"import json, os, sys, time
calls, items = os.environ["CALLS"], os.environ["ITEMS"]
permanent = int(os.environ.get("PERMANENT", "0"))
retry = int(os.environ.get("RETRY", "0"))
for line in sys.stdin:
    batch = json.loads(line)
    if not isinstance(batch, list):
        print(json.dumps({"id": batch["id"], "ok": False, "error": "not a batch"}), flush=True)
        continue
    with open(calls, "a") as f:
        f.write(f"{len(batch)}\n")
    results = []
    with open(items, "a") as f:
        for request in batch:
            n = request["event"]["data"]["n"]
            f.write(json.dumps({"n": n, "attempt": request["attempt"], "at": time.time()}) + "\n")
            if n == permanent:
                results.append({"id": request["event"]["id"], "error": "bad row", "permanent": True})
            elif n == retry and request["attempt"] == 1:
                results.append({"id": request["event"]["id"], "error": "try again"})
    print(json.dumps({"results": results}), flush=True)
"#;

/// One item as the worker recorded it.
#[derive(Debug, Clone, serde::Deserialize)]
struct Item {
    n: u64,
    attempt: u64,
    at: f64,
}

struct Recorded {
    calls: PathBuf,
    items: PathBuf,
}

impl Recorded {
    fn calls(&self) -> Vec<usize> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().expect("a call's size"))
            .collect()
    }

    fn items(&self) -> Vec<Item> {
        std::fs::read_to_string(&self.items)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an item line"))
            .collect()
    }

    /// How many times each `n` was handed to the worker.
    fn times(&self) -> BTreeMap<u64, usize> {
        let mut times = BTreeMap::new();
        for item in self.items() {
            *times.entry(item.n).or_default() += 1;
        }
        times
    }
}

/// The base config plus function `load` on `ev.load`: the batch worker,
/// one process, with `batch` and the worker's `env` extras.
fn batch_worker(bed: &TestBed, batch: &str, env: &str) -> (PathBuf, Recorded) {
    let script = bed.write_script("batch_worker.py", BATCH_WORKER_PY);
    let recorded = Recorded {
        calls: bed.path("calls"),
        items: bed.path("items"),
    };
    let config = bed.write_config(&format!(
        r#"{base}
[functions.load]
subjects = ["ev.load"]
exec = {{ command = ["python3", {script}], mode = "worker", workers = 1, env = {{ CALLS = {calls}, ITEMS = {items}{env} }} }}
batch = {batch}
"#,
        base = bed.base_config(),
        script = toml_str(script.to_string_lossy()),
        calls = toml_str(recorded.calls.to_string_lossy()),
        items = toml_str(recorded.items.to_string_lossy()),
    ));
    (config, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_in_batches_of_100_take_at_most_15_calls() {
    let bed = TestBed::new();
    let (config, recorded) = batch_worker(&bed, r#"{ size = 100, wait = "1s" }"#, "");
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "load").await;

    publish_bare_burst(&client, "ev.load", 1000).await;

    wait_acked(js, TestBed::STREAM, "load", 1000).await;
    let calls = recorded.calls();
    assert!(
        calls.len() <= 15,
        "{} calls for 1,000 events in batches of 100: {calls:?}\n{}",
        calls.len(),
        runner.log()
    );
    assert!(calls.iter().all(|&size| size <= 100), "{calls:?}");
    let times = recorded.times();
    assert_eq!(times.len(), 1000, "every event reached the handler");
    assert!(
        times.values().all(|&t| t == 1),
        "no event handled twice: {:?}",
        times.iter().filter(|(_, &t)| t != 1).collect::<Vec<_>>()
    );
    assert!(
        stream_messages(js, "DLQ").await.is_empty(),
        "no dead letter"
    );

    let text = scrape(bed.metrics).await;
    let labels = &[("function", "load")];
    assert_eq!(
        metric(&text, "jetrun_batch_size_sum", labels),
        Some(1000.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "jetrun_batch_size_count", labels),
        Some(calls.len() as f64),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_answered_as_a_permanent_failure_is_the_only_dead_letter() {
    let bed = TestBed::new();
    let (config, recorded) = batch_worker(
        &bed,
        r#"{ size = 10, wait = "500ms" }"#,
        ", PERMANENT = \"7\"",
    );
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "load").await;

    publish_bare_burst(&client, "ev.load", 30).await;

    wait_acked(js, TestBed::STREAM, "load", 30).await;
    let letters = stream_messages(js, "DLQ").await;
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(&letter.payload[..], br#"{"n":7}"#);
    let headers = &letter.headers;
    assert_eq!(
        header(headers, "Jetrun-Reason").as_deref(),
        Some("permanent")
    );
    assert_eq!(header(headers, "Jetrun-Error").as_deref(), Some("bad row"));
    let times = recorded.times();
    assert_eq!(times.len(), 30);
    assert!(
        times.values().all(|&t| t == 1),
        "a permanent failure is not retried, and the rest of its batch is acked: {times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_answered_as_retryable_is_the_only_one_redelivered_after_its_backoff() {
    let bed = TestBed::new();
    let (config, recorded) =
        batch_worker(&bed, r#"{ size = 10, wait = "500ms" }"#, ", RETRY = \"5\"");
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "load").await;

    publish_bare_burst(&client, "ev.load", 30).await;

    wait_acked(js, TestBed::STREAM, "load", 30).await;
    let items = recorded.items();
    let times = recorded.times();
    assert_eq!(times.len(), 30);
    let again: Vec<u64> = times
        .iter()
        .filter(|(_, &t)| t != 1)
        .map(|(&n, _)| n)
        .collect();
    assert_eq!(again, [5], "only the failed item is redelivered: {times:?}");
    assert_eq!(times[&5], 2, "once more, then it succeeded");
    let fives: Vec<&Item> = items.iter().filter(|i| i.n == 5).collect();
    assert_eq!(
        fives.iter().map(|i| i.attempt).collect::<Vec<_>>(),
        [1, 2],
        "{fives:?}"
    );
    // base_config's retry: 200ms before the second attempt. Not sooner
    // (the NAK carries the delay); 0.9 absorbs the clock's granularity.
    let gap = fives[1].at - fives[0].at;
    assert!(
        gap >= 0.9 * 0.2,
        "redelivered {gap:.3}s after its failure, before its 200ms backoff"
    );
    assert!(
        stream_messages(js, "DLQ").await.is_empty(),
        "no dead letter"
    );
    let recorded = &recorded;
    holds_for(
        Duration::from_millis(500),
        "nothing else is redelivered",
        || async move { recorded.items().len() == 31 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_function_receives_a_cloudevents_batch() {
    let bed = TestBed::new();
    let server = HttpServer::always(Reply::status(200)).await;
    let config = bed.write_config(&format!(
        r#"{base}
[functions.sink]
subjects = ["ev.sink"]
http = {url}
batch = {{ size = 5, wait = "500ms" }}
"#,
        base = bed.base_config(),
        url = toml_str(server.url()),
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "sink").await;

    publish_bare_burst(&client, "ev.sink", 5).await;

    wait_acked(js, TestBed::STREAM, "sink", 5).await;
    let requests = server.requests();
    assert!(!requests.is_empty());
    let mut seen = Vec::new();
    for request in &requests {
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/cloudevents-batch+json"),
            "{request:?}"
        );
        let events: Vec<serde_json::Value> =
            serde_json::from_slice(&request.body).expect("a JSON array of CloudEvents");
        for event in events {
            assert_eq!(event["specversion"], "1.0", "{event}");
            assert_eq!(event["type"], "ev.sink", "{event}");
            seen.push(event["data"]["n"].as_u64().expect("the event's data"));
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 4, 5], "every event, once");
    assert!(
        requests.len() < 5,
        "the events came in batches, not one request each: {} requests",
        requests.len()
    );
}
