//! Reading an event off a JetStream message and writing emitted events back:
//! CloudEvents binary mode (`ce-*` headers) out; binary, structured, bare and
//! the hand-written `{"event_type", "data", ...}` envelope in. Pure: no I/O.

use std::time::SystemTime;

use async_nats::HeaderMap;
use bytes::Bytes;
use jetrun_functions::{Emit, Event, Failure};
use serde_json::Value;

/// What the runner knows of a delivered message besides its headers and body.
pub(crate) struct Origin<'a> {
    pub(crate) subject: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) sequence: u64,
    pub(crate) published: SystemTime,
}

const STRUCTURED: &str = "application/cloudevents+json";

/// The event a message carries. A structured event missing a required
/// attribute is a permanent failure; an event with no correlation id starts
/// one (its own id), so every event a function emits can carry it.
pub(crate) fn read_event(
    origin: &Origin<'_>,
    headers: Option<&HeaderMap>,
    body: &Bytes,
) -> Result<Event, Failure> {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let mut event = if header("ce-specversion").is_some() {
        binary(headers.unwrap_or(&HeaderMap::new()), body)?
    } else if header("content-type").is_some_and(|ct| ct.starts_with(STRUCTURED)) {
        structured(body)?
    } else if let Some(event) = hand_written_envelope(body) {
        event
    } else {
        bare(origin, header("Nats-Msg-Id"), body)
    };
    // W3C trace context on the message, kept as the CloudEvents distributed
    // tracing extension so every handler kind and every emitted event sees it.
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = header(name) {
            event.extensions.entry(name.to_string()).or_insert(value);
        }
    }
    if event.correlationid.is_none() {
        // An event with no correlation starts one: its own id, so every
        // attempt (and every function handling it) starts the same one.
        event.correlationid = Some(event.id.clone());
    }
    Ok(event)
}

fn binary(headers: &HeaderMap, body: &Bytes) -> Result<Event, Failure> {
    let mut event = Event {
        data: body.clone(),
        ..Event::default()
    };
    for (name, values) in headers.iter() {
        let name = AsRef::<str>::as_ref(name).to_ascii_lowercase();
        let Some(attribute) = name.strip_prefix("ce-") else {
            continue;
        };
        let Some(value) = values.first().map(|v| v.as_str().to_string()) else {
            continue;
        };
        set_attribute(&mut event, attribute, value);
    }
    require(&event, "binary-mode (ce-* headers)")?;
    Ok(event)
}

fn structured(body: &Bytes) -> Result<Event, Failure> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::permanent(
            "a structured CloudEvent (application/cloudevents+json) whose body is not a JSON object",
        ));
    };
    let mut event = Event::default();
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("data", data) => {
                event.data = Bytes::from(serde_json::to_vec(&data).unwrap_or_default());
                event
                    .datacontenttype
                    .get_or_insert("application/json".into());
            }
            ("data_base64", Value::String(b64)) => {
                use base64::prelude::{Engine, BASE64_STANDARD};
                let bytes = BASE64_STANDARD.decode(b64.as_bytes()).map_err(|err| {
                    Failure::permanent(format!(
                        "structured CloudEvent data_base64 is not base64: {err}"
                    ))
                })?;
                event.data = Bytes::from(bytes);
            }
            ("specversion", _) => {}
            (attribute, Value::String(s)) => set_attribute(&mut event, attribute, s),
            (attribute, other) => set_attribute(&mut event, attribute, other.to_string()),
        }
    }
    require(&event, "structured")?;
    Ok(event)
}

/// `{"event_type", "data", "timestamp", "source", "event_id", "version",
/// "correlation_id", "causation_id"}`, as many hand-written event buses send.
fn hand_written_envelope(body: &Bytes) -> Option<Event> {
    // Most bodies are not the envelope: look for its key before parsing.
    const KEY: &[u8] = b"\"event_type\"";
    if body.first() != Some(&b'{') || !body.windows(KEY.len()).any(|w| w == KEY) {
        return None;
    }
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let string = |v: Option<Value>| match v? {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    let (Some(Value::String(event_type)), Some(data)) =
        (fields.remove("event_type"), fields.remove("data"))
    else {
        return None;
    };
    let mut extensions = std::collections::BTreeMap::new();
    if let Some(version) = string(fields.remove("version")) {
        extensions.insert("version".to_string(), version);
    }
    Some(Event {
        id: string(fields.remove("event_id")).unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        source: string(fields.remove("source")).unwrap_or_else(|| "unknown".into()),
        event_type,
        time: string(fields.remove("timestamp")),
        datacontenttype: Some("application/json".into()),
        correlationid: string(fields.remove("correlation_id")),
        causationid: string(fields.remove("causation_id")),
        extensions,
        data: Bytes::from(serde_json::to_vec(&data).unwrap_or_default()),
        ..Event::default()
    })
}

/// A message with no CloudEvents attributes, as `nats pub` sends it.
fn bare(origin: &Origin<'_>, msg_id: Option<String>, body: &Bytes) -> Event {
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    Event {
        id: msg_id.unwrap_or_else(|| format!("{}:{}", origin.stream, origin.sequence)),
        source: format!("nats://{}", origin.stream),
        event_type: origin.subject.to_string(),
        time: Some(humantime::format_rfc3339_micros(origin.published).to_string()),
        datacontenttype: is_json.then(|| "application/json".to_string()),
        data: body.clone(),
        ..Event::default()
    }
}

fn set_attribute(event: &mut Event, attribute: &str, value: String) {
    match attribute {
        "id" => event.id = value,
        "source" => event.source = value,
        "type" => event.event_type = value,
        "subject" => event.subject = Some(value),
        "time" => event.time = Some(value),
        "datacontenttype" => event.datacontenttype = Some(value),
        "dataschema" => event.dataschema = Some(value),
        "correlationid" => event.correlationid = Some(value),
        "causationid" => event.causationid = Some(value),
        "specversion" => {}
        other => {
            event.extensions.insert(other.to_string(), value);
        }
    }
}

fn require(event: &Event, mode: &str) -> Result<(), Failure> {
    let missing: Vec<&str> = [
        ("id", &event.id),
        ("source", &event.source),
        ("type", &event.event_type),
    ]
    .into_iter()
    .filter(|(_, v)| v.is_empty())
    .map(|(name, _)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::permanent(format!(
            "{mode} CloudEvent is missing required attribute(s): {}",
            missing.join(", ")
        )))
    }
}

/// The id of the `index`-th event `function` emits while handling `input`:
/// the same on every attempt, so the stream's duplicate window drops a
/// repeat publish after a retry or a crash.
pub(crate) fn emitted_id(function: &str, input: &Event, index: usize) -> String {
    let name = format!(
        "{function}\u{0}{}\u{0}{}\u{0}{index}",
        input.source, input.id
    );
    let uuid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
    uuid.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// The headers of an emitted event in binary mode, `Nats-Msg-Id` included.
/// Names are static and values moved in: this runs once per emitted event.
pub(crate) fn emitted_headers(
    function: &str,
    input: &Event,
    index: usize,
    emit: &Emit,
) -> HeaderMap {
    use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
    const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
    const ID: HeaderName = HeaderName::from_static("ce-id");
    const TYPE: HeaderName = HeaderName::from_static("ce-type");
    const SOURCE: HeaderName = HeaderName::from_static("ce-source");
    const TIME: HeaderName = HeaderName::from_static("ce-time");
    const CONTENT_TYPE: HeaderName = HeaderName::from_static("ce-datacontenttype");
    const CORRELATION: HeaderName = HeaderName::from_static("ce-correlationid");
    const CAUSATION: HeaderName = HeaderName::from_static("ce-causationid");
    const TRACE: [(HeaderName, HeaderName, &str); 2] = [
        (
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("ce-traceparent"),
            "traceparent",
        ),
        (
            HeaderName::from_static("tracestate"),
            HeaderName::from_static("ce-tracestate"),
            "tracestate",
        ),
    ];
    let id = emitted_id(function, input, index);
    let mut headers = HeaderMap::new();
    headers.insert(SPECVERSION, "1.0");
    headers.insert(ID, id.as_str());
    headers.insert(NATS_MESSAGE_ID, id);
    headers.insert(TYPE, emit.event_type.as_str());
    let mut source = String::with_capacity(7 + function.len());
    source.push_str("jetrun/");
    source.push_str(function);
    headers.insert(SOURCE, source);
    headers.insert(
        TIME,
        humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
    );
    headers.insert(CONTENT_TYPE, "application/json");
    if let Some(correlation) = &input.correlationid {
        headers.insert(CORRELATION, correlation.as_str());
    }
    headers.insert(CAUSATION, input.id.as_str());
    for (plain, prefixed, name) in TRACE {
        if let Some(value) = input.extensions.get(name) {
            headers.insert(plain, value.as_str());
            headers.insert(prefixed, value.as_str());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            subject: "order.placed",
            stream: "ORDERS",
            sequence: 42,
            published: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_bare_message_is_filled_in_from_the_stream() {
        let event = read_event(&origin(), None, &Bytes::from_static(br#"{"order_id":1}"#)).unwrap();
        assert_eq!(event.id, "ORDERS:42");
        assert_eq!(event.event_type, "order.placed");
        assert_eq!(event.source, "nats://ORDERS");
        assert_eq!(event.time.as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert!(event.correlationid.is_some());
    }

    #[test]
    fn a_bare_message_takes_its_id_from_nats_msg_id() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-1");
        let event = read_event(&origin(), Some(&headers), &Bytes::from_static(b"raw")).unwrap();
        assert_eq!(event.id, "order-1");
        assert_eq!(event.datacontenttype, None);
    }

    #[test]
    fn binary_mode_reads_ce_headers() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "e-1"),
            ("ce-type", "user.registered"),
            ("ce-source", "user_service"),
            ("ce-correlationid", "c-9"),
            ("ce-tenant", "acme"),
        ] {
            headers.insert(k, v);
        }
        let event = read_event(&origin(), Some(&headers), &Bytes::from_static(b"{}")).unwrap();
        assert_eq!(event.id, "e-1");
        assert_eq!(event.event_type, "user.registered");
        assert_eq!(event.correlationid.as_deref(), Some("c-9"));
        assert_eq!(
            event.extensions.get("tenant").map(String::as_str),
            Some("acme")
        );
    }

    #[test]
    fn binary_mode_without_required_attributes_is_permanent() {
        let mut headers = HeaderMap::new();
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-type", "user.registered");
        let err = read_event(&origin(), Some(&headers), &Bytes::new()).unwrap_err();
        assert!(err.is_permanent());
        assert!(err.message.contains("id, source"), "{err}");
    }

    #[test]
    fn structured_mode_reads_the_json_event() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", STRUCTURED);
        let body = br#"{"specversion":"1.0","id":"x","source":"s","type":"t","data":{"a":1}}"#;
        let event = read_event(&origin(), Some(&headers), &Bytes::from_static(body)).unwrap();
        assert_eq!(event.id, "x");
        assert_eq!(&event.data[..], br#"{"a":1}"#);
        let missing = read_event(
            &origin(),
            Some(&headers),
            &Bytes::from_static(b"{\"id\":\"x\"}"),
        );
        assert!(missing.unwrap_err().is_permanent());
    }

    #[test]
    fn the_hand_written_envelope_is_mapped_field_by_field() {
        let body = br#"{"event_type":"user.registered","data":{"user_id":123},"event_id":"e-7",
            "source":"user_service","timestamp":"2024-01-01T00:00:00Z","version":"1.0",
            "correlation_id":"c-1","causation_id":"e-6"}"#;
        let event = read_event(&origin(), None, &Bytes::from_static(body)).unwrap();
        assert_eq!(event.event_type, "user.registered");
        assert_eq!(event.id, "e-7");
        assert_eq!(event.source, "user_service");
        assert_eq!(event.correlationid.as_deref(), Some("c-1"));
        assert_eq!(event.causationid.as_deref(), Some("e-6"));
        assert_eq!(&event.data[..], br#"{"user_id":123}"#);
    }

    #[test]
    fn trace_context_is_read_from_headers_and_carried_to_emitted_events() {
        let mut headers = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", parent);
        let input = read_event(&origin(), Some(&headers), &Bytes::from_static(b"{}")).unwrap();
        assert_eq!(
            input.extensions.get("traceparent").map(String::as_str),
            Some(parent)
        );
        let emit = Emit::new("inventory.reserved", serde_json::json!({}));
        let out = emitted_headers("reserve-stock", &input, 0, &emit);
        assert_eq!(out.get("traceparent").map(|v| v.as_str()), Some(parent));
        assert_eq!(out.get("ce-traceparent").map(|v| v.as_str()), Some(parent));
    }

    #[test]
    fn emitted_events_carry_correlation_and_causation_and_a_stable_id() {
        let input = read_event(&origin(), None, &Bytes::from_static(b"{}")).unwrap();
        let emit = Emit::new("inventory.reserved", serde_json::json!({}));
        let headers = emitted_headers("reserve-stock", &input, 0, &emit);
        let get = |k: &str| headers.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get("ce-causationid"), Some("ORDERS:42".into()));
        assert_eq!(get("ce-correlationid"), input.correlationid);
        assert_eq!(get("ce-source"), Some("jetrun/reserve-stock".into()));
        assert_eq!(get("Nats-Msg-Id"), get("ce-id"));
        assert_eq!(
            emitted_id("reserve-stock", &input, 0),
            emitted_id("reserve-stock", &input, 0)
        );
        assert_ne!(
            emitted_id("reserve-stock", &input, 0),
            emitted_id("reserve-stock", &input, 1)
        );
    }
}
