//! A delivery's outcome made final: acked, NAKed with the backoff delay, or
//! dead-lettered and then terminated (`+TERM`). A dead letter that cannot be
//! stored leaves the event in its stream, to be tried again. With
//! telemetry, the delivery's span is given the outcome (and the error), and
//! the dead letter's publish a span of its own.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind};
use jetrun_functions::Context;
use tracing::Span;

use super::dead_letter::{self, DeadLetter};
use super::order::Settled;
use super::retry::{self, Action, Attempt, Reason};
use super::Shared;
use crate::{redact, telemetry};

/// Acks, NAKs with the backoff delay, or dead-letters then terminates;
/// says which, for the order of a keyed function's events.
pub(super) async fn settle(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    outcome: Attempt,
    traced: Option<&Span>,
) -> Settled {
    let metrics = &shared.metrics;
    let policy = &shared.unit.retry;
    let action = retry::decide(&outcome, ctx.attempt, policy, fastrand::f64());
    if let Some(span) = traced {
        let name = match action {
            Action::Ack => "handled",
            Action::Retry(_) => "retried",
            Action::DeadLetter(_) => "dead_lettered",
        };
        telemetry::outcome(span, name);
        if !matches!(action, Action::Ack) {
            telemetry::failed(span, &redact::text(&outcome.error()));
        }
    }
    match action {
        Action::Ack => {
            metrics.success.inc();
            if let Err(err) = message.ack().await {
                tracing::warn!(%err, "Ack failed; the event may be redelivered.");
            }
            // One line per event is too many by default; JETRUN_LOG=jetrun=debug shows it.
            tracing::debug!("Event handled.");
            Settled::Done
        }
        Action::Retry(delay) => {
            metrics.retry.inc();
            let error = redact::text(&outcome.error());
            tracing::warn!(%error, "Handler failed; retrying in {}.", humantime::format_duration(round_ms(delay)));
            if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(%err, "NAK failed; the event will be redelivered after the ack wait.");
            }
            Settled::Retrying(delay)
        }
        Action::DeadLetter(reason) => {
            let error = redact::text(&outcome.error());
            Box::pin(dead_letter(shared, message, ctx, reason, &error, traced)).await
        }
    }
}

async fn dead_letter(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    reason: Reason,
    error: &str,
    traced: Option<&Span>,
) -> Settled {
    let metrics = &shared.metrics;
    let subject = &shared.unit.binding.dead_letter;
    let span = traced.map(|parent| telemetry::dead_letter(parent, subject, reason.as_str()));
    let letter = DeadLetter {
        function: &shared.unit.name,
        reason,
        error,
        attempts: ctx.attempt,
        subject: &ctx.subject,
        stream: &ctx.stream,
        stream_created: ctx.stream_created,
        sequence: ctx.sequence,
        failed_at: SystemTime::now(),
    };
    let published = dead_letter::publish(
        &shared.js,
        subject,
        &letter,
        message.headers.as_ref(),
        message.payload.clone(),
    )
    .await;
    if let (Some(span), Err(err)) = (span, &published) {
        telemetry::failed(&span, &redact::text(&err.to_string()));
    }
    match published {
        Ok(()) => {
            metrics.dead_letter.inc();
            match reason {
                Reason::Exhausted => metrics.exhausted.inc(),
                Reason::Permanent => metrics.permanent.inc(),
                Reason::Panic => metrics.panicked.inc(),
            }
            tracing::warn!(%error, reason = reason.as_str(), dead_letter = %subject, "Event dead-lettered.");
            if let Err(err) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%err, "+TERM failed; the event will be redelivered and dead-lettered again (deduplicated).");
            }
            Settled::Done
        }
        Err(err) => {
            // Never drop an event: if the dead letter cannot be stored, the
            // original stays in its stream and is tried again later.
            if let Some(traced) = traced {
                telemetry::outcome(traced, "retried");
            }
            metrics.retry.inc();
            let delay = shared.unit.retry.max_delay();
            tracing::error!(%err, %subject, "Cannot publish the dead letter; NAKing the event to try again in {}.", humantime::format_duration(delay));
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            Settled::Retrying(delay)
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
