//! Reading an event off a JetStream message and writing emitted events back:
//! CloudEvents binary mode (`ce-*` headers) out; binary, structured, bare and
//! the hand-written `{"event_type", "data", ...}` envelope in. Pure: no I/O.

use std::time::SystemTime;

use async_nats::connection::UNREADABLE_HEADERS;
use async_nats::HeaderMap;
use bytes::Bytes;
use jetrun_functions::{Emit, Event, Failure};
use serde_json::Value;

use crate::headers::{self, BadHeader, Put};

/// The most headers (distinct names) an event may carry.
pub(crate) const MAX_HEADERS: usize = 128;
/// The most bytes its headers may take, names and values.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A header flood is bad input (a permanent failure, dead-lettered): every
/// header becomes an attribute or extension every handler is given.
fn check_header_flood(headers: &HeaderMap) -> Result<(), Failure> {
    if headers.len() > MAX_HEADERS {
        return Err(Failure::permanent(format!(
            "the message has {} headers, more than the {MAX_HEADERS} an event may carry",
            headers.len()
        )));
    }
    // Most events carry a dozen headers or fewer: only count the bytes of
    // the rest.
    if headers.len() > 16 {
        let bytes: usize = headers
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len())
                    .sum::<usize>()
            })
            .sum();
        if bytes > MAX_HEADER_BYTES {
            return Err(Failure::permanent(format!(
                "the message's headers take {bytes} bytes, more than the {} KiB an event may carry",
                MAX_HEADER_BYTES / 1024
            )));
        }
    }
    Ok(())
}

/// What the runner knows of a delivered message besides its headers and body.
pub(crate) struct Origin<'a> {
    pub(crate) subject: &'a str,
    pub(crate) stream: &'a str,
    /// 0 for a message no stream stored (a request).
    pub(crate) sequence: u64,
    pub(crate) published: SystemTime,
}

impl Origin<'_> {
    /// The id of a message that names none: its place in its stream, the
    /// same on every redelivery; a new UUID for one no stream stored.
    fn unnamed_id(&self) -> String {
        if self.sequence == 0 {
            uuid::Uuid::new_v4().to_string()
        } else {
            format!("{}:{}", self.stream, self.sequence)
        }
    }
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
    if let Some(headers) = headers {
        if headers.get(UNREADABLE_HEADERS).is_some() {
            let why = headers
                .get("Jetrun-Unreadable-Headers-Reason")
                .map_or("", |v| v.as_str());
            return Err(Failure::permanent(format!(
                "the message's header block cannot be read ({why}); the raw block is kept in \
                 Jetrun-Original-Headers-Base64"
            )));
        }
        check_header_flood(headers)?;
    }
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    let mut event = if let Some(tick) = schedule_tick(origin, headers, body) {
        tick?
    } else if header("ce-specversion").is_some() {
        binary(headers.unwrap_or(&HeaderMap::new()), body)?
    } else if header("content-type").is_some_and(|ct| ct.starts_with(STRUCTURED)) {
        structured(body)?
    } else if let Some(event) = hand_written_envelope(origin, body) {
        event
    } else {
        bare(
            origin,
            header("Nats-Msg-Id").filter(|id| !id.is_empty()),
            body,
        )
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
    check_attributes(&event)?;
    Ok(event)
}

/// A scheduled function's tick: one nats-server fired from the function's
/// stored schedule (its `Jetrun-Schedule` and `Jetrun-Schedule-Time-Zone`,
/// and `Nats-Schedule-Next`, the time it fires next), or one `jetrun
/// schedule trigger` published (`Jetrun-Scheduled-At`). Read as a
/// CloudEvent of type `jetrun.schedule.tick`, source `jetrun`, id
/// `<function>@<scheduled_at>`, time `scheduled_at`, data `{"function",
/// "scheduled_at"}`; `scheduled_at` is the occurrence just before the next
/// one, in the schedule's time zone with its offset (`Z` without a zone).
/// `None`: not a tick.
fn schedule_tick(
    origin: &Origin<'_>,
    headers: Option<&HeaderMap>,
    body: &Bytes,
) -> Option<Result<Event, Failure>> {
    use crate::schedule::{JETRUN_SCHEDULE, JETRUN_SCHEDULED_AT, JETRUN_TIME_ZONE, TICK_TYPE};
    // Ticks live on jetrun's tick subjects alone (no emit may reach them):
    // the same headers on any other event are that event's own.
    origin
        .subject
        .starts_with("jetrun.schedule.")
        .then_some(())?;
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let scheduled_at = match (
        header(JETRUN_SCHEDULED_AT),
        header(JETRUN_SCHEDULE),
        header("Nats-Schedule-Next"),
    ) {
        (Some(at), _, _) => match chrono::DateTime::parse_from_rfc3339(at) {
            Ok(_) => Ok(at.to_string()),
            Err(err) => Err(format!(
                "{JETRUN_SCHEDULED_AT} {at:?} is not an RFC 3339 time ({err})"
            )),
        },
        (None, Some(expression), Some(next)) => {
            scheduled_before(expression, header(JETRUN_TIME_ZONE), next)
        }
        // Only a tick belongs on a tick subject.
        _ => Err(format!(
            "a message on {} without {JETRUN_SCHEDULE} and Nats-Schedule-Next (a fired tick) \
             or {JETRUN_SCHEDULED_AT} (a triggered one)",
            origin.subject
        )),
    };
    let scheduled_at = match scheduled_at {
        Ok(at) => at,
        Err(why) => return Some(Err(Failure::permanent(format!("a schedule tick: {why}")))),
    };
    let function = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("function")?.as_str().map(str::to_string))
        .or_else(|| (origin.subject.strip_prefix("jetrun.schedule.")).map(str::to_string))
        .unwrap_or_else(|| origin.subject.to_string());
    let data = serde_json::json!({ "function": function, "scheduled_at": scheduled_at });
    Some(Ok(Event {
        id: format!("{function}@{scheduled_at}"),
        source: "jetrun".into(),
        event_type: TICK_TYPE.into(),
        time: Some(scheduled_at),
        datacontenttype: Some("application/json".into()),
        data: Bytes::from(data.to_string()),
        ..Event::default()
    }))
}

/// The time the tick whose next fire time is `next` (RFC 3339) was fired
/// for, under `expression` in `time_zone` (UTC when `None`), in RFC 3339
/// with the zone's offset (`Z` without a zone).
fn scheduled_before(
    expression: &str,
    time_zone: Option<&str>,
    next: &str,
) -> Result<String, String> {
    let schedule = jetrun_config::schedule::Schedule::parse(expression, time_zone)?;
    let next = chrono::DateTime::parse_from_rfc3339(next)
        .map_err(|err| format!("Nats-Schedule-Next {next:?} is not an RFC 3339 time ({err})"))?
        .with_timezone(&chrono::Utc);
    let at = schedule
        .scheduled_before(next)
        .ok_or_else(|| format!("schedule {expression:?} has no occurrence before {next}"))?;
    // UTC as `Z` when no zone was asked for; a zone's time with its offset.
    Ok(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, time_zone.is_none()))
}

/// Every attribute of an event is a string without control characters: each
/// may travel on as a header (an emitted event's correlation and causation
/// ids, its trace context, a saga's key), and no header carries a CR or LF.
/// An event with one is bad input: a permanent failure naming it.
fn check_attributes(event: &Event) -> Result<(), Failure> {
    // The header-flood limits hold whatever mode brought the attributes: a
    // structured event or an envelope can carry as many as headers can.
    if event.extensions.len() > MAX_HEADERS {
        return Err(Failure::permanent(format!(
            "the event has {} extension attributes, more than the {MAX_HEADERS} an event may carry",
            event.extensions.len()
        )));
    }
    let bytes: usize = event
        .extensions
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Failure::permanent(format!(
            "the event's extension attributes take {bytes} bytes, more than the {} KiB an event \
             may carry",
            MAX_HEADER_BYTES / 1024
        )));
    }
    let named = [
        ("id", Some(&event.id)),
        ("source", Some(&event.source)),
        ("type", Some(&event.event_type)),
        ("subject", event.subject.as_ref()),
        ("time", event.time.as_ref()),
        ("datacontenttype", event.datacontenttype.as_ref()),
        ("dataschema", event.dataschema.as_ref()),
        ("correlationid", event.correlationid.as_ref()),
        ("causationid", event.causationid.as_ref()),
    ];
    let extensions = event
        .extensions
        .iter()
        .map(|(name, value)| (name.as_str(), Some(value)));
    for (attribute, value) in named.into_iter().chain(extensions) {
        let Some(control) = value.and_then(|v| v.chars().find(|c| c.is_control())) else {
            continue;
        };
        return Err(Failure::permanent(format!(
            "the event's {attribute} holds a control character (U+{:04X}); an attribute is \
             carried in headers, which cannot hold one",
            u32::from(control)
        )));
    }
    Ok(())
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
fn hand_written_envelope(origin: &Origin<'_>, body: &Bytes) -> Option<Event> {
    // Most bodies are not the envelope: look for its key before parsing.
    const KEY: &[u8] = b"\"event_type\"";
    if body.first() != Some(&b'{') || memchr::memmem::find(body, KEY).is_none() {
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
    if event_type.is_empty() {
        return None;
    }
    let mut extensions = std::collections::BTreeMap::new();
    if let Some(version) = string(fields.remove("version")) {
        extensions.insert("version".to_string(), version);
    }
    Some(Event {
        // Without an id of its own, the message's place in its stream: the
        // same on every redelivery, so what the event causes keeps its ids.
        id: string(fields.remove("event_id"))
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| origin.unnamed_id()),
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
        id: msg_id.unwrap_or_else(|| origin.unnamed_id()),
        source: format!("nats://{}", origin.stream),
        event_type: origin.subject.to_string(),
        time: rfc3339(origin.published),
        datacontenttype: is_json.then(|| "application/json".to_string()),
        data: body.clone(),
        ..Event::default()
    }
}

/// `time` in RFC 3339 (UTC, microseconds); `None` before 1970 or after 9999,
/// which humantime cannot write (it panics, or its `Display` fails).
fn rfc3339(time: SystemTime) -> Option<String> {
    use std::fmt::Write;
    time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let mut text = String::new();
    write!(text, "{}", humantime::format_rfc3339_micros(time)).ok()?;
    Some(text)
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

/// An event jetrun publishes itself: a function's emit, an aggregate's
/// appended event, a saga's command.
pub(crate) struct Outgoing<'a> {
    /// Also its `Nats-Msg-Id`, so a publish tried again is stored once.
    pub(crate) id: &'a str,
    pub(crate) event_type: &'a str,
    pub(crate) source: &'a str,
    pub(crate) correlation_id: Option<&'a str>,
    pub(crate) causation_id: Option<&'a str>,
    /// The event it answers, whose trace context it carries on unless
    /// `trace` is given.
    pub(crate) traced_from: Option<&'a Event>,
    /// The context of jetrun's span publishing it (with `[telemetry]`),
    /// carried instead of the answered event's.
    pub(crate) trace: Option<&'a TraceContext>,
}

/// The headers of an event jetrun publishes, in CloudEvents binary mode,
/// `Nats-Msg-Id` included. Names are static and values moved in: this runs
/// once per emitted event. A value no header can carry (a handler's emitted
/// type with a newline in it, say) is refused, never a panic.
pub(crate) fn binary_headers(event: &Outgoing<'_>) -> Result<HeaderMap, BadHeader> {
    use async_nats::header::{HeaderName, NATS_MESSAGE_ID};
    const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
    const ID: HeaderName = HeaderName::from_static("ce-id");
    const TYPE: HeaderName = HeaderName::from_static("ce-type");
    const SOURCE: HeaderName = HeaderName::from_static("ce-source");
    const TIME: HeaderName = HeaderName::from_static("ce-time");
    const CONTENT_TYPE: HeaderName = HeaderName::from_static("ce-datacontenttype");
    const CORRELATION: HeaderName = HeaderName::from_static("ce-correlationid");
    const CAUSATION: HeaderName = HeaderName::from_static("ce-causationid");
    // Room for every header below, so the map never grows while it is built.
    let mut headers = HeaderMap::with_capacity(12);
    headers.put(SPECVERSION, "1.0")?;
    let id = headers::value(&ID, event.id)?;
    headers.set(ID, id.clone());
    headers.set(NATS_MESSAGE_ID, id);
    headers.put(TYPE, event.event_type)?;
    headers.put(SOURCE, event.source)?;
    headers.put(
        TIME,
        &humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
    )?;
    headers.put(CONTENT_TYPE, "application/json")?;
    if let Some(correlation) = event.correlation_id {
        headers.put(CORRELATION, correlation)?;
    }
    if let Some(causation) = event.causation_id {
        headers.put(CAUSATION, causation)?;
    }
    match (event.trace, event.traced_from) {
        (Some(trace), _) => put_trace(
            &mut headers,
            Some(&trace.traceparent),
            trace.tracestate.as_deref(),
        )?,
        (None, Some(cause)) => put_trace(
            &mut headers,
            cause.extensions.get("traceparent").map(String::as_str),
            cause.extensions.get("tracestate").map(String::as_str),
        )?,
        (None, None) => {}
    }
    Ok(headers)
}

/// A W3C trace context an event is published with: jetrun's own span's,
/// when telemetry is on, instead of the input's.
pub(crate) use jetrun_functions::TraceContext;

/// Sets `traceparent` and `tracestate`, each plain and as `ce-*`.
fn put_trace(
    headers: &mut HeaderMap,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Result<(), BadHeader> {
    use async_nats::header::HeaderName;
    const TRACE: [(HeaderName, HeaderName); 2] = [
        (
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("ce-traceparent"),
        ),
        (
            HeaderName::from_static("tracestate"),
            HeaderName::from_static("ce-tracestate"),
        ),
    ];
    let [parent, state] = TRACE;
    for ((plain, prefixed), value) in [(parent, traceparent), (state, tracestate)] {
        if let Some(value) = value {
            let value = headers::value(&plain, value)?;
            headers.set(plain, value.clone());
            headers.set(prefixed, value);
        }
    }
    Ok(())
}

/// The headers of the `index`-th event a function emitted while handling
/// `input`, with id `id` ([`emitted_id`]). It carries `trace` when given
/// (the context of jetrun's span publishing it), else the input's.
pub(crate) fn emitted_headers(
    function: &str,
    input: &Event,
    id: &str,
    emit: &Emit,
    trace: Option<&TraceContext>,
) -> Result<HeaderMap, BadHeader> {
    let mut source = String::with_capacity(7 + function.len());
    source.push_str("jetrun/");
    source.push_str(function);
    binary_headers(&Outgoing {
        id,
        event_type: &emit.event_type,
        source: &source,
        correlation_id: input.correlationid.as_deref(),
        causation_id: Some(&input.id),
        traced_from: Some(input),
        trace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(pairs: &[(&str, &str)]) -> Result<Event, Failure> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, *value);
        }
        let origin = Origin {
            subject: "jetrun.schedule.report",
            stream: "JETRUN_SCHEDULES",
            sequence: 7,
            published: SystemTime::UNIX_EPOCH,
        };
        read_event(
            &origin,
            Some(&headers),
            &Bytes::from(r#"{"function":"report"}"#),
        )
    }

    #[test]
    fn a_fired_tick_is_the_occurrence_before_its_next_in_its_time_zone() {
        let event = tick(&[
            ("Jetrun-Schedule", "*/2 * * * * *"),
            ("Jetrun-Schedule-Time-Zone", "Asia/Kolkata"),
            ("Nats-Scheduler", "jetrun.schedules.jetrun.report"),
            ("Nats-Schedule-Next", "2026-12-05T20:31:38Z"),
        ])
        .expect("a tick");
        let at = "2026-12-06T02:01:36+05:30";
        assert_eq!(event.event_type, "jetrun.schedule.tick");
        assert_eq!(event.source, "jetrun");
        assert_eq!(event.id, format!("report@{at}"));
        assert_eq!(event.time.as_deref(), Some(at));
        assert_eq!(event.correlationid.as_deref(), Some(event.id.as_str()));
        let data: Value = serde_json::from_slice(&event.data).expect("JSON");
        assert_eq!(
            data,
            serde_json::json!({ "function": "report", "scheduled_at": at })
        );

        let every = tick(&[
            ("Jetrun-Schedule", "@every 5s"),
            ("Nats-Schedule-Next", "2026-12-05T20:31:38Z"),
        ])
        .expect("a tick");
        assert_eq!(every.time.as_deref(), Some("2026-12-05T20:31:33Z"));
    }

    #[test]
    fn tick_headers_make_a_tick_only_on_a_tick_subject() {
        let origin = Origin {
            subject: "order.placed",
            stream: "ORDERS",
            sequence: 7,
            published: SystemTime::UNIX_EPOCH,
        };
        let mut headers = HeaderMap::new();
        headers.insert("Jetrun-Scheduled-At", "2026-12-05T20:31:38Z");
        let event = read_event(&origin, Some(&headers), &Bytes::from(r#"{"order_id":1}"#))
            .expect("an event");
        assert_ne!(event.event_type, "jetrun.schedule.tick");
        assert_eq!(&event.data[..], br#"{"order_id":1}"#);
    }

    #[test]
    fn a_triggered_tick_is_scheduled_when_it_was_asked_for() {
        let event = tick(&[("Jetrun-Scheduled-At", "2026-12-05T20:31:38.5Z")]).expect("a tick");
        assert_eq!(event.id, "report@2026-12-05T20:31:38.5Z");
        let bad = tick(&[("Jetrun-Scheduled-At", "yesterday")]).unwrap_err();
        assert!(bad.to_string().contains("Jetrun-Scheduled-At"), "{bad}");
        assert!(bad.is_permanent());
    }

    #[test]
    fn a_message_on_a_tick_subject_without_the_tick_headers_fails_for_good() {
        let failure = tick(&[("Nats-Schedule-Next", "2026-12-05T20:31:38Z")]).unwrap_err();
        assert_eq!(failure.kind, jetrun_functions::FailureKind::Permanent);
        assert!(failure.message.contains("Jetrun-Schedule"), "{failure:?}");
    }

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
    fn a_message_no_stream_stored_gets_a_new_id() {
        let request = Origin {
            stream: "request",
            sequence: 0,
            ..origin()
        };
        let body = Bytes::from_static(b"{}");
        let first = read_event(&request, None, &body).unwrap();
        let second = read_event(&request, None, &body).unwrap();
        assert_eq!(first.id.len(), 36, "a UUID: {}", first.id);
        assert_ne!(first.id, second.id);
        assert_eq!(first.correlationid.as_deref(), Some(first.id.as_str()));
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
        let id = emitted_id("reserve-stock", &input, 0);
        let out = emitted_headers("reserve-stock", &input, &id, &emit, None).unwrap();
        assert_eq!(out.get("traceparent").map(|v| v.as_str()), Some(parent));
        assert_eq!(out.get("ce-traceparent").map(|v| v.as_str()), Some(parent));
    }

    #[test]
    fn jetrun_s_own_trace_context_replaces_the_input_s() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        headers.insert("tracestate", "congo=t61rcWkgMzE");
        let input = read_event(&origin(), Some(&headers), &Bytes::from_static(b"{}")).unwrap();
        let emit = Emit::new("inventory.reserved", serde_json::json!({}));
        let own = TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01".into(),
            tracestate: None,
        };
        let id = emitted_id("reserve-stock", &input, 0);
        let out = emitted_headers("reserve-stock", &input, &id, &emit, Some(&own)).unwrap();
        for name in ["traceparent", "ce-traceparent"] {
            assert_eq!(
                out.get(name).map(|v| v.as_str()),
                Some(own.traceparent.as_str())
            );
        }
        assert_eq!(out.get("tracestate"), None);
        assert_eq!(out.get("ce-tracestate"), None);
    }

    #[test]
    fn an_attribute_with_a_control_character_is_refused_by_name() {
        let body = Bytes::from_static(
            br#"{"event_type":"user.registered","event_id":"e-1","correlation_id":"a\nb","data":{}}"#,
        );
        let err = read_event(&origin(), None, &body).unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(
            err.message,
            "the event's correlationid holds a control character (U+000A); an attribute is \
             carried in headers, which cannot hold one"
        );
        let structured = Bytes::from_static(
            br#"{"specversion":"1.0","id":"e\r1","type":"t","source":"s","data":{}}"#,
        );
        let mut headers = HeaderMap::new();
        headers.insert("content-type", STRUCTURED);
        let err = read_event(&origin(), Some(&headers), &structured).unwrap_err();
        assert!(err
            .message
            .starts_with("the event's id holds a control character (U+000D)"));
    }

    #[test]
    fn a_structured_event_cannot_bypass_the_flood_limits() {
        let mut fields = serde_json::Map::new();
        for (k, v) in [
            ("specversion", "1.0"),
            ("id", "e"),
            ("type", "t"),
            ("source", "s"),
        ] {
            fields.insert(k.into(), v.into());
        }
        for i in 0..200 {
            fields.insert(format!("ext{i}"), "x".into());
        }
        let body = Bytes::from(serde_json::to_vec(&fields).unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("content-type", STRUCTURED);
        let err = read_event(&origin(), Some(&headers), &body).unwrap_err();
        assert!(
            err.message
                .starts_with("the event has 200 extension attributes"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_header_block_the_client_could_not_read_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(UNREADABLE_HEADERS, "TkFUUy8xLjANCg==");
        headers.insert(
            "Jetrun-Unreadable-Headers-Reason",
            "a header line has no `:`",
        );
        let err = read_event(&origin(), Some(&headers), &Bytes::new()).unwrap_err();
        assert!(err.is_permanent());
        assert!(
            err.message.contains("(a header line has no `:`)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_emitted_type_no_header_can_carry_is_refused() {
        let input = read_event(&origin(), None, &Bytes::from_static(b"{}")).unwrap();
        let emit = Emit::new("inventory\nreserved", serde_json::json!({}));
        let id = emitted_id("reserve-stock", &input, 0);
        let err = emitted_headers("reserve-stock", &input, &id, &emit, None).unwrap_err();
        assert_eq!(err.name, "ce-type");
    }

    #[test]
    fn emitted_events_carry_correlation_and_causation_and_a_stable_id() {
        let input = read_event(&origin(), None, &Bytes::from_static(b"{}")).unwrap();
        let emit = Emit::new("inventory.reserved", serde_json::json!({}));
        let id = emitted_id("reserve-stock", &input, 0);
        let headers = emitted_headers("reserve-stock", &input, &id, &emit, None).unwrap();
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

    /// No message makes `read_event` panic: an event it accepts has an id
    /// and a type, and one it refuses is refused for good (a retry would read
    /// the same bytes). A property test over headers, bodies and origins, then
    /// named tests for the inputs that break parsers.
    ///
    /// The property runs 1,024 cases, a second or so in a debug build. For a
    /// longer hunt, `PROPTEST_CASES` sets the count:
    /// `PROPTEST_CASES=100000 cargo test --release -p jetrun envelope`. A
    /// failing case is printed shrunk (no regression files are written): keep
    /// it as a named test here.
    mod never_panics {
        use std::str::FromStr;
        use std::time::Duration;

        use async_nats::header::{HeaderName, HeaderValue};
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::select;
        use proptest::test_runner::TestCaseError;

        use super::*;

        /// `default` cases unless `PROPTEST_CASES` says otherwise, and no
        /// regression files.
        fn cases(default: u32) -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(default);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// The property.
        fn reads_or_refuses(
            origin: &Origin<'_>,
            headers: Option<&HeaderMap>,
            body: &Bytes,
        ) -> Result<(), TestCaseError> {
            match read_event(origin, headers, body) {
                Ok(event) => {
                    prop_assert!(!event.id.is_empty(), "an event without an id: {event:?}");
                    prop_assert!(
                        !event.event_type.is_empty(),
                        "an event without a type: {event:?}"
                    );
                }
                Err(failure) => {
                    prop_assert!(failure.is_permanent(), "{failure}");
                    prop_assert!(!failure.message.is_empty());
                }
            }
            Ok(())
        }

        /// Headers as the NATS client builds them off the wire: names it
        /// refuses (whitespace, `:`, non-ASCII) and values it refuses (CR,
        /// LF) cannot arrive, so they are skipped.
        fn header_map(pairs: &[(String, String)]) -> HeaderMap {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_str(name), HeaderValue::from_str(value))
                {
                    map.append(name, value);
                }
            }
            map
        }

        const HEADER_NAMES: &[&str] = &[
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-subject",
            "ce-time",
            "ce-datacontenttype",
            "ce-dataschema",
            "ce-correlationid",
            "ce-causationid",
            "ce-traceparent",
            "ce-tenant",
            "ce-",
            "CE-ID",
            "Ce-Type",
            "Nats-Msg-Id",
            "nats-msg-id",
            "traceparent",
            "tracestate",
            "content-type",
            "Content-Type",
            "Nats-Expected-Stream",
            "",
        ];

        const HEADER_VALUES: &[&str] = &[
            "1.0",
            "0.3",
            "",
            " ",
            "e-1",
            "user_service",
            "order.placed",
            STRUCTURED,
            "application/cloudevents+json; charset=utf-8",
            "application/cloudevents-batch+json",
            "application/json",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-zz",
            "ünïcode",
            "\u{0}",
            "\t",
        ];

        fn header_name() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => select(HEADER_NAMES).prop_map(str::to_owned),
                1 => "ce-[a-z0-9-]{0,10}",
                1 => "[!-9;-~]{0,16}",
            ]
        }

        fn header_value() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => select(HEADER_VALUES).prop_map(str::to_owned),
                4 => ".{0,24}",
                1 => (0usize..20_000).prop_map(|n| "v".repeat(n)),
            ]
        }

        /// No headers, or some, often led by those of a mode: the binary
        /// mode's required `ce-*` headers, or the structured content type.
        fn headers() -> impl Strategy<Value = Option<Vec<(String, String)>>> {
            let binary = vec(header_value(), 4).prop_map(|values| {
                ["ce-specversion", "ce-id", "ce-source", "ce-type"]
                    .into_iter()
                    .map(str::to_owned)
                    .zip(values)
                    .collect()
            });
            let mode = prop_oneof![
                Just(Vec::new()),
                Just(vec![("content-type".to_owned(), STRUCTURED.to_owned())]),
                binary,
            ];
            let extra = vec((header_name(), header_value()), 0..16);
            proptest::option::weighted(
                0.9,
                (mode, extra).prop_map(|(mut headers, extra)| {
                    headers.extend(extra);
                    headers
                }),
            )
        }

        /// Any JSON value, nested a little.
        fn json() -> BoxedStrategy<Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                text().prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    vec(inner.clone(), 0..4).prop_map(Value::Array),
                    vec((".{0,6}", inner), 0..4)
                        .prop_map(|fields| Value::Object(fields.into_iter().collect())),
                ]
            })
            .boxed()
        }

        /// Strings that mean something to some attribute, or break it.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => select(&[
                    "",
                    "1.0",
                    "e-1",
                    "s",
                    "t",
                    "order.placed",
                    "2024-01-01T00:00:00Z",
                    "application/json",
                    "aGVsbG8=",
                    "aGVsbG8",
                    "!!!",
                    "====",
                    "\u{0}",
                ][..])
                .prop_map(str::to_owned),
                2 => ".{0,16}",
                1 => "[A-Za-z0-9+/=]{0,24}",
            ]
        }

        /// A value for an attribute: a string mostly, any JSON sometimes.
        fn attribute() -> impl Strategy<Value = Value> {
            prop_oneof![3 => text().prop_map(Value::String), 1 => json()]
        }

        /// `key: value` pairs, each of `keys` present about four times in
        /// five, with a few made-up keys.
        fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
            let fields: Vec<_> = keys
                .iter()
                .map(|key| {
                    proptest::option::weighted(0.8, attribute())
                        .prop_map(move |value| value.map(|value| ((*key).to_owned(), value)))
                })
                .collect();
            (fields, vec((".{0,8}", json()), 0..3)).prop_map(|(fields, extra)| {
                Value::Object(fields.into_iter().flatten().chain(extra).collect())
            })
        }

        /// A structured CloudEvent, its attributes of any type.
        fn structured() -> impl Strategy<Value = Value> {
            object(&[
                "specversion",
                "id",
                "source",
                "type",
                "subject",
                "time",
                "datacontenttype",
                "dataschema",
                "data",
                "data_base64",
                "correlationid",
                "causationid",
                "traceparent",
            ])
        }

        /// The hand-written `{"event_type", "data", ...}` envelope.
        fn hand_written() -> impl Strategy<Value = Value> {
            object(&[
                "event_type",
                "data",
                "event_id",
                "source",
                "timestamp",
                "version",
                "correlation_id",
                "causation_id",
            ])
        }

        /// `depth` arrays or objects, closed or not, alone or as the data of
        /// an event.
        fn nested() -> impl Strategy<Value = Vec<u8>> {
            let open = select(&["[", "{\"a\":", "[{\"a\":"][..]);
            let wrap = select(
                &[
                    ("", ""),
                    (r#"{"event_type":"t","data":"#, "}"),
                    (r#"{"id":"i","source":"s","type":"t","data":"#, "}"),
                ][..],
            );
            (0usize..20_000, open, any::<bool>(), wrap).prop_map(
                |(depth, open, closed, (before, after))| {
                    let close = match open {
                        "[" => "]",
                        "{\"a\":" => "}",
                        _ => "}]",
                    };
                    let mut body = before.to_owned();
                    body.push_str(&open.repeat(depth));
                    body.push('1');
                    if closed {
                        body.push_str(&close.repeat(depth));
                    }
                    body.push_str(after);
                    body.into_bytes()
                },
            )
        }

        /// Bodies JSON tools get wrong.
        const ODD_BODIES: &[&[u8]] = &[
            b"1e999999",
            b"-",
            b"123456789012345678901234567890",
            b"-123456789012345678901234567890.5e-400",
            b"null",
            b"\"\"",
            b"\xef\xbb\xbf{}",
            b"{\"id\":\"\xff\"}",
            b"{\"event_type\":",
            br#"{"event_type":"t","data":1e400}"#,
            br#"{"event_type":"t","data":{},"event_id":null}"#,
            br#"{"event_type":"t","data":{},"event_id":"\ud800"}"#,
            br#"{"id":"i","source":"s","type":"t","data_base64":"!!!"}"#,
            br#"{"id":"i","source":"s","type":"t","data_base64":5}"#,
            br#"{"id":5,"source":[],"type":{}}"#,
            br#"{"id":"i","id":"j","source":"s","type":"t"}"#,
        ];

        fn body() -> impl Strategy<Value = Vec<u8>> {
            let to_vec = |value: Value| serde_json::to_vec(&value).unwrap();
            let body = prop_oneof![
                1 => Just(Vec::new()),
                2 => vec(any::<u8>(), 0..256),
                2 => json().prop_map(to_vec),
                3 => structured().prop_map(to_vec),
                3 => hand_written().prop_map(to_vec),
                1 => nested(),
                1 => select(ODD_BODIES).prop_map(<[u8]>::to_vec),
            ];
            // Sometimes a byte of any value (invalid UTF-8 too) slipped in.
            let slip = proptest::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>()));
            (body, slip).prop_map(|(mut body, slip)| {
                if let Some((at, byte)) = slip {
                    body.insert(at.index(body.len() + 1), byte);
                }
                body
            })
        }

        /// When JetStream says the message was stored: any time, the epoch,
        /// before it, or past the year 9999.
        fn published() -> impl Strategy<Value = SystemTime> {
            let epoch = SystemTime::UNIX_EPOCH;
            prop_oneof![
                4 => (0u64..253_402_300_800).prop_map(move |s| epoch + Duration::from_secs(s)),
                1 => Just(epoch),
                1 => (1u64..1 << 40).prop_map(move |s| epoch - Duration::from_nanos(s)),
                1 => (253_402_300_800u64..1 << 40).prop_map(move |s| epoch + Duration::from_secs(s)),
            ]
        }

        proptest! {
            #![proptest_config(cases(1024))]

            #[test]
            fn any_message_is_read_or_refused(
                // NATS subjects and stream names have no whitespace; a
                // subject is never empty.
                subject in "\\S{1,32}",
                stream in "\\S{0,16}",
                sequence in any::<u64>(),
                published in published(),
                headers in headers(),
                body in body(),
            ) {
                let origin = Origin { subject: &subject, stream: &stream, sequence, published };
                let headers = headers.as_deref().map(header_map);
                reads_or_refuses(&origin, headers.as_ref(), &Bytes::from(body))?;
            }
        }

        fn binary_headers() -> HeaderMap {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                ("ce-specversion", "1.0"),
                ("ce-id", "e-1"),
                ("ce-source", "s"),
                ("ce-type", "t"),
            ] {
                headers.insert(name, value);
            }
            headers
        }

        fn structured_headers() -> HeaderMap {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", STRUCTURED);
            headers
        }

        #[test]
        fn a_publish_time_humantime_cannot_write_leaves_time_unset() {
            let epoch = SystemTime::UNIX_EPOCH;
            let year_10000 = epoch + Duration::from_secs(253_402_300_800);
            for published in [epoch - Duration::from_nanos(1), year_10000] {
                let origin = Origin {
                    published,
                    ..origin()
                };
                let event = read_event(&origin, None, &Bytes::from_static(b"{}")).unwrap();
                assert_eq!(event.time, None, "{published:?}");
            }
            let last = year_10000 - Duration::from_micros(1);
            let origin = Origin {
                published: last,
                ..origin()
            };
            let event = read_event(&origin, None, &Bytes::new()).unwrap();
            assert_eq!(event.time.as_deref(), Some("9999-12-31T23:59:59.999999Z"));
        }

        #[test]
        fn an_empty_body_is_read_in_every_mode() {
            let empty = Bytes::new();
            let bare = read_event(&origin(), None, &empty).unwrap();
            assert_eq!((bare.id.as_str(), bare.data.len()), ("ORDERS:42", 0));
            assert_eq!(bare.datacontenttype, None);
            let binary = read_event(&origin(), Some(&binary_headers()), &empty).unwrap();
            assert_eq!((binary.id.as_str(), binary.data.len()), ("e-1", 0));
            let structured = read_event(&origin(), Some(&structured_headers()), &empty);
            assert!(structured.unwrap_err().is_permanent());
        }

        #[test]
        fn a_one_mib_body_is_read_in_every_mode() {
            const MIB: usize = 1 << 20;
            let bytes = Bytes::from(vec![b'x'; MIB]);
            let bare = read_event(&origin(), None, &bytes).unwrap();
            assert_eq!(bare.data.len(), MIB);
            let binary = read_event(&origin(), Some(&binary_headers()), &bytes).unwrap();
            assert_eq!(binary.data.len(), MIB);

            let data = "x".repeat(MIB);
            let body = serde_json::json!({"id": "i", "source": "s", "type": "t", "data": data});
            let body = Bytes::from(serde_json::to_vec(&body).unwrap());
            let structured = read_event(&origin(), Some(&structured_headers()), &body).unwrap();
            assert_eq!(structured.data.len(), MIB + 2);
            let body = serde_json::json!({"event_type": "t", "data": data});
            let body = Bytes::from(serde_json::to_vec(&body).unwrap());
            let hand_written = read_event(&origin(), None, &body).unwrap();
            assert_eq!(
                (hand_written.event_type.as_str(), hand_written.data.len()),
                ("t", MIB + 2)
            );
        }

        #[test]
        fn invalid_utf8_is_data_or_a_permanent_failure() {
            let raw = Bytes::from_static(b"\xff\xfe\x00order");
            let bare = read_event(&origin(), None, &raw).unwrap();
            assert_eq!((&bare.data, bare.datacontenttype), (&raw, None));
            let binary = read_event(&origin(), Some(&binary_headers()), &raw).unwrap();
            assert_eq!(binary.data, raw);

            let bad_string =
                Bytes::from_static(b"{\"id\":\"\xff\",\"source\":\"s\",\"type\":\"t\"}");
            let structured = read_event(&origin(), Some(&structured_headers()), &bad_string);
            assert!(structured.unwrap_err().is_permanent());
            // Not JSON, so not the hand-written envelope: a bare message.
            let almost = Bytes::from_static(b"{\"event_type\":\"t\",\"data\":\"\xff\"}");
            let event = read_event(&origin(), None, &almost).unwrap();
            assert_eq!(
                (event.event_type.as_str(), &event.data),
                ("order.placed", &almost)
            );
        }

        #[test]
        fn a_flood_of_headers_is_refused() {
            let mut headers = binary_headers();
            for i in 0..1_000 {
                headers.insert(format!("ce-ext{i}").as_str(), format!("value {i}").as_str());
            }
            let refused = read_event(&origin(), Some(&headers), &Bytes::new()).unwrap_err();
            assert!(refused.is_permanent());
            assert!(refused.message.contains("more than the 128"), "{refused}");

            // 20 headers of 4 KiB each: too many bytes.
            let mut headers = binary_headers();
            for i in 0..20 {
                headers.insert(format!("ce-ext{i}").as_str(), "v".repeat(4096).as_str());
            }
            let refused = read_event(&origin(), Some(&headers), &Bytes::new()).unwrap_err();
            assert!(refused.message.contains("64 KiB"), "{refused}");

            // A 1 MiB traceparent on an otherwise small event is a flood too.
            let mut headers = binary_headers();
            let long = "v".repeat(1 << 20);
            headers.insert("traceparent", long.as_str());
            let refused = read_event(&origin(), Some(&headers), &Bytes::new()).unwrap_err();
            assert!(refused.message.contains("64 KiB"), "{refused}");

            // A thousand values of one header: the first counts.
            let mut headers = HeaderMap::new();
            for i in 0..1_000 {
                headers.append("Nats-Msg-Id", format!("id-{i}").as_str());
            }
            let event = read_event(&origin(), Some(&headers), &Bytes::new()).unwrap();
            assert_eq!(event.id, "id-0");
        }

        /// serde_json's recursion limit (128), not the stack, stops deep JSON.
        #[test]
        fn deep_nesting_is_an_error_not_a_stack_overflow() {
            const DEPTH: usize = 10_000;
            let deep = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
            let error = serde_json::from_str::<Value>(&deep).unwrap_err();
            assert!(
                error.to_string().starts_with("recursion limit exceeded"),
                "{error}"
            );
            // The stack of a tokio worker, where deliveries are read.
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    // Valid JSON, though deep: a bare message with JSON data.
                    let bare = read_event(&origin(), None, &Bytes::from(deep.clone())).unwrap();
                    assert_eq!(bare.datacontenttype.as_deref(), Some("application/json"));

                    let body = format!(r#"{{"id":"i","source":"s","type":"t","data":{deep}}}"#);
                    let structured =
                        read_event(&origin(), Some(&structured_headers()), &Bytes::from(body));
                    assert!(structured.unwrap_err().is_permanent());

                    // Too deep to be read as the hand-written envelope: bare.
                    let body = format!(r#"{{"event_type":"t","data":{deep}}}"#);
                    let event = read_event(&origin(), None, &Bytes::from(body)).unwrap();
                    assert_eq!(event.event_type, "order.placed");

                    let objects = format!("{}1{}", "{\"a\":".repeat(DEPTH), "}".repeat(DEPTH));
                    let event = read_event(&origin(), None, &Bytes::from(objects)).unwrap();
                    assert_eq!(event.event_type, "order.placed");
                })
                .unwrap()
                .join()
                .unwrap();
        }

        #[test]
        fn an_empty_nats_msg_id_is_no_id() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", "");
            let event = read_event(&origin(), Some(&headers), &Bytes::new()).unwrap();
            assert_eq!(event.id, "ORDERS:42");
        }

        #[test]
        fn a_hand_written_envelope_with_empty_strings_still_has_an_id_and_a_type() {
            for body in [
                r#"{"event_type":"","data":{}}"#,
                r#"{"event_type":"t","data":{},"event_id":""}"#,
            ] {
                if let Ok(event) = read_event(&origin(), None, &Bytes::from(body)) {
                    assert!(!event.id.is_empty(), "{body}: {event:?}");
                    assert!(!event.event_type.is_empty(), "{body}: {event:?}");
                }
            }
        }
    }
}
