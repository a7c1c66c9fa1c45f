//! Every message jetrun publishes to a stream, in one place: what functions
//! emit (checked against their `emits` first, each with a deterministic id),
//! what sagas decide, what aggregates append (alone or as one atomic batch),
//! projection writes, dead letters, and replays. Each publish waits for the
//! stream's ack; a failure says why in words a user can act on.

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use bytes::Bytes;
use jetrun_config::FunctionConfig;
use jetrun_functions::{Emit, Event, Failure};
use prometheus::IntCounter;

use crate::envelope;

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
    let sent: Result<PublishAckFuture, _> = js
        .publish_with_headers(subject.to_string(), headers, body)
        .await;
    let ack = match sent {
        Ok(ack) => ack.await,
        Err(err) => Err(err),
    };
    ack.map_err(|err| PublishError::of(subject, err.kind(), &err))
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
    let batch = uuid::Uuid::new_v4().to_string();
    let last = (messages.len() + 1).to_string();
    let client = js.client();
    for (index, (subject, mut headers, body)) in messages.into_iter().enumerate() {
        headers.insert("Nats-Batch-Id", batch.as_str());
        headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
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
    headers.insert("Nats-Batch-Id", batch.as_str());
    headers.insert("Nats-Batch-Sequence", last.as_str());
    headers.insert("Nats-Batch-Commit", "1");
    publish(js, &subject, headers, body).await
}

/// Publishes what one function emits: each event with its deterministic id
/// ([`envelope::emitted_headers`]) so a retry is stored once, counted in
/// `jetrun_events_emitted_total`.
#[derive(Clone)]
pub(crate) struct Emitter {
    js: jetstream::Context,
    function: String,
    /// `emits = [...]`, when the function declares it.
    allowed: Option<Vec<String>>,
    emitted: IntCounter,
}

impl Emitter {
    pub(crate) fn new(
        js: &jetstream::Context,
        function: &FunctionConfig,
        emitted: IntCounter,
    ) -> Self {
        Emitter {
            js: js.clone(),
            function: function.name.clone(),
            allowed: function.emits.clone(),
            emitted,
        }
    }

    /// Publishes what handling `input` emitted, once every emit passes the
    /// checks (a bad emit publishes none); how many the target streams
    /// already held (dropped as duplicates).
    pub(crate) async fn publish(&self, input: &Event, emits: &[Emit]) -> Result<usize, Failure> {
        self.check(emits)?;
        let mut duplicates = 0;
        for (index, emit) in emits.iter().enumerate() {
            let headers = envelope::emitted_headers(&self.function, input, index, emit);
            let body = serde_json::to_vec(&emit.data).unwrap_or_default();
            let subject = emit.subject();
            let ack = publish(&self.js, subject, headers, body.into())
                .await
                .map_err(|err| {
                    Failure::retryable(format!(
                        "cannot publish emitted event {}: {err}",
                        emit.event_type
                    ))
                })?;
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
