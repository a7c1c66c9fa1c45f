//! Aggregates: command handlers answering requests, appending events to an
//! instance's subjects against the version they read. 200 concurrent
//! commands on one instance, shared by two replicas, are each appended
//! once, versions 1..200 with no gap or double; a conflict that outlives its
//! retries is a 409; a command the handler rejects is a 400; an instance
//! with 10,000 events loads from its snapshot and gives the state a full
//! replay gives.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use jetrun_e2e::{free_port, metric, scrape, stream_messages, wait_ready, Runner, TestBed};
use serde_json::{json, Value};

/// A command handler for `order` in exec worker mode. State: the count and
/// the sum of `n` over the instance's `item_added` events (from the snapshot
/// and the history after it). A command `{"order_id", "n"}` appends
/// `item_added {"n"}` (`"parts": k` of them) and replies with the version
/// after it, how many history events it was given and the state before it;
/// `"reject": true` fails permanently (validation); `"sleep": s` waits first.
const ORDER_PY: &str = r#"import json
import sys
import time

for line in sys.stdin:
    request = json.loads(line)
    document = request["input"]
    command = document["command"]["data"]
    aggregate = document["aggregate"]
    state = aggregate["snapshot"] or {"count": 0, "sum": 0}
    for event in aggregate["history"]:
        state = {"count": state["count"] + 1, "sum": state["sum"] + event["data"]["n"]}
    if command.get("reject"):
        reply = {"ok": False, "error": "order %s: n must be positive" % aggregate["id"], "retryable": False}
    else:
        if command.get("sleep"):
            time.sleep(command["sleep"])
        n = command.get("n", 0)
        parts = command.get("parts", 1)
        reply = {"ok": True, "result": {
            "append": [{"type": "item_added", "data": {"n": n, "part": p}} for p in range(parts)],
            "reply": {"version": aggregate["version"] + parts, "read": len(aggregate["history"]), "state": state},
            "snapshot": {"count": state["count"] + parts, "sum": state["sum"] + n * parts},
        }}
    reply["id"] = request["id"]
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"#;

/// `base_config`, stream ORDERS on `order.>`, aggregate `order`, and its
/// command handler `add_item` answering `cmd.order.add`.
fn config(bed: &TestBed, aggregate_extra: &str) -> std::path::PathBuf {
    let script = bed.write_script("order.py", ORDER_PY);
    bed.write_config(&format!(
        r#"{base}
[streams.ORDERS]
subjects = ["order.>"]

[aggregates.order]
stream = "ORDERS"
subject = "order.{{id}}"
id = "order_id"
{aggregate_extra}

[functions.add_item]
request = "cmd.order.add"
aggregate = "order"
exec = {{ command = ["python3", {script:?}], mode = "worker", workers = 4 }}
concurrency = 16
timeout = "60s"
"#,
        base = bed.base_config(),
        script = script.to_string_lossy(),
    ))
}

/// Two replicas of `config(bed, aggregate_extra)`, the second with its
/// metrics on another port, both ready: the runners and their metrics.
async fn two_replicas(bed: &TestBed, aggregate_extra: &str) -> ([Runner; 2], [SocketAddr; 2]) {
    let first = config(bed, aggregate_extra);
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = std::fs::read_to_string(&first)
        .unwrap()
        .replace(&bed.metrics.to_string(), &metrics.to_string());
    let second = bed.path("replica-2.toml");
    std::fs::write(&second, text).unwrap();
    let runners = [Runner::start(&first), Runner::start(&second)];
    for addr in [bed.metrics, metrics] {
        wait_ready(addr).await;
    }
    (runners, [bed.metrics, metrics])
}

const CONFLICTS: &str = "jetrun_aggregate_conflicts_total";

/// `name`'s value with `labels` on each replica at `addrs`.
async fn per_replica(addrs: &[SocketAddr], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let mut values = Vec::new();
    for &addr in addrs {
        values.push(metric(&scrape(addr).await, name, labels).unwrap_or(0.0));
    }
    values
}

/// A client whose requests wait up to a minute.
async fn patient_client(bed: &TestBed) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(60)))
        .connect(bed.nats.url())
        .await
        .expect("connect")
}

/// Sends a command and returns the reply's headers (if any) and JSON body.
async fn command(
    client: &async_nats::Client,
    data: Value,
) -> (Option<async_nats::HeaderMap>, Value) {
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        client.request("cmd.order.add", data.to_string().into()),
    )
    .await
    .expect("a reply within 60 s")
    .expect("a reply");
    let body = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
    (reply.headers, body)
}

fn service_error(headers: &Option<async_nats::HeaderMap>) -> Option<(String, String)> {
    let headers = headers.as_ref()?;
    Some((
        headers.get("Nats-Service-Error-Code")?.to_string(),
        headers.get("Nats-Service-Error")?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_are_each_appended_once_in_version_order() {
    let bed = TestBed::new();
    let ([runner, _other], replicas) = two_replicas(&bed, "max_conflict_retries = 100").await;
    let client = patient_client(&bed).await;

    let commands = 200u64;
    let replies = futures::stream::iter(1..=commands)
        .map(|n| {
            let client = client.clone();
            async move { command(&client, json!({"order_id": "o1", "n": n})).await }
        })
        .buffer_unordered(commands as usize)
        .collect::<Vec<_>>()
        .await;
    let mut versions = BTreeSet::new();
    for (headers, body) in &replies {
        assert_eq!(service_error(headers), None, "{body}\n{}", runner.log());
        versions.insert(body["version"].as_u64().expect("a version"));
    }
    assert_eq!(
        versions,
        (1..=commands).collect::<BTreeSet<_>>(),
        "every version from 1 to 200 answered once"
    );

    let js = bed.jetstream().await;
    let stored = stream_messages(&js, "ORDERS").await;
    assert_eq!(stored.len() as u64, commands, "each command appended once");
    let mut seen = BTreeSet::new();
    for message in &stored {
        assert_eq!(message.subject.as_str(), "order.o1.item_added");
        let data: Value = serde_json::from_slice(&message.payload).unwrap();
        assert!(
            seen.insert(data["n"].as_u64().unwrap()),
            "n = {} twice",
            data["n"]
        );
        let header = |name: &str| message.headers.get(name).map(|v| v.to_string());
        assert_eq!(header("ce-type").as_deref(), Some("item_added"));
        assert!(header("ce-causationid").is_some() && header("ce-correlationid").is_some());
    }
    assert_eq!(seen, (1..=commands).collect::<BTreeSet<_>>());
    // Each replica runs one command per instance at a time; the two
    // replicas' commands conflict, and each conflict is counted.
    let conflicts: f64 = per_replica(&replicas, CONFLICTS, &[("aggregate", "order")])
        .await
        .iter()
        .sum();
    let answered = per_replica(
        &replicas,
        "jetrun_requests_total",
        &[("function", "add_item"), ("code", "200")],
    )
    .await;
    eprintln!("conflict retries: {conflicts}; answered per replica: {answered:?}");
    assert!(
        conflicts > 0.0,
        "two replicas' commands on one instance conflict"
    );
    assert!(
        answered.iter().all(|&n| n > 0.0),
        "both replicas answer: {answered:?}"
    );
    assert_eq!(answered.iter().sum::<f64>(), commands as f64);
    jetrun_e2e::faults::Row {
        scenario: "200 concurrent commands on one aggregate instance over 2 replicas",
        acknowledged: format!("{commands} commands answered 200"),
        lost: "0 (each command's event stored)".into(),
        more_than_once: "0 events appended twice".into(),
        dead_lettered: "-".into(),
        recovery: None,
        notes: format!(
            "versions 1..={commands} each answered once; {conflicts} compare-and-set conflicts \
             retried; answered per replica: {answered:?}"
        ),
    }
    .record();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_is_400_and_a_lost_race_409() {
    let bed = TestBed::new();
    let _replicas = two_replicas(&bed, "max_conflict_retries = 0").await;
    let client = patient_client(&bed).await;

    let (headers, _) = command(&client, json!({"order_id": "o2", "reject": true})).await;
    let (code, message) = service_error(&headers).expect("an error reply");
    assert_eq!(code, "400");
    assert!(message.contains("n must be positive"), "{message}");
    let (headers, _) = command(&client, json!({"n": 1})).await;
    let (code, message) = service_error(&headers).expect("an error reply");
    assert_eq!(
        (code.as_str(), message.contains("/order_id")),
        ("400", true),
        "{message}"
    );

    // Slow commands on one instance, shared by the two replicas: when both
    // have read the same version, the second to append loses and, with no
    // retries allowed, gets 409. Nothing is appended for a 409.
    let replies = futures::stream::iter(1..=10u64)
        .map(|n| {
            let client = client.clone();
            async move { command(&client, json!({"order_id": "o3", "n": n, "sleep": 0.3})).await }
        })
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await;
    let codes: Vec<Option<String>> = replies
        .iter()
        .map(|(headers, _)| service_error(headers).map(|(code, _)| code))
        .collect();
    let ok = codes.iter().filter(|c| c.is_none()).count();
    assert!(
        codes
            .iter()
            .all(|c| c.is_none() || c.as_deref() == Some("409")),
        "{codes:?}"
    );
    assert!(
        codes.contains(&Some("409".into())),
        "a lost race answers 409: {codes:?}"
    );
    let js = bed.jetstream().await;
    let stored = stream_messages(&js, "ORDERS").await;
    assert_eq!(
        stored.len(),
        ok,
        "one event per command answered 200, none for a 409"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_loads_from_its_snapshot_with_the_same_state() {
    let bed = TestBed::new();
    let _runner = Runner::start(&config(&bed, "snapshot_every = 100"));
    wait_ready(bed.metrics).await;
    let client = patient_client(&bed).await;
    let js = bed.jetstream().await;

    // 9,999 events already stored, then two commands: the first reads them
    // all and crosses 10,000 (a snapshot); the second reads none.
    let earlier = 9_999u64;
    let mut acks = Vec::new();
    for n in 1..=earlier {
        let ack = js
            .publish("order.big.item_added", json!({"n": n}).to_string().into())
            .await
            .expect("publish");
        acks.push(ack);
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    let sum = |last: u64| last * (last + 1) / 2;
    let (_, first) = command(&client, json!({"order_id": "big", "n": 10_000})).await;
    assert_eq!(first["read"], 9_999, "{first}");
    assert_eq!(first["state"], json!({"count": 9_999, "sum": sum(earlier)}));
    assert_eq!(first["version"], 10_000);

    let (_, second) = command(&client, json!({"order_id": "big", "n": 10_001})).await;
    assert_eq!(second["read"], 0, "loaded from the snapshot: {second}");
    assert_eq!(
        second["state"],
        json!({"count": 10_000, "sum": sum(10_000)}),
        "the state a full replay gives"
    );
    assert_eq!(second["version"], 10_001);

    let snapshots = js
        .get_stream("KV_jetrun_snapshots_order")
        .await
        .expect("the snapshot bucket");
    let message = snapshots
        .get_last_raw_message_by_subject("$KV.jetrun_snapshots_order.big")
        .await
        .expect("a snapshot stored");
    let stored: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(stored["version"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_appending_several_events_appends_them_together() {
    let bed = TestBed::new();
    let ([runner, _other], replicas) = two_replicas(&bed, "max_conflict_retries = 100").await;
    let client = patient_client(&bed).await;

    // 30 commands of 3 events each, racing over two replicas: each
    // command's events land together (an atomic batch), never interleaved.
    let commands = 30u64;
    let replies = futures::stream::iter(1..=commands)
        .map(|n| {
            let client = client.clone();
            async move { command(&client, json!({"order_id": "batch", "n": n, "parts": 3})).await }
        })
        .buffer_unordered(commands as usize)
        .collect::<Vec<_>>()
        .await;
    let mut versions = BTreeSet::new();
    for (headers, body) in &replies {
        assert_eq!(service_error(headers), None, "{body}\n{}", runner.log());
        versions.insert(body["version"].as_u64().expect("a version"));
    }
    assert_eq!(
        versions,
        (1..=commands).map(|c| c * 3).collect::<BTreeSet<_>>()
    );

    let js = bed.jetstream().await;
    let stored = stream_messages(&js, "ORDERS").await;
    assert_eq!(stored.len() as u64, commands * 3, "{}", runner.log());
    let ns: Vec<(u64, u64)> = stored
        .iter()
        .map(|m| {
            let data: Value = serde_json::from_slice(&m.payload).unwrap();
            (data["n"].as_u64().unwrap(), data["part"].as_u64().unwrap())
        })
        .collect();
    for batch in ns.chunks(3) {
        let n = batch[0].0;
        assert_eq!(
            batch,
            [(n, 0), (n, 1), (n, 2)],
            "one command's events together: {ns:?}"
        );
    }
    let conflicts: f64 = per_replica(&replicas, CONFLICTS, &[("aggregate", "order")])
        .await
        .iter()
        .sum();
    eprintln!("batch conflicts: {conflicts}");
    assert!(
        conflicts > 0.0,
        "the replicas' batches conflicted and were run again"
    );
    let info = js.get_stream("ORDERS").await.unwrap().cached_info().clone();
    assert!(
        info.config.allow_atomic_publish,
        "an aggregate's stream takes atomic batches"
    );
}

/// A command handler that ignores the history and appends one `added`.
const APPEND_PY: &str = r#"import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    version = request["input"]["aggregate"]["version"]
    result = {"append": [{"type": "added", "data": {}}], "reply": {"version": version + 1}}
    sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "result": result}) + "\n")
    sys.stdout.flush()
"#;

/// `base_config`, stream CARTS, aggregate `cart` and its handler on
/// `cmd.cart.add`.
fn cart_config(bed: &TestBed) -> std::path::PathBuf {
    let script = bed.write_script("append.py", APPEND_PY);
    bed.write_config(&format!(
        r#"{base}
[streams.CARTS]
subjects = ["cart.>"]

[aggregates.cart]
stream = "CARTS"
subject = "cart.{{id}}"
id = "cart_id"

[functions.add]
request = "cmd.cart.add"
aggregate = "cart"
exec = {{ command = ["python3", {script:?}], mode = "worker" }}
"#,
        base = bed.base_config(),
        script = script.to_string_lossy(),
    ))
}

/// A binary-mode command with `ce-id` and `ce-source` of its own.
async fn cart_command(
    client: &async_nats::Client,
    id: &str,
    source: &str,
    cart: &str,
) -> async_nats::Message {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", source),
        ("ce-type", "cart.add"),
    ] {
        headers.insert(name, value);
    }
    let body = json!({ "cart_id": cart }).to_string();
    client
        .request_with_headers("cmd.cart.add", headers, body.into())
        .await
        .expect("a reply")
}

/// The events stored for cart `cart`.
async fn cart_events(js: &async_nats::jetstream::Context, cart: &str) -> usize {
    stream_messages(js, "CARTS")
        .await
        .iter()
        .filter(|m| m.subject.as_str().starts_with(&format!("cart.{cart}.")))
        .count()
}

/// Appended events' ids come from the command's source and id, the instance
/// and the place in the append: a command sent again is stored once, but two
/// different commands sharing an id (other sources, other instances) are
/// each stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sharing_an_id_are_each_appended_and_a_repeat_is_not() {
    let bed = TestBed::new();
    let _runner = Runner::start(&cart_config(&bed));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    for (id, source, cart) in [
        ("c-1", "shop", "a"),
        ("c-1", "shop", "b"),
        ("c-1", "admin", "a"),
        ("c-1", "shop", "a"),
    ] {
        let reply = cart_command(&client, id, source, cart).await;
        assert!(reply.headers.is_none(), "{reply:?}");
    }
    let js = bed.jetstream().await;
    assert_eq!(
        cart_events(&js, "a").await,
        2,
        "shop's c-1 once (its repeat dropped), admin's c-1 once"
    );
    assert_eq!(cart_events(&js, "b").await, 1, "c-1 for cart b is its own");
}

/// An event of an instance that cannot be read fails the command with 500
/// naming it, and is counted; it is never handed over as a hollow event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_history_event_fails_the_command() {
    let bed = TestBed::new();
    let _runner = Runner::start(&cart_config(&bed));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    // Binary mode without ce-id: not a readable event.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-type", "added");
    jetrun_e2e::publish_with_headers(&client, "cart.c9.added", headers, "{}").await;
    let reply = cart_command(&client, "c-9", "shop", "c9").await;
    let (code, error) = service_error(&reply.headers).expect("an error reply");
    assert_eq!(code, "500");
    assert!(
        error.contains("cart c9 cannot be loaded: its event at CARTS sequence 1 cannot be read"),
        "{error}"
    );
    let text = scrape(bed.metrics).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_aggregate_unreadable_events_total",
            &[("aggregate", "cart")]
        ),
        Some(1.0)
    );
    let js = bed.jetstream().await;
    assert_eq!(cart_events(&js, "c9").await, 1, "nothing was appended");
}
