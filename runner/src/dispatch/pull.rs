//! Pulling a consumer's messages: as many as there are free handler slots,
//! plus, while the server says more are waiting and the handler is quick, a
//! bounded buffer of messages pulled ahead (the prefetch), so a fast
//! function at a small `concurrency` does not wait for a pull round trip
//! between events. The next pull goes out before the current one is used
//! up.
//!
//! A pulled message is never left unseen: every pull asks for no more than
//! the free slots and the buffer's room, and the loop reads every message as
//! it arrives. A buffered message is started as soon as a slot frees, and
//! sent an in-progress ack every half ack wait while it waits, so a handler
//! that suddenly blocks never lets one be redelivered behind its back. The
//! buffer is small when the handler is slow (sized so that what waits in it
//! would start within [`BUFFER_WAIT`] at the pace measured), and empty when
//! the server reported no backlog, so a blocked handler holds on to the
//! events that were already waiting, never to new ones.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::stream::{self, SelectAll, Stream};
use futures::StreamExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::consumer::Lost;
use super::deliver::{self, Delivery};
use super::Shared;
use crate::shutdown::Shutdown;

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// The pause before pulling again after a pull ended with an error.
const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(1);
/// The most messages asked for in one pull request.
const MAX_BATCH: usize = 256;
/// The most messages pulled ahead of a free slot.
const MAX_BUFFER: usize = 512;
/// How long a buffered message should wait for a slot, at the handler's
/// measured pace: what sizes the buffer.
const BUFFER_WAIT: Duration = Duration::from_millis(100);
/// Pull requests out at once.
const MAX_PULLS: usize = 4;

/// The handler's pace: how long a delivery holds its slot, as a moving
/// average, shared by every delivery of the unit.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// Nanoseconds; 0 until the first delivery ends.
    average_ns: AtomicU64,
}

impl Pace {
    fn record(&self, held: Duration) {
        let held = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        // An exponential moving average over about the last 16 deliveries;
        // a lost update between two deliveries ending at once costs nothing.
        let before = self.average_ns.load(Ordering::Relaxed);
        let now = if before == 0 {
            held
        } else {
            before - before / 16 + held / 16
        };
        self.average_ns.store(now.max(1), Ordering::Relaxed);
    }

    /// How many buffered messages `concurrency` slots would start within
    /// [`BUFFER_WAIT`], at most [`MAX_BUFFER`]; none before any delivery
    /// ended.
    fn buffer_size(&self, concurrency: usize) -> usize {
        let average = self.average_ns.load(Ordering::Relaxed);
        if average == 0 {
            return 0;
        }
        let per_slot = BUFFER_WAIT.as_nanos() as u64 / average;
        (per_slot as usize)
            .saturating_mul(concurrency)
            .min(MAX_BUFFER)
    }
}

/// One bound consumer being pulled.
pub(super) struct Pulling<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) consumer: &'a PullConsumer,
    /// When the consumer's stream was created (see [`crate::nats::Floor`]).
    pub(super) stream_created: u64,
    pub(super) permits: &'a Arc<Semaphore>,
    pub(super) pace: &'a Arc<Pace>,
    pub(super) shutdown: &'a Shutdown,
    pub(super) lost: &'a Lost,
}

/// A message pulled ahead of a free slot.
struct Buffered {
    message: Message,
    delivery: Delivery,
    /// When it arrived, or was last sent an in-progress ack.
    kept_alive: Instant,
}

/// What the pull requests out yield: a message of pull `id`, or its end.
// All but one item of a pull are messages: boxing them would allocate per
// message to save stack on the one end marker.
#[allow(clippy::large_enum_variant)]
enum Pulled {
    Message(u64, Result<Message, async_nats::Error>),
    Ended(u64),
}

type Pulls = SelectAll<Pin<Box<dyn Stream<Item = Pulled> + Send>>>;

/// The pull requests out: what each asked for and has delivered.
#[derive(Default)]
struct Out {
    pulls: Option<Pulls>,
    /// Per pull: messages asked for, messages received.
    counts: HashMap<u64, (usize, usize)>,
    next_id: u64,
}

impl Out {
    /// Messages asked for and not yet received.
    fn outstanding(&self) -> usize {
        self.counts.values().map(|(asked, got)| asked - got).sum()
    }

    fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn add(&mut self, batch: async_nats::jetstream::consumer::pull::Batch, asked: usize) {
        let id = self.next_id;
        self.next_id += 1;
        self.counts.insert(id, (asked, 0));
        let pull = batch
            .map(move |message| Pulled::Message(id, message))
            .chain(stream::once(async move { Pulled::Ended(id) }));
        self.pulls
            .get_or_insert_with(SelectAll::new)
            .push(Box::pin(pull));
    }

    fn received(&mut self, id: u64) {
        if let Some((_, got)) = self.counts.get_mut(&id) {
            *got += 1;
        }
    }

    fn ended(&mut self, id: u64) {
        self.counts.remove(&id);
        if self.counts.is_empty() {
            self.pulls = None;
        }
    }

    /// Forgets every pull (after a reconnect the server may have too).
    fn clear(&mut self) {
        self.counts.clear();
        self.pulls = None;
    }

    async fn next(&mut self) -> Option<Pulled> {
        match &mut self.pulls {
            Some(pulls) => pulls.next().await,
            None => std::future::pending().await,
        }
    }
}

impl Pulling<'_> {
    /// Pulls and starts deliveries until draining (and what was pulled is
    /// started), the consumer is lost, or the drain is abandoned.
    pub(super) async fn run(
        &self,
        in_flight: &mut JoinSet<()>,
        mut connections: watch::Receiver<u64>,
    ) {
        let concurrency = self.shared.unit.concurrency;
        let ack_wait = self.shared.unit.binding.ack_wait;
        let mut buffer: VecDeque<Buffered> = VecDeque::new();
        let mut out = Out::default();
        // What the last message said was still waiting on the server.
        let mut backlog = 0u64;
        let mut paused_until: Option<Instant> = None;
        let mut keep_alive = tokio::time::interval((ack_wait / 4).max(Duration::from_millis(50)));
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Reap finished deliveries so the set does not grow.
            while in_flight.try_join_next().is_some() {}
            while !buffer.is_empty() {
                let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                    break;
                };
                if let Some(next) = buffer.pop_front() {
                    self.start(next.message, next.delivery, permit, in_flight);
                }
            }
            let draining = self.shutdown.is_draining();
            if draining && out.is_empty() && buffer.is_empty() {
                return;
            }
            if self.lost.is_lost() {
                return;
            }
            if paused_until.is_some_and(|until| Instant::now() >= until) {
                paused_until = None;
            }
            if !draining && paused_until.is_none() && out.counts.len() < MAX_PULLS {
                let room = if backlog > 0 {
                    self.pace
                        .buffer_size(concurrency)
                        .saturating_sub(buffer.len())
                } else {
                    0
                };
                let want = self.permits.available_permits() + room;
                let missing = want.saturating_sub(out.outstanding());
                // A new pull once a good part of what could start is not
                // asked for yet: the next one is out before this one is used up.
                if missing > 0 && missing >= (want / 2).max(1) {
                    let asked = missing.min(MAX_BATCH);
                    match self
                        .consumer
                        .batch()
                        .max_messages(asked)
                        .expires(PULL_EXPIRES)
                        .messages()
                        .await
                    {
                        Ok(batch) => out.add(batch, asked),
                        Err(err) => {
                            tracing::warn!(%err, "Cannot pull yet; retrying.");
                            paused_until = Some(Instant::now() + PAUSE_AFTER_ERROR);
                        }
                    }
                    continue;
                }
            }
            let pause = async {
                match paused_until {
                    Some(until) => tokio::time::sleep_until(until.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.abandoned(), if draining => {
                    // What never started goes back, like what is in flight.
                    for buffered in buffer.drain(..) {
                        let _ = buffered.message.ack_with(AckKind::Nak(None)).await;
                    }
                    return;
                }
                // A deleted consumer sends nothing more: stop waiting on it.
                () = self.lost.notified() => return,
                // After a reconnect the server may have forgotten the pulls (a
                // restarted nats-server has): pull again rather than wait for
                // the client to give up on them (their expiry plus 5 s). Should
                // one still be live (a cluster), what it would still deliver is
                // redelivered after the ack wait.
                Ok(()) = connections.changed() => {
                    tracing::debug!("Reconnected to NATS; pulling again.");
                    out.clear();
                }
                () = self.shutdown.draining(), if !draining => {}
                _ = keep_alive.tick(), if !buffer.is_empty() => {
                    keep_buffer_alive(&mut buffer, ack_wait / 2).await;
                }
                pulled = out.next() => {
                    let mut pulled = pulled;
                    // Then whatever else has arrived, without another turn
                    // of this select.
                    loop {
                        match pulled {
                            Some(Pulled::Message(id, Ok(message))) => {
                                out.received(id);
                                self.receive(message, &mut buffer, &mut backlog, in_flight);
                            }
                            Some(Pulled::Message(id, Err(err))) => {
                                tracing::warn!(%err, "Pull request ended with an error; pulling again.");
                                out.ended(id);
                                paused_until = Some(Instant::now() + PAUSE_AFTER_ERROR);
                            }
                            Some(Pulled::Ended(id)) => out.ended(id),
                            None => out.clear(),
                        }
                        match futures::FutureExt::now_or_never(out.next()) {
                            Some(next) => pulled = next,
                            None => break,
                        }
                    }
                }
                permit = self.permits.clone().acquire_owned(), if !buffer.is_empty() => {
                    if let (Ok(permit), Some(next)) = (permit, buffer.pop_front()) {
                        self.start(next.message, next.delivery, permit, in_flight);
                    }
                }
                // A slot freed with nothing buffered or asked for: pull again.
                _ = self.permits.acquire(),
                    if buffer.is_empty() && out.is_empty() && !draining && paused_until.is_none() => {}
                () = pause => {}
            }
        }
    }

    /// A message as it arrives: started when a slot is free and nothing
    /// waits before it, else buffered (the pull asked for no more than the
    /// free slots and the buffer's room).
    fn receive(
        &self,
        message: Message,
        buffer: &mut VecDeque<Buffered>,
        backlog: &mut u64,
        in_flight: &mut JoinSet<()>,
    ) {
        let Some((delivery, pending)) =
            Delivery::of(&message, self.stream_created, &self.shared.unit.name)
        else {
            return;
        };
        *backlog = pending;
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) if buffer.is_empty() => self.start(message, delivery, permit, in_flight),
            permit => {
                drop(permit);
                buffer.push_back(Buffered {
                    message,
                    delivery,
                    kept_alive: Instant::now(),
                });
            }
        }
    }

    /// Starts one delivery holding `permit`. One that completes at its first
    /// poll (a quick built-in, say) needs no task of its own; one that waits
    /// goes on in one, from where it stopped.
    fn start(
        &self,
        message: Message,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
        in_flight: &mut JoinSet<()>,
    ) {
        let shared = self.shared.clone();
        let shutdown = self.shutdown.clone();
        let pace = self.pace.clone();
        let mut delivery = Box::pin(async move {
            let started = Instant::now();
            deliver::deliver(&shared, message, delivery, &shutdown).await;
            pace.record(started.elapsed());
            drop(permit);
        });
        if futures::FutureExt::now_or_never(&mut delivery).is_none() {
            in_flight.spawn(delivery);
        }
    }
}

/// Sends an in-progress ack for each buffered message that has waited
/// `every` since it arrived or was last kept alive.
async fn keep_buffer_alive(buffer: &mut VecDeque<Buffered>, every: Duration) {
    let now = Instant::now();
    for buffered in buffer.iter_mut() {
        if now.duration_since(buffered.kept_alive) >= every {
            if let Err(err) = buffered.message.ack_with(AckKind::Progress).await {
                tracing::debug!(%err, "In-progress ack of a buffered message failed.");
            }
            buffered.kept_alive = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_follows_the_handlers_pace() {
        let pace = Pace::default();
        assert_eq!(pace.buffer_size(16), 0, "nothing measured yet: no prefetch");
        pace.record(Duration::from_micros(10));
        assert_eq!(
            pace.buffer_size(16),
            MAX_BUFFER,
            "a quick handler: a full buffer"
        );
        let slow = Pace::default();
        slow.record(Duration::from_millis(40));
        assert_eq!(slow.buffer_size(1), 2, "100 ms of work at 40 ms each");
        assert_eq!(slow.buffer_size(16), 32);
        let blocked = Pace::default();
        blocked.record(Duration::from_secs(5));
        assert_eq!(
            blocked.buffer_size(16),
            0,
            "slower than the wait: no prefetch"
        );
    }

    #[test]
    fn the_pace_moves_towards_what_deliveries_take() {
        let pace = Pace::default();
        pace.record(Duration::from_millis(1));
        for _ in 0..100 {
            pace.record(Duration::from_millis(50));
        }
        assert_eq!(pace.buffer_size(1), 2, "{pace:?}");
    }
}
