//! One message from its envelope to its outcome: read as an event, handed
//! to the handler stack inside the event's span (kept alive with in-progress
//! acks while the handler runs), what it emitted published, and the outcome
//! settled. A panic on the way is this event's failure, never the consumer's
//! end. An abandoned drain NAKs the message instead.

use std::panic::AssertUnwindSafe;

use async_nats::jetstream::{self, AckKind};
use futures::FutureExt as _;
use jetrun_functions::{Context, Event, Failure};
use tracing::Instrument;

use super::retry::Attempt;
use super::{settle, Shared};
use crate::envelope::{self, Origin};
use crate::shutdown::Shutdown;
use crate::tasks;

/// Handles one delivery from start to settlement.
pub(super) async fn deliver(
    shared: &Shared,
    message: jetstream::Message,
    stream_created: u64,
    shutdown: &Shutdown,
) {
    let metrics = &shared.metrics;
    let name = &shared.unit.name;
    metrics.received.inc();
    let info = match message.info() {
        Ok(info) => info,
        Err(err) => {
            tracing::error!(function = %name, %err, "A delivery without JetStream metadata; leaving it to redelivery.");
            return;
        }
    };
    let (attempt, stream, sequence) = (
        info.delivered.max(1) as u64,
        info.stream.to_string(),
        info.stream_sequence,
    );
    let origin = Origin {
        subject: message.subject.as_str(),
        stream: &stream,
        sequence,
        published: info.published.into(),
    };
    let event = envelope::read_event(&origin, message.headers.as_ref(), &message.payload);
    // Every field at creation, and strings as Display: the log formatter
    // renders a span's fields when the span is made, logged in it or not,
    // and Debug escapes every character of a string.
    use tracing::field::display;
    let (event_id, event_type, correlation_id, causation_id) = match &event {
        Ok(e) => (
            Some(display(e.id.as_str())),
            Some(display(e.event_type.as_str())),
            e.correlationid.as_deref().map(display),
            e.causationid.as_deref().map(display),
        ),
        Err(_) => (None, None, None, None),
    };
    let span = tracing::info_span!(
        "event",
        function = %name,
        event_id,
        event_type,
        correlation_id,
        causation_id,
        attempt,
        stream = %stream,
        sequence,
    );
    let ctx = Context {
        function: name.clone(),
        attempt,
        subject: message.subject.to_string(),
        stream,
        stream_created,
        sequence,
    };
    async {
        let outcome = match event {
            Ok(event) => {
                // Boxed, like the dead-letter path: the task that carries
                // each delivery stays small, so spawning it copies little.
                let run = AssertUnwindSafe(Box::pin(call_and_emit(
                    shared, &event, &ctx, &message,
                )))
                .catch_unwind();
                tokio::select! {
                    result = run => match result {
                        Ok(Ok(())) => Attempt::Handled,
                        Ok(Err(failure)) => Attempt::Failed(failure),
                        Err(panic) => Attempt::Panicked(tasks::panic_message(panic.as_ref())),
                    },
                    () = shutdown.abandoned() => {
                        tracing::warn!("Shutdown timeout reached; NAKing the event for redelivery.");
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        return;
                    }
                }
            }
            Err(failure) => Attempt::Failed(failure),
        };
        settle::settle(shared, &message, &ctx, outcome).await;
    }
    .instrument(span)
    .await
}

/// Calls the handler (keeping the message alive with in-progress acks while
/// it runs), then publishes what it emitted.
async fn call_and_emit(
    shared: &Shared,
    event: &Event,
    ctx: &Context,
    message: &jetstream::Message,
) -> Result<(), Failure> {
    let call = shared.handler.call(event, ctx);
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
    let emits = outcome?.emits;
    match &shared.emitter {
        Some(emitter) => emitter.publish(event, &emits).await.map(|_| ()),
        None => Ok(()),
    }
}
