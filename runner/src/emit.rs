//! Every message jetrun publishes to a stream, in one place: what functions
//! emit (checked against their `emits` first, each with a deterministic id),
//! what sagas decide, what aggregates append (alone or as one atomic batch),
//! projection writes, dead letters, and replays. Each publish waits for the
//! stream's ack; a failure says why in words a user can act on.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self};
use std::sync::Arc;
use std::time::SystemTime;

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use jetrun_config::{Config, FunctionConfig, DLQ_SUBJECTS};
use jetrun_functions::{Emit, Event, Failure};
use prometheus::IntCounter;
use tracing::Span;

use crate::delayed;
use crate::envelope;
use crate::headers::{self, Put};
use crate::metrics::FunctionMetrics;
use crate::telemetry;

/// Why a publish was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error("no stream captures subject {subject}; add it to a stream's subjects")]
    NoStream { subject: String },
    /// A publish NATS denies is dropped: no ack ever comes.
    #[error(
        "no ack from a stream for {subject} in time; is jetrun's NATS user allowed to publish \
         to {subject}?"
    )]
    NoAck { subject: String },
    /// `Nats-Expected-Last-Subject-Sequence` did not hold: another writer
    /// stored first.
    #[error("another writer stored to {subject} first")]
    WrongLastSequence { subject: String },
    #[error("the message to {subject} is bigger than the server's max_payload")]
    TooBig { subject: String },
    /// The connection broke under the publish: worth trying again.
    #[error("cannot publish to {subject}: the connection to NATS broke")]
    Disconnected { subject: String },
    #[error("cannot publish to {subject}: {reason}")]
    Failed { subject: String, reason: String },
}

impl PublishError {
    fn of(subject: &str, kind: PublishErrorKind, err: &dyn std::fmt::Display) -> PublishError {
        let subject = subject.to_string();
        match kind {
            PublishErrorKind::StreamNotFound => PublishError::NoStream { subject },
            PublishErrorKind::TimedOut => PublishError::NoAck { subject },
            PublishErrorKind::WrongLastSequence => PublishError::WrongLastSequence { subject },
            PublishErrorKind::MaxPayloadExceeded => PublishError::TooBig { subject },
            PublishErrorKind::BrokenPipe => PublishError::Disconnected { subject },
            _ => PublishError::Failed {
                subject,
                reason: err.to_string(),
            },
        }
    }
}

/// Publishes one message to a stream and waits for its ack.
pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<PublishAck, PublishError> {
    let ack = send(js, subject, headers, body).await?;
    acked(subject, ack).await
}

/// Sends one message to a stream; what it returns resolves to the stream's
/// ack. Several can be sent before their acks are awaited.
async fn send(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Result<PublishAckFuture, PublishError> {
    js.publish_with_headers(subject.to_string(), headers, body)
        .await
        .map_err(|err| PublishError::of(subject, err.kind(), &err))
}

/// The stream's ack of a message [`send`] sent to `subject`.
async fn acked(subject: &str, ack: PublishAckFuture) -> Result<PublishAck, PublishError> {
    ack.await
        .map_err(|err| PublishError::of(subject, err.kind(), &err))
}

/// Publishes `messages` as one atomic batch (nats-server 2.12: all stored or
/// none; the stream needs `allow_atomic_publish`), or alone when there is
/// one. Guards (`Nats-Expected-*`) on the first message hold for the batch.
/// The ack of the last message.
pub(crate) async fn publish_batch(
    js: &jetstream::Context,
    mut messages: Vec<(String, HeaderMap, Bytes)>,
) -> Result<PublishAck, PublishError> {
    let Some((subject, mut headers, body)) = messages.pop() else {
        return Err(PublishError::Failed {
            subject: String::new(),
            reason: "nothing to publish".into(),
        });
    };
    if messages.is_empty() {
        return publish(js, &subject, headers, body).await;
    }
    const BATCH_ID: HeaderName = HeaderName::from_static("Nats-Batch-Id");
    const BATCH_SEQUENCE: HeaderName = HeaderName::from_static("Nats-Batch-Sequence");
    const BATCH_COMMIT: HeaderName = HeaderName::from_static("Nats-Batch-Commit");
    let batch_id = headers::value(&BATCH_ID, &uuid::Uuid::new_v4().to_string()).map_err(|err| {
        PublishError::Failed {
            subject: subject.clone(),
            reason: err.to_string(),
        }
    })?;
    let last = messages.len() as u64 + 1;
    let client = js.client();
    for (index, (subject, mut headers, body)) in messages.into_iter().enumerate() {
        headers.set(BATCH_ID, batch_id.clone());
        headers.put_number(BATCH_SEQUENCE, index as u64 + 1);
        let failed = |err: &dyn std::fmt::Display| {
            let reason = err.to_string();
            if reason.contains("wrong last sequence") {
                PublishError::WrongLastSequence {
                    subject: subject.clone(),
                }
            } else {
                PublishError::Failed {
                    subject: subject.clone(),
                    reason,
                }
            }
        };
        if index == 0 {
            // The batch's first message is a request the server answers
            // (empty, or an error); the ones after it are plain publishes.
            let reply = client
                .request_with_headers(subject.clone(), headers, body)
                .await
                .map_err(|e| failed(&e))?;
            if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&reply.payload) {
                if let Some(error) = answer.get("error") {
                    return Err(failed(&error));
                }
            }
        } else {
            client
                .publish_with_headers(subject.clone(), headers, body)
                .await
                .map_err(|e| failed(&e))?;
        }
    }
    headers.set(BATCH_ID, batch_id);
    headers.put_number(BATCH_SEQUENCE, last);
    headers.put_number(BATCH_COMMIT, 1);
    publish(js, &subject, headers, body).await
}

/// Holds the event with id `id` for `subject` until `at` in the schedules
/// stream ([`delayed`]): every delayed event, a function's, a saga's or
/// `jetrun publish --delay`'s. The holder's ack; `Err`: why not, in words
/// a user can act on (retrying may help).
pub(crate) async fn publish_later(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    at: SystemTime,
    headers: HeaderMap,
    body: Bytes,
) -> Result<PublishAck, String> {
    hold(js, subject).await?;
    store_held(js, subject, id, at, headers, body).await
}

/// The second half of [`publish_later`], once [`hold`] said yes: the
/// holder stored.
pub(crate) async fn store_held(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    at: SystemTime,
    headers: HeaderMap,
    body: Bytes,
) -> Result<PublishAck, String> {
    let (holder, headers) =
        delayed::holder(subject, id, at, headers).map_err(|err| err.to_string())?;
    match publish(js, &holder, headers, body).await {
        Ok(ack) => Ok(ack),
        Err(PublishError::NoStream { .. }) => Err(format!(
            "the schedules stream holding delayed events ({}) does not exist; a runner makes \
             it at start (see its log)",
            delayed::SUBJECTS
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// Whether an event for `subject` can be held for later: the server runs
/// `@at` schedules, and a stream captures the subject (found now, not when
/// the event is due). `Err`: why not, a retryable failure's words.
pub(crate) async fn hold(js: &jetstream::Context, subject: &str) -> Result<(), String> {
    delayed::check_server(&js.client().server_info().version)?;
    match js.stream_by_subject(subject).await {
        Ok(_) => Ok(()),
        Err(err) => Err(match err.kind() {
            jetstream::context::GetStreamByNameErrorKind::NotFound => PublishError::NoStream {
                subject: subject.to_string(),
            }
            .to_string(),
            _ => format!("cannot look up the stream of subject {subject}: {err}"),
        }),
    }
}

/// Subjects no emit or replay may reach unless the function's `emits` names
/// them outright: JetStream's, KV's, object stores', the system account's
/// and micro services' APIs, inboxes, every dead-letter subject, and the
/// schedules stream's ticks and schedules (`jetrun schedule trigger` fires
/// a tick; a function does not forge one). A
/// handler (or a dead letter's `Jetrun-Original-Subject`) that names one is
/// a permanent failure, never a stray API call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reserved {
    patterns: Vec<String>,
}

/// The reserved spaces every config has.
const SYSTEM: [&str; 6] = ["$JS.>", "$KV.>", "$O.>", "$SYS.>", "$SRV.>", "_INBOX.>"];

impl Reserved {
    /// The system spaces, `dlq.>` and the schedules stream's subjects: what
    /// is reserved without a config.
    pub(crate) fn default_spaces() -> Reserved {
        let mut patterns: Vec<String> = SYSTEM.iter().map(ToString::to_string).collect();
        patterns.push(DLQ_SUBJECTS.to_string());
        patterns.extend(crate::schedule::STREAM_SUBJECTS.map(String::from));
        Reserved { patterns }
    }

    /// The system spaces, `dlq.>` and every dead-letter subject of `config`.
    pub(crate) fn of(config: &Config) -> Reserved {
        let Reserved { mut patterns } = Reserved::default_spaces();
        let dead_letters = config.dead_letters.subjects();
        if !patterns.contains(&dead_letters) {
            patterns.push(dead_letters);
        }
        let bindings = (config.functions.values().filter_map(|f| f.binding()))
            .chain(config.sagas.values().flat_map(|s| &s.consumers));
        for binding in bindings {
            if !patterns.contains(&binding.dead_letter) {
                patterns.push(binding.dead_letter.clone());
            }
        }
        Reserved { patterns }
    }

    /// Refuses `subject` when it is reserved and no pattern of `emits` names
    /// its space outright (its first token written out, not a wildcard).
    pub(crate) fn check(&self, subject: &str, emits: Option<&[String]>) -> Result<(), IsReserved> {
        let Some(reserved) = self
            .patterns
            .iter()
            .find(|p| jetrun_config::subject_matches(p, subject))
        else {
            return Ok(());
        };
        let first = |s: &str| s.split('.').next().unwrap_or_default().to_string();
        let allowed = emits.is_some_and(|emits| {
            emits
                .iter()
                .any(|p| first(p) == first(subject) && jetrun_config::subject_matches(p, subject))
        });
        if allowed {
            return Ok(());
        }
        Err(IsReserved {
            subject: subject.to_string(),
            pattern: reserved.clone(),
            space: first(subject),
        })
    }
}

/// Why [`Reserved::check`] refused a subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "subject {subject} is reserved ({pattern}): jetrun publishes there only when the function's \
     emits names it outright, like emits = [\"{space}.>\"]"
)]
pub(crate) struct IsReserved {
    subject: String,
    pattern: String,
    space: String,
}

/// Publishes what one function emits: each event with its deterministic id
/// ([`envelope::emitted_headers`]) so a retry is stored once, counted in
/// `jetrun_events_emitted_total`; a delayed one held in the schedules
/// stream ([`delayed`]), counted in `jetrun_delayed_events_scheduled_total`.
#[derive(Clone)]
pub(crate) struct Emitter {
    js: jetstream::Context,
    function: String,
    /// `emits = [...]`, when the function declares it.
    allowed: Option<Vec<String>>,
    reserved: Arc<Reserved>,
    emitted: IntCounter,
    delayed: IntCounter,
}

impl Emitter {
    pub(crate) fn new(
        js: &jetstream::Context,
        function: &FunctionConfig,
        reserved: Arc<Reserved>,
        handles: &FunctionMetrics,
    ) -> Self {
        Emitter {
            js: js.clone(),
            function: function.name.clone(),
            allowed: function.emits.clone(),
            reserved,
            emitted: handles.emitted.clone(),
            delayed: handles.delayed.clone(),
        }
    }

    /// Publishes what handling `input` emitted, once every emit passes the
    /// checks (a bad emit publishes none); how many the target streams
    /// already held (dropped as duplicates).
    ///
    /// All are sent before any ack is awaited (in order, on one connection),
    /// so emitting several costs about one round trip; a failure of any
    /// fails the input, whose retry the ids make safe.
    pub(crate) async fn publish(&self, input: &Event, emits: &[Emit]) -> Result<usize, Failure> {
        self.publish_traced(input, emits, None).await
    }

    /// [`Emitter::publish`] within a delivery's span (`traced`, when
    /// telemetry is on): each emit gets a span of its own, from its send to
    /// its ack, whose context the emitted event carries instead of the
    /// input's.
    pub(crate) async fn publish_traced(
        &self,
        input: &Event,
        emits: &[Emit],
        traced: Option<&Span>,
    ) -> Result<usize, Failure> {
        self.check(emits)?;
        // When each delayed one is due: one the server cannot hold fails
        // the call before anything is sent.
        let now = SystemTime::now();
        let due = (emits.iter())
            .map(|emit| {
                emit.later
                    .map(|later| delayed::due(later, now))
                    .transpose()
                    .map_err(|why| {
                        Failure::permanent(format!("emitted event {} {why}", emit.event_type))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let failed = |emit: &Emit, span: &Option<Span>, err: String| {
            if let Some(span) = span {
                telemetry::failed(span, &err);
            }
            Failure::retryable(format!(
                "cannot publish emitted event {}: {err}",
                emit.event_type
            ))
        };
        let mut sent = Vec::with_capacity(emits.len());
        let mut duplicates = 0;
        for (index, (emit, due)) in emits.iter().zip(due).enumerate() {
            let id = envelope::emitted_id(&self.function, input, index);
            let subject = emit.subject();
            let (span, trace) = match traced {
                Some(parent) => {
                    let (span, trace) = telemetry::send(parent, subject, &emit.event_type, &id);
                    (Some(span), Some(trace))
                }
                None => (None, None),
            };
            let headers =
                envelope::emitted_headers(&self.function, input, &id, emit, trace.as_ref())
                    .map_err(|err| {
                        Failure::permanent(format!("emitted event {}: {err}", emit.event_type))
                    })?;
            let body = serde_json::to_vec(&emit.data).unwrap_or_default();
            if let Some(at) = due {
                // Held, its ack awaited here: it is stored later anyway.
                let ack = publish_later(&self.js, subject, &id, at, headers, body.into())
                    .await
                    .map_err(|err| failed(emit, &span, err))?;
                if ack.duplicate {
                    duplicates += 1;
                } else {
                    self.delayed.inc();
                }
                continue;
            }
            let ack = match send(&self.js, subject, headers, body.into()).await {
                Ok(ack) => ack,
                Err(err) => return Err(failed(emit, &span, err.to_string())),
            };
            sent.push((emit, ack, span));
        }
        for (emit, ack, span) in sent {
            let ack = match acked(emit.subject(), ack).await {
                Ok(ack) => ack,
                Err(err) => return Err(failed(emit, &span, err.to_string())),
            };
            if ack.duplicate {
                duplicates += 1;
            }
            self.emitted.inc();
        }
        Ok(duplicates)
    }

    /// Every emitted event must go to a valid subject inside the function's
    /// `emits` (when it declares one).
    fn check(&self, emits: &[Emit]) -> Result<(), Failure> {
        for emit in emits {
            let subject = emit.subject();
            if !jetrun_config::is_publish_subject(subject) {
                return Err(Failure::permanent(format!(
                    "emitted event {} has subject {subject:?}, which is not a subject one can \
                     publish to",
                    emit.event_type
                )));
            }
            self.reserved
                .check(subject, self.allowed.as_deref())
                .map_err(|why| {
                    Failure::permanent(format!("emitted event {}: {why}", emit.event_type))
                })?;
            if let Some(allowed) = &self.allowed {
                if !allowed
                    .iter()
                    .any(|p| jetrun_config::subject_matches(p, subject))
                {
                    return Err(Failure::permanent(format!(
                        "emitted event {} goes to subject {subject}, outside the function's \
                         emits = {allowed:?}",
                        emit.event_type
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved() -> Reserved {
        let mut patterns: Vec<String> = SYSTEM.iter().map(ToString::to_string).collect();
        patterns.extend(["dlq.>".to_string(), "failed.orders".to_string()]);
        Reserved { patterns }
    }

    #[test]
    fn api_and_dead_letter_subjects_are_refused() {
        let reserved = reserved();
        for subject in [
            "$JS.API.STREAM.DELETE.ORDERS",
            "$KV.jetrun_saga_x.k",
            "$O.b.C.x",
            "$SYS.REQ.SERVER.PING",
            "$SRV.PING",
            "_INBOX.abc",
            "dlq.reserve-stock",
            "failed.orders",
        ] {
            let why = reserved.check(subject, None).unwrap_err().to_string();
            assert!(
                why.contains(&format!("subject {subject} is reserved")),
                "{why}"
            );
        }
        assert_eq!(reserved.check("order.placed", None), Ok(()));
    }

    #[test]
    fn ticks_and_schedules_are_reserved_by_default() {
        let reserved = Reserved::default_spaces();
        for subject in ["jetrun.schedule.tick", "jetrun.schedules.jetrun.tick"] {
            assert!(reserved.check(subject, None).is_err(), "{subject}");
        }
        assert_eq!(reserved.check("jetrun.scheduled", None), Ok(()));
    }

    #[test]
    fn only_an_emits_pattern_naming_the_space_allows_it() {
        let reserved = reserved();
        let wide = vec![">".to_string()];
        assert!(reserved.check("$KV.b.k", Some(&wide)).is_err());
        let named = vec!["$KV.b.>".to_string()];
        assert_eq!(reserved.check("$KV.b.k", Some(&named)), Ok(()));
        assert!(reserved.check("$KV.other.k", Some(&named)).is_err());
    }
}
