//! OpenTelemetry traces over OTLP/HTTP (`[telemetry]`): a receiver started
//! here takes what jetrun exports on `POST /v1/traces` and decodes it with
//! the `opentelemetry-proto` types. A two-hop choreography (`a` handles
//! `ev.a` and emits `ev.b`; `b` handles `ev.b`) started by an event with a
//! known `traceparent` must make one trace: `a`'s event span a child of the
//! input's span, its handler call and emit children of it, and `b`'s event
//! span a child of `a`'s emit, whose context `ev.b` carries. A
//! dead-lettered event's span has a dead-letter-write child. The spans
//! reach the receiver by the drain on SIGTERM at the latest. Without
//! `[telemetry]`, nothing is sent and emitted events carry the input's
//! `traceparent` unchanged. What a call sends itself (an HTTP function's
//! request, a saga's command, an aggregate's appended event) continues the
//! call's span.

use std::time::Duration;

use async_nats::HeaderMap;
use jetrun_e2e::{
    consumer_info, header, publish_with_headers, record_then, stream_messages, toml_str,
    wait_acked, wait_for_consumer, wait_until, HttpServer, Reply, Runner, TestBed,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INPUT_SPAN_ID: &str = "00f067aa0ba902b7";
const FAILING_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

/// `a` on `ev.a` emitting `ev.b`, `b` (a built-in) on `ev.b`, and `c` on
/// `ev.fail`, which fails for good (exit 65): dead-lettered at once.
fn functions(bed: &TestBed) -> String {
    let emit = bed.write_script(
        "a.sh",
        &record_then(r#"echo '{"emit": [{"type": "ev.b", "data": {"from": "a"}}]}'"#),
    );
    let fail = bed.write_script("c.sh", &record_then(r#"echo "bad input" >&2; exit 65"#));
    format!(
        "{}{}\n[functions.b]\nsubjects = [\"ev.b\"]\nbuiltin = \"noop\"\n{}",
        bed.base_config(),
        bed.sh_function("a", &["ev.a"], &emit, ""),
        bed.sh_function("c", &["ev.fail"], &fail, ""),
    )
}

/// The receiver's base URL (`otlp_endpoint`): jetrun posts to its
/// `/v1/traces`.
fn endpoint(receiver: &HttpServer) -> String {
    receiver.url().trim_end_matches("/events").to_owned()
}

/// Publishes on `subject` with a W3C `traceparent` header.
async fn publish_traced(bed: &TestBed, subject: &str, traceparent: &str) {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent);
    publish_with_headers(&bed.client().await, subject, headers, "{}").await;
}

/// Runs the choreography: `ev.a` with `traceparent` (stream sequence 1),
/// then, once `ev.b` is stored (2), `ev.fail` with a trace of its own (3);
/// returns once `b` handled `ev.b` and `ev.fail` is dead-lettered, with
/// what `ev.b` was stored with.
async fn run_choreography(bed: &TestBed, runner: &Runner) -> HeaderMap {
    let js = &bed.jetstream().await;
    for function in ["a", "b", "c"] {
        wait_for_consumer(js, TestBed::STREAM, function).await;
    }
    publish_traced(bed, "ev.a", &traceparent(TRACE_ID, INPUT_SPAN_ID)).await;
    wait_acked(js, TestBed::STREAM, "b", 2).await;
    publish_traced(
        bed,
        "ev.fail",
        &traceparent(FAILING_TRACE_ID, INPUT_SPAN_ID),
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "ev.fail is dead-lettered",
        || async move {
            consumer_info(js, TestBed::STREAM, "c")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 3 && i.num_ack_pending == 0)
        },
    )
    .await;
    assert_eq!(
        stream_messages(js, "DLQ").await.len(),
        1,
        "{}",
        runner.log()
    );
    let stored = stream_messages(js, TestBed::STREAM).await;
    let emitted = stored
        .iter()
        .find(|m| m.subject.as_str() == "ev.b")
        .expect("ev.b is stored");
    emitted.headers.clone()
}

/// Stops the runner with SIGTERM (the drain) and waits for its exit.
async fn drain(runner: &mut Runner) {
    runner.sigterm();
    let status = runner.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "jetrun drains and exits 0 on SIGTERM: {status:?}\n{}",
        runner.log()
    );
}

/// Every span the receiver got, with the `service.name` of each export.
fn received(receiver: &HttpServer) -> (Vec<Span>, Vec<String>) {
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for request in receiver.requests() {
        assert_eq!(request.method, "POST");
        assert_eq!(request.uri.path(), "/v1/traces");
        assert_eq!(
            request.header("content-type").as_deref(),
            Some("application/x-protobuf")
        );
        let export = ExportTraceServiceRequest::decode(request.body.as_ref())
            .expect("an OTLP protobuf trace export");
        for resource in export.resource_spans {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            services.extend(string(&attributes, "service.name"));
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    (spans, services)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

/// The one span named `name`.
fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} among {names:?}");
    found[0]
}

/// Asserts `child` is `parent`'s child, in its trace.
fn assert_child_of(child: &Span, parent: &Span) {
    assert_eq!(
        hex(&child.trace_id),
        hex(&parent.trace_id),
        "{} is in {}'s trace",
        child.name,
        parent.name
    );
    assert_eq!(
        hex(&child.parent_span_id),
        hex(&parent.span_id),
        "{}'s parent is {}",
        child.name,
        parent.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_hop_choreography_is_one_trace_continuing_the_input_s() {
    let bed = TestBed::new();
    let receiver = HttpServer::always(Reply::status(200)).await;
    let config = bed.write_config(&format!(
        "[telemetry]\notlp_endpoint = {}\nservice_name = \"shop\"\n{}",
        toml_str(endpoint(&receiver)),
        functions(&bed)
    ));
    let mut runner = Runner::start(&config);
    let emitted = run_choreography(&bed, &runner).await;
    drain(&mut runner).await;

    let (spans, services) = received(&receiver);
    assert!(!services.is_empty());
    assert!(services.iter().all(|s| s == "shop"), "{services:?}");

    // a's event span continues the input's trace, under the input's span.
    let process_a = named(&spans, "process a");
    assert_eq!(hex(&process_a.trace_id), TRACE_ID);
    assert_eq!(hex(&process_a.parent_span_id), INPUT_SPAN_ID);
    assert_eq!(process_a.kind, SpanKind::Consumer as i32);
    let attrs = &process_a.attributes;
    assert_eq!(string(attrs, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(
        string(attrs, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        string(attrs, "messaging.destination.name").as_deref(),
        Some("ev.a")
    );
    assert_eq!(string(attrs, "jetrun.function").as_deref(), Some("a"));
    assert_eq!(string(attrs, "jetrun.outcome").as_deref(), Some("handled"));
    assert_eq!(string(attrs, "jetrun.stream").as_deref(), Some("EVENTS"));
    assert_eq!(int(attrs, "jetrun.attempt"), Some(1));
    assert_eq!(int(attrs, "jetrun.stream.sequence"), Some(1));

    // Its handler call and its emit are its children.
    let call_a = named(&spans, "call a");
    assert_child_of(call_a, process_a);
    let send_b = named(&spans, "send ev.b");
    assert_child_of(send_b, process_a);
    assert_eq!(send_b.kind, SpanKind::Producer as i32);
    assert_eq!(
        string(&send_b.attributes, "messaging.destination.name").as_deref(),
        Some("ev.b")
    );

    // ev.b carries the emit span's context, so b's event span is its child.
    let carried = traceparent(TRACE_ID, &hex(&send_b.span_id));
    assert_eq!(header(&emitted, "traceparent"), Some(carried.clone()));
    assert_eq!(header(&emitted, "ce-traceparent"), Some(carried));
    let process_b = named(&spans, "process b");
    assert_child_of(process_b, send_b);
    assert_eq!(
        string(&process_b.attributes, "jetrun.outcome").as_deref(),
        Some("handled")
    );
    assert_eq!(
        int(&process_b.attributes, "jetrun.stream.sequence"),
        Some(2)
    );
    assert_child_of(named(&spans, "call b"), process_b);

    // The dead-lettered event: its span failed, with a dead-letter write.
    let process_c = named(&spans, "process c");
    assert_eq!(hex(&process_c.trace_id), FAILING_TRACE_ID);
    assert_eq!(
        string(&process_c.attributes, "jetrun.outcome").as_deref(),
        Some("dead_lettered")
    );
    let status = process_c.status.clone().expect("a status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert!(status.message.contains("bad input"), "{status:?}");
    let call_c = named(&spans, "call c");
    assert_child_of(call_c, process_c);
    assert_eq!(
        call_c.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    let dead_letter = named(&spans, "send dlq.c");
    assert_child_of(dead_letter, process_c);
    assert_eq!(
        string(&dead_letter.attributes, "jetrun.dead_letter.reason").as_deref(),
        Some("permanent")
    );
    assert_eq!(
        string(&dead_letter.attributes, "messaging.destination.name").as_deref(),
        Some("dlq.c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_nothing_is_sent_and_emits_carry_the_input_s_traceparent() {
    let bed = TestBed::new();
    let receiver = HttpServer::always(Reply::status(200)).await;
    let config = bed.write_config(&functions(&bed));
    // The standard exporter variables point at the receiver: only
    // [telemetry] turns exporting on.
    let base = endpoint(&receiver);
    let mut runner = Runner::start_with_env(
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
            ("OTEL_TRACES_EXPORTER", "otlp"),
        ],
    );
    let emitted = run_choreography(&bed, &runner).await;
    drain(&mut runner).await;

    let input = traceparent(TRACE_ID, INPUT_SPAN_ID);
    assert_eq!(header(&emitted, "traceparent"), Some(input.clone()));
    assert_eq!(header(&emitted, "ce-traceparent"), Some(input));
    assert_eq!(receiver.calls(), 0, "{:?}", receiver.requests());
}

/// What an HTTP function's call sends on continues jetrun's `call` span:
/// the endpoint gets a `traceparent` whose parent is that span, so the
/// service behind it joins the trace under the call (without telemetry it
/// gets the input's own, as `http.rs` shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_function_s_request_continues_the_call_span() {
    let bed = TestBed::new();
    let receiver = HttpServer::always(Reply::status(200)).await;
    let endpoint_server = HttpServer::always(Reply::status(200)).await;
    let config = bed.write_config(&format!(
        "[telemetry]\notlp_endpoint = {}\n{}\n[functions.h]\nsubjects = [\"ev.h\"]\nhttp = {}\n",
        toml_str(endpoint(&receiver)),
        bed.base_config(),
        toml_str(endpoint_server.url()),
    ));
    let mut runner = Runner::start(&config);
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "h").await;
    publish_traced(&bed, "ev.h", &traceparent(TRACE_ID, INPUT_SPAN_ID)).await;
    wait_acked(js, TestBed::STREAM, "h", 1).await;
    drain(&mut runner).await;

    let (spans, _) = received(&receiver);
    let process = named(&spans, "process h");
    let call = named(&spans, "call h");
    assert_child_of(call, process);
    let requests = endpoint_server.requests();
    assert_eq!(requests.len(), 1, "{}", runner.log());
    assert_eq!(
        requests[0].header("traceparent"),
        Some(traceparent(TRACE_ID, &hex(&call.span_id))),
        "the request continues the call span"
    );
}

/// A saga's command, published while its start event is handled,
/// continues that handling's `call` span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_s_command_continues_the_call_span() {
    let bed = TestBed::new();
    let receiver = HttpServer::always(Reply::status(200)).await;
    let config = bed.write_config(&format!(
        "[telemetry]\notlp_endpoint = {}\n{}\n[functions.noop]\nsubjects = [\"ev.noop\"]\n\
         builtin = \"noop\"\n{}",
        toml_str(endpoint(&receiver)),
        bed.base_config(),
        jetrun_e2e::IDLE_SAGA,
    ));
    let mut runner = Runner::start(&config);
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "saga-idle").await;
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent(TRACE_ID, INPUT_SPAN_ID).as_str());
    publish_with_headers(
        &bed.client().await,
        "ev.idle.started",
        headers,
        r#"{"id":"1"}"#,
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "the command is stored",
        || async move {
            stream_messages(js, TestBed::STREAM)
                .await
                .iter()
                .any(|m| m.subject.as_str() == "ev.idle.wait")
        },
    )
    .await;
    let stored = stream_messages(js, TestBed::STREAM).await;
    let command = stored
        .iter()
        .find(|m| m.subject.as_str() == "ev.idle.wait")
        .expect("the command");
    let command_trace = header(&command.headers, "traceparent");
    drain(&mut runner).await;

    let (spans, _) = received(&receiver);
    let call = named(&spans, "call saga-idle@EVENTS");
    assert_eq!(hex(&call.trace_id), TRACE_ID);
    assert_eq!(
        command_trace,
        Some(traceparent(TRACE_ID, &hex(&call.span_id))),
        "the command continues the call span"
    );
}

/// An aggregate's appended events, when its command arrives on a stream,
/// continue the command handling's `call` span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_s_appended_events_continue_the_call_span() {
    let bed = TestBed::new();
    let receiver = HttpServer::always(Reply::status(200)).await;
    let script = bed.write_script(
        "append.sh",
        r#"cat > /dev/null; echo '{"append": [{"type": "item.added", "data": {"sku": "book"}}]}'"#,
    );
    let config = bed.write_config(&format!(
        "[telemetry]\notlp_endpoint = {}\n{}\n{}",
        toml_str(endpoint(&receiver)),
        bed.base_config(),
        format_args!(
            r#"
[streams.ORDERS]
subjects = ["order.>"]

[aggregates.order]
stream = "ORDERS"
subject = "order.{{id}}"
id = "order_id"

[functions.add_item]
subjects = ["ev.order.add"]
aggregate = "order"
exec = ["sh", {script}]
"#,
            script = toml_str(script.display().to_string())
        )
    ));
    let mut runner = Runner::start(&config);
    let js = &bed.jetstream().await;
    wait_for_consumer(js, TestBed::STREAM, "add_item").await;
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", traceparent(TRACE_ID, INPUT_SPAN_ID).as_str());
    publish_with_headers(
        &bed.client().await,
        "ev.order.add",
        headers,
        r#"{"order_id":"o-1"}"#,
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "the event is appended",
        || async move { stream_messages(js, "ORDERS").await.len() == 1 },
    )
    .await;
    let appended = stream_messages(js, "ORDERS").await;
    let appended_trace = header(&appended[0].headers, "traceparent");
    drain(&mut runner).await;

    let (spans, _) = received(&receiver);
    let call = named(&spans, "call add_item");
    assert_eq!(hex(&call.trace_id), TRACE_ID);
    assert_eq!(
        appended_trace,
        Some(traceparent(TRACE_ID, &hex(&call.span_id))),
        "the appended event continues the call span"
    );
}
