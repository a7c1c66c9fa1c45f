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
//!
//! A function with `batch` takes a slot per batch: up to `size` buffered
//! messages, in order, go to one [`deliver_batch`](super::batch), once
//! `size` are there or the first has waited `wait` (at once while draining);
//! pulls ask for `size` messages per free slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind, Message};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use jetrun_functions::{Event, Failure};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::batch;
use super::consumer::Lost;
use super::deliver::{self, Delivery};
use super::order::{Admit, Order, Settled};
use super::partition::Partition;
use super::Shared;
use crate::envelope::{self, Origin};
use crate::flow::key::{self, Key};
use crate::nats;
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
/// Deliveries past their handler, waiting for what it emitted to be stored
/// before the input is acked, beyond the handler slots: they hold no slot.
const EMIT_WINDOW: usize = 256;

/// The most messages one unit holds at once (handling, buffered, or waiting
/// for their emits): what its `concurrency` slots take (a batch each, for a
/// function with `batch`) plus the buffer and the emit window.
pub(super) fn held_at_most(unit: &super::Unit) -> usize {
    unit.concurrency.saturating_mul(per_slot(unit)) + MAX_BUFFER + EMIT_WINDOW
}

/// The messages one handler slot takes at once: a batch's `size`, or one.
fn per_slot(unit: &super::Unit) -> usize {
    unit.batch.as_ref().map_or(1, |batch| batch.size.max(1))
}

/// A handler slot, held while the handler runs; giving it back records how
/// long it was held.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    pace: Arc<Pace>,
    taken: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pace.record(self.taken.elapsed());
    }
}

/// The handler's pace: how long a delivery holds its handler slot, as a
/// moving average, shared by every delivery of the unit.
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
    /// What the unit may hold at once ([`held_at_most`]).
    pub(super) held: &'a Arc<Semaphore>,
    pub(super) pace: &'a Arc<Pace>,
    pub(super) shutdown: &'a Shutdown,
    pub(super) lost: &'a Lost,
    /// The partition this consumer is, for a keyed function.
    pub(super) partition: Option<&'a Partition>,
}

/// A keyed function's events held behind their key, and the news of each
/// settled delivery of a keyed event: what frees its key. Kept across
/// binds of one consumer, like the deliveries in flight.
pub(super) struct Keyed {
    order: Order<Buffered>,
    settled_tx: mpsc::UnboundedSender<(Key, u64, Settled)>,
    settled_rx: mpsc::UnboundedReceiver<(Key, u64, Settled)>,
    /// Deliveries started and not settled yet.
    unsettled: Arc<AtomicU64>,
    /// While this runner takes a partition over: what it received, held
    /// until the events the last holder left unsettled have come back.
    takeover: Option<Takeover>,
    /// While this runner gives the partition back: what arrives goes back
    /// at once, and only what runs is waited for.
    releasing: bool,
    /// Messages received while giving the partition back, NAKed at once.
    returned: Vec<Message>,
}

/// Taking a partition over from a runner that held it: the server
/// redelivers what that runner left unacked only after the ack wait, so
/// whatever arrives meanwhile waits, and then everything starts in stream
/// order. A partition given back cleanly has nothing unacked: no wait.
struct Takeover {
    held: Vec<Buffered>,
    /// When to ask the server again how many are still unacked.
    check_at: Instant,
    /// When to stop waiting anyway (past the ack wait and the pin timeout).
    give_up_at: Instant,
}

/// How often a takeover asks the server what is still unacked.
const TAKEOVER_CHECK_EVERY: Duration = Duration::from_millis(200);

impl Keyed {
    pub(super) fn new() -> Keyed {
        let (settled_tx, settled_rx) = mpsc::unbounded_channel();
        Keyed {
            order: Order::default(),
            settled_tx,
            settled_rx,
            unsettled: Arc::default(),
            takeover: None,
            releasing: false,
            returned: Vec::new(),
        }
    }
}

/// How often a runner pinned on a partition pulls, at least, even with
/// nothing to ask for: the server keeps its pin while it pulls.
const KEEP_PIN_EVERY: Duration = Duration::from_secs(1);

/// How long a runner that gave a partition back waits before it may ask for
/// it again.
const REJOIN_AFTER: Duration = Duration::from_secs(3);

/// A message pulled ahead of a free slot, or waiting behind its key.
struct Buffered {
    message: Message,
    delivery: Delivery,
    held: Option<OwnedSemaphorePermit>,
    /// When it arrived, or was last sent an in-progress ack.
    kept_alive: Instant,
    /// When it arrived.
    arrived: Instant,
}

/// The pull requests out, all answered on one inbox. The server shares the
/// messages out among the requests waiting, so with an inbox per request
/// they would arrive out of order; on one inbox they arrive in the order it
/// sent them (a function at `concurrency = 1` handles its events in order,
/// prefetch or not).
struct Out {
    js: jetstream::Context,
    request_subject: String,
    inbox: Subject,
    subscription: Option<Subscriber>,
    /// Messages asked for and neither received nor given up by the server.
    outstanding: usize,
    /// When the last request expires: past it (and a grace for the server's
    /// answer), nothing asked for is still coming.
    expires_at: Option<Instant>,
    /// A partition's consumer: pulls name the priority group, and the pin
    /// once the server gave this runner one.
    pinned: bool,
    pin: Option<String>,
    /// When the last request went out.
    pulled_at: Option<Instant>,
}

/// How long after a request's expiry its answer may still arrive.
const EXPIRY_GRACE: Duration = Duration::from_secs(1);

impl Out {
    fn new(js: &jetstream::Context, consumer: &PullConsumer, pinned: bool) -> Out {
        let info = consumer.cached_info();
        Out {
            js: js.clone(),
            request_subject: format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                info.stream_name, info.name
            ),
            inbox: Subject::from(js.client().new_inbox()),
            subscription: None,
            outstanding: 0,
            expires_at: None,
            pinned,
            pin: None,
            pulled_at: None,
        }
    }

    /// When a runner pinned on a partition, with nothing asked for, must
    /// pull to keep its pin (or to become a candidate for it).
    fn keep_pin_at(&self) -> Option<Instant> {
        if !self.pinned {
            return None;
        }
        Some(
            self.pulled_at
                .map_or_else(Instant::now, |at| at + KEEP_PIN_EVERY),
        )
    }

    /// Messages asked for and still coming.
    fn outstanding(&mut self) -> usize {
        if self
            .expires_at
            .is_some_and(|at| Instant::now() > at + EXPIRY_GRACE)
        {
            self.outstanding = 0;
            self.expires_at = None;
        }
        self.outstanding
    }

    /// Asks for `asked` more messages, for [`PULL_EXPIRES`].
    async fn pull(&mut self, asked: usize) -> Result<(), async_nats::Error> {
        let client = self.js.client();
        if self.subscription.is_none() {
            self.subscription = Some(client.subscribe(self.inbox.clone()).await?);
        }
        let mut request = serde_json::json!({
            "batch": asked,
            "expires": u64::try_from(PULL_EXPIRES.as_nanos()).unwrap_or(u64::MAX),
        });
        if self.pinned {
            request["group"] = nats::PIN_GROUP.into();
            if let Some(pin) = &self.pin {
                request["id"] = pin.as_str().into();
            }
        }
        self.pulled_at = Some(Instant::now());
        client
            .publish_with_reply(
                self.request_subject.clone(),
                self.inbox.clone(),
                serde_json::to_vec(&request)?.into(),
            )
            .await?;
        self.outstanding += asked;
        self.expires_at = Some(Instant::now() + PULL_EXPIRES);
        Ok(())
    }

    /// Forgets every request (after a reconnect the server may have too):
    /// what they would still deliver goes to an inbox no longer read, and
    /// is redelivered after the ack wait.
    fn clear(&mut self) {
        self.subscription = None;
        self.inbox = Subject::from(self.js.client().new_inbox());
        self.outstanding = 0;
        self.expires_at = None;
    }

    /// When every request out has surely been answered, if any is out.
    fn answered_by(&self) -> Option<Instant> {
        self.expires_at
            .filter(|_| self.outstanding > 0)
            .map(|at| at + EXPIRY_GRACE)
    }

    /// A request ended with messages still asked for: what it had left
    /// (`Nats-Pending-Messages`) is no longer coming; a note without the
    /// count ends the accounting (what comes is still handled).
    fn request_ended(&mut self, note: &async_nats::Message) {
        let left = note
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Pending-Messages"))
            .and_then(|v| v.as_str().parse::<usize>().ok())
            .unwrap_or(self.outstanding);
        self.outstanding = self.outstanding.saturating_sub(left);
    }

    /// The next message, or `None` when a request of an unkeyed consumer
    /// expired (the caller pulls again at once: a message stored meanwhile
    /// would otherwise wait for the grace after the expiry); a heartbeat,
    /// and a request the server ended with messages left, are accounted for
    /// on the way. Pending
    /// while nothing was asked for. Cancel-safe: nothing changes across an
    /// await.
    async fn next(&mut self) -> Result<Option<Message>, async_nats::Error> {
        loop {
            let Some(subscription) = self.subscription.as_mut() else {
                return std::future::pending().await;
            };
            let Some(message) = subscription.next().await else {
                self.clear();
                return Err("the pull inbox's subscription ended".into());
            };
            match message.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if self.pinned {
                        if let Some(pin) = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Nats-Pin-Id"))
                            .map(|v| v.as_str())
                            .filter(|pin| self.pin.as_deref() != Some(*pin))
                        {
                            self.pin = Some(pin.to_string());
                        }
                    }
                    return Ok(Some(Message {
                        message,
                        context: self.js.clone(),
                    }));
                }
                StatusCode::IDLE_HEARTBEAT => {}
                // Another runner holds the pin now: this request is over;
                // pull again without the old pin, as a candidate.
                StatusCode::PIN_ID_MISMATCH => {
                    self.pin = None;
                    self.request_ended(&message);
                    // Said at once, so the runner lets go of what it holds.
                    return Err("another runner holds the partition's pin now".into());
                }
                StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED => {
                    if message.description.as_deref() == Some("Consumer Deleted") {
                        self.outstanding = 0;
                        return Err("the consumer was deleted".into());
                    }
                    self.request_ended(&message);
                    // An expired request is renewed at once; one the server
                    // ended for another reason (too many requests waiting, a
                    // leader change) waits for the next turn, so a refusal
                    // is not asked again in a tight loop. A keyed partition's
                    // pulls keep their own pace (the pin and the takeover
                    // are timed around it; renewing at once there let a
                    // kill -9 test see a key out of order, 1 run in 12 under
                    // load): it waits for the grace as before.
                    if message.status == Some(StatusCode::TIMEOUT) && !self.pinned {
                        return Ok(None);
                    }
                }
                status => {
                    return Err(format!(
                        "the pull request failed: {status} {}",
                        message.description.as_deref().unwrap_or_default()
                    )
                    .into())
                }
            }
        }
    }
}

impl Pulling<'_> {
    /// Pulls and starts deliveries until draining (and what was pulled is
    /// started), the consumer is lost, or the drain is abandoned.
    pub(super) async fn run(
        &self,
        in_flight: &mut JoinSet<()>,
        keyed: &mut Keyed,
        mut connections: watch::Receiver<u64>,
    ) {
        let ack_wait = self.shared.unit.binding.ack_wait;
        let mut buffer: VecDeque<Buffered> = VecDeque::new();
        let mut out = Out::new(&self.shared.js, self.consumer, self.partition.is_some());
        // What the last message said was still waiting on the server.
        let mut backlog = 0u64;
        let mut paused_until: Option<Instant> = None;
        let mut keep_alive = tokio::time::interval((ack_wait / 4).max(Duration::from_millis(50)));
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Messages of other partitions, acked at once.
        let mut skipped: Vec<Message> = Vec::new();
        let mut released_on_drain = false;
        loop {
            // Reap finished deliveries so the set does not grow.
            while in_flight.try_join_next().is_some() {}
            while let Ok((key, sequence, settled)) = keyed.settled_rx.try_recv() {
                self.settled(keyed, &key, sequence, settled, &mut buffer);
            }
            if self.shutdown.is_draining() {
                release_retrying(keyed).await;
            }
            if keyed.releasing {
                release_waiting(keyed).await;
            }
            self.start_buffered(&mut buffer, in_flight, keyed);
            let draining = self.shutdown.is_draining();
            if draining && !released_on_drain {
                // Keys waiting for a redelivery get it from whoever pulls
                // next: what waits behind them goes back after it.
                released_on_drain = true;
                release_retrying(keyed).await;
                // A takeover that had not started anything gives it back.
                for buffered in keyed.takeover.take().map(|t| t.held).unwrap_or_default() {
                    let _ = buffered.message.ack_with(AckKind::Nak(None)).await;
                }
            }
            if draining && out.outstanding() == 0 && buffer.is_empty() && keyed.order.waiting() == 0
            {
                return;
            }
            if self.lost.is_lost() {
                return;
            }
            if paused_until.is_some_and(|until| Instant::now() >= until) {
                paused_until = None;
            }
            if let Some(partition) = self.partition {
                let presence = self.shared.presence.as_ref();
                if !keyed.releasing
                    && !draining
                    && partition.is_pinned()
                    && keyed.takeover.is_none()
                    && !partition.is_home(presence)
                {
                    tracing::info!(
                        partition = partition.index,
                        "The partition is another runner's share now: giving it back once what \
                         this runner holds of it is settled."
                    );
                    // What waits goes back now: the next holder holds what
                    // it receives until this runner's events in flight are
                    // settled, then starts everything in stream order.
                    keyed.releasing = true;
                    release_waiting(keyed).await;
                }
                if keyed.releasing
                    && out.outstanding() == 0
                    && buffer.is_empty()
                    && keyed.order.is_empty()
                    && keyed.unsettled.load(Ordering::Relaxed) == 0
                {
                    let info = self.consumer.cached_info();
                    partition
                        .give_back(self.shared, &info.stream_name, &info.name)
                        .await;
                    out.pin = None;
                    keyed.releasing = false;
                    // Long enough for a runner short of its share to take it.
                    paused_until = Some(Instant::now() + REJOIN_AFTER);
                }
                if !partition.is_pinned() && !partition.is_home(presence) && paused_until.is_none()
                {
                    // Another runner's share: this one leaves the partition
                    // to it, and looks again now and then.
                    paused_until = Some(Instant::now() + KEEP_PIN_EVERY);
                }
            }
            // When a pull is due but the unit holds all it may: how many
            // places to wait for.
            let mut held_short = None;
            let mut keep_pin_at = None;
            if !draining && !keyed.releasing && paused_until.is_none() {
                let plan = Plan {
                    wanted: self.wanted(buffer.len(), backlog),
                    allowed: self.held.available_permits(),
                    outstanding: out.outstanding(),
                };
                let next = match plan.next() {
                    // A partition's pin lasts while its runner pulls: with
                    // nothing to ask for, it still asks for one, now and then.
                    Next::Wait | Next::WaitForHeld(_) if out.outstanding() == 0 => {
                        match out.keep_pin_at() {
                            Some(at) if at <= Instant::now() => Next::Pull(1),
                            at => {
                                keep_pin_at = at;
                                plan.next()
                            }
                        }
                    }
                    next => next,
                };
                match next {
                    Next::Pull(asked) => {
                        if let Err(err) = out.pull(asked).await {
                            tracing::warn!(%err, "Cannot pull yet; retrying.");
                            paused_until = Some(Instant::now() + PAUSE_AFTER_ERROR);
                        }
                        continue;
                    }
                    Next::WaitForHeld(more) => held_short = Some(more),
                    Next::Wait => {}
                }
            }
            let nothing_out = out.outstanding() == 0;
            let held_back = async {
                match held_short {
                    Some(more) => {
                        // Permits come back one by one as emits are stored; a
                        // pull waits until a chunk of them has.
                        let _ = self.held.acquire_many(more).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let pause = until(paused_until);
            let answered = until(out.answered_by());
            let keep_pin = until(keep_pin_at);
            let batch_due = until(self.batch_due(&buffer));
            let waiting = !buffer.is_empty()
                || keyed.order.waiting() > 0
                || keyed.takeover.as_ref().is_some_and(|t| !t.held.is_empty());
            tokio::select! {
                biased;
                () = self.shutdown.abandoned(), if draining => {
                    // What never started goes back, like what is in flight.
                    for buffered in buffer.drain(..).chain(keyed.order.release_all()) {
                        let _ = buffered.message.ack_with(AckKind::Nak(None)).await;
                    }
                    return;
                }
                // A deleted consumer sends nothing more: stop waiting on it.
                () = self.lost.notified() => return,
                // After a reconnect the server may have forgotten the pulls (a
                // restarted nats-server has): pull again, on a new inbox,
                // rather than wait out their expiry. Should one still be live
                // (a cluster), what it would still deliver goes to the old
                // inbox, unread, and is redelivered after the ack wait.
                Ok(()) = connections.changed() => {
                    tracing::debug!("Reconnected to NATS; pulling again.");
                    out.clear();
                }
                () = self.shutdown.draining(), if !draining => {}
                Some((key, sequence, settled)) = keyed.settled_rx.recv() => {
                    self.settled(keyed, &key, sequence, settled, &mut buffer);
                    if self.shutdown.is_draining() {
                        release_retrying(keyed).await;
                    }
                    if keyed.releasing {
                        release_waiting(keyed).await;
                    }
                }
                _ = keep_alive.tick(), if waiting => {
                    let held = keyed.takeover.as_mut().map(|t| t.held.iter_mut());
                    keep_alive_all(
                        buffer
                            .iter_mut()
                            .chain(keyed.order.waiting_mut())
                            .chain(held.into_iter().flatten()),
                        ack_wait / 2,
                    )
                    .await;
                    // A key whose retrying event never came back (the stream
                    // dropped it, say) would hold its key for ever.
                    let grace = ack_wait * 2 + nats::PIN_TIMEOUT;
                    for (key, sequence) in keyed.order.overdue(grace) {
                        tracing::warn!(key = %key, sequence, "The retrying event holding this key did not come back; the key moves on.");
                        self.settled(keyed, &key, sequence, Settled::Done, &mut buffer);
                    }
                }
                pulled = out.next() => {
                    let mut pulled = pulled;
                    // Then whatever else has arrived, without another turn
                    // of this select.
                    loop {
                        match pulled {
                            Ok(Some(message)) => {
                                self.sync_pin(&out, keyed, ack_wait).await;
                                self.receive(message, &mut buffer, &mut backlog, in_flight, keyed, &mut skipped);
                            }
                            // A request expired: plan (and pull) again now.
                            Ok(None) => break,
                            Err(err) => {
                                tracing::warn!(%err, "Pull request ended with an error; pulling again.");
                                paused_until = Some(Instant::now() + PAUSE_AFTER_ERROR);
                                break;
                            }
                        }
                        match futures::FutureExt::now_or_never(out.next()) {
                            Some(next) => pulled = next,
                            None => break,
                        }
                    }
                    for message in keyed.returned.drain(..) {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    }
                    for message in skipped.drain(..) {
                        if let Err(err) = message.ack().await {
                            tracing::debug!(%err, "Ack of another partition's event failed; it comes again.");
                        }
                    }
                    self.sync_pin(&out, keyed, ack_wait).await;
                }
                () = until(keyed.takeover.as_ref().map(|t| t.check_at)) => {
                    self.check_takeover(keyed, &mut buffer, in_flight).await;
                }
                permit = self.permits.clone().acquire_owned(), if self.ready(&buffer) => {
                    if let Ok(permit) = permit {
                        self.start_next(&mut buffer, permit, in_flight, keyed);
                    }
                }
                // A batch being gathered has waited long enough: it goes.
                () = batch_due => {}
                // A slot freed with nothing ready to start or asked for: pull again.
                _ = self.permits.acquire(),
                    if !self.ready(&buffer)
                        && nothing_out
                        && held_short.is_none()
                        && !draining
                        && paused_until.is_none() => {}
                () = held_back => {}
                () = answered => {}
                () = pause => {}
                () = keep_pin => {}
            }
        }
    }

    /// Follows the pin as the server hands it: newly pinned, a takeover
    /// starts; pinned no more (the server gave the pin to another runner,
    /// this one having been too slow to pull), what waited here goes back.
    async fn sync_pin(&self, out: &Out, keyed: &mut Keyed, ack_wait: Duration) {
        let Some(partition) = self.partition else {
            return;
        };
        let pinned = out.pin.is_some();
        if pinned == partition.is_pinned() {
            return;
        }
        partition.set_pinned(pinned);
        if pinned {
            let now = Instant::now();
            keyed.takeover = Some(Takeover {
                held: Vec::new(),
                check_at: now,
                // Past every retry delay and the ack wait: what is still
                // unacked then is not coming back.
                give_up_at: now
                    + ack_wait * 2
                    + self.shared.unit.retry.max_delay()
                    + nats::PIN_TIMEOUT
                    + TAKEOVER_CHECK_EVERY * 10,
            });
        } else {
            tracing::warn!(
                partition = partition.index,
                "Lost the partition's pin to another runner; giving back what waited here."
            );
            let held = keyed.takeover.take().map(|t| t.held).unwrap_or_default();
            for buffered in keyed.order.release_all().into_iter().chain(held) {
                let _ = buffered.message.ack_with(AckKind::Nak(None)).await;
            }
        }
    }

    /// Ends the takeover once the server holds no more unacked events of
    /// the partition than this runner does: what it held starts, in stream
    /// order.
    async fn check_takeover(
        &self,
        keyed: &mut Keyed,
        buffer: &mut VecDeque<Buffered>,
        in_flight: &mut JoinSet<()>,
    ) {
        let Some(takeover) = keyed.takeover.as_mut() else {
            return;
        };
        let ours = takeover.held.len()
            + buffer.len()
            + keyed.order.waiting()
            + keyed.unsettled.load(Ordering::Relaxed) as usize;
        let done = match self.consumer.clone().info().await {
            Ok(info) => info.num_ack_pending <= ours,
            Err(err) => {
                tracing::debug!(%err, "Cannot read the consumer's info during a takeover.");
                false
            }
        };
        let now = Instant::now();
        if !done && now < takeover.give_up_at {
            takeover.check_at = now + TAKEOVER_CHECK_EVERY;
            return;
        }
        if !done {
            tracing::warn!("Taking the partition over: the last holder's events did not all come back within the ack wait; going on.");
        }
        let mut held = keyed.takeover.take().map(|t| t.held).unwrap_or_default();
        held.sort_by_key(|b| b.delivery.sequence);
        tracing::debug!(held = held.len(), "Partition taken over.");
        for buffered in held {
            self.admit(buffered, buffer, in_flight, keyed);
        }
    }

    /// A keyed delivery was settled: the next event of its key, if one
    /// waits, goes to the front of the line for a slot.
    fn settled(
        &self,
        keyed: &mut Keyed,
        key: &Key,
        sequence: u64,
        settled: Settled,
        buffer: &mut VecDeque<Buffered>,
    ) {
        if let Some(next) = keyed.order.settled(key, sequence, settled) {
            self.shared
                .metrics
                .key_wait
                .observe(next.arrived.elapsed().as_secs_f64());
            buffer.push_front(next);
        }
    }

    /// A message as it arrives: for a keyed function, acked at once when it
    /// is another partition's, held when its key is busy; then started when
    /// a slot is free and nothing waits before it, else buffered (the pull
    /// asked for no more than the free slots and the buffer's room).
    fn receive(
        &self,
        message: Message,
        buffer: &mut VecDeque<Buffered>,
        backlog: &mut u64,
        in_flight: &mut JoinSet<()>,
        keyed: &mut Keyed,
        skipped: &mut Vec<Message>,
    ) {
        let Some((mut delivery, pending)) =
            Delivery::of(&message, self.stream_created, &self.shared.unit.name)
        else {
            return;
        };
        *backlog = pending;
        if let Some(partition) = self.partition {
            let (key, event) = self.key_of(&message, &delivery);
            if !partition.owns(key.as_ref()) {
                skipped.push(message);
                return;
            }
            delivery.key = key;
            delivery.event = Some(event);
        }
        // Pulls ask for no more than may be held: this never waits.
        let held = self.held.clone().try_acquire_owned().ok();
        let now = Instant::now();
        let buffered = Buffered {
            message,
            delivery,
            held,
            kept_alive: now,
            arrived: now,
        };
        if keyed.releasing {
            // Giving the partition back: it goes to the next holder.
            keyed.returned.push(buffered.message);
            return;
        }
        if let Some(takeover) = keyed.takeover.as_mut() {
            // A newer delivery of one held already replaces it.
            match takeover
                .held
                .iter_mut()
                .find(|held| held.delivery.sequence == buffered.delivery.sequence)
            {
                Some(held) => *held = buffered,
                None => takeover.held.push(buffered),
            }
            return;
        }
        self.admit(buffered, buffer, in_flight, keyed);
    }

    /// A message that may start: held when its key is busy, else started
    /// when a slot is free and nothing waits before it, else buffered.
    fn admit(
        &self,
        buffered: Buffered,
        buffer: &mut VecDeque<Buffered>,
        in_flight: &mut JoinSet<()>,
        keyed: &mut Keyed,
    ) {
        let buffered = match buffered.delivery.key.clone() {
            Some(key) => match keyed
                .order
                .admit(&key, buffered.delivery.sequence, buffered)
            {
                Admit::Start(buffered) => {
                    self.shared
                        .metrics
                        .key_wait
                        .observe(buffered.arrived.elapsed().as_secs_f64());
                    buffered
                }
                Admit::Wait | Admit::Running => return,
            },
            None => buffered,
        };
        if self.shared.unit.batch.is_some() {
            // Batches gather in the buffer; a full one starts at once.
            buffer.push_back(buffered);
            self.start_buffered(buffer, in_flight, keyed);
            return;
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) if buffer.is_empty() => self.start(buffered, permit, in_flight, keyed),
            permit => {
                drop(permit);
                buffer.push_back(buffered);
            }
        }
    }

    /// What the next pulls should bring, what is buffered counted: a
    /// message per free handler slot (a batch's `size`, for a function with
    /// `batch`), plus, while the server reports a backlog, what the slots
    /// would start within [`BUFFER_WAIT`] at the handler's pace.
    fn wanted(&self, buffered: usize, backlog: u64) -> usize {
        let per_slot = per_slot(&self.shared.unit);
        let ahead = if backlog > 0 {
            self.pace
                .buffer_size(self.shared.unit.concurrency)
                .saturating_mul(per_slot)
                .min(MAX_BUFFER)
        } else {
            0
        };
        (self.permits.available_permits().saturating_mul(per_slot) + ahead).saturating_sub(buffered)
    }

    /// Whether the front of the buffer may start once it has a slot: any
    /// message; for a function with `batch`, a full batch, or fewer once the
    /// first has waited `wait` (or the runner drains: nothing more comes).
    fn ready(&self, buffer: &VecDeque<Buffered>) -> bool {
        let Some(first) = buffer.front() else {
            return false;
        };
        match &self.shared.unit.batch {
            None => true,
            Some(batch) => {
                buffer.len() >= batch.size
                    || first.arrived.elapsed() >= batch.wait
                    || self.shutdown.is_draining()
            }
        }
    }

    /// When the batch being gathered stops waiting for more, while it is
    /// not full and still waits.
    fn batch_due(&self, buffer: &VecDeque<Buffered>) -> Option<Instant> {
        let batch = self.shared.unit.batch.as_ref()?;
        let first = buffer.front()?;
        let due = first.arrived + batch.wait;
        (buffer.len() < batch.size && due > Instant::now()).then_some(due)
    }

    /// Starts what is buffered and ready, in order, while slots are free.
    fn start_buffered(
        &self,
        buffer: &mut VecDeque<Buffered>,
        in_flight: &mut JoinSet<()>,
        keyed: &Keyed,
    ) {
        while self.ready(buffer) {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            self.start_next(buffer, permit, in_flight, keyed);
        }
    }

    /// Starts the front of the buffer holding `permit`: one message, or, for
    /// a function with `batch`, up to `size` of them in one batch.
    fn start_next(
        &self,
        buffer: &mut VecDeque<Buffered>,
        permit: OwnedSemaphorePermit,
        in_flight: &mut JoinSet<()>,
        keyed: &Keyed,
    ) {
        match &self.shared.unit.batch {
            None => {
                if let Some(next) = buffer.pop_front() {
                    self.start(next, permit, in_flight, keyed);
                }
            }
            Some(batch) => {
                let taken = batch.size.min(buffer.len());
                if taken > 0 {
                    let items = buffer.drain(..taken).collect();
                    self.start_batch(items, permit, in_flight, keyed);
                }
            }
        }
    }

    /// A keyed function's message read as an event (once: the delivery
    /// keeps it) and its key. An event whose key cannot be read has none,
    /// and is a permanent failure when `missing_key` dead-letters it; a
    /// message that is no event has no key (it is dead-lettered as it would
    /// be anyway).
    fn key_of(
        &self,
        message: &Message,
        delivery: &Delivery,
    ) -> (Option<Key>, Result<Event, Failure>) {
        let origin = Origin {
            subject: message.subject.as_str(),
            stream: &delivery.stream,
            sequence: delivery.sequence,
            published: delivery.published,
        };
        let event = match envelope::read_event(&origin, message.headers.as_ref(), &message.payload)
        {
            Ok(event) => event,
            Err(failure) => return (None, Err(failure)),
        };
        let Some(config) = &self.shared.unit.key else {
            return (None, Ok(event));
        };
        match key::read(&config.source, message.subject.as_str(), &event) {
            Ok(key) => (Some(key), Ok(event)),
            Err(why) => match config.missing_key {
                jetrun_config::MissingKey::Unordered => (None, Ok(event)),
                jetrun_config::MissingKey::DeadLetter => (
                    None,
                    Err(Failure::permanent(format!("the event has no key: {why}"))),
                ),
            },
        }
    }

    /// Starts one delivery holding `permit`. One that completes at its first
    /// poll (a quick built-in, say) needs no task of its own; one that waits
    /// goes on in one, from where it stopped. A keyed one says how it was
    /// settled, which frees its key or keeps it.
    fn start(
        &self,
        buffered: Buffered,
        permit: OwnedSemaphorePermit,
        in_flight: &mut JoinSet<()>,
        keyed: &Keyed,
    ) {
        let Buffered {
            message,
            delivery,
            held,
            ..
        } = buffered;
        let shared = self.shared.clone();
        let shutdown = self.shutdown.clone();
        let slot = Slot {
            _permit: permit,
            pace: self.pace.clone(),
            taken: Instant::now(),
        };
        let key = delivery.key.clone().map(|key| (key, delivery.sequence));
        let settled_tx = keyed.settled_tx.clone();
        let unsettled = keyed.unsettled.clone();
        unsettled.fetch_add(1, Ordering::Relaxed);
        let mut delivery = Box::pin(async move {
            let settled = deliver::deliver(&shared, message, delivery, slot, &shutdown).await;
            drop(held);
            unsettled.fetch_sub(1, Ordering::Relaxed);
            if let Some((key, sequence)) = key {
                let _ = settled_tx.send((key, sequence, settled));
            }
        });
        if futures::FutureExt::now_or_never(&mut delivery).is_none() {
            in_flight.spawn(delivery);
        }
    }

    /// Starts one batch holding `permit`, as [`start`](Self::start) does one
    /// delivery: each keyed item says how it was settled, in its turn.
    fn start_batch(
        &self,
        items: Vec<Buffered>,
        permit: OwnedSemaphorePermit,
        in_flight: &mut JoinSet<()>,
        keyed: &Keyed,
    ) {
        let shared = self.shared.clone();
        let shutdown = self.shutdown.clone();
        let slot = Slot {
            _permit: permit,
            pace: self.pace.clone(),
            taken: Instant::now(),
        };
        let count = items.len();
        let mut deliveries = Vec::with_capacity(count);
        let mut keys = Vec::with_capacity(count);
        let mut held = Vec::with_capacity(count);
        for buffered in items {
            keys.push(
                buffered
                    .delivery
                    .key
                    .clone()
                    .map(|key| (key, buffered.delivery.sequence)),
            );
            held.push(buffered.held);
            deliveries.push((buffered.message, buffered.delivery));
        }
        let settled_tx = keyed.settled_tx.clone();
        let unsettled = keyed.unsettled.clone();
        unsettled.fetch_add(count as u64, Ordering::Relaxed);
        let mut delivery = Box::pin(async move {
            let settled = batch::deliver_batch(&shared, deliveries, slot, &shutdown).await;
            drop(held);
            unsettled.fetch_sub(count as u64, Ordering::Relaxed);
            for (key, settled) in keys.into_iter().zip(settled) {
                if let Some((key, sequence)) = key {
                    let _ = settled_tx.send((key, sequence, settled));
                }
            }
        });
        if futures::FutureExt::now_or_never(&mut delivery).is_none() {
            in_flight.spawn(delivery);
        }
    }
}

/// Gives back everything waiting in the runner (behind a key, or held by a
/// takeover), keeping only what runs: the partition's next holder holds
/// what it receives until those are settled, then starts it in order.
async fn release_waiting(keyed: &mut Keyed) {
    let held = keyed.takeover.take().map(|t| t.held).unwrap_or_default();
    for buffered in keyed.order.release_waiting().into_iter().chain(held) {
        let _ = buffered.message.ack_with(AckKind::Nak(None)).await;
    }
}

/// Lets go of the keys waiting for a redelivery this runner will not pull
/// (it drains): what waits behind each goes back, due after it.
async fn release_retrying(keyed: &mut Keyed) {
    for (buffered, delay) in keyed.order.release_retrying() {
        let _ = buffered.message.ack_with(AckKind::Nak(Some(delay))).await;
    }
}

/// The smallest pull worth a request while what the unit may hold is the
/// limit: messages waiting for their emits to be stored give their place
/// back one at a time, and a pull per place would cost the server a request
/// per message.
const HELD_CHUNK: usize = 32;

/// What the pull loop does next, from what it would like to have coming
/// and what it may still hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Free handler slots plus the buffer's room.
    wanted: usize,
    /// Messages the unit may still take on ([`held_at_most`] less what it holds).
    allowed: usize,
    /// Messages asked for and still coming.
    outstanding: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Ask for this many.
    Pull(usize),
    /// A pull is due but the unit holds too much: wait until this many
    /// places are free.
    WaitForHeld(u32),
    /// Nothing to ask for yet.
    Wait,
}

impl Plan {
    fn next(self) -> Next {
        let Plan {
            wanted,
            allowed,
            outstanding,
        } = self;
        // A new pull once a good part of what could start is not asked for
        // yet: the next one is out before this one is used up.
        let due = |want: usize| {
            let missing = want.saturating_sub(outstanding);
            (missing > 0 && missing >= (want / 2).max(1)).then_some(missing)
        };
        let Some(unbounded) = due(wanted) else {
            return Next::Wait;
        };
        let chunk = HELD_CHUNK.min(unbounded);
        match due(wanted.min(allowed)) {
            Some(missing) if missing >= chunk => Next::Pull(missing.min(MAX_BATCH)),
            // Short of places with nothing coming: until a chunk is free.
            // (With messages coming, each arrival is a turn of the loop; a
            // waiter would also take the places they need as they free.)
            _ if outstanding == 0 && allowed < chunk => {
                Next::WaitForHeld(u32::try_from(chunk).unwrap_or(u32::MAX))
            }
            _ => Next::Wait,
        }
    }
}

/// Resolves at `at`; never without it.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends an in-progress ack for each message waiting (for a slot, or
/// behind its key) that has waited `every` since it arrived or was last
/// kept alive.
async fn keep_alive_all(waiting: impl Iterator<Item = &mut Buffered>, every: Duration) {
    let now = Instant::now();
    for buffered in waiting {
        if now.duration_since(buffered.kept_alive) >= every {
            if let Err(err) = buffered.message.ack_with(AckKind::Progress).await {
                tracing::debug!(%err, "In-progress ack of a waiting message failed.");
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
    fn pulls_come_in_chunks_when_what_is_held_is_the_limit() {
        let plan = |wanted, allowed, outstanding| {
            Plan {
                wanted,
                allowed,
                outstanding,
            }
            .next()
        };
        assert_eq!(plan(16, 784, 0), Next::Pull(16), "free slots, nothing out");
        assert_eq!(plan(528, 784, 0), Next::Pull(MAX_BATCH));
        assert_eq!(plan(528, 784, 400), Next::Wait, "enough already asked for");
        assert_eq!(plan(528, 784, 200), Next::Pull(328.min(MAX_BATCH)));
        assert_eq!(plan(0, 784, 0), Next::Wait, "no slot and no room");
        // Every place taken by inputs waiting for their emits: no spinning,
        // no pull per freed place, but a wait for a chunk of them.
        assert_eq!(plan(16, 0, 0), Next::WaitForHeld(16));
        assert_eq!(plan(528, 5, 0), Next::WaitForHeld(HELD_CHUNK as u32));
        assert_eq!(plan(528, 40, 0), Next::Pull(40));
        assert_eq!(
            plan(528, 40, 20),
            Next::Wait,
            "the messages coming wake the loop"
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
