//! Keeping a unit's durable consumer bound: bound at start (retrying until
//! NATS agrees), watched by a monitor (backlog gauges, ack floor), and bound
//! again when it is deleted behind jetrun's back: just past the last ack
//! floor seen, or at the beginning of its stream when the stream itself was
//! deleted and made again (its sequences started over).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::{pull, Shared};
use crate::nats::{self, Bound, Floor};
use crate::readiness::Readiness;
use crate::shutdown::{retry_until, Shutdown};

/// How often the consumer's info is read (backlog gauges, ack floor, and
/// whether it still exists).
const MONITOR_EVERY: Duration = Duration::from_secs(2);

/// Set by the monitor when the consumer is gone, waking the pull loop.
#[derive(Default)]
pub(super) struct Lost {
    flag: AtomicBool,
    notify: Notify,
}

impl Lost {
    fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    pub(super) fn is_lost(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    pub(super) async fn notified(&self) {
        let notified = self.notify.notified();
        if !self.is_lost() {
            notified.await;
        }
    }
}

/// Binds, pulls, and binds again after a deletion, until the drain; then
/// waits for what is in flight.
pub(super) async fn run(shared: Arc<Shared>, readiness: Readiness, shutdown: Shutdown) {
    let span = tracing::info_span!("consumer", function = %shared.unit.name);
    async {
        let name = &shared.unit.name;
        let mut in_flight = JoinSet::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(shared.unit.concurrency));
        let pace = Arc::new(pull::Pace::default());
        let held = Arc::new(tokio::sync::Semaphore::new(pull::held_at_most(
            shared.unit.concurrency,
        )));
        // The floor last seen: none until the first bind.
        let mut last: Option<Floor> = None;
        while !shutdown.is_draining() {
            let Some(Bound { consumer, floor }) = bind(&shared, last, &shutdown).await else {
                break;
            };
            let stream_created = floor.stream_created;
            // The highest ack floor seen, raised by the monitor.
            let ack_floor = Arc::new(AtomicU64::new(floor.ack_floor));
            readiness.set_bound(name, true);
            let lost = Arc::new(Lost::default());
            let monitor = tokio::spawn(
                monitor(
                    consumer.clone(),
                    shared.clone(),
                    ack_floor.clone(),
                    lost.clone(),
                )
                .in_current_span(),
            );
            let pulling = pull::Pulling {
                shared: &shared,
                consumer: &consumer,
                stream_created,
                permits: &permits,
                held: &held,
                pace: &pace,
                shutdown: &shutdown,
                lost: &lost,
            };
            pulling.run(&mut in_flight, readiness.connections()).await;
            monitor.abort();
            readiness.set_bound(name, false);
            last = Some(Floor {
                stream_created,
                ack_floor: ack_floor.load(Ordering::Relaxed),
            });
            if lost.is_lost() {
                tracing::warn!(
                    last_ack_floor = ack_floor.load(Ordering::Relaxed),
                    "Consumer was deleted behind jetrun's back; recreating it from the config, \
                     starting just past the last ack floor seen (at the beginning of its stream \
                     if the stream was made again)."
                );
            }
        }
        if !in_flight.is_empty() {
            tracing::info!(in_flight = in_flight.len(), "Draining events in flight.");
        }
        while in_flight.join_next().await.is_some() {}
    }
    .instrument(span)
    .await
}

/// Binds the consumer, retrying until NATS agrees (it may be down or
/// starting, the stream missing); `None` once draining.
async fn bind(shared: &Shared, seen: Option<Floor>, shutdown: &Shutdown) -> Option<Bound> {
    let binding = &shared.unit.binding;
    let durable = nats::Durable {
        binding,
        serves: shared.unit.serves.clone(),
    };
    let bound = retry_until("bind the consumer", shutdown, || {
        durable.bind(&shared.js, seen)
    })
    .await?;
    tracing::info!(
        function = %shared.unit.name,
        stream = %binding.stream,
        consumer = %binding.consumer,
        subjects = ?binding.subjects,
        "Consumer bound."
    );
    Some(bound)
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
    loop {
        match consumer.info().await {
            Ok(info) => {
                shared.metrics.pending.set(info.num_pending as i64);
                shared.metrics.ack_pending.set(info.num_ack_pending as i64);
                ack_floor.fetch_max(info.ack_floor.stream_sequence, Ordering::Relaxed);
            }
            Err(err) if nats::is_consumer_not_found(&err) => {
                lost.set();
                return;
            }
            Err(err) => {
                tracing::debug!(%err, "Cannot read consumer info.");
            }
        }
        tokio::time::sleep(MONITOR_EVERY).await;
    }
}
