//! A keyed function's partitions: one durable consumer each, in
//! pinned-client mode, so one runner at a time receives a partition's
//! events. Every consumer sees every event of the function; a runner
//! handles those of its keys that fall in the partition and acks the rest
//! at once (each event is handled by exactly one partition). The pin is
//! the server's: a runner knows it holds one when a message carries its
//! `Nats-Pin-Id`, gives it back (unpin) when it stops after settling what
//! it held, and loses it when it stops pulling for [`nats::PIN_TIMEOUT`]
//! (a runner killed with `kill -9`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use jetrun_config::StreamBinding;

use super::Shared;
use crate::flow::key::Key;
use crate::nats;

/// One partition of a keyed function, as this runner pulls it.
pub(super) struct Partition {
    pub(super) index: usize,
    pub(super) of: usize,
    /// What this runner's partitions of the function share.
    pub(super) pins: std::sync::Arc<Pins>,
    /// Whether this runner holds the partition's pin.
    pinned: AtomicBool,
}

/// The pins this runner holds among a function's partitions.
pub(super) struct Pins {
    held: AtomicUsize,
}

impl Pins {
    pub(super) fn new() -> Pins {
        Pins {
            held: AtomicUsize::new(0),
        }
    }

    /// Partitions this runner holds the pin of.
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Partition {
    pub(super) fn new(index: usize, of: usize, pins: std::sync::Arc<Pins>) -> Partition {
        Partition {
            index,
            of,
            pins,
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
            if pinned {
                self.pins.held.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(partition = self.index, "Pinned on the partition.");
            } else {
                self.pins.held.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(partition = self.index, "No longer pinned on the partition.");
            }
        }
    }

    pub(super) fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Gives the pin back, once everything this runner held of the
    /// partition is settled, so another runner takes the partition over
    /// at once rather than after the pin timeout.
    pub(super) async fn give_back(&self, shared: &Shared, binding: &StreamBinding) {
        if !self.is_pinned() {
            return;
        }
        let unpinned = async {
            let stream = shared.js.get_stream_no_info(&binding.stream).await?;
            stream
                .unpin_consumer(&binding.consumer, nats::PIN_GROUP)
                .await?;
            Ok::<_, async_nats::Error>(())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(2), unpinned).await {
            Ok(Ok(())) => tracing::debug!(consumer = %binding.consumer, "Pin given back."),
            Ok(Err(err)) => {
                tracing::debug!(consumer = %binding.consumer, %err, "Cannot give the pin back; it expires on its own.")
            }
            Err(_) => {
                tracing::debug!(consumer = %binding.consumer, "Giving the pin back timed out; it expires on its own.")
            }
        }
        self.set_pinned(false);
    }
}
