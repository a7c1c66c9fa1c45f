//! HTTP functions against a real HTTP server the test scripts: the request in
//! CloudEvents binary mode, the reply's events emitted with correlation and
//! causation ids, 4xx dead-lettered at once, 5xx and a server that never
//! answers retried, one keep-alive connection for a run of events, and the
//! W3C trace context passed on.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::Context;
use async_nats::{Client, HeaderMap};
use jetrun_e2e::{
    header, holds_for, publish_bare, publish_bare_burst, publish_with_headers, stream_messages,
    toml_str, wait_acked, wait_for_consumer, wait_until, HttpServer, Reply, Runner, TestBed,
};
use serde_json::{json, Value};

const FUNCTION: &str = "notify";
const INPUT: &str = "ev.in";

/// A runner with one HTTP function, `notify` on `ev.in`, and a client.
struct World {
    _bed: TestBed,
    runner: Runner,
    client: Client,
    js: Context,
}

/// Starts `notify` POSTing to `server`: `http = { url = ..<http_extra> }`
/// (`, timeout = "1s"`), fast jitter-free retries (3 attempts), plus `extra`
/// lines; returns once its consumer is bound.
async fn start(server: &HttpServer, http_extra: &str, extra: &str) -> World {
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        r#"{base}
[functions.{FUNCTION}]
subjects = [{input}]
http = {{ url = {url}{http_extra} }}
retry = {{ max_attempts = 3, initial_delay = "100ms", multiplier = 2.0, jitter = 0.0 }}
{extra}
"#,
        base = bed.base_config(),
        input = toml_str(INPUT),
        url = toml_str(server.url()),
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = async_nats::jetstream::new(client.clone());
    wait_for_consumer(&js, TestBed::STREAM, FUNCTION).await;
    World {
        _bed: bed,
        runner,
        client,
        js,
    }
}

impl World {
    /// Waits until `notify` has acked every event up to stream sequence `last`.
    async fn wait_acked(&self, last: u64) {
        wait_acked(&self.js, TestBed::STREAM, FUNCTION, last).await;
    }

    async fn events(&self) -> Vec<StreamMessage> {
        stream_messages(&self.js, TestBed::STREAM).await
    }

    async fn dead_letters(&self) -> Vec<StreamMessage> {
        stream_messages(&self.js, "DLQ").await
    }

    /// Checks for a while that the server gets no call beyond `calls`.
    async fn no_more_calls(&self, server: &HttpServer, calls: usize) {
        holds_for(
            Duration::from_millis(800),
            &format!("{calls} call(s) and no more"),
            || async move { server.calls() == calls },
        )
        .await;
    }
}

/// A binary-mode CloudEvent's headers, as another service would publish it.
fn binary_event(id: &str, correlation: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id);
    headers.insert("ce-type", INPUT);
    headers.insert("ce-source", "test/shop");
    headers.insert("ce-correlationid", correlation);
    headers.insert("ce-datacontenttype", "application/json");
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_mode_event_in_the_reply_is_emitted_with_correlation_and_causation() {
    let server = HttpServer::always(
        Reply::json(json!({"order_id": 1, "notified": true}))
            .header("ce-specversion", "1.0")
            .header("ce-type", "ev.done")
            .header("ce-id", "reply-1")
            .header("ce-source", "mailer"),
    )
    .await;
    let world = start(&server, r#", headers = { "X-Api-Key" = "k-123" }"#, "").await;
    let body = "{ \"order_id\": 1,\n  \"note\": \"caf\u{e9}\" }";
    publish_with_headers(
        &world.client,
        INPUT,
        binary_event("order-1", "corr-1"),
        body,
    )
    .await;

    world.wait_acked(1).await;
    let events = world.events().await;
    assert_eq!(events.len(), 2, "the input and one emitted: {events:?}");
    let done = &events[1];
    let h = |name: &str| header(&done.headers, name);
    let all = format!("{:?}", done.headers);
    assert_eq!(done.subject.as_str(), "ev.done");
    assert_eq!(
        serde_json::from_slice::<Value>(&done.payload).expect("JSON body"),
        json!({"order_id": 1, "notified": true})
    );
    assert_eq!(h("ce-type").as_deref(), Some("ev.done"), "{all}");
    assert_eq!(h("ce-causationid").as_deref(), Some("order-1"), "{all}");
    assert_eq!(h("ce-correlationid").as_deref(), Some("corr-1"), "{all}");
    assert_eq!(h("ce-source").as_deref(), Some("jetrun/notify"), "{all}");

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    let r = |name: &str| request.header(name);
    let all = format!("{:?}", request.headers);
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri.path(), "/events");
    assert_eq!(r("ce-specversion").as_deref(), Some("1.0"), "{all}");
    assert_eq!(r("ce-id").as_deref(), Some("order-1"), "{all}");
    assert_eq!(r("ce-type").as_deref(), Some(INPUT), "{all}");
    assert_eq!(r("ce-source").as_deref(), Some("test/shop"), "{all}");
    assert_eq!(r("ce-correlationid").as_deref(), Some("corr-1"), "{all}");
    assert_eq!(
        r("content-type").as_deref(),
        Some("application/json"),
        "{all}"
    );
    assert_eq!(r("x-api-key").as_deref(), Some("k-123"), "{all}");
    assert_eq!(r("jetrun-attempt").as_deref(), Some("1"), "{all}");
    assert_eq!(r("jetrun-function").as_deref(), Some(FUNCTION), "{all}");
    assert_eq!(
        request.body.as_ref(),
        body.as_bytes(),
        "the body, byte for byte"
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_list_in_the_reply_is_emitted() {
    let server = HttpServer::always(Reply::json(json!({"emit": [
        {"type": "ev.done", "data": {"n": 1}},
        {"type": "ev.audit", "subject": "ev.audit.notify", "data": {"n": 2}},
    ]})))
    .await;
    let world = start(&server, "", "").await;
    publish_bare(&world.client, INPUT, r#"{"order_id":2}"#).await;

    world.wait_acked(1).await;
    let events = world.events().await;
    assert_eq!(events.len(), 3, "the input and two emitted: {events:?}");
    let request = &server.requests()[0];
    let correlation = request
        .header("ce-correlationid")
        .expect("the runner made a correlation id and sent it");
    let emitted: Vec<(String, Value, Option<String>, Option<String>)> = events[1..]
        .iter()
        .map(|m| {
            (
                m.subject.to_string(),
                serde_json::from_slice(&m.payload).expect("JSON body"),
                header(&m.headers, "ce-causationid"),
                header(&m.headers, "ce-correlationid"),
            )
        })
        .collect();
    let caused = |subject: &str, data: Value| {
        (
            subject.to_string(),
            data,
            Some("EVENTS:1".to_string()),
            Some(correlation.clone()),
        )
    };
    assert_eq!(
        emitted,
        [
            caused("ev.done", json!({"n": 1})),
            caused("ev.audit.notify", json!({"n": 2}))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_after_one_call() {
    let server =
        HttpServer::always(Reply::status(400).body("order_id is missing\nsee the docs")).await;
    let world = start(&server, "", "").await;
    publish_with_headers(
        &world.client,
        INPUT,
        binary_event("order-1", "corr-1"),
        r#"{"sku":"book"}"#,
    )
    .await;

    let js = &world.js;
    wait_until(
        Duration::from_secs(20),
        "a dead letter in DLQ",
        || async move { !stream_messages(js, "DLQ").await.is_empty() },
    )
    .await;
    world.wait_acked(1).await;
    world.no_more_calls(&server, 1).await;
    let letters = world.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    let h = |name: &str| header(&letter.headers, name);
    let all = format!("{:?}", letter.headers);
    assert_eq!(letter.subject.as_str(), "dlq.notify");
    assert_eq!(letter.payload.as_ref(), br#"{"sku":"book"}"#);
    assert_eq!(h("Jetrun-Reason").as_deref(), Some("permanent"), "{all}");
    assert_eq!(h("Jetrun-Attempts").as_deref(), Some("1"), "{all}");
    assert_eq!(
        h("Jetrun-Error"),
        Some(format!(
            "POST {} answered 400 Bad Request: order_id is missing",
            server.url()
        )),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_and_the_next_200_succeeds() {
    let server = HttpServer::start(|call| match call {
        1 => Reply::status(503).body("warming up"),
        _ => Reply::status(200),
    })
    .await;
    let world = start(&server, "", "").await;
    publish_bare(&world.client, INPUT, r#"{"order_id":3}"#).await;

    world.wait_acked(1).await;
    world.no_more_calls(&server, 2).await;
    let attempts: Vec<Option<String>> = server
        .requests()
        .iter()
        .map(|r| r.header("jetrun-attempt"))
        .collect();
    assert_eq!(attempts, [Some("1".into()), Some("2".into())]);
    assert!(world.dead_letters().await.is_empty(), "no dead letter");
    let log = world.runner.log();
    let failure = format!(
        "POST {} answered 503 Service Unavailable: warming up",
        server.url()
    );
    assert!(
        log.contains(&failure),
        "the log names the failure {failure:?}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_and_the_retry_succeeds() {
    let server = HttpServer::start(|call| match call {
        1 => Reply::Never,
        _ => Reply::status(200),
    })
    .await;
    let world = start(&server, r#", timeout = "1s""#, "").await;
    publish_bare(&world.client, INPUT, r#"{"order_id":4}"#).await;

    world.wait_acked(1).await;
    world.no_more_calls(&server, 2).await;
    assert!(world.dead_letters().await.is_empty(), "no dead letter");
    let log = world.runner.log();
    let failure = format!("POST {} timed out after 1s", server.url());
    assert!(
        log.contains(&failure),
        "the log names the failure {failure:?}:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_one_after_another_reuse_the_connection() {
    let server = HttpServer::always(Reply::status(204)).await;
    let world = start(&server, "", "concurrency = 1").await;
    publish_bare_burst(&world.client, INPUT, 10).await;

    world.wait_acked(10).await;
    let requests = server.requests();
    assert_eq!(requests.len(), 10, "{requests:?}");
    let connections: BTreeSet<u16> = requests.iter().map(|r| r.peer.port()).collect();
    assert!(
        connections.len() <= 2,
        "10 events over at most 2 TCP connections, not {}: {connections:?}",
        connections.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inputs_trace_context_reaches_the_http_server() {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let server = HttpServer::always(Reply::status(200)).await;
    let world = start(&server, "", "").await;
    let mut headers = HeaderMap::new();
    headers.insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01").as_str(),
    );
    publish_with_headers(&world.client, INPUT, headers, r#"{"order_id":6}"#).await;

    world.wait_acked(1).await;
    let request = &server.requests()[0];
    let traceparent = request
        .header("traceparent")
        .unwrap_or_else(|| panic!("no traceparent header: {:?}", request.headers));
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(trace_id),
        "the same trace: {traceparent}"
    );
}
