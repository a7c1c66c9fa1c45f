//! A delivery's outcome made final: acked, NAKed with the backoff delay, or
//! dead-lettered and then terminated (`+TERM`). A dead letter that cannot be
//! stored leaves the event in its stream, to be tried again.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind};
use jetrun_functions::Context;

use super::dead_letter::{self, DeadLetter};
use super::retry::{self, Action, Attempt, Reason};
use super::Shared;
use crate::redact;

/// Acks, NAKs with the backoff delay, or dead-letters then terminates.
pub(super) async fn settle(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    outcome: Attempt,
) {
    let metrics = &shared.metrics;
    let policy = &shared.unit.retry;
    match retry::decide(&outcome, ctx.attempt, policy, fastrand::f64()) {
        Action::Ack => {
            metrics.success.inc();
            if let Err(err) = message.ack().await {
                tracing::warn!(%err, "Ack failed; the event may be redelivered.");
            }
            // One line per event is too many by default; JETRUN_LOG=jetrun=debug shows it.
            tracing::debug!("Event handled.");
        }
        Action::Retry(delay) => {
            metrics.retry.inc();
            let error = redact::text(&outcome.error());
            tracing::warn!(%error, "Handler failed; retrying in {}.", humantime::format_duration(round_ms(delay)));
            if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(%err, "NAK failed; the event will be redelivered after the ack wait.");
            }
        }
        Action::DeadLetter(reason) => {
            let error = redact::text(&outcome.error());
            Box::pin(dead_letter(shared, message, ctx, reason, &error)).await;
        }
    }
}

async fn dead_letter(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    reason: Reason,
    error: &str,
) {
    let metrics = &shared.metrics;
    let subject = &shared.unit.binding.dead_letter;
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
        }
        Err(err) => {
            // Never drop an event: if the dead letter cannot be stored, the
            // original stays in its stream and is tried again later.
            metrics.retry.inc();
            let delay = shared.unit.retry.max_delay();
            tracing::error!(%err, %subject, "Cannot publish the dead letter; NAKing the event to try again in {}.", humantime::format_duration(delay));
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
