//! Projections: a stream function keeping a read model in a KV bucket, a
//! request function querying it, and `jetrun projection rebuild`. An event
//! delivered again (its consumer recreated) or replayed (`jetrun replay`)
//! leaves the model as it was, down to the KV revision; queries running
//! through a rebuild only ever see a whole model, old or new; a delete
//! removes the key; an event whose key is missing or unusable is
//! dead-lettered; a rebuild is refused for a query, or while another runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::Context;
use async_nats::Client;
use jetrun_e2e::{
    header, metric, publish_bare, run_command, scrape, stream_messages, toml_str, wait_acked,
    wait_for_consumer, wait_ready, wait_until, Runner, TestBed,
};
use serde_json::{json, Value};

/// The projection, one process per event: counts a user's orders and sums
/// their amounts; `ev.user.deleted` deletes the user. Writes
/// `<sequence> <attempt> <time> <key>` to the ledger first.
const PROJECT_PY: &str = r#"import json
import os
import sys
import time

document = json.load(sys.stdin)
with open(os.environ["LEDGER"], "a") as f:
    f.write("%s %s %.6f %s\n" % (os.environ["JETRUN_SEQUENCE"], os.environ["JETRUN_ATTEMPT"], time.time(), document["key"]))
event = document["event"]
if event["type"] == "ev.user.deleted":
    print(json.dumps({"delete": True}))
else:
    state = document["state"] or {"count": 0, "total": 0}
    amount = event["data"].get("amount", 0)
    print(json.dumps({"state": {"count": state["count"] + 1, "total": state["total"] + amount}}))
"#;

/// The same projection in worker mode, `$PACE_MS` per event: slow enough
/// that a rebuild takes a while.
const PROJECT_WORKER_PY: &str = r#"import json
import os
import sys
import time

pace = float(os.environ.get("PACE_MS", "0")) / 1000
for line in sys.stdin:
    request = json.loads(line)
    document = request["input"]
    time.sleep(pace)
    state = document["state"] or {"count": 0, "total": 0}
    amount = document["event"]["data"].get("amount", 0)
    result = {"state": {"count": state["count"] + 1, "total": state["total"] + amount}}
    sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "result": result}) + "\n")
    sys.stdout.flush()
"#;

/// The query, one process per request: the user's order count (0 when the
/// model has no state for it).
const QUERY_PY: &str = r#"import json
import sys

document = json.load(sys.stdin)
state = document["state"] or {}
print(json.dumps({"user": document["key"], "count": state.get("count", 0), "asked": document["request"]["type"]}))
"#;

const BUCKET: &str = "orders_by_user";
const PROJECTOR: &str = "orders_by_user";

/// `base_config`, projection `orders_by_user` (per-event exec, or worker
/// mode with `PACE_MS`) and query `order_count` on `q.orders`.
fn config(bed: &TestBed, worker_pace_ms: Option<u32>) -> PathBuf {
    let query = bed.write_script("query.py", QUERY_PY);
    let exec = match worker_pace_ms {
        None => format!(
            "exec = {{ command = [\"python3\", {}], env = {{ LEDGER = {} }} }}",
            toml_str(bed.write_script("project.py", PROJECT_PY).to_string_lossy()),
            toml_str(bed.ledger.path().to_string_lossy()),
        ),
        Some(pace) => format!(
            "exec = {{ command = [\"python3\", {}], mode = \"worker\", workers = 1, env = {{ PACE_MS = \"{pace}\" }} }}",
            toml_str(bed.write_script("project_worker.py", PROJECT_WORKER_PY).to_string_lossy()),
        ),
    };
    bed.write_config(&format!(
        r#"{base}
[functions.{PROJECTOR}]
subjects = ["ev.order.placed", "ev.user.deleted"]
projection = {{ bucket = "{BUCKET}", key = "/user_id" }}
{exec}
concurrency = 1
max_ack_pending = 1

[functions.order_count]
request = "q.orders"
projection = {{ bucket = "{BUCKET}", key = "/user_id" }}
exec = {{ command = ["python3", {query}] }}
concurrency = 4
"#,
        base = bed.base_config(),
        query = toml_str(query.to_string_lossy()),
    ))
}

async fn order(client: &Client, user: Value, amount: u64) {
    let body = json!({"user_id": user, "amount": amount}).to_string();
    publish_bare(client, "ev.order.placed", body).await;
}

/// The KV entry of `key` in `bucket`, as `nats kv get` reads it.
async fn entry(js: &Context, bucket: &str, key: &str) -> Option<kv::Entry> {
    let store = js.get_key_value(bucket).await.ok()?;
    store.entry(key).await.expect("read KV entry")
}

/// The state stored at `key` (`None`: no value, or deleted).
async fn state(js: &Context, bucket: &str, key: &str) -> Option<Value> {
    let entry = entry(js, bucket, key).await?;
    (entry.operation == Operation::Put).then(|| {
        serde_json::from_slice(&entry.value)
            .unwrap_or_else(|e| panic!("{bucket}.{key} holds no JSON: {e}: {:?}", entry.value))
    })
}

async fn wait_state(js: &Context, bucket: &str, key: &str, want: Value) {
    let what = format!("{bucket}.{key} holds {want}");
    let want = &want;
    wait_until(Duration::from_secs(30), &what, || async move {
        state(js, bucket, key).await.as_ref() == Some(want)
    })
    .await;
}

/// Asks `order_count` about `user`: the reply, or the micro error (code
/// and text).
async fn query(client: &Client, user: Value) -> Result<Value, (String, String)> {
    let reply = client
        .request("q.orders", json!({"user_id": user}).to_string().into())
        .await
        .expect("a reply to q.orders");
    if let Some(headers) = &reply.headers {
        if let Some(code) = headers.get("Nats-Service-Error-Code") {
            let text = headers.get("Nats-Service-Error").map(|v| v.to_string());
            return Err((code.to_string(), text.unwrap_or_default()));
        }
    }
    Ok(serde_json::from_slice(&reply.payload).expect("a JSON reply"))
}

async fn updates(bed: &TestBed, outcome: &str) -> f64 {
    let text = scrape(bed.metrics).await;
    let labels = [("function", PROJECTOR), ("outcome", outcome)];
    metric(&text, "jetrun_projection_updates_total", &labels).unwrap_or(0.0)
}

fn run(args: &[&str], config: &Path) -> (i32, String, String) {
    let config = config.to_string_lossy();
    let mut argv = args.to_vec();
    argv.extend(["-c", &config]);
    run_command(&argv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_again_or_replayed_changes_nothing() {
    let bed = TestBed::new();
    let config = config(&bed, None);
    let mut runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, PROJECTOR).await;

    order(&client, json!("u7"), 5).await;
    wait_state(js, BUCKET, "u7", json!({"count": 1, "total": 5})).await;
    wait_acked(js, TestBed::STREAM, PROJECTOR, 1).await;
    let first = entry(js, BUCKET, "u7").await.expect("u7 stored");
    assert_eq!(bed.ledger.len(), 1);
    let raw = js
        .get_stream(format!("KV_{BUCKET}"))
        .await
        .expect("the bucket's stream")
        .get_last_raw_message_by_subject(&format!("$KV.{BUCKET}.u7"))
        .await
        .expect("u7's message");
    assert_eq!(
        header(&raw.headers, "Jetrun-Applied-Sequence").as_deref(),
        Some("1")
    );

    // A consumer recreated from scratch delivers the stream again from its
    // start: event 1 arrives a second time, same stream sequence.
    runner.sigterm();
    assert!(runner.wait_exit(Duration::from_secs(20)).await.is_some());
    js.get_stream(TestBed::STREAM)
        .await
        .expect("stream")
        .delete_consumer(PROJECTOR)
        .await
        .expect("delete the consumer");
    let _runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    wait_acked(js, TestBed::STREAM, PROJECTOR, 1).await;
    wait_until(Duration::from_secs(20), "the redelivery is skipped", || {
        let bed = &bed;
        async move { updates(bed, "skipped").await == 1.0 }
    })
    .await;
    let again = entry(js, BUCKET, "u7").await.expect("u7 still stored");
    assert_eq!(
        (again.revision, &again.value),
        (first.revision, &first.value)
    );
    assert_eq!(bed.ledger.len(), 1, "the function is not even called");
    assert_eq!(updates(&bed, "stored").await, 0.0);

    // `jetrun replay` runs the same wrapped handler over the stream.
    let (code, stdout, stderr) = run(&["replay", PROJECTOR, "--from-seq", "1"], &config);
    assert_eq!(code, 0, "replay failed:\n{stdout}\n{stderr}");
    let replayed = entry(js, BUCKET, "u7").await.expect("u7 still stored");
    assert_eq!(
        (replayed.revision, &replayed.value),
        (first.revision, &first.value)
    );
    assert_eq!(bed.ledger.len(), 1);

    // A newer event still applies.
    order(&client, json!("u7"), 3).await;
    wait_state(js, BUCKET, "u7", json!({"count": 2, "total": 8})).await;
    let newer = entry(js, BUCKET, "u7").await.expect("u7 stored");
    assert!(newer.revision > first.revision);
    wait_until(Duration::from_secs(10), "the update is counted", || {
        let bed = &bed;
        async move { updates(bed, "stored").await == 1.0 }
    })
    .await;
}

/// The stream deleted and made again: its sequences start over, below what
/// the model records as applied, and still its events apply (they are
/// another stream's), each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_stream_made_again_apply() {
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed, None));
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, PROJECTOR).await;
    for _ in 0..5 {
        order(&client, json!("u1"), 10).await;
    }
    wait_state(js, BUCKET, "u1", json!({"count": 5, "total": 50})).await;
    wait_acked(js, TestBed::STREAM, PROJECTOR, 5).await;

    let stream_config = js
        .get_stream(TestBed::STREAM)
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    js.delete_stream(TestBed::STREAM)
        .await
        .expect("delete the stream");
    js.create_stream(stream_config)
        .await
        .expect("make the stream again");
    for _ in 0..3 {
        order(&client, json!("u1"), 1).await;
    }
    wait_state(js, BUCKET, "u1", json!({"count": 8, "total": 53})).await;
    wait_acked(js, TestBed::STREAM, PROJECTOR, 3).await;
    let raw = js
        .get_stream(format!("KV_{BUCKET}"))
        .await
        .expect("the bucket's stream")
        .get_last_raw_message_by_subject(&format!("$KV.{BUCKET}.u1"))
        .await
        .expect("u1's message");
    assert_eq!(
        header(&raw.headers, "Jetrun-Applied-Sequence").as_deref(),
        Some("3"),
        "the new stream's sequence, not the old one's 5"
    );
    assert_eq!(bed.ledger.len(), 8, "{}", runner.log());
    assert_eq!(updates(&bed, "skipped").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_see_the_old_model_or_the_new_one_through_a_rebuild() {
    const ORDERS: u64 = 60;
    let bed = TestBed::new();
    let config = config(&bed, Some(10));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, PROJECTOR).await;
    for _ in 0..ORDERS {
        order(&client, json!("u1"), 1).await;
        order(&client, json!("u2"), 2).await;
    }
    wait_state(js, BUCKET, "u1", json!({"count": ORDERS, "total": ORDERS})).await;
    wait_state(
        js,
        BUCKET,
        "u2",
        json!({"count": ORDERS, "total": 2 * ORDERS}),
    )
    .await;
    assert_eq!(
        query(&client, json!("u1")).await,
        Ok(json!({"user": "u1", "count": ORDERS, "asked": "q.orders"}))
    );

    let done = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (client, done, answers) = (client.clone(), done.clone(), answers.clone());
        loops.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let answer = query(&client, json!("u1")).await;
                answers.lock().unwrap().push(answer);
            }
        }));
    }
    // What the new bucket holds for u1 while it is being built.
    let watcher = {
        let (js, done) = (js.clone(), done.clone());
        tokio::spawn(async move {
            let mut partial = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(state) = state(&js, "orders_by_user_1", "u1").await {
                    let count = state["count"].as_u64().unwrap_or(0);
                    if count < ORDERS {
                        partial.push(count);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            partial
        })
    };
    let rebuild = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run(&["projection", "rebuild", PROJECTOR], &config)
    });
    // Orders for u2 until the rebuild ends: the live function handles them,
    // those after the switch in the new bucket, and the rebuild applies
    // those it handled meanwhile in the old one.
    let mut late = 0;
    while !rebuild.is_finished() {
        order(&client, json!("u2"), 2).await;
        late += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, stdout, stderr) = rebuild.await.expect("rebuild ran");
    assert_eq!(code, 0, "rebuild failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("Readers now use bucket orders_by_user_1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Deleted the old bucket orders_by_user."),
        "{stdout}"
    );
    assert!(
        stdout.contains("which the live function handled meanwhile"),
        "{stdout}"
    );
    let during = answers.lock().unwrap().len();
    // Queries after the switch, on the new bucket.
    wait_until(Duration::from_secs(20), "more queries answered", || {
        let answers = &answers;
        async move { answers.lock().unwrap().len() >= during + 5 }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.expect("query loop");
    }
    let partial = watcher.await.expect("watcher");

    let answers = answers.lock().unwrap().clone();
    assert!(during >= 5, "only {during} queries ran during the rebuild");
    assert!(
        !partial.is_empty(),
        "the new bucket was never seen half-built: the test proves nothing"
    );
    let whole = json!({"user": "u1", "count": ORDERS, "asked": "q.orders"});
    for answer in &answers {
        assert_eq!(
            answer.as_ref(),
            Ok(&whole),
            "a query saw something else than a whole model ({} answers; the new bucket was seen \
             holding {partial:?})",
            answers.len()
        );
    }

    let pointers = js
        .get_key_value("jetrun_projections")
        .await
        .expect("pointers");
    let pointer = pointers.get(BUCKET).await.expect("read pointer");
    assert_eq!(pointer.as_deref(), Some(&b"orders_by_user_1"[..]));
    let mark = pointers.get("orders_by_user.rebuild").await.expect("read");
    assert_eq!(mark, None, "the rebuild's mark is cleared");
    assert!(
        js.get_key_value(BUCKET).await.is_err(),
        "old bucket deleted"
    );
    let u2 = ORDERS + late;
    wait_state(
        js,
        "orders_by_user_1",
        "u2",
        json!({"count": u2, "total": 2 * u2}),
    )
    .await;
    wait_acked(js, TestBed::STREAM, PROJECTOR, 2 * ORDERS + late).await;

    // The live function now writes to the new bucket.
    order(&client, json!("u1"), 1).await;
    let more = ORDERS + 1;
    wait_state(
        js,
        "orders_by_user_1",
        "u1",
        json!({"count": more, "total": more}),
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the query sees the new order",
        || {
            let client = &client;
            async move {
                query(client, json!("u1")).await
                    == Ok(json!({"user": "u1", "count": more, "asked": "q.orders"}))
            }
        },
    )
    .await;

    // Again, for a script: one JSON object on stdout, progress on stderr.
    let (code, stdout, stderr) = run(
        &["projection", "rebuild", PROJECTOR, "--json", "--keep-old"],
        &config,
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let outcome: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("rebuild --json printed no JSON object ({e}): {stdout}"));
    assert_eq!(outcome["bucket"], "orders_by_user_2", "{outcome}");
    assert_eq!(outcome["old_bucket"], "orders_by_user_1", "{outcome}");
    assert_eq!(outcome["kept_old"], true, "{outcome}");
    assert!(outcome["stored"].as_u64() >= Some(2 * ORDERS), "{outcome}");
    assert!(
        stderr.contains("Readers now use bucket orders_by_user_2"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_can_delete_its_key() {
    let bed = TestBed::new();
    let config = config(&bed, None);
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, PROJECTOR).await;

    order(&client, json!("u9"), 4).await;
    wait_state(js, BUCKET, "u9", json!({"count": 1, "total": 4})).await;
    assert_eq!(
        query(&client, json!("u9")).await,
        Ok(json!({"user": "u9", "count": 1, "asked": "q.orders"}))
    );

    publish_bare(&client, "ev.user.deleted", r#"{"user_id": "u9"}"#).await;
    wait_until(Duration::from_secs(20), "u9 is deleted", || async move {
        entry(js, BUCKET, "u9")
            .await
            .is_some_and(|e| e.operation == Operation::Delete)
    })
    .await;
    let store = js.get_key_value(BUCKET).await.expect("bucket");
    assert_eq!(store.get("u9").await.expect("kv get"), None);
    let marker = js
        .get_stream(format!("KV_{BUCKET}"))
        .await
        .expect("the bucket's stream")
        .get_last_raw_message_by_subject(&format!("$KV.{BUCKET}.u9"))
        .await
        .expect("u9's delete marker");
    assert_eq!(
        header(&marker.headers, "KV-Operation").as_deref(),
        Some("DEL")
    );
    assert_eq!(
        header(&marker.headers, "Jetrun-Applied-Sequence").as_deref(),
        Some("2")
    );
    assert!(marker.payload.is_empty());
    assert_eq!(
        query(&client, json!("u9")).await,
        Ok(json!({"user": "u9", "count": 0, "asked": "q.orders"}))
    );
    let text = scrape(bed.metrics).await;
    let count = |outcome| {
        let labels = [("function", PROJECTOR), ("outcome", outcome)];
        metric(&text, "jetrun_projection_updates_total", &labels)
    };
    assert_eq!((count("stored"), count("deleted")), (Some(1.0), Some(1.0)));

    // After a delete the key starts again from no state.
    order(&client, json!("u9"), 6).await;
    wait_state(js, BUCKET, "u9", json!({"count": 1, "total": 6})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_a_usable_key_is_dead_lettered() {
    let bed = TestBed::new();
    let config = config(&bed, None);
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, PROJECTOR).await;

    publish_bare(&client, "ev.order.placed", r#"{"amount": 1}"#).await;
    order(&client, json!("u 7"), 1).await;
    order(&client, json!({"id": 7}), 1).await;
    order(&client, json!(42), 1).await;

    wait_until(
        Duration::from_secs(20),
        "three dead letters",
        || async move { stream_messages(js, "DLQ").await.len() == 3 },
    )
    .await;
    wait_acked(js, TestBed::STREAM, PROJECTOR, 4).await;
    let errors: Vec<(Option<String>, Option<String>, Option<String>)> = stream_messages(js, "DLQ")
        .await
        .iter()
        .map(|letter| {
            let get = |name| header(&letter.headers, name);
            (
                get("Jetrun-Reason"),
                get("Jetrun-Attempts"),
                get("Jetrun-Error"),
            )
        })
        .collect();
    let permanent = |error: &str| {
        (
            Some("permanent".to_string()),
            Some("1".to_string()),
            Some(error.to_string()),
        )
    };
    assert_eq!(
        errors,
        vec![
            permanent("the event's data has no /user_id, the projection's key"),
            permanent(
                "the event's /user_id is \"u 7\", which cannot be a KV key: use letters, digits \
                 and - _ = / . (not at either end, not two in a row)"
            ),
            permanent(
                "the event's /user_id must be a string or a number to name a projection key, \
                 got {\"id\":7}"
            ),
        ]
    );
    // A number is a key; the function ran for that event only.
    assert_eq!(
        state(js, BUCKET, "42").await,
        Some(json!({"count": 1, "total": 1}))
    );
    assert_eq!(bed.ledger.sequences().into_iter().collect::<Vec<_>>(), [4]);

    // A query with a bad key is answered with a 400.
    assert_eq!(
        query(&client, json!("a*b")).await,
        Err((
            "400".to_string(),
            "the request's /user_id is \"a*b\", which cannot be a KV key: use letters, digits \
             and - _ = / . (not at either end, not two in a row)"
                .to_string()
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_is_refused_for_a_query_or_while_another_runs() {
    let bed = TestBed::new();
    let config = config(&bed, None);
    let (code, _, stderr) = run(&["projection", "rebuild", "order_count"], &config);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: function order_count is a query (request = ...): it reads bucket \
         orders_by_user but does not build it; rebuild the stream function that does \
         (orders_by_user)\n"
    );
    let (code, _, stderr) = run(&["projection", "rebuild", "nope"], &config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr
            .contains("declares no function \"nope\"; its functions: order_count, orders_by_user"),
        "{stderr}"
    );

    // A rebuild in progress (or one that died) is marked: a second one is
    // refused rather than racing it.
    let js = bed.jetstream().await;
    let pointers = js
        .create_key_value(kv::Config {
            bucket: "jetrun_projections".into(),
            history: 10,
            ..Default::default()
        })
        .await
        .expect("pointers");
    pointers
        .put("orders_by_user.rebuild", r#"{"pid":1}"#.into())
        .await
        .expect("mark");
    let (code, _, stderr) = run(&["projection", "rebuild", PROJECTOR], &config);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: another rebuild of orders_by_user is running ({\"pid\":1}); if none is (it \
         died), `nats kv del jetrun_projections orders_by_user.rebuild` and run this again\n"
    );
}
