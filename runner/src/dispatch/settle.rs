//! A delivery's outcome made final: acked, NAKed with the backoff delay, or
//! dead-lettered and then terminated (`+TERM`). A dead letter that cannot be
//! stored leaves the event in its stream, to be tried again. With
//! telemetry, the delivery's span is given the outcome (and the error), and
//! the dead letter's publish a span of its own.
//!
//! With `on_dead_letter = "park"`, a keyed event's dead letter parks its key
//! before the `+TERM` ([`crate::flow::park`]), and [`if_parked`] dead-letters
//! the later events of a parked key without calling the handler.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind};
use jetrun_config::OnDeadLetter;
use jetrun_functions::Context;
use tracing::Span;

use super::dead_letter::{self, DeadLetter, Keyed};
use super::order::Settled;
use super::retry::{self, Action, Attempt, Reason};
use super::Shared;
use crate::flow::key::Key;
use crate::flow::park::{self, Blocker, Parked};
use crate::{redact, telemetry};

/// Acks, NAKs with the backoff delay, or dead-letters then terminates;
/// says which, for the order of a keyed function's events.
pub(super) async fn settle(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    key: Option<&Key>,
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
            let letter = Letter {
                reason,
                error: &error,
                key,
                parked_behind: None,
            };
            Box::pin(dead_letter(shared, message, ctx, letter, traced)).await
        }
    }
}

/// Whether the function parks the key of an event dead-lettered.
fn parks(shared: &Shared) -> bool {
    shared
        .unit
        .key
        .as_ref()
        .is_some_and(|key| key.on_dead_letter == OnDeadLetter::Park)
}

/// The function's parks, for a park-mode function.
async fn parked(shared: &Shared) -> Result<std::sync::Arc<Parked>, park::ParkError> {
    Parked::of(&shared.js, &shared.unit.name, &shared.metrics.parked_keys).await
}

/// Before the handler runs: an event of a parked key is dead-lettered
/// (reason `parked`, `Jetrun-Parked-Behind`) and terminated, unless it is
/// the replay that lifts the park (`Jetrun-Unparks` naming the key's
/// blocker), which lifts it and runs. `None`: let the handler run.
pub(super) async fn if_parked(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    key: Option<&Key>,
    traced: Option<&Span>,
) -> Option<Settled> {
    let key = key.filter(|_| parks(shared))?;
    let lifted = async {
        let parked = parked(shared).await?;
        let Some(blocker) = parked.blocker(key).await? else {
            return Ok(None);
        };
        if park::unparks(message.headers.as_ref()).as_ref() == Some(&blocker)
            && parked.unpark(key, &blocker).await?
        {
            tracing::info!(key = %key, blocker = %blocker, "Replay of the dead letter the key was parked behind; the key is unparked.");
            return Ok(None);
        }
        Ok::<_, park::ParkError>(Some(blocker))
    };
    let blocker = match lifted.await {
        Ok(None) => return None,
        Ok(Some(blocker)) => blocker,
        Err(err) => {
            let delay = shared.unit.retry.max_delay();
            shared.metrics.retry.inc();
            tracing::error!(%err, "Cannot tell whether the event's key is parked; NAKing it to try again in {}.", humantime::format_duration(delay));
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            return Some(Settled::Retrying(delay));
        }
    };
    if blocker.stream == ctx.stream && blocker.sequence == ctx.sequence {
        // The blocker itself, redelivered after its dead letter and park
        // were stored but before its +TERM landed.
        let _ = message.ack_with(AckKind::Term).await;
        return Some(Settled::Done);
    }
    if let Some(span) = traced {
        telemetry::outcome(span, "dead_lettered");
    }
    let error = format!(
        "parked: an earlier event of key {key} was dead-lettered ({blocker}); replay it with \
         `jetrun dlq replay` to run this one after it"
    );
    let letter = Letter {
        reason: Reason::Parked,
        error: &error,
        key: Some(key),
        parked_behind: Some(&blocker),
    };
    Some(Box::pin(dead_letter(shared, message, ctx, letter, traced)).await)
}

/// Why and what of a dead letter.
struct Letter<'a> {
    reason: Reason,
    error: &'a str,
    /// The event's key, for a keyed function.
    key: Option<&'a Key>,
    /// The blocker its key is parked behind (reason `parked`).
    parked_behind: Option<&'a Blocker>,
}

async fn dead_letter(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    letter: Letter<'_>,
    traced: Option<&Span>,
) -> Settled {
    let Letter {
        reason,
        error,
        key,
        parked_behind,
    } = letter;
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
    let keyed = key.map(|key| Keyed { key, parked_behind });
    let published = dead_letter::publish(
        &shared.js,
        subject,
        &letter,
        keyed.as_ref(),
        message.headers.as_ref(),
        message.payload.clone(),
    )
    .await
    .map_err(|err| format!("cannot publish the dead letter: {err}"));
    // A key parks behind its first dead letter only once that is stored,
    // and before the +TERM: a crash in between redelivers the event, whose
    // dead letter is then deduplicated.
    let published = match (published, key) {
        (Ok(()), Some(key)) if parked_behind.is_none() && parks(shared) => {
            let blocker = Blocker {
                stream: ctx.stream.clone(),
                sequence: ctx.sequence,
            };
            match parked(shared).await {
                Ok(parked) => parked.park(key, blocker).await.map(|_| ()),
                Err(err) => Err(err),
            }
            .map_err(|err| format!("cannot park its key: {err}"))
        }
        (published, _) => published,
    };
    if let (Some(span), Err(err)) = (span, &published) {
        telemetry::failed(&span, &redact::text(err));
    }
    match published {
        Ok(()) => {
            metrics.dead_letter.inc();
            match reason {
                Reason::Exhausted => metrics.exhausted.inc(),
                Reason::Permanent => metrics.permanent.inc(),
                Reason::Panic => metrics.panicked.inc(),
                Reason::Parked => metrics.parked.inc(),
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
            tracing::error!(%err, %subject, "Cannot store the dead letter; NAKing the event to try again in {}.", humantime::format_duration(delay));
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            Settled::Retrying(delay)
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
