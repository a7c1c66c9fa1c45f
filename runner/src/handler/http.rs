//! HTTP functions: each event is POSTed in CloudEvents HTTP binary mode to
//! the function's URL over one keep-alive client per function. The status
//! decides the outcome (2xx success; 5xx, 408, 429 and transport errors
//! retryable; other 4xx permanent) and a 2xx body may name events to emit: a
//! binary-mode or structured CloudEvent, or `{"emit": [...]}`. A batch is
//! one POST of a JSON array of structured CloudEvents
//! (`application/cloudevents-batch+json`), answered per item.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;
use async_trait::async_trait;
use base64::prelude::{Engine, BASE64_STANDARD};
use jetrun_config::HttpConfig;
use jetrun_functions::{Context, Emit, Event, Failure, Function, Outcome, Output};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::protocol;

/// The most of a response body read; a longer 2xx body is a permanent failure.
const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The most of an error response's first line put in a failure message.
const EXCERPT_CHARS: usize = 200;
const STRUCTURED: &str = "application/cloudevents+json";
/// A batch's request body: a JSON array of structured CloudEvents.
const BATCH: &str = "application/cloudevents-batch+json";

pub(super) struct Http {
    /// As written in the config, for messages.
    url: String,
    target: Url,
    /// The config's `headers` table, checked once.
    headers: HeaderMap,
    timeout: Option<Duration>,
    /// Built once: its pool keeps connections alive between events.
    client: reqwest::Client,
    /// The function answers: a 2xx body is its result, not events to emit.
    answers: bool,
}

impl Http {
    /// Checks the URL and headers and builds the client. Needs a rustls
    /// crypto provider installed as the process default (`main` does it).
    pub(super) fn new(function: &str, config: &HttpConfig, answers: bool) -> anyhow::Result<Self> {
        let target = match Url::parse(&config.url) {
            Ok(url) => url,
            Err(err) => bail!(
                "functions.{function}.http.url: {:?} is not a valid URL: {err}",
                config.url
            ),
        };
        let headers = configured_headers(function, &config.headers)?;
        let client = match reqwest::Client::builder()
            .user_agent(concat!("jetrun/", env!("CARGO_PKG_VERSION")))
            // A redirect would turn the POST into a GET, or replay it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(client) => client,
            Err(err) => bail!("functions.{function}.http: cannot make an HTTP client: {err}"),
        };
        Ok(Http {
            // What failures say: the URL without its secrets.
            url: crate::redact::url(&config.url),
            target,
            headers,
            timeout: config.timeout,
            client,
            answers,
        })
    }

    fn transport_failure(&self, err: &reqwest::Error) -> Failure {
        let url = &self.url;
        if err.is_timeout() {
            return Failure::retryable(match self.timeout {
                Some(after) => format!(
                    "POST {url} timed out after {}",
                    humantime::format_duration(after)
                ),
                None => format!("POST {url} timed out"),
            });
        }
        if err.is_connect() {
            // The root cause ("Connection refused (os error 111)", a DNS or
            // TLS error) says it all; the layers above only repeat "connect".
            let root = std::iter::successors(Some(err as &dyn std::error::Error), |e| e.source())
                .last()
                .map(ToString::to_string)
                .unwrap_or_default();
            Failure::retryable(format!(
                "cannot connect to {url}: {}",
                crate::redact::text(&root)
            ))
        } else {
            Failure::retryable(format!(
                "POST {url} failed: {}",
                crate::redact::text(&causes(err))
            ))
        }
    }
}

#[async_trait]
impl Function for Http {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        let headers = request_headers(event, ctx, &self.headers)?;
        let mut request = self
            .client
            .post(self.target.clone())
            .headers(headers)
            .body(event.data.clone());
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        let mut response = request
            .send()
            .await
            .map_err(|err| self.transport_failure(&err))?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let (body, complete) = read_body(response, BODY_LIMIT)
            .await
            .map_err(|err| self.transport_failure(&err))?;
        if status.is_success() && !complete {
            return Err(Failure::permanent(format!(
                "POST {} answered {status} with a body over {} MiB",
                self.url,
                BODY_LIMIT >> 20
            )));
        }
        if self.answers && status.is_success() {
            return Ok(Output::result(body));
        }
        response_outcome(&self.url, status, &headers, &body)
    }

    /// The batch POSTed as a JSON array of structured CloudEvents
    /// (`application/cloudevents-batch+json`). A 2xx answer is read per
    /// item (an empty body: all succeeded); any other status fails every
    /// item, as it would one event.
    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        let Some((_, first)) = items.first() else {
            return Vec::new();
        };
        if self.answers {
            // A function that answers never gets a batch (config forbids it).
            return jetrun_functions::each_alone(self, items).await;
        }
        let every = |failure: Failure| protocol::every_item(failure, items.len());
        let events: Vec<Value> = items
            .iter()
            .map(|(event, _)| event.to_structured_json())
            .collect();
        let body = serde_json::to_vec(&events).unwrap_or_default();
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH));
        headers.insert("jetrun-function", percent_encoded(&first.function));
        let mut request = self
            .client
            .post(self.target.clone())
            .headers(headers)
            .body(body);
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return every(self.transport_failure(&err)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let (body, complete) = match read_body(response, BODY_LIMIT).await {
            Ok(read) => read,
            Err(err) => return every(self.transport_failure(&err)),
        };
        if !status.is_success() {
            return match response_outcome(&self.url, status, &headers, &body) {
                Err(failure) => every(failure),
                Ok(_) => every(Failure::permanent(format!(
                    "POST {} answered {status}",
                    self.url
                ))),
            };
        }
        if !complete {
            return every(Failure::permanent(format!(
                "POST {} answered {status} with a body over {} MiB",
                self.url,
                BODY_LIMIT >> 20
            )));
        }
        let ids: Vec<protocol::ItemId<'_>> = items
            .iter()
            .map(|(event, _)| protocol::ItemId {
                event: &event.id,
                request: None,
            })
            .collect();
        protocol::parse_batch_answer(&first.function, &body, &ids).unwrap_or_else(|why| {
            every(Failure::permanent(format!(
                "POST {} answered a batch with a body that is not {{\"results\": [{{\"id\": \
                 ..., \"ok\": true}}, ...]}}: {why}",
                self.url
            )))
        })
    }
}

/// The config's `headers` table as HTTP headers; a name or value HTTP does
/// not allow is refused at start.
fn configured_headers(
    function: &str,
    table: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in table {
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            bail!("functions.{function}.http.headers: {name:?} is not a valid HTTP header name");
        };
        let Ok(value) = HeaderValue::from_str(value) else {
            bail!(
                "functions.{function}.http.headers.{name}: the value is not a valid HTTP header \
                 value (visible ASCII, spaces and tabs only)"
            );
        };
        headers.insert(header, value);
    }
    Ok(headers)
}

/// The request's headers: the configured ones, then (overriding them) the
/// event's attributes as `ce-*` (percent-encoded as the CloudEvents HTTP
/// binding requires), its `Content-Type`, the plain W3C trace headers when
/// the event carries them, and `Jetrun-Attempt` / `Jetrun-Function`.
fn request_headers(
    event: &Event,
    ctx: &Context,
    configured: &HeaderMap,
) -> Result<HeaderMap, Failure> {
    let mut headers = configured.clone();
    let attributes = [
        ("ce-specversion", Some("1.0")),
        ("ce-id", Some(event.id.as_str())),
        ("ce-source", Some(event.source.as_str())),
        ("ce-type", Some(event.event_type.as_str())),
        ("ce-subject", event.subject.as_deref()),
        ("ce-time", event.time.as_deref()),
        ("ce-dataschema", event.dataschema.as_deref()),
        ("ce-correlationid", event.correlationid.as_deref()),
        ("ce-causationid", event.causationid.as_deref()),
    ];
    for (name, value) in attributes {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), percent_encoded(value));
        }
    }
    for (name, value) in &event.extensions {
        let Ok(header) = HeaderName::from_bytes(format!("ce-{name}").as_bytes()) else {
            return Err(Failure::permanent(format!(
                "event extension {name:?} cannot be sent as an HTTP header \
                 (CloudEvents attribute names are lowercase letters and digits)"
            )));
        };
        headers.insert(header, percent_encoded(value));
    }
    if let Some(content_type) = &event.datacontenttype {
        let Ok(value) = HeaderValue::from_str(content_type) else {
            return Err(Failure::permanent(format!(
                "event datacontenttype {content_type:?} cannot be sent as Content-Type"
            )));
        };
        headers.insert(CONTENT_TYPE, value);
    }
    // The runner's call span's trace context when it exports traces, else
    // the event's own.
    let trace = |name: &str| match &ctx.trace {
        Some(trace) if name == "traceparent" => Some(trace.traceparent.as_str()),
        Some(trace) => trace.tracestate.as_deref(),
        None => event.extensions.get(name).map(String::as_str),
    };
    for name in ["traceparent", "tracestate"] {
        // A malformed trace header is left out; `ce-<name>` still carries it.
        if let Some(Ok(value)) = trace(name).map(HeaderValue::from_str) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers.insert(
        "jetrun-attempt",
        reqwest::header::HeaderValue::from(ctx.attempt),
    );
    headers.insert("jetrun-function", percent_encoded(&ctx.function));
    Ok(headers)
}

/// `value` with space, `"`, `%` and every byte outside printable ASCII
/// percent-encoded (CloudEvents HTTP binding, 3.1.3.2).
fn percent_encoded(value: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        if matches!(byte, 0x21..=0x7e) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            write!(encoded, "%{byte:02X}").expect("write to String");
        }
    }
    HeaderValue::from_str(&encoded).expect("percent-encoded text is printable ASCII")
}

/// A `ce-*` header's text, percent-decoded; `None` when it is not UTF-8.
fn percent_decoded(value: &HeaderValue) -> Option<String> {
    let raw = value.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                bytes.push(byte);
                i += 3;
            }
            (byte, _) => {
                bytes.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(bytes).ok()
}

/// Reads the body up to `limit` bytes; says whether it was all read.
async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// What a response means: the status decides success, retry or dead letter;
/// a 2xx body may name events to emit.
fn response_outcome(url: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    if status.is_success() {
        return emitted(url, headers, body).map(Output::from);
    }
    if status.is_redirection() {
        let to = headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| format!(" to {l}"))
            .unwrap_or_default();
        return Err(Failure::permanent(format!(
            "POST {url} answered {status}{to}; redirects are not followed: set http.url to \
             where the function is"
        )));
    }
    let message = format!("POST {url} answered {status}{}", excerpt(body));
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || !status.is_client_error();
    Err(if retryable {
        Failure::retryable(message)
    } else {
        Failure::permanent(message)
    })
}

/// `: <the body's first non-blank line, at most 200 characters>`, or nothing.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!(": {}", line.chars().take(EXCERPT_CHARS).collect::<String>()),
        None => String::new(),
    }
}

/// The events a 2xx response names: a binary-mode CloudEvent (a `ce-type`
/// header), a structured one (`Content-Type: application/cloudevents+json`)
/// or `{"emit": [...]}`. Any other body names none.
fn emitted(url: &str, headers: &HeaderMap, body: &[u8]) -> Result<Vec<Emit>, Failure> {
    if let Some(event_type) = headers.get("ce-type") {
        let event_type = percent_decoded(event_type)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Failure::permanent(format!(
                    "POST {url} answered a binary-mode CloudEvent whose ce-type is empty or \
                     not UTF-8"
                ))
            })?;
        let data = data_value(body).ok_or_else(|| {
            Failure::permanent(format!(
                "POST {url} answered a {event_type} event whose body is neither JSON nor UTF-8 text"
            ))
        })?;
        return Ok(vec![Emit::new(event_type, data)]);
    }
    if content_type_is(headers, STRUCTURED) {
        return structured(url, body).map(|emit| vec![emit]);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(reply)) if reply.contains_key("emit") => protocol::parse_emit_list(body)
            .map_err(|err| {
                Failure::permanent(format!(
                    "POST {url} answered an emit list that is not \
                     {{\"emit\": [{{\"type\": ..., \"data\": ...}}]}}: {err}"
                ))
            }),
        _ => Ok(Vec::new()),
    }
}

/// A structured-mode CloudEvent reply: its `type` and its `data` (or
/// `data_base64`, decoded).
fn structured(url: &str, body: &[u8]) -> Result<Emit, Failure> {
    let bad = |what: &str| {
        Failure::permanent(format!(
            "POST {url} answered a structured CloudEvent ({STRUCTURED}) {what}"
        ))
    };
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("whose body is not a JSON object"));
    };
    let event_type = match event.remove("type") {
        Some(Value::String(t)) if !t.is_empty() => t,
        _ => return Err(bad("without a \"type\"")),
    };
    let data = match (event.remove("data"), event.remove("data_base64")) {
        (Some(data), _) => data,
        (None, Some(Value::String(b64))) => BASE64_STANDARD
            .decode(b64.as_bytes())
            .ok()
            .and_then(|bytes| data_value(&bytes))
            .ok_or_else(|| bad("whose data_base64 is not base64 of JSON or UTF-8 text"))?,
        (None, Some(_)) => return Err(bad("whose data_base64 is not a string")),
        (None, None) => Value::Null,
    };
    Ok(Emit::new(event_type, data))
}

/// Event data as JSON: the bytes parsed as JSON, else as a JSON string when
/// they are UTF-8; no bytes are `null`.
fn data_value(bytes: &[u8]) -> Option<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Some(Value::Null);
    }
    serde_json::from_slice(bytes).ok().or_else(|| {
        std::str::from_utf8(bytes)
            .ok()
            .map(|text| Value::String(text.to_string()))
    })
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|ct| ct.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected))
}

/// The error's causes, outermost first, without repeats: reqwest's own
/// message only names the URL, the reason is underneath.
fn causes(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use jetrun_functions::FailureKind;
    use serde_json::json;

    use super::*;

    const URL: &str = "http://127.0.0.1:8080/events";

    fn event() -> Event {
        Event {
            id: "order-1".into(),
            source: "nats://ORDERS".into(),
            event_type: "order.placed".into(),
            datacontenttype: Some("application/json".into()),
            correlationid: Some("c-1".into()),
            causationid: Some("order-0".into()),
            data: Bytes::from_static(br#"{"order_id":1}"#),
            ..Event::default()
        }
    }

    fn ctx() -> Context {
        Context {
            function: "notify".into(),
            attempt: 3,
            subject: "order.placed".into(),
            stream: "ORDERS".into(),
            stream_created: 1,
            sequence: 7,
            trace: None,
        }
    }

    fn header_map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn ok(status: u16, headers: &[(&'static str, &str)], body: &str) -> Result<Vec<Emit>, Failure> {
        response_outcome(
            URL,
            StatusCode::from_u16(status).unwrap(),
            &header_map(headers),
            body.as_bytes(),
        )
        .map(|output| output.emits)
    }

    fn failure(status: u16, body: &str) -> (FailureKind, String) {
        let err = ok(status, &[], body).unwrap_err();
        (err.kind, err.message)
    }

    #[test]
    fn request_carries_the_event_in_binary_mode() {
        let mut e = event();
        e.subject = Some("sku-9".into());
        e.time = Some("2025-01-02T03:04:05Z".into());
        e.extensions.insert("tenant".into(), "acme".into());
        let configured = header_map(&[("authorization", "Bearer t0ken")]);
        let h = request_headers(&e, &ctx(), &configured).unwrap();
        assert_eq!(get(&h, "ce-specversion"), Some("1.0"));
        assert_eq!(get(&h, "ce-id"), Some("order-1"));
        assert_eq!(get(&h, "ce-source"), Some("nats://ORDERS"));
        assert_eq!(get(&h, "ce-type"), Some("order.placed"));
        assert_eq!(get(&h, "ce-subject"), Some("sku-9"));
        assert_eq!(get(&h, "ce-time"), Some("2025-01-02T03:04:05Z"));
        assert_eq!(get(&h, "ce-correlationid"), Some("c-1"));
        assert_eq!(get(&h, "ce-causationid"), Some("order-0"));
        assert_eq!(get(&h, "ce-tenant"), Some("acme"));
        assert_eq!(get(&h, "content-type"), Some("application/json"));
        assert_eq!(get(&h, "authorization"), Some("Bearer t0ken"));
        assert_eq!(get(&h, "jetrun-attempt"), Some("3"));
        assert_eq!(get(&h, "jetrun-function"), Some("notify"));
        assert_eq!(
            get(&h, "ce-dataschema"),
            None,
            "absent attributes are left out"
        );
        assert_eq!(get(&h, "traceparent"), None);
    }

    #[test]
    fn trace_context_is_also_sent_as_plain_w3c_headers() {
        let mut e = event();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        e.extensions.insert("traceparent".into(), parent.into());
        e.extensions
            .insert("tracestate".into(), "congo=t61rcWkgMzE".into());
        let h = request_headers(&e, &ctx(), &HeaderMap::new()).unwrap();
        assert_eq!(get(&h, "traceparent"), Some(parent));
        assert_eq!(get(&h, "ce-traceparent"), Some(parent));
        assert_eq!(get(&h, "tracestate"), Some("congo=t61rcWkgMzE"));
    }

    #[test]
    fn attribute_values_are_percent_encoded_and_cannot_be_overridden() {
        let mut e = event();
        e.subject = Some("Crème brûlée 100%".into());
        e.datacontenttype = None;
        let configured = header_map(&[("ce-id", "forged"), ("content-type", "text/plain")]);
        let h = request_headers(&e, &ctx(), &configured).unwrap();
        assert_eq!(
            get(&h, "ce-subject"),
            Some("Cr%C3%A8me%20br%C3%BBl%C3%A9e%20100%25")
        );
        assert_eq!(
            percent_decoded(h.get("ce-subject").unwrap()).as_deref(),
            Some("Crème brûlée 100%")
        );
        assert_eq!(get(&h, "ce-id"), Some("order-1"));
        assert_eq!(
            get(&h, "content-type"),
            Some("text/plain"),
            "a configured Content-Type stands when the event declares none"
        );
    }

    #[test]
    fn an_extension_name_http_cannot_carry_is_permanent() {
        let mut e = event();
        e.extensions.insert("bad name".into(), "x".into());
        let err = request_headers(&e, &ctx(), &HeaderMap::new()).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.message.contains("\"bad name\""), "{}", err.message);
    }

    #[test]
    fn configured_headers_are_checked_at_start() {
        let table = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let h = configured_headers("notify", &table("X-Api-Key", "k1")).unwrap();
        assert_eq!(get(&h, "x-api-key"), Some("k1"));
        assert_eq!(
            configured_headers("notify", &table("X Api", "k1"))
                .unwrap_err()
                .to_string(),
            "functions.notify.http.headers: \"X Api\" is not a valid HTTP header name"
        );
        assert!(configured_headers("notify", &table("X-Api", "a\nb"))
            .unwrap_err()
            .to_string()
            .starts_with("functions.notify.http.headers.X-Api: the value is not"));
    }

    #[test]
    fn a_2xx_without_an_event_emits_nothing() {
        assert_eq!(ok(200, &[], ""), Ok(vec![]));
        assert_eq!(ok(204, &[], ""), Ok(vec![]));
        assert_eq!(ok(200, &[("content-type", "text/plain")], "OK"), Ok(vec![]));
        assert_eq!(ok(202, &[], r#"{"status":"queued"}"#), Ok(vec![]));
        assert_eq!(ok(200, &[], "[1, 2]"), Ok(vec![]));
    }

    #[test]
    fn a_binary_mode_reply_is_emitted() {
        let headers = [
            ("ce-specversion", "1.0"),
            ("ce-type", "order.notified"),
            ("ce-id", "r-1"),
            ("ce-subject", "ignored"),
            ("content-type", "application/json"),
        ];
        assert_eq!(
            ok(200, &headers, r#"{"order_id":1}"#),
            Ok(vec![Emit::new("order.notified", json!({"order_id": 1}))])
        );
        assert_eq!(
            ok(200, &[("ce-type", "order.notified")], "sent"),
            Ok(vec![Emit::new("order.notified", json!("sent"))]),
            "a body that is not JSON becomes a JSON string"
        );
        assert_eq!(
            ok(201, &[("ce-type", "order%2Enotified")], ""),
            Ok(vec![Emit::new("order.notified", Value::Null)])
        );
        let binary = response_outcome(
            URL,
            StatusCode::OK,
            &header_map(&[("ce-type", "blob")]),
            b"\xff\x00",
        );
        assert!(binary.unwrap_err().is_permanent());
    }

    #[test]
    fn a_structured_reply_is_emitted() {
        let ct = [(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )];
        let body = r#"{"specversion":"1.0","id":"r-1","source":"svc","type":"order.notified","data":{"ok":true}}"#;
        assert_eq!(
            ok(200, &ct, body),
            Ok(vec![Emit::new("order.notified", json!({"ok": true}))])
        );
        let b64 = r#"{"type":"order.notified","data_base64":"eyJvayI6dHJ1ZX0="}"#;
        assert_eq!(
            ok(200, &ct, b64),
            Ok(vec![Emit::new("order.notified", json!({"ok": true}))])
        );
        let err = ok(200, &ct, r#"{"id":"r-1","data":{}}"#).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (
                FailureKind::Permanent,
                "POST http://127.0.0.1:8080/events answered a structured CloudEvent \
                 (application/cloudevents+json) without a \"type\""
            )
        );
        assert!(ok(200, &ct, "nope").unwrap_err().is_permanent());
    }

    #[test]
    fn an_emit_list_reply_is_emitted() {
        let body = r#"{"emit":[{"type":"a.b","data":{"n":1}},{"type":"c.d","subject":"c.d.1"}]}"#;
        let mut second = Emit::new("c.d", Value::Null);
        second.subject = Some("c.d.1".into());
        assert_eq!(
            ok(200, &[], body),
            Ok(vec![Emit::new("a.b", json!({"n": 1})), second])
        );
        let err = ok(200, &[], r#"{"emit":[{"typ":"a.b"}]}"#).unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.message
                .starts_with("POST http://127.0.0.1:8080/events answered an emit list that is not"),
            "{}",
            err.message
        );
    }

    #[test]
    fn client_errors_are_permanent_but_408_and_429() {
        assert_eq!(
            failure(400, "\n  order_id is missing  \nat line 3\n"),
            (
                FailureKind::Permanent,
                "POST http://127.0.0.1:8080/events answered 400 Bad Request: order_id is missing"
                    .into()
            )
        );
        assert_eq!(
            failure(404, ""),
            (
                FailureKind::Permanent,
                "POST http://127.0.0.1:8080/events answered 404 Not Found".into()
            )
        );
        assert_eq!(failure(408, "").0, FailureKind::Retryable);
        assert_eq!(failure(429, "slow down").0, FailureKind::Retryable);
    }

    #[test]
    fn server_errors_are_retryable_with_a_short_excerpt() {
        let (kind, message) = failure(503, &"x".repeat(1000));
        assert_eq!(kind, FailureKind::Retryable);
        assert_eq!(
            message,
            format!(
                "POST http://127.0.0.1:8080/events answered 503 Service Unavailable: {}",
                "x".repeat(200)
            )
        );
        assert_eq!(failure(500, "boom").0, FailureKind::Retryable);
    }

    fn function_at(url: &str, timeout: Option<Duration>) -> Http {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = HttpConfig {
            url: url.into(),
            headers: BTreeMap::new(),
            timeout,
        };
        Http::new("notify", &config, false).unwrap()
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        drop(listener);
        let err = function_at(&url, None)
            .call(&event(), &ctx())
            .await
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Retryable);
        assert!(
            err.message
                .starts_with(&format!("cannot connect to {url}: Connection refused")),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_says_after_how_long() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let _silent = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await
        });
        let err = function_at(&url, Some(Duration::from_millis(100)))
            .call(&event(), &ctx())
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, err.message),
            (
                FailureKind::Retryable,
                format!("POST {url} timed out after 100ms")
            )
        );
    }

    /// A server answering one request with `status` and `body`; gives back
    /// the request it read (head and body).
    async fn answer_once(
        status: u16,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/batch", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (url, server)
    }

    fn batch_of_two() -> Vec<(Event, Context)> {
        let second = Event {
            id: "order-2".into(),
            ..event()
        };
        vec![(event(), ctx()), (second, ctx())]
    }

    #[tokio::test]
    async fn a_batch_is_one_post_of_structured_events_answered_per_item() {
        let (url, server) = answer_once(
            200,
            r#"{"results": [{"id": "order-2", "error": "no such order", "permanent": true}]}"#,
        )
        .await;
        let outcomes = function_at(&url, None).call_batch(&batch_of_two()).await;
        assert_eq!(
            outcomes,
            vec![
                Ok(Output::default()),
                Err(Failure::permanent("no such order"))
            ]
        );
        let request = server.await.unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/cloudevents-batch+json"),
            "{head}"
        );
        let events: Vec<Value> = serde_json::from_str(body).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["order-1", "order-2"]);
        assert_eq!(events[0]["data"], json!({"order_id": 1}));
    }

    #[tokio::test]
    async fn a_failed_batch_call_fails_every_item_alike() {
        let (url, _server) = answer_once(503, "busy").await;
        let outcomes = function_at(&url, None).call_batch(&batch_of_two()).await;
        let failure =
            Failure::retryable(format!("POST {url} answered 503 Service Unavailable: busy"));
        assert_eq!(outcomes, vec![Err(failure.clone()), Err(failure)]);

        let (url, _server) = answer_once(200, "<html>hello</html>").await;
        let outcomes = function_at(&url, None).call_batch(&batch_of_two()).await;
        assert!(
            outcomes
                .iter()
                .all(|o| o.as_ref().is_err_and(Failure::is_permanent)),
            "{outcomes:?}"
        );
    }

    #[test]
    fn redirects_are_permanent_and_say_where() {
        let err = ok(308, &[("location", "https://example.com/events")], "").unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(
            err.message,
            "POST http://127.0.0.1:8080/events answered 308 Permanent Redirect to \
             https://example.com/events; redirects are not followed: set http.url to where \
             the function is"
        );
    }
}
