//! Delayed events: an event stored on its subject later, on nats-server's
//! message schedules (ADR-51, `@at`, nats-server 2.12; docs/schedules.md).
//!
//! A schedule fires only into its own stream, and the event may be meant
//! for any stream, so it takes two steps:
//!
//! 1. **Held.** The event (its headers and body, as it is to be stored) is
//!    stored in the schedules stream on `jetrun.delayed.hold.<token>` (the
//!    token: a UUID v5 of the event id) with `Nats-Schedule: @at <time>`,
//!    `Nats-Schedule-Target: jetrun.delayed.due`, the subject it is for in
//!    `Jetrun-Delayed-Subject` and `Nats-Msg-Id` = its id, so a repeat within
//!    the stream's duplicate window holds it once. An input is acked only
//!    after that store's ack.
//! 2. **Relayed.** At its time the server stores it on `jetrun.delayed.due`
//!    (and purges the holder). Every runner consumes that subject with one
//!    shared durable consumer, `jetrun-delayed`, run by `dispatch` like any
//!    function's, so retries, dead letters (`<prefix>.jetrun-delayed`), metrics
//!    and drain are the core's. Its handler, [`Relay`], publishes the event
//!    to its subject with `Nats-Msg-Id` = its id (a relay tried again is
//!    stored once), then deletes the due message, then the core acks it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use async_nats::{HeaderMap, HeaderName};
use async_trait::async_trait;
use jetrun_config::{RetryPolicy, StreamBinding};
use jetrun_functions::{Context, Event, Failure, Function, Later, Outcome, Output};
use prometheus::Histogram;

use crate::dispatch::Unit;
use crate::emit;
use crate::headers::{self, BadHeader, Put};

/// The subjects of delayed events in the schedules stream.
pub(crate) const SUBJECTS: &str = "jetrun.delayed.>";
/// Where held events wait, one subject each.
const HOLD: &str = "jetrun.delayed.hold";
/// Where the server stores a held event at its time, for the relay.
pub(crate) const DUE: &str = "jetrun.delayed.due";
/// The relay's durable consumer, its dispatch unit and its metric label.
pub(crate) const RELAY: &str = jetrun_config::name::DELAYED_RELAY;

/// The subject the event is to be stored on.
pub(crate) const FOR_SUBJECT: &str = "Jetrun-Delayed-Subject";
/// The event's id (also its `Nats-Msg-Id` once relayed).
pub(crate) const FOR_ID: &str = "Jetrun-Delayed-Id";
/// When it is due, RFC 3339 UTC (the server strips `Nats-Schedule`).
pub(crate) const DUE_AT: &str = "Jetrun-Delayed-At";
/// The event's own `Nats-TTL`, while it is held.
pub(crate) const FOR_TTL: &str = "Jetrun-Delayed-TTL";

const NATS_SCHEDULE: HeaderName = HeaderName::from_static("Nats-Schedule");
const NATS_TARGET: HeaderName = HeaderName::from_static("Nats-Schedule-Target");

/// The nats-server version delayed events need (`@at` schedules).
pub(crate) const NEEDS_SERVER: (u32, u32) = (2, 12);

/// Refuses a delayed event on a server older than [`NEEDS_SERVER`], naming both.
pub(crate) fn check_server(version: &str) -> Result<(), String> {
    let (major, minor) = NEEDS_SERVER;
    match crate::schedule::major_minor(version) {
        Some(found) if found < NEEDS_SERVER => Err(format!(
            "delayed events need nats-server {major}.{minor} or later; the server is {version}"
        )),
        _ => Ok(()),
    }
}

/// The subject holding the delayed event with id `id` until its time.
pub(crate) fn hold_subject(id: &str) -> String {
    let token = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("jetrun.delayed\0{id}").as_bytes(),
    );
    format!("{HOLD}.{}", token.simple())
}

/// The latest time an event can be held until, 9999-12-31T23:59:59Z:
/// nats-server reads `@at` as RFC 3339, whose years have four digits.
const LATEST: Duration = Duration::from_secs(253_402_300_799);

/// When `later`, read from `now`, is due. `Err`: a time nats-server cannot
/// hold an event until, in words that follow the emit's name.
pub(crate) fn due(later: Later, now: SystemTime) -> Result<SystemTime, String> {
    let at = match later {
        Later::After(delay) => now.checked_add(delay),
        Later::At(at) => Some(at),
    };
    at.filter(|at| {
        at.duration_since(UNIX_EPOCH)
            .map_or(true, |since| since <= LATEST)
    })
    .ok_or_else(|| {
        "is due after 9999-12-31T23:59:59Z, later than nats-server can hold an event".to_string()
    })
}

/// `at` in RFC 3339 UTC to the millisecond, as `@at` and [`DUE_AT`] carry
/// it (a time past [`LATEST`] as `LATEST`, which [`due`] refuses first).
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let at = at.min(UNIX_EPOCH + LATEST);
    let millis = match at.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    };
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The held message for an event with id `id`, to be stored on `subject`
/// at `at`: its own `headers` plus the schedule's, with `Nats-Msg-Id` =
/// `id`. Every other header nats-server acts on is dropped (a `Nats-TTL`
/// would expire the holder, a `Nats-Schedule-*` change the schedule, a
/// `Nats-Expected-*` guard the wrong stream), but for a `Nats-TTL`, which
/// rides as [`FOR_TTL`] and is the stored event's again. Its subject and headers.
pub(crate) fn holder(
    subject: &str,
    id: &str,
    at: SystemTime,
    event: HeaderMap,
) -> Result<(String, HeaderMap), BadHeader> {
    let mut headers = HeaderMap::with_capacity(event.len() + 6);
    for (name, values) in event.iter() {
        let text: &str = name.as_ref();
        if text.eq_ignore_ascii_case("Nats-TTL") {
            if let Some(ttl) = values.first() {
                headers.set(headers::name(FOR_TTL)?, ttl.clone());
            }
        } else if !headers::is_server_directive(text) {
            for value in values {
                headers.add(name.clone(), value.clone());
            }
        }
    }
    let at = rfc3339(at);
    headers.put(NATS_SCHEDULE, &format!("@at {at}"))?;
    headers.put(NATS_TARGET, DUE)?;
    headers.put(headers::name(FOR_SUBJECT)?, subject)?;
    headers.put(headers::name(FOR_ID)?, id)?;
    headers.put(headers::name(DUE_AT)?, &at)?;
    headers.put(NATS_MESSAGE_ID, id)?;
    Ok((hold_subject(id), headers))
}

/// Where the relay reads (the schedules stream) and where it dead-letters
/// (`<[dead_letters] prefix>.jetrun-delayed`), as a config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayAt {
    pub(crate) stream: String,
    pub(crate) dead_letter: String,
}

impl RelayAt {
    pub(crate) fn of(config: &jetrun_config::Config) -> RelayAt {
        RelayAt {
            stream: config.schedules_stream.clone(),
            dead_letter: config.dead_letters.subject(RELAY),
        }
    }
}

/// The relay's consumer on the schedules stream: patient (a subject's
/// stream may be made after its event was delayed), and dead-lettered only
/// after about an hour of tries.
pub(crate) fn unit(at: &RelayAt) -> Unit {
    Unit {
        name: RELAY.to_string(),
        serves: "delayed events".to_string(),
        binding: StreamBinding {
            consumer: RELAY.to_string(),
            subjects: vec![DUE.to_string()],
            stream: at.stream.clone(),
            managed: true,
            dead_letter: at.dead_letter.clone(),
            ack_wait: Duration::from_secs(30),
            // Failed relays wait out their backoff unacked: one stream that
            // is gone must not use up what the others need.
            max_ack_pending: 100_000,
        },
        retry: RetryPolicy::new(
            20,
            Duration::from_secs(1),
            2.0,
            Duration::from_secs(300),
            0.1,
        )
        .unwrap_or_default(),
        concurrency: 64,
        key: None,
        batch: None,
    }
}

/// The relay's handler: each due event stored on its subject.
pub(crate) struct Relay {
    pub(crate) js: jetstream::Context,
    /// `jetrun_delayed_events_late_seconds`.
    pub(crate) late: Histogram,
}

impl Relay {
    pub(crate) fn handler(js: &jetstream::Context, late: Histogram) -> Arc<dyn Function> {
        Arc::new(Relay {
            js: js.clone(),
            late,
        })
    }
}

#[async_trait]
impl Function for Relay {
    async fn call(&self, _event: &Event, ctx: &Context) -> Outcome {
        let stream = self
            .js
            .get_stream_no_info(&ctx.stream)
            .await
            .map_err(|err| {
                Failure::retryable(format!("cannot read stream {}: {err}", ctx.stream))
            })?;
        // The message as stored: every header the event was held with.
        let due = match stream.get_raw_message(ctx.sequence).await {
            Ok(due) => due,
            // Relayed and deleted by an attempt whose ack was lost.
            Err(err) if matches!(err.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                return Ok(Output::default())
            }
            Err(err) => {
                return Err(Failure::retryable(format!(
                    "cannot read due event {} of stream {}: {err}",
                    ctx.sequence, ctx.stream
                )))
            }
        };
        let (subject, headers) = relayed(&due.headers).map_err(Failure::permanent)?;
        emit::publish(&self.js, &subject, headers, due.payload)
            .await
            .map_err(|err| Failure::retryable(format!("cannot store the delayed event: {err}")))?;
        if let Some(at) = due
            .headers
            .get(DUE_AT)
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at.as_str()).ok())
        {
            let late = SystemTime::now()
                .duration_since(at.into())
                .unwrap_or_default();
            self.late.observe(late.as_secs_f64());
        }
        // Deleted before the ack, so a consumer made anew never relays it
        // again. A delete that fails is not the event's failure: relaying it
        // again past the target's duplicate window would store it twice.
        if let Err(err) = stream.delete_message(ctx.sequence).await {
            if !err.to_string().contains("no message found") {
                tracing::warn!(sequence = ctx.sequence, %err, "Stored a delayed event, but cannot delete its due message; a consumer made anew would relay it again.");
            }
        }
        Ok(Output::default())
    }
}

/// Where a due message goes and the headers it is stored with: its own,
/// without the schedule's and jetrun's delay headers, with `Nats-Msg-Id`
/// = the event's id. `Err`: a message on the due subject jetrun did not hold.
fn relayed(due: &HeaderMap) -> Result<(String, HeaderMap), String> {
    let get = |name: &str| due.get(name).map(|v| v.as_str().to_string());
    let (Some(subject), Some(id)) = (get(FOR_SUBJECT), get(FOR_ID)) else {
        return Err(format!(
            "a message on {DUE} without {FOR_SUBJECT} and {FOR_ID} is not a delayed event \
             jetrun held; it is not relayed"
        ));
    };
    if !jetrun_config::is_publish_subject(&subject) {
        return Err(format!(
            "{FOR_SUBJECT}: {subject:?} is not a subject one can publish to"
        ));
    }
    let mut headers = HeaderMap::with_capacity(due.len());
    for (name, values) in due.iter() {
        let text: &str = name.as_ref();
        if headers::is_server_directive(text)
            || text.to_ascii_lowercase().starts_with("jetrun-delayed-")
        {
            continue;
        }
        for value in values {
            headers.add(name.clone(), value.clone());
        }
    }
    headers
        .put(NATS_MESSAGE_ID, &id)
        .map_err(|err| err.to_string())?;
    if let Some(ttl) = due.get(FOR_TTL) {
        headers.set(HeaderName::from_static("Nats-TTL"), ttl.clone());
    }
    Ok((subject, headers))
}

/// The subjects every held event waits on, one each (what `jetrun schedule
/// list --delayed` reads).
pub(crate) fn held_subjects() -> String {
    format!("{HOLD}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_headers(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.put(HeaderName::from_static("ce-id"), id).unwrap();
        headers
            .put(HeaderName::from_static("ce-type"), "order.reminder")
            .unwrap();
        headers.put(NATS_MESSAGE_ID, id).unwrap();
        headers
    }

    #[test]
    fn a_held_event_fires_at_its_time_into_the_due_subject() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        let (subject, headers) =
            holder("order.reminder", "id-1", at, event_headers("id-1")).expect("headers");
        assert_eq!(subject, hold_subject("id-1"));
        assert!(subject.starts_with("jetrun.delayed.hold.") && !subject[20..].contains('.'));
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(
            get("Nats-Schedule").as_deref(),
            Some("@at 2026-11-30T00:53:20.123Z")
        );
        assert_eq!(get("Nats-Schedule-Target").as_deref(), Some(DUE));
        assert_eq!(get(FOR_SUBJECT).as_deref(), Some("order.reminder"));
        assert_eq!(get(DUE_AT).as_deref(), Some("2026-11-30T00:53:20.123Z"));
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("id-1"));
        assert_ne!(hold_subject("id-1"), hold_subject("id-2"));
    }

    #[test]
    fn a_due_event_is_relayed_with_its_own_headers_and_id() {
        let at = SystemTime::now();
        let (_, mut fired) =
            holder("order.reminder", "id-1", at, event_headers("id-1")).expect("headers");
        // What the server does as it fires: drops its directives, adds its own.
        let mut due = HeaderMap::new();
        for (name, values) in fired.iter() {
            if !name.to_string().starts_with("Nats-") {
                for value in values {
                    due.add(name.clone(), value.clone());
                }
            }
        }
        due.put(
            HeaderName::from_static("Nats-Scheduler"),
            "jetrun.delayed.hold.x",
        )
        .unwrap();
        due.put(HeaderName::from_static("Nats-Schedule-Next"), "purge")
            .unwrap();
        fired = due;
        let (subject, headers) = relayed(&fired).expect("relayed");
        assert_eq!(subject, "order.reminder");
        let names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(headers.get("ce-id").map(|v| v.as_str()), Some("id-1"));
        assert_eq!(
            headers.get("ce-type").map(|v| v.as_str()),
            Some("order.reminder")
        );
        assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("id-1"));
    }

    #[test]
    fn a_held_event_keeps_no_server_directive_but_its_ttl_which_it_gets_back() {
        let mut event = event_headers("id-1");
        for (name, value) in [
            ("Nats-TTL", "1h"),
            ("Nats-Schedule-Rollup", "sub"),
            ("Nats-Expected-Stream", "OTHER"),
            ("Nats-Msg-Id", "another-id"),
        ] {
            event.put(headers::name(name).unwrap(), value).unwrap();
        }
        let (_, held) = holder("order.reminder", "id-1", SystemTime::now(), event).unwrap();
        let get = |map: &HeaderMap, name: &str| map.get(name).map(|v| v.as_str().to_string());
        for gone in ["Nats-TTL", "Nats-Schedule-Rollup", "Nats-Expected-Stream"] {
            assert_eq!(get(&held, gone), None, "{gone}");
        }
        assert_eq!(get(&held, "Nats-Msg-Id").as_deref(), Some("id-1"));
        assert_eq!(get(&held, FOR_TTL).as_deref(), Some("1h"));
        // The server drops its directives as it fires; the relay restores the TTL.
        let mut due = HeaderMap::new();
        for (name, values) in held.iter() {
            if !headers::is_server_directive(name.as_ref()) {
                for value in values {
                    due.add(name.clone(), value.clone());
                }
            }
        }
        let (_, stored) = relayed(&due).unwrap();
        assert_eq!(get(&stored, "Nats-TTL").as_deref(), Some("1h"));
        assert_eq!(get(&stored, FOR_TTL), None);
    }

    #[test]
    fn a_time_past_what_the_server_can_hold_is_refused_without_a_panic() {
        let now = SystemTime::now();
        let year = Duration::from_secs(365 * 24 * 3600);
        assert!(due(Later::After(year), now).is_ok());
        for later in [
            Later::After(year * 300_000),
            Later::After(Duration::MAX),
            Later::At(UNIX_EPOCH + LATEST + Duration::from_secs(1)),
        ] {
            let why = due(later, now).unwrap_err();
            assert!(
                why.starts_with("is due after 9999-12-31T23:59:59Z"),
                "{why}"
            );
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH + year * 300_000),
            "9999-12-31T23:59:59.000Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_message_jetrun_did_not_hold_is_not_relayed() {
        let why = relayed(&event_headers("x")).unwrap_err();
        assert!(why.contains("not a delayed event"), "{why}");
    }

    #[test]
    fn delayed_events_need_2_12() {
        assert_eq!(
            check_server("2.11.3"),
            Err("delayed events need nats-server 2.12 or later; the server is 2.11.3".into())
        );
        assert_eq!(check_server("2.12.0"), Ok(()));
        assert_eq!(check_server("2.15.1"), Ok(()));
    }
}
