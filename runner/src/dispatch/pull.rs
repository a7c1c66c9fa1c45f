//! Pulling a consumer's messages as handler slots free up: a pull asks for
//! one message per free slot, so a saturated function leaves its messages on
//! the server, for other replicas to take, and a pulled message is never
//! left waiting for a slot past its ack wait.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::consumer::Lost;
use super::{deliver, Shared};
use crate::shutdown::{retry_until, Shutdown};

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// The pause before pulling again after a pull ended with an error.
const PAUSE_AFTER_ERROR: Duration = Duration::from_secs(1);
/// The most messages asked for in one pull request.
const MAX_BATCH: usize = 256;

/// One bound consumer being pulled.
pub(super) struct Pulling<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) consumer: &'a PullConsumer,
    /// When the consumer's stream was created (see [`crate::nats::Floor`]).
    pub(super) stream_created: u64,
    pub(super) permits: &'a Arc<Semaphore>,
    pub(super) shutdown: &'a Shutdown,
    pub(super) lost: &'a Lost,
}

impl Pulling<'_> {
    /// Pulls batches as slots free up, until draining or the consumer is lost.
    pub(super) async fn run(
        &self,
        in_flight: &mut JoinSet<()>,
        mut connections: watch::Receiver<u64>,
    ) {
        loop {
            // Reap finished deliveries so the set does not grow.
            while in_flight.try_join_next().is_some() {}
            let first = tokio::select! {
                biased;
                () = self.shutdown.draining() => return,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            if self.lost.is_lost() {
                return;
            }
            let mut slots = take_free_slots(self.permits, first, self.shared.unit.concurrency);
            let batch = retry_until("pull", self.shutdown, || {
                self.consumer
                    .batch()
                    .max_messages(slots.len())
                    .expires(PULL_EXPIRES)
                    .messages()
            })
            .await;
            let Some(mut batch) = batch else { return };
            // Once a pull request is out, the server may deliver up to its size
            // until it expires: handle every message it sends, even while
            // draining (a slot is held for each), so none waits out the ack wait
            // unseen and a drain (a reload, a shutdown) makes no redelivery.
            loop {
                let next = tokio::select! {
                    next = batch.next() => next,
                    // A deleted consumer sends nothing more: stop waiting on it.
                    () = self.lost.notified() => return,
                    // After a reconnect the server may have forgotten the pull
                    // (a restarted nats-server has): pull again rather than wait
                    // for the client to give up on it (its expiry plus 5 s).
                    // Should it still be live (a cluster), what it would still
                    // deliver is redelivered after the ack wait.
                    Ok(()) = connections.changed() => {
                        tracing::debug!("Reconnected to NATS; pulling again.");
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
                            None => match self.permits.clone().acquire_owned().await {
                                Ok(permit) => permit,
                                Err(_) => return,
                            },
                        };
                        let shared = self.shared.clone();
                        let shutdown = self.shutdown.clone();
                        let stream_created = self.stream_created;
                        let mut delivery = Box::pin(async move {
                            deliver::deliver(&shared, message, stream_created, &shutdown).await;
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
                        tracing::warn!(%err, "Pull request ended with an error; pulling again.");
                        tokio::select! {
                            () = self.shutdown.draining() => {}
                            () = tokio::time::sleep(PAUSE_AFTER_ERROR) => {}
                        }
                        break;
                    }
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
