//! Running one function: pulling its events from its durable consumer within
//! its concurrency limit, calling the handler (through the middleware), and
//! turning the outcome into an ack, a delayed NAK, or a dead letter followed
//! by `+TERM`. Also keeps the consumer alive: it recreates one deleted behind
//! the runner's back, and it reports the consumer's backlog.

mod dead_letter;
mod decision;
mod quarantine;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use jetrun_config::FunctionConfig;
use jetrun_functions::{Context, Event, Failure, Function};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::envelope::{self, Origin};
use crate::metrics::FunctionMetrics;
use crate::middleware;
use crate::nats;
use crate::readiness::Readiness;
use dead_letter::DeadLetter;
use decision::{Action, Reason};

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// The most messages asked for in one pull request.
const MAX_BATCH: usize = 256;
/// How often the consumer's info is read (backlog gauges, ack floor, and
/// whether it still exists).
const MONITOR_EVERY: Duration = Duration::from_secs(2);
/// Pause between attempts to bind a consumer NATS refused.
const REBIND_DELAY: Duration = Duration::from_secs(1);

/// Everything one function's deliveries share.
struct Shared {
    config: FunctionConfig,
    handler: Arc<dyn Function>,
    js: jetstream::Context,
    metrics: FunctionMetrics,
}

/// Set by the monitor when the consumer is gone, waking the pull loop.
#[derive(Default)]
struct Lost {
    flag: AtomicBool,
    notify: Notify,
}

impl Lost {
    fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    fn is_lost(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    async fn notified(&self) {
        let notified = self.notify.notified();
        if !self.is_lost() {
            notified.await;
        }
    }
}

/// Signals from the process to every function.
#[derive(Clone)]
pub(crate) struct Stop {
    /// Set on SIGTERM/SIGINT: stop pulling, let events in flight finish.
    pub(crate) draining: watch::Receiver<bool>,
    /// Set when the drain ran out of time: NAK what is still in flight.
    pub(crate) abandon: watch::Receiver<bool>,
}

/// Runs `config`'s function until `stop.draining` is set and every event in
/// flight has been settled (or abandoned and NAKed).
pub(crate) async fn run(
    config: FunctionConfig,
    handler: Arc<dyn Function>,
    js: jetstream::Context,
    metrics: FunctionMetrics,
    readiness: Readiness,
    stop: Stop,
) {
    let handler = middleware::layered(
        handler,
        config.timeout,
        metrics.in_flight.clone(),
        metrics.duration.clone(),
    );
    let shared = Arc::new(Shared {
        config,
        handler,
        js,
        metrics,
    });
    let name = shared.config.name.clone();
    let permits = Arc::new(Semaphore::new(shared.config.concurrency));
    let mut in_flight = JoinSet::new();
    let ack_floor = Arc::new(AtomicU64::new(0));
    let mut draining = stop.draining.clone();
    while !is_set(&draining) {
        let start = match ack_floor.load(Ordering::Relaxed) {
            0 => DeliverPolicy::All,
            floor => DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            },
        };
        let consumer = tokio::select! {
            consumer = bind_until_bound(&shared, start) => consumer,
            () = until_set(&mut draining) => break,
        };
        readiness.set_bound(&name, true);
        let lost = Arc::new(Lost::default());
        let monitor = tokio::spawn(monitor(
            consumer.clone(),
            shared.clone(),
            ack_floor.clone(),
            lost.clone(),
        ));
        let connections = readiness.connections();
        pull(
            &shared,
            &consumer,
            &permits,
            &mut in_flight,
            &stop,
            &lost,
            connections,
        )
        .await;
        monitor.abort();
        readiness.set_bound(&name, false);
        if lost.is_lost() {
            tracing::warn!(
                function = %name,
                resume_after = ack_floor.load(Ordering::Relaxed),
                "Consumer was deleted behind jetrun's back; recreating it from the config, \
                 starting just past the last ack floor seen."
            );
        }
    }
    settle(&name, in_flight).await;
}

/// Binds the consumer, retrying until NATS agrees (it may be down or starting).
async fn bind_until_bound(shared: &Shared, start: DeliverPolicy) -> PullConsumer {
    let mut failures = 0u32;
    loop {
        match nats::bind(&shared.js, &shared.config, start).await {
            Ok(consumer) => {
                tracing::info!(
                    function = %shared.config.name,
                    stream = %shared.config.stream,
                    subjects = ?shared.config.subjects,
                    "Consumer bound."
                );
                return consumer;
            }
            Err(err) => {
                failures += 1;
                if failures == 1 || failures % 30 == 0 {
                    tracing::warn!(function = %shared.config.name, error = %format!("{err:#}"), "Cannot bind consumer yet; retrying.");
                }
                tokio::time::sleep(REBIND_DELAY).await;
            }
        }
    }
}

/// Pulls batches as handler slots free up, until draining or the consumer is lost.
async fn pull(
    shared: &Arc<Shared>,
    consumer: &PullConsumer,
    permits: &Arc<Semaphore>,
    in_flight: &mut JoinSet<()>,
    stop: &Stop,
    lost: &Lost,
    mut connections: watch::Receiver<u64>,
) {
    let mut draining = stop.draining.clone();
    loop {
        // Reap finished deliveries so the set does not grow.
        while in_flight.try_join_next().is_some() {}
        // Pull only with a free slot: a saturated function leaves its
        // messages on the server, for other replicas to take.
        let first = tokio::select! {
            biased;
            () = until_set(&mut draining) => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        if lost.is_lost() {
            return;
        }
        let mut slots = take_free_slots(permits, first, shared.config.concurrency);
        let batch = consumer
            .batch()
            .max_messages(slots.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(function = %shared.config.name, %err, "Pull request failed; retrying.");
                tokio::time::sleep(REBIND_DELAY).await;
                continue;
            }
        };
        // Once a pull request is out, the server may deliver up to its size
        // until it expires: handle every message it sends, even while
        // draining (a slot is held for each), so none waits out the ack wait
        // unseen and a drain (a reload, a shutdown) makes no redelivery.
        loop {
            let next = tokio::select! {
                next = batch.next() => next,
                // A deleted consumer sends nothing more: stop waiting on it.
                () = lost.notified() => return,
                // After a reconnect the server may have forgotten the pull
                // (a restarted nats-server has): pull again rather than wait
                // for the client to give up on it (its expiry plus 5 s).
                // Should it still be live (a cluster), what it would still
                // deliver is redelivered after the ack wait.
                Ok(()) = connections.changed() => {
                    tracing::debug!(function = %shared.config.name, "Reconnected to NATS; pulling again.");
                    break;
                }
            };
            let Some(next) = next else { break };
            match next {
                Ok(message) => {
                    // The server sends at most what the pull asked for: one
                    // slot each. Should it ever send more, wait for a slot.
                    let permit = match slots.pop() {
                        Some(permit) => permit,
                        None => match permits.clone().acquire_owned().await {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    let shared = shared.clone();
                    let abandon = stop.abandon.clone();
                    let mut delivery = Box::pin(async move {
                        deliver(&shared, message, abandon).await;
                        drop(permit);
                    });
                    // A delivery that completes at its first poll (a quick
                    // built-in, say) needs no task of its own; one that waits
                    // goes on in one, from where it stopped.
                    if futures::FutureExt::now_or_never(&mut delivery).is_none() {
                        in_flight.spawn(delivery);
                    }
                }
                Err(err) => {
                    tracing::warn!(function = %shared.config.name, %err, "Pull request ended with an error.");
                    tokio::time::sleep(REBIND_DELAY).await;
                    break;
                }
            }
        }
    }
}

/// The slots one pull takes: `first`, plus every other slot free now, up to
/// `concurrency` and [`MAX_BATCH`]; the pull asks for one message per slot.
fn take_free_slots(
    permits: &Arc<Semaphore>,
    first: OwnedSemaphorePermit,
    concurrency: usize,
) -> Vec<OwnedSemaphorePermit> {
    let most = concurrency.min(MAX_BATCH);
    let mut slots = vec![first];
    while slots.len() < most {
        match permits.clone().try_acquire_owned() {
            Ok(permit) => slots.push(permit),
            Err(_) => break,
        }
    }
    slots
}

/// Reads the consumer's state now and then: backlog gauges, the ack floor (so
/// a consumer recreated after a deletion resumes where this one was), and
/// whether it still exists.
async fn monitor(
    mut consumer: PullConsumer,
    shared: Arc<Shared>,
    ack_floor: Arc<AtomicU64>,
    lost: Arc<Lost>,
) {
    // The ack floor, and since when it has not moved while events were pending.
    let mut stuck = (0u64, Instant::now());
    loop {
        match consumer.info().await {
            Ok(info) => {
                shared.metrics.pending.set(info.num_pending as i64);
                shared.metrics.ack_pending.set(info.num_ack_pending as i64);
                let floor = info.ack_floor.stream_sequence;
                ack_floor.fetch_max(floor, Ordering::Relaxed);
                if floor != stuck.0 || info.num_ack_pending == 0 {
                    stuck = (floor, Instant::now());
                } else if stuck.1.elapsed() > shared.config.ack_wait + MONITOR_EVERY {
                    // Look once per ack wait, not on every round.
                    stuck.1 = Instant::now();
                    if let Some(message) = quarantine::find_unreadable(&shared, floor).await {
                        quarantine::quarantine(&shared, message).await;
                    }
                }
            }
            Err(err) if nats::is_consumer_not_found(&err) => {
                lost.set();
                return;
            }
            Err(err) => {
                tracing::debug!(function = %shared.config.name, %err, "Cannot read consumer info.");
            }
        }
        tokio::time::sleep(MONITOR_EVERY).await;
    }
}

/// Waits for deliveries in flight; when `Stop::abandon` is set, they NAK
/// their events and return.
async fn settle(name: &str, mut in_flight: JoinSet<()>) {
    if !in_flight.is_empty() {
        tracing::info!(function = %name, in_flight = in_flight.len(), "Draining events in flight.");
    }
    while in_flight.join_next().await.is_some() {}
}

/// Handles one delivery from start to settlement.
async fn deliver(shared: &Shared, message: jetstream::Message, mut abandon: watch::Receiver<bool>) {
    let metrics = &shared.metrics;
    metrics.received.inc();
    let info = match message.info() {
        Ok(info) => info,
        Err(err) => {
            tracing::error!(function = %shared.config.name, %err, "A delivery without JetStream metadata; leaving it to redelivery.");
            return;
        }
    };
    let (attempt, stream, sequence) = (
        info.delivered.max(1) as u64,
        info.stream.to_string(),
        info.stream_sequence,
    );
    let published: SystemTime = info.published.into();
    let origin = Origin {
        subject: message.subject.as_str(),
        stream: &stream,
        sequence,
        published,
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
        function = %shared.config.name,
        event_id,
        event_type,
        correlation_id,
        causation_id,
        attempt,
        stream = %stream,
        sequence,
    );
    let ctx = Context {
        function: shared.config.name.clone(),
        attempt,
        subject: message.subject.to_string(),
        stream,
        sequence,
    };
    async {
        let result = match event {
            Ok(event) => {
                // Boxed, like the dead-letter path below: the task that
                // carries each delivery stays small, so spawning it copies
                // little.
                let run = Box::pin(call_and_emit(shared, &event, &ctx, &message));
                tokio::select! {
                    result = run => result,
                    () = until_set(&mut abandon) => {
                        tracing::warn!("Shutdown timeout reached; NAKing the event for redelivery.");
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        return;
                    }
                }
            }
            Err(failure) => Err(failure),
        };
        settle_delivery(shared, &message, &ctx, result).await;
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
    check_input(&shared.config, event)?;
    let call = shared.handler.call(event, ctx);
    tokio::pin!(call);
    // Half the ack wait: a slow handler is never redelivered behind its back.
    // A handler that finishes at its first poll never touches the timer.
    let keep_alive = shared.config.ack_wait / 2;
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
    publish_emits(
        &shared.js,
        &shared.config,
        event,
        &emits,
        &shared.metrics.emitted,
    )
    .await
    .map(|_| ())
}

/// Refuses an event whose data is not JSON when the function takes JSON
/// (`json = true`): a permanent failure.
pub(crate) fn check_input(config: &FunctionConfig, event: &Event) -> Result<(), Failure> {
    if config.json && !event.is_json() {
        let err = serde_json::from_slice::<serde::de::IgnoredAny>(&event.data)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| format!("content type {:?}", event.datacontenttype));
        return Err(Failure::permanent(format!(
            "function {} takes JSON (json = true), but the event data is not JSON: {err}",
            config.name
        )));
    }
    Ok(())
}

/// Publishes what handling `event` emitted, once [`check_emits`] passes,
/// each with its deterministic id ([`envelope::emitted_headers`]), counting
/// each in `emitted`; how many the target streams already held (dropped as
/// duplicates). Used by live deliveries and `jetrun replay` alike.
pub(crate) async fn publish_emits(
    js: &jetstream::Context,
    config: &FunctionConfig,
    event: &Event,
    emits: &[jetrun_functions::Emit],
    emitted: &prometheus::IntCounter,
) -> Result<usize, Failure> {
    check_emits(config, emits)?;
    let mut duplicates = 0;
    for (index, emit) in emits.iter().enumerate() {
        let headers = envelope::emitted_headers(&config.name, event, index, emit);
        let body = serde_json::to_vec(&emit.data).unwrap_or_default();
        let subject = emit.subject().to_string();
        let ack = match js
            .publish_with_headers(subject.clone(), headers, body.into())
            .await
        {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        let ack = ack.map_err(|err| {
            use async_nats::jetstream::context::PublishErrorKind;
            Failure::retryable(if err.kind() == PublishErrorKind::StreamNotFound {
                format!(
                    "no stream captures subject {subject} (emitted event {}); \
                     add it to a stream's subjects",
                    emit.event_type
                )
            } else if err.kind() == PublishErrorKind::TimedOut {
                // A publish NATS denies is dropped: no ack ever comes.
                format!(
                    "cannot publish emitted event {} to {subject}: no ack in time; is jetrun's \
                     NATS user allowed to publish to {subject}?",
                    emit.event_type
                )
            } else {
                format!(
                    "cannot publish emitted event {} to {subject}: {err}",
                    emit.event_type
                )
            })
        })?;
        if ack.duplicate {
            duplicates += 1;
        }
        emitted.inc();
    }
    Ok(duplicates)
}

/// Every emitted event must go to a valid subject inside the function's
/// `emits` (when it declares one): checked before anything is published, so
/// a bad emit publishes none.
fn check_emits(config: &FunctionConfig, emits: &[jetrun_functions::Emit]) -> Result<(), Failure> {
    for emit in emits {
        let subject = emit.subject();
        let valid = jetrun_config::is_publish_subject(subject);
        if !valid {
            return Err(Failure::permanent(format!(
                "emitted event {} has subject {subject:?}, which is not a subject one can publish to",
                emit.event_type
            )));
        }
        if let Some(allowed) = &config.emits {
            if !allowed
                .iter()
                .any(|p| jetrun_config::subject_matches(p, subject))
            {
                return Err(Failure::permanent(format!(
                    "emitted event {} goes to subject {subject}, outside the function's emits = {allowed:?}",
                    emit.event_type
                )));
            }
        }
    }
    Ok(())
}

/// Acks, NAKs with the backoff delay, or dead-letters then terminates.
async fn settle_delivery(
    shared: &Shared,
    message: &jetstream::Message,
    ctx: &Context,
    result: Result<(), Failure>,
) {
    let metrics = &shared.metrics;
    let policy = &shared.config.retry;
    match decision::decide(
        result.as_ref().map(|_| ()),
        ctx.attempt,
        policy,
        fastrand::f64(),
    ) {
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
            let error = result.err().map(|f| f.message).unwrap_or_default();
            tracing::warn!(%error, "Handler failed; retrying in {}.", humantime::format_duration(round_ms(delay)));
            if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(%err, "NAK failed; the event will be redelivered after the ack wait.");
            }
        }
        Action::DeadLetter(reason) => {
            let error = result.err().map(|f| f.message).unwrap_or_default();
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
    let letter = DeadLetter {
        function: &shared.config.name,
        reason,
        error,
        attempts: ctx.attempt,
        subject: &ctx.subject,
        stream: &ctx.stream,
        sequence: ctx.sequence,
        failed_at: SystemTime::now(),
    };
    let headers = letter.headers(message.headers.as_ref());
    let published = publish_dead_letter(
        shared,
        headers,
        message.payload.clone(),
        &ctx.stream,
        ctx.sequence,
    )
    .await;
    match published {
        Ok(()) => {
            metrics.dead_letter.inc();
            match reason {
                Reason::Exhausted => metrics.exhausted.inc(),
                Reason::Permanent => metrics.permanent.inc(),
            }
            tracing::warn!(%error, reason = reason.as_str(), dead_letter = %shared.config.dead_letter, "Event dead-lettered.");
            if let Err(err) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%err, "+TERM failed; the event will be redelivered and dead-lettered again (deduplicated).");
            }
        }
        Err(err) => {
            // Never drop an event: if the dead letter cannot be stored, the
            // original stays in its stream and is tried again later.
            metrics.retry.inc();
            let delay = shared.config.retry.max_delay();
            tracing::error!(%err, subject = %shared.config.dead_letter, "Cannot publish the dead letter; NAKing the event to try again in {}.", humantime::format_duration(delay));
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

/// Resolves once the flag is set (or its sender is gone).
pub(crate) async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

fn is_set(flag: &watch::Receiver<bool>) -> bool {
    *flag.borrow()
}

/// Publishes a dead letter and waits for its stream's ack. A dead letter too
/// big for the server's max_payload (the original body plus jetrun's headers)
/// is published with the body cut to fit and `Jetrun-Body-Truncated` set to
/// the original length: the whole event stays in its own stream at
/// `Jetrun-Original-Sequence`.
async fn publish_dead_letter(
    shared: &Shared,
    mut headers: async_nats::HeaderMap,
    body: bytes::Bytes,
    stream: &str,
    sequence: u64,
) -> Result<(), async_nats::Error> {
    use async_nats::jetstream::context::PublishErrorKind;
    let subject = shared.config.dead_letter.clone();
    let publish = |headers, body| async {
        shared
            .js
            .publish_with_headers(subject.clone(), headers, body)
            .await?
            .await
            .map(|_| ())
            .map_err(async_nats::Error::from)
    };
    match shared
        .js
        .publish_with_headers(subject.clone(), headers.clone(), body.clone())
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(async_nats::Error::from),
        Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
            let room = shared
                .js
                .client()
                .max_payload()
                .saturating_sub(headers_size(&headers) + 256);
            tracing::warn!(
                size = body.len(),
                kept = room,
                "The dead letter is bigger than the server's max_payload; cutting its body. \
                 The whole event stays in stream {stream} at sequence {sequence}."
            );
            headers.insert("Jetrun-Body-Truncated", body.len().to_string().as_str());
            publish(headers, body.slice(..room.min(body.len()))).await
        }
        Err(err) => Err(err.into()),
    }
}

/// About what `headers` take on the wire.
fn headers_size(headers: &async_nats::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum::<usize>()
        + 16
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_asks_for_the_free_slots_only() {
        let permits = Arc::new(Semaphore::new(16));
        let first = permits.clone().try_acquire_owned().unwrap();
        let slots = take_free_slots(&permits, first, 16);
        assert_eq!(slots.len(), 16, "one slot held, 15 free");
        drop(slots);
        let held = permits.clone().try_acquire_many_owned(9).unwrap();
        let first = permits.clone().try_acquire_owned().unwrap();
        // 9 slots busy, the first held: 6 more free.
        assert_eq!(take_free_slots(&permits, first, 16).len(), 7);
        drop(held);
        let many = Arc::new(Semaphore::new(999));
        let first = many.clone().try_acquire_owned().unwrap();
        assert_eq!(take_free_slots(&many, first, 1000).len(), MAX_BATCH);
    }
}
