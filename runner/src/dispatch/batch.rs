//! One batch of deliveries (a function with `batch`) from their envelopes to
//! their outcomes: the twin of [`deliver`](super::deliver) for N messages.
//! Each message is read as an event in its own span (one that is not an
//! event is dead-lettered alone, the rest go on); the events go to the
//! handler stack in one `call_batch`, kept alive with in-progress acks while
//! it runs; then each item is settled on its own outcome, with its own emits,
//! retry schedule and dead letter, as if it had come alone. A panic in the
//! call fails every item; an abandoned drain NAKs what is left.

use std::panic::AssertUnwindSafe;

use async_nats::jetstream::{self, AckKind};
use futures::future::join_all;
use futures::FutureExt as _;
use jetrun_functions::{Context, Emit, Event, Failure, Outcome};
use tracing::{Instrument, Span};

use super::deliver::{self, Delivery, Read};
use super::order::Settled;
use super::pull::Slot;
use super::retry::Attempt;
use super::{settle, Shared};
use crate::flow::key::Key;
use crate::shutdown::Shutdown;
use crate::{redact, tasks, telemetry};

/// One delivery of the batch that is an event, on its way to the handler.
struct Item {
    message: jetstream::Message,
    event: Event,
    ctx: Context,
    /// Its key, for a keyed function.
    key: Option<Key>,
    /// Its OpenTelemetry `process` span, with telemetry.
    traced: Option<Span>,
    /// Its log span.
    span: Span,
}

/// Handles one batch from start to settlement: how each delivery was
/// settled, in the order of `deliveries`.
pub(super) async fn deliver_batch(
    shared: &Shared,
    deliveries: Vec<(jetstream::Message, Delivery)>,
    slot: Slot,
    shutdown: &Shutdown,
) -> Vec<Settled> {
    let metrics = &shared.metrics;
    let count = deliveries.len();
    metrics.received.inc_by(count as u64);
    metrics.batch_size.observe(count as f64);
    let mut settled = vec![Settled::Done; count];
    let mut items = Vec::with_capacity(count);
    let mut places = Vec::with_capacity(count);
    let mut refused = Vec::new();
    for (place, (message, delivery)) in deliveries.into_iter().enumerate() {
        let read = deliver::read(&shared.unit.name, message, delivery);
        match read.event {
            Ok(event) => {
                places.push(place);
                items.push(Item {
                    message: read.message,
                    event,
                    ctx: read.ctx,
                    key: read.key,
                    traced: read.traced,
                    span: read.span,
                });
            }
            Err(failure) => {
                let Read {
                    message,
                    ctx,
                    key,
                    traced,
                    span,
                    ..
                } = read;
                refused.push(
                    async move {
                        let how = settle::settle(
                            shared,
                            &message,
                            &ctx,
                            key.as_ref(),
                            Attempt::Failed(failure),
                            traced.as_ref(),
                        )
                        .await;
                        (place, how)
                    }
                    .instrument(span),
                );
            }
        }
    }
    for (place, how) in join_all(refused).await {
        settled[place] = how;
    }
    if items.is_empty() {
        return settled;
    }

    // With traces, each item gets a call span, and what the call itself
    // sends continues the first item's.
    let call_spans: Vec<Option<Span>> = items
        .iter()
        .map(|item| {
            item.traced
                .as_ref()
                .map(|parent| telemetry::call(parent, &item.ctx.function))
        })
        .collect();
    let calls: Vec<(Event, Context)> = items
        .iter()
        .zip(&call_spans)
        .map(|(item, call_span)| {
            let ctx = Context {
                trace: call_span.as_ref().map(telemetry::trace_context),
                ..item.ctx.clone()
            };
            (item.event.clone(), ctx)
        })
        .collect();
    let result = {
        let messages: Vec<&jetstream::Message> = items.iter().map(|item| &item.message).collect();
        let batch_span =
            tracing::info_span!("batch", function = %shared.unit.name, events = items.len());
        let mut run = AssertUnwindSafe(Box::pin(
            call(shared, &calls, &messages, slot).instrument(batch_span),
        ))
        .catch_unwind();
        match (&mut run).now_or_never() {
            Some(result) => Some(result),
            None => tokio::select! {
                result = run => Some(result),
                () = shutdown.abandoned() => None,
            },
        }
    };
    drop(calls);
    let Some(result) = result else {
        abandon(&items).await;
        return settled;
    };
    let outcomes: Vec<Result<Outcome, String>> = match result {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(panic) => vec![Err(tasks::panic_message(panic.as_ref())); items.len()],
    };
    let finished =
        items
            .into_iter()
            .zip(outcomes)
            .zip(call_spans)
            .map(|((item, outcome), call_span)| {
                let span = item.span.clone();
                finish(shared, item, outcome, call_span, shutdown).instrument(span)
            });
    for (place, how) in places.into_iter().zip(join_all(finished).await) {
        settled[place] = how;
    }
    settled
}

/// Calls the handler once for the whole batch holding `slot`, keeping every
/// message alive with in-progress acks while it runs (and while it waits
/// for the rate), then gives the slot back. One outcome per item: a handler
/// that gives fewer fails the rest, more are dropped.
async fn call(
    shared: &Shared,
    calls: &[(Event, Context)],
    messages: &[&jetstream::Message],
    slot: Slot,
) -> Vec<Outcome> {
    let call = async {
        // A batch is one handler call: it takes one turn of the rate.
        if let Some(rate) = &shared.rate {
            rate.wait().await;
        }
        shared.handler.call_batch(calls).await
    };
    tokio::pin!(call);
    // Half the ack wait: a slow handler is never redelivered behind its back.
    let keep_alive = shared.unit.binding.ack_wait / 2;
    let mut outcomes = match (&mut call).now_or_never() {
        Some(outcomes) => outcomes,
        None => loop {
            tokio::select! {
                biased;
                outcomes = &mut call => break outcomes,
                () = tokio::time::sleep(keep_alive) => {
                    let acks = messages.iter().map(|m| m.ack_with(AckKind::Progress));
                    for result in join_all(acks).await {
                        if let Err(err) = result {
                            tracing::debug!(%err, "In-progress ack failed.");
                        }
                    }
                }
            }
        },
    };
    drop(slot);
    if outcomes.len() != calls.len() {
        tracing::error!(
            outcomes = outcomes.len(),
            events = calls.len(),
            "The handler gave a batch's outcomes for another number of events; the missing \
             ones are retried."
        );
        outcomes.truncate(calls.len());
        while outcomes.len() < calls.len() {
            outcomes.push(Err(Failure::retryable(
                "the handler gave no outcome for this event of its batch",
            )));
        }
    }
    outcomes
}

/// One item after the call: what it emitted published (a panic there is its
/// failure), then settled.
async fn finish(
    shared: &Shared,
    item: Item,
    outcome: Result<Outcome, String>,
    call_span: Option<Span>,
    shutdown: &Shutdown,
) -> Settled {
    if let (Some(span), Ok(Err(failure))) = (&call_span, &outcome) {
        telemetry::failed(span, &redact::text(&failure.message));
    }
    drop(call_span);
    let attempt = match outcome {
        Err(panic) => Attempt::Panicked(panic),
        Ok(Err(failure)) => Attempt::Failed(failure),
        Ok(Ok(output)) => {
            let mut run =
                AssertUnwindSafe(Box::pin(emit(shared, &item, &output.emits))).catch_unwind();
            let result = match (&mut run).now_or_never() {
                Some(result) => result,
                None => tokio::select! {
                    result = run => result,
                    () = shutdown.abandoned() => {
                        abandon(std::slice::from_ref(&item)).await;
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
    };
    settle::settle(
        shared,
        &item.message,
        &item.ctx,
        item.key.as_ref(),
        attempt,
        item.traced.as_ref(),
    )
    .await
}

async fn emit(shared: &Shared, item: &Item, emits: &[Emit]) -> Result<(), Failure> {
    match &shared.emitter {
        Some(emitter) => emitter
            .publish_traced(&item.event, emits, item.traced.as_ref())
            .await
            .map(|_| ()),
        None => Ok(()),
    }
}

/// The drain gave up: every item NAKed for redelivery.
async fn abandon(items: &[Item]) {
    let naks = items.iter().map(|item| {
        async {
            tracing::warn!("Shutdown timeout reached; NAKing the event for redelivery.");
            if let Some(traced) = &item.traced {
                telemetry::outcome(traced, "abandoned");
            }
            let _ = item.message.ack_with(AckKind::Nak(None)).await;
        }
        .instrument(item.span.clone())
    });
    join_all(naks).await;
}
