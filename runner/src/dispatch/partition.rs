//! A keyed function's partitions: one durable consumer each, in
//! pinned-client mode, so one runner at a time receives a partition's
//! events. Every consumer sees every event of the function; a runner
//! handles those of its keys that fall in the partition and acks the rest
//! at once (each event is handled by exactly one partition). The pin is
//! the server's: a runner knows it holds one when a message carries its
//! `Nats-Pin-Id`, gives it back (unpin) when it stops after settling what
//! it held, and loses it when it stops pulling for [`nats::PIN_TIMEOUT`]
//! (a runner killed with `kill -9`).

use std::sync::atomic::{AtomicBool, Ordering};

use super::Shared;
use crate::flow::key::Key;
use crate::flow::presence::Presence;
use crate::nats;

/// One partition of a keyed function, as this runner pulls it.
pub(super) struct Partition {
    pub(super) index: usize,
    pub(super) of: usize,
    /// Whether this runner holds the partition's pin.
    pinned: AtomicBool,
}

/// Whether partition `index` is at home on the runner at place `rank` (from
/// 0) among `live` replicas sorted by id: partitions are dealt out in turn,
/// so every runner computes the same split, and each holds
/// `partitions / live` of them, or one more.
pub(super) fn is_home(index: usize, rank: usize, live: usize) -> bool {
    index % live.max(1) == rank
}

impl Partition {
    pub(super) fn new(index: usize, of: usize) -> Partition {
        Partition {
            index,
            of,
            pinned: AtomicBool::new(false),
        }
    }

    /// Whether an event of `key` is this partition's to handle. An event
    /// without a key (none could be read, or it is no event at all) is the
    /// first partition's.
    pub(super) fn owns(&self, key: Option<&Key>) -> bool {
        match key {
            Some(key) => key.partition(self.of) == self.index,
            None => self.index == 0,
        }
    }

    /// Records whether this runner holds the pin now.
    pub(super) fn set_pinned(&self, pinned: bool) {
        if self.pinned.swap(pinned, Ordering::Relaxed) != pinned {
            tracing::debug!(
                partition = self.index,
                pinned,
                "The partition's pin changed hands."
            );
        }
    }

    pub(super) fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Whether this partition is this runner's to hold now: with no
    /// presence (a single runner) every partition is.
    pub(super) fn is_home(&self, presence: Option<&Presence>) -> bool {
        presence.is_none_or(|presence| {
            let (rank, live) = presence.rank();
            is_home(self.index, rank, live)
        })
    }

    /// Gives the pin back, once everything this runner held of the
    /// partition is settled, so another runner takes the partition over
    /// at once rather than after the pin timeout.
    pub(super) async fn give_back(&self, shared: &Shared, stream: &str, consumer: &str) {
        if !self.is_pinned() {
            return;
        }
        let unpinned = async {
            let stream = shared.js.get_stream_no_info(stream).await?;
            stream.unpin_consumer(consumer, nats::PIN_GROUP).await?;
            Ok::<_, async_nats::Error>(())
        };
        tracing::info!(partition = self.index, "Giving the partition back.");
        match tokio::time::timeout(std::time::Duration::from_secs(2), unpinned).await {
            Ok(Ok(())) => tracing::debug!(%consumer, "Pin given back."),
            Ok(Err(err)) => {
                tracing::debug!(%consumer, %err, "Cannot give the pin back; it expires on its own.")
            }
            Err(_) => {
                tracing::debug!(%consumer, "Giving the pin back timed out; it expires on its own.")
            }
        }
        self.set_pinned(false);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_partitions_are_dealt_out_among_the_live_replicas() {
        let homes = |of: usize, live: usize| {
            (0..live)
                .map(|rank| (0..of).filter(|&i| super::is_home(i, rank, live)).count())
                .collect::<Vec<_>>()
        };
        assert_eq!(homes(4, 1), vec![4]);
        assert_eq!(homes(4, 2), vec![2, 2]);
        assert_eq!(homes(4, 3), vec![2, 1, 1]);
        assert_eq!(homes(4, 6), vec![1, 1, 1, 1, 0, 0]);
        for live in 1..10 {
            for index in 0..7 {
                let owners = (0..live)
                    .filter(|&rank| super::is_home(index, rank, live))
                    .count();
                assert_eq!(owners, 1, "partition {index} among {live}");
            }
        }
    }
}
