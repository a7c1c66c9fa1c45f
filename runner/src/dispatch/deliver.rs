//! One message from its envelope to its outcome: read as an event, handed
//! to the handler stack inside the event's span (kept alive with in-progress
//! acks while the handler runs), what it emitted published, and the outcome
//! settled. A panic on the way is this event's failure, never the consumer's
//! end. An abandoned drain NAKs the message instead.

use std::panic::AssertUnwindSafe;

use async_nats::jetstream::{self, AckKind};
use futures::FutureExt as _;
use jetrun_functions::{Context, Event, Failure};
use tracing::{Instrument, Span};

use super::order::Settled;
use super::pull::Slot;
use super::retry::Attempt;
use super::{settle, Shared};
use crate::envelope::{self, Origin};
use crate::flow::key::Key;
use crate::logging::{self, EventFields};
use crate::shutdown::Shutdown;
use crate::{tasks, telemetry};

/// What the pull read from a message's reply subject, once.
pub(super) struct Delivery {
    /// The delivery count, from 1.
    pub(super) attempt: u64,
    pub(super) stream: String,
    /// When the stream was created (see [`crate::nats::Floor`]).
    pub(super) stream_created: u64,
    pub(super) sequence: u64,
    pub(super) published: std::time::SystemTime,
    /// The event's key, when the function has `key` and it could be read
    /// (set by the pull, which orders the events of one key).
    pub(super) key: Option<Key>,
    /// The message read as an event, when the pull read it already (a
    /// keyed function's, for its key); for an event without a key that
    /// `missing_key` dead-letters, that permanent failure.
    pub(super) event: Option<Result<Event, Failure>>,
}

impl Delivery {
    /// Reads `message`'s metadata; also what the server still holds for
    /// the consumer. `None` (logged) for a message without it.
    pub(super) fn of(
        message: &jetstream::Message,
        stream_created: u64,
        function: &str,
    ) -> Option<(Delivery, u64)> {
        match message.info() {
            Ok(info) => Some((
                Delivery {
                    attempt: info.delivered.max(1) as u64,
                    stream: info.stream.to_string(),
                    stream_created,
                    sequence: info.stream_sequence,
                    published: info.published.into(),
                    key: None,
                    event: None,
                },
                info.pending,
            )),
            Err(err) => {
                tracing::error!(function = %function, %err, "A delivery without JetStream metadata; leaving it to redelivery.");
                None
            }
        }
    }
}

/// A delivery read: the event (or why it is none), its context and spans.
pub(super) struct Read {
    pub(super) message: jetstream::Message,
    pub(super) event: Result<Event, Failure>,
    pub(super) ctx: Context,
    pub(super) key: Option<Key>,
    pub(super) traced: Option<Span>,
    pub(super) span: Span,
}

/// Reads one delivery as an event, with its context, log span and (with
/// telemetry) `process` span: the start of [`deliver`] and of a batch's.
pub(super) fn read(function: &str, message: jetstream::Message, delivery: Delivery) -> Read {
    let Delivery {
        attempt,
        stream,
        stream_created,
        sequence,
        published,
        key,
        event,
    } = delivery;
    let origin = Origin {
        subject: message.subject.as_str(),
        stream: &stream,
        sequence,
        published,
    };
    let event = event.unwrap_or_else(|| {
        envelope::read_event(&origin, message.headers.as_ref(), &message.payload)
    });
    let traced = traced(
        function,
        &origin,
        message.headers.as_ref(),
        event.as_ref().ok(),
        attempt,
    );
    let span = logging::event_span(EventFields {
        function: function.to_string(),
        event_id: event.as_ref().ok().map(|e| e.id.clone()),
        event_type: event.as_ref().ok().map(|e| e.event_type.clone()),
        correlation_id: event.as_ref().ok().and_then(|e| e.correlationid.clone()),
        causation_id: event.as_ref().ok().and_then(|e| e.causationid.clone()),
        attempt,
        stream: stream.clone(),
        sequence,
    });
    let ctx = Context {
        function: function.to_string(),
        attempt,
        subject: message.subject.to_string(),
        stream,
        stream_created,
        sequence,
        trace: None,
    };
    Read {
        message,
        event,
        ctx,
        key,
        traced,
        span,
    }
}

/// Handles one delivery from start to settlement; says how it was settled.
pub(super) async fn deliver(
    shared: &Shared,
    message: jetstream::Message,
    delivery: Delivery,
    slot: Slot,
    shutdown: &Shutdown,
) -> Settled {
    let metrics = &shared.metrics;
    let name = &shared.unit.name;
    metrics.received.inc();
    let Read {
        message,
        event,
        ctx,
        key,
        traced,
        span,
    } = read(name, message, delivery);
    async {
        // A parked key's event is dead-lettered without calling the handler.
        if let Some(settled) =
            settle::if_parked(shared, &message, &ctx, key.as_ref(), traced.as_ref()).await
        {
            return settled;
        }
        let outcome = match event {
            Ok(event) => {
                // Boxed, like the dead-letter path: the task that carries
                // each delivery stays small, so spawning it copies little.
                let mut run = AssertUnwindSafe(Box::pin(call_and_emit(
                    shared,
                    &event,
                    &ctx,
                    &message,
                    slot,
                    traced.as_ref(),
                )))
                .catch_unwind();
                // A handler done at its first poll never waits on the drain.
                let result = match (&mut run).now_or_never() {
                    Some(result) => result,
                    None => tokio::select! {
                        result = run => result,
                        () = shutdown.abandoned() => {
                            tracing::warn!("Shutdown timeout reached; NAKing the event for redelivery.");
                            if let Some(traced) = &traced {
                                telemetry::outcome(traced, "abandoned");
                            }
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                            return Settled::Done;
                        }
                    },
                };
                match result {
                    Ok(Ok(())) => Attempt::Handled,
                    Ok(Err(failure)) => Attempt::Failed(failure),
                    Err(panic) => Attempt::Panicked(tasks::panic_message(panic.as_ref())),
                }
            }
            Err(failure) => Attempt::Failed(failure),
        };
        settle::settle(
            shared,
            &message,
            &ctx,
            key.as_ref(),
            outcome,
            traced.as_ref(),
        )
        .await
    }
    .instrument(span)
    .await
}

/// The delivery's OpenTelemetry span, when telemetry is on: the input's
/// trace context from the event, or from the headers of a message that is
/// no event.
pub(super) fn traced(
    function: &str,
    origin: &Origin<'_>,
    headers: Option<&async_nats::HeaderMap>,
    event: Option<&Event>,
    attempt: u64,
) -> Option<tracing::Span> {
    if !telemetry::enabled() {
        return None;
    }
    let header = |name: &str| match event {
        Some(event) => event.extensions.get(name).map(String::as_str),
        None => headers.and_then(|h| h.get(name)).map(|v| v.as_str()),
    };
    telemetry::process(&telemetry::Input {
        function,
        subject: origin.subject,
        stream: origin.stream,
        sequence: origin.sequence,
        attempt,
        event_id: event.map(|e| e.id.as_str()),
        event_type: event.map(|e| e.event_type.as_str()),
        correlation_id: event.and_then(|e| e.correlationid.as_deref()),
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
    })
}

/// Calls the handler holding `slot` (keeping the message alive with
/// in-progress acks while it runs), gives the slot back, then publishes
/// what it emitted: waiting for those to be stored holds no handler slot.
/// With telemetry, the call and each emit get a span within `traced`.
async fn call_and_emit(
    shared: &Shared,
    event: &Event,
    ctx: &Context,
    message: &jetstream::Message,
    slot: Slot,
    traced: Option<&tracing::Span>,
) -> Result<(), Failure> {
    let call_span = traced.map(|parent| telemetry::call(parent, &ctx.function));
    // With traces, what the call itself publishes or requests (an HTTP
    // function's request, an aggregate's appends, a saga's commands)
    // continues the call's span.
    let traced_ctx = call_span.as_ref().map(|span| Context {
        trace: Some(telemetry::trace_context(span)),
        ..ctx.clone()
    });
    let call = async {
        // A call over the rate waits its turn here, kept alive like the call.
        if let Some(rate) = &shared.rate {
            rate.wait().await;
        }
        shared
            .handler
            .call(event, traced_ctx.as_ref().unwrap_or(ctx))
            .await
    };
    tokio::pin!(call);
    // Half the ack wait: a slow handler is never redelivered behind its back.
    // A handler that finishes at its first poll never touches the timer.
    let keep_alive = shared.unit.binding.ack_wait / 2;
    let outcome = match futures::FutureExt::now_or_never(&mut call) {
        Some(outcome) => outcome,
        None => loop {
            tokio::select! {
                biased;
                outcome = &mut call => break outcome,
                () = tokio::time::sleep(keep_alive) => {
                    if let Err(err) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(%err, "In-progress ack failed.");
                    }
                }
            }
        },
    };
    drop(slot);
    if let Some(span) = call_span {
        if let Err(failure) = &outcome {
            telemetry::failed(&span, &crate::redact::text(&failure.message));
        }
    }
    let emits = outcome?.emits;
    match &shared.emitter {
        Some(emitter) => emitter
            .publish_traced(event, &emits, traced)
            .await
            .map(|_| ()),
        None => Ok(()),
    }
}
