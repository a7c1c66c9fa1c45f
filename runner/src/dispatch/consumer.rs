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

use jetrun_config::StreamBinding;

use super::partition::Partition;
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

/// What the consumers of one unit share in this process: the handler
/// slots (`concurrency`), what it may hold, and the handler's pace.
struct Limits {
    permits: Arc<tokio::sync::Semaphore>,
    held: Arc<tokio::sync::Semaphore>,
    pace: Arc<pull::Pace>,
}

/// Binds, pulls, and binds again after a deletion, until the drain; then
/// waits for what is in flight. A keyed function runs one pinned consumer
/// per partition, all sharing its limits.
pub(super) async fn run(shared: Arc<Shared>, readiness: Readiness, shutdown: Shutdown) {
    let span = tracing::info_span!("consumer", function = %shared.unit.name);
    let limits = Limits {
        permits: Arc::new(tokio::sync::Semaphore::new(shared.unit.concurrency)),
        held: Arc::new(tokio::sync::Semaphore::new(pull::held_at_most(
            &shared.unit,
        ))),
        pace: Arc::new(pull::Pace::default()),
    };
    match shared.unit.key.as_ref().map(|key| key.partitions) {
        None => {
            run_one(&shared, None, &limits, &readiness, &shutdown)
                .instrument(span)
                .await
        }
        Some(partitions) => {
            let each = (0..partitions).map(|index| {
                let partition = Partition::new(index, partitions);
                run_one(&shared, Some(partition), &limits, &readiness, &shutdown)
            });
            futures::future::join_all(each).instrument(span).await;
        }
    }
}

/// One consumer of a unit, bound (again after a deletion) and pulled until
/// the drain; then what is in flight is waited for and, for a partition,
/// its pin given back.
async fn run_one(
    shared: &Arc<Shared>,
    partition: Option<Partition>,
    limits: &Limits,
    readiness: &Readiness,
    shutdown: &Shutdown,
) {
    // A partition's index in every line of its consumer; nothing for a
    // function without partitions.
    let span = match &partition {
        Some(partition) => tracing::info_span!("partition", index = partition.index),
        None => tracing::Span::none(),
    };
    async {
        let name = &shared.unit.name;
        let mut in_flight = JoinSet::new();
        let mut keyed = pull::Keyed::new();
        let binding = match &partition {
            Some(partition) => StreamBinding {
                consumer: jetrun_config::name::partition_consumer(
                    &shared.unit.binding.consumer,
                    partition.index,
                ),
                ..shared.unit.binding.clone()
            },
            None => shared.unit.binding.clone(),
        };
        // The floor last seen: none until the first bind.
        let mut last: Option<Floor> = None;
        while !shutdown.is_draining() {
            let Some(Bound { consumer, floor }) =
                bind(shared, &binding, partition.is_some(), last, shutdown).await
            else {
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
                    // A keyed function's backlog gauges: its first
                    // partition's (every partition sees every event).
                    partition.as_ref().is_none_or(|p| p.index == 0),
                )
                .in_current_span(),
            );
            let pulling = pull::Pulling {
                shared,
                consumer: &consumer,
                stream_created,
                permits: &limits.permits,
                held: &limits.held,
                pace: &limits.pace,
                shutdown,
                lost: &lost,
                partition: partition.as_ref(),
            };
            pulling
                .run(&mut in_flight, &mut keyed, readiness.connections())
                .await;
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
        if let Some(partition) = &partition {
            partition
                .give_back(shared, &binding.stream, &binding.consumer)
                .await;
        }
    }
    .instrument(span)
    .await
}

/// Binds the consumer, retrying until NATS agrees (it may be down or
/// starting, the stream missing); `None` once draining.
async fn bind(
    shared: &Shared,
    binding: &StreamBinding,
    pinned: bool,
    seen: Option<Floor>,
    shutdown: &Shutdown,
) -> Option<Bound> {
    let durable = nats::Durable {
        binding,
        serves: shared.unit.serves.clone(),
        pinned,
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
    gauges: bool,
) {
    loop {
        match consumer.info().await {
            Ok(info) => {
                if gauges {
                    shared.metrics.pending.set(info.num_pending as i64);
                    shared.metrics.ack_pending.set(info.num_ack_pending as i64);
                }
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
