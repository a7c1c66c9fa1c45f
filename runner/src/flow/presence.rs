//! Which replicas of a function are alive, without a coordinator: each
//! running function in each runner process puts `FUNCTION.REPLICA` in the
//! [`REPLICAS`](jetrun_config::name::REPLICAS) bucket every [`HEARTBEAT`]
//! and watches the others' entries. A replica counts while its last
//! heartbeat, as this process saw it arrive, is at most [`MISSED`]
//! heartbeats old; a clean leave deletes its entry, which every watcher
//! sees at once. Clocks of different hosts are never compared.
//!
//! While this process cannot hear NATS (its own heartbeats stop coming back
//! through the watch) the count freezes where it was: a replica is never
//! forgotten only because the view went stale, so a share of the rate
//! computed from the count can be too small for a while, never too big.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::nats;
use crate::shutdown::{retry_until, Control, Shutdown};
use crate::tasks::{self, Supervision};

/// How often a replica says it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// A replica counts while its last heartbeat is at most this many
/// heartbeats old (a replica killed with `kill -9` stops counting within
/// about that long).
pub(crate) const MISSED: u32 = 3;

/// How often the count is looked at again, to let go of silent replicas.
const RECOUNT: Duration = Duration::from_millis(250);

/// The longest a heartbeat or the leaving delete may take before it is
/// given up (the next heartbeat tries again).
const PUT_TIMEOUT: Duration = Duration::from_millis(800);

/// This process's replica id: random, the same for every function it runs.
pub(crate) fn replica_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::iter::repeat_with(fastrand::alphanumeric)
            .take(12)
            .collect()
    })
}

/// This process's membership among a function's replicas, and how many
/// are live. Cloned freely; the heartbeats stop when [`leave`](Self::leave)
/// is called or the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    function: String,
    /// Stops the heartbeat task.
    control: Control,
    task: Mutex<Option<JoinHandle<()>>>,
    store: Arc<OnceLock<kv::Store>>,
    live: watch::Receiver<usize>,
    /// This replica's place among the live ones, sorted by id.
    rank: watch::Receiver<usize>,
    /// Set once the watch has delivered every entry there was (this
    /// process's first heartbeat came back through it).
    settled: watch::Receiver<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.control.drain();
    }
}

impl Presence {
    /// Joins `function`'s replicas: puts this process's heartbeat now and
    /// every [`HEARTBEAT`], and watches the others', in a task supervised
    /// by `supervision` (`presence:FUNCTION`). NATS being unreachable only
    /// delays it: meanwhile [`live`](Self::live) counts this process alone.
    pub(crate) fn join(
        js: &jetstream::Context,
        function: &str,
        supervision: Supervision,
    ) -> Presence {
        let (control, shutdown) = Control::new();
        let (live_tx, live) = watch::channel(1);
        let (rank_tx, rank) = watch::channel(0);
        let (settled_tx, settled) = watch::channel(false);
        let store = Arc::new(OnceLock::new());
        let beat = Arc::new(Beat {
            js: js.clone(),
            function: function.to_string(),
            key: key(function, replica_id()),
            store: store.clone(),
            live: live_tx,
            rank: rank_tx,
            settled: settled_tx,
        });
        let task = tasks::spawn(
            format!("presence:{function}"),
            shutdown.clone(),
            supervision,
            move || beat.clone().run(shutdown.clone()),
        );
        Presence {
            inner: Arc::new(Inner {
                function: function.to_string(),
                control,
                task: Mutex::new(Some(task)),
                store,
                live,
                rank,
                settled,
            }),
        }
    }

    /// This replica's place among the live ones (sorted by replica id, from
    /// 0) and how many there are: every replica computes the same order,
    /// so each can tell its own share of something split among them.
    pub(crate) fn rank(&self) -> (usize, usize) {
        let live = self.live();
        ((*self.inner.rank.borrow()).min(live - 1), live)
    }

    /// The live replicas of the function, this one included (so at least 1).
    pub(crate) fn live(&self) -> usize {
        (*self.inner.live.borrow()).max(1)
    }

    /// The live count, told whenever it changes.
    pub(crate) fn watch(&self) -> watch::Receiver<usize> {
        self.inner.live.clone()
    }

    /// Resolves once the count includes every replica that was already
    /// running when this one joined (or after `limit`, when NATS cannot
    /// tell yet).
    pub(crate) async fn settled(&self, limit: Duration) {
        let mut settled = self.inner.settled.clone();
        let _ = tokio::time::timeout(limit, settled.wait_for(|done| *done)).await;
    }

    /// Leaves cleanly: stops the heartbeats and deletes this replica's
    /// entry, so the others count it out at once. Call it once the
    /// function's work is done (after its drain).
    pub(crate) async fn leave(&self) {
        self.inner.control.drain();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // No heartbeat may land after the delete.
            let _ = tokio::time::timeout(PUT_TIMEOUT, task).await;
        }
        if let Some(store) = self.inner.store.get() {
            let key = key(&self.inner.function, replica_id());
            match tokio::time::timeout(PUT_TIMEOUT, store.delete(&key)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(function = %self.inner.function, %err, "Could not delete the replica's heartbeat; the others count it out within 3 s.");
                }
                Err(_) => {
                    tracing::debug!(function = %self.inner.function, "Deleting the replica's heartbeat timed out; the others count it out within 3 s.");
                }
            }
        }
    }
}

/// The bucket key of `replica` of `function`.
fn key(function: &str, replica: &str) -> String {
    format!("{function}.{replica}")
}

/// What the heartbeat task holds.
struct Beat {
    js: jetstream::Context,
    function: String,
    /// This replica's bucket key.
    key: String,
    store: Arc<OnceLock<kv::Store>>,
    live: watch::Sender<usize>,
    rank: watch::Sender<usize>,
    settled: watch::Sender<bool>,
}

impl Beat {
    /// Opens the bucket, then puts heartbeats and follows the watch until
    /// `shutdown` drains; a watch that breaks or goes stale is made again.
    async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let window = HEARTBEAT * MISSED;
        let store = match self.store.get() {
            Some(store) => store.clone(),
            None => {
                let open = || nats::replicas(&self.js, window);
                let Some(store) =
                    retry_until("open the replicas' KV bucket", &shutdown, open).await
                else {
                    return;
                };
                let _ = self.store.set(store.clone());
                store
            }
        };
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let me = replica_id();
        let prefix = format!("{}.", self.function);
        loop {
            let filter = format!("{}.*", self.function);
            let watching = || store.watch_with_history(filter.as_str());
            let Some(mut entries) =
                retry_until("watch the replicas' KV bucket", &shutdown, watching).await
            else {
                return;
            };
            let watched = Instant::now();
            self.put(&store).await;
            let mut beat = tokio::time::interval_at(watched + HEARTBEAT, HEARTBEAT);
            let mut recount = tokio::time::interval(RECOUNT);
            loop {
                tokio::select! {
                    biased;
                    () = shutdown.draining() => return,
                    entry = entries.next() => match entry {
                        Some(Ok(entry)) => {
                            let Some(replica) = entry.key.strip_prefix(&prefix) else {
                                continue;
                            };
                            match entry.operation {
                                kv::Operation::Put => {
                                    seen.insert(replica.to_string(), Instant::now());
                                    if replica == me {
                                        self.settled.send_replace(true);
                                    }
                                }
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    if replica != me {
                                        seen.remove(replica);
                                    }
                                }
                            }
                            self.tell(&seen, me, Instant::now());
                        }
                        Some(Err(err)) => {
                            tracing::debug!(function = %self.function, %err, "The replicas' watch failed; watching again.");
                            break;
                        }
                        None => break,
                    },
                    _ = beat.tick() => self.put(&store).await,
                    _ = recount.tick() => {
                        let now = Instant::now();
                        seen.retain(|_, at| now.duration_since(*at) < window * 20);
                        self.tell(&seen, me, now);
                        // Heartbeats are put but none came back for a while:
                        // the watch is stuck; make it again.
                        let last_echo = seen.get(me).copied().unwrap_or(watched);
                        if now.duration_since(last_echo.max(watched)) > window * 2 {
                            tracing::debug!(function = %self.function, "The replicas' watch went quiet; watching again.");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Puts this replica's heartbeat; a failure waits for the next one.
    async fn put(&self, store: &kv::Store) {
        let value = bytes::Bytes::from(std::process::id().to_string());
        match tokio::time::timeout(PUT_TIMEOUT, store.put(&self.key, value)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::debug!(function = %self.function, %err, "Could not put the replica's heartbeat.");
            }
            Err(_) => {
                tracing::debug!(function = %self.function, "Putting the replica's heartbeat timed out.");
            }
        }
    }

    fn tell(&self, seen: &HashMap<String, Instant>, me: &str, now: Instant) {
        let (rank, live) = rank(seen, me, now);
        self.rank.send_if_modified(|old| {
            let changed = *old != rank;
            *old = rank;
            changed
        });
        self.live.send_if_modified(|old| {
            let changed = *old != live;
            if changed {
                tracing::info!(function = %self.function, replicas = live, "Live replicas changed.");
            }
            *old = live;
            changed
        });
    }
}

/// `me`'s place among the live replicas sorted by id, and how many there
/// are (as [`count`]).
fn rank(seen: &HashMap<String, Instant>, me: &str, now: Instant) -> (usize, usize) {
    let window = HEARTBEAT * MISSED;
    let view = match seen.get(me) {
        Some(&mine) if now.duration_since(mine) > window => mine,
        _ => now,
    };
    let before = seen
        .iter()
        .filter(|(id, at)| id.as_str() < me && view.saturating_duration_since(**at) <= window)
        .count();
    (before, count(seen, me, now))
}

/// The live replicas, `me` included, among those `seen` (each with when its
/// last heartbeat arrived). While `me`'s own heartbeats have stopped coming
/// back the view is stale: the others are judged as of when it last was
/// fresh, so none is counted out only because this process went deaf.
fn count(seen: &HashMap<String, Instant>, me: &str, now: Instant) -> usize {
    let window = HEARTBEAT * MISSED;
    let view = match seen.get(me) {
        Some(&mine) if now.duration_since(mine) > window => mine,
        _ => now,
    };
    let others = seen
        .iter()
        .filter(|(id, at)| id.as_str() != me && view.saturating_duration_since(**at) <= window)
        .count();
    1 + others
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(entries: &[(&str, Instant)]) -> HashMap<String, Instant> {
        entries
            .iter()
            .map(|(id, at)| (id.to_string(), *at))
            .collect()
    }

    #[test]
    fn counts_itself_and_those_heard_within_three_heartbeats() {
        let now = Instant::now() + Duration::from_secs(60);
        let ago = |ms: u64| now - Duration::from_millis(ms);
        assert_eq!(count(&HashMap::new(), "me", now), 1);
        let view = seen(&[("me", ago(200)), ("b", ago(900)), ("c", ago(3_000))]);
        assert_eq!(count(&view, "me", now), 3);
        let view = seen(&[("me", ago(200)), ("b", ago(900)), ("c", ago(3_100))]);
        assert_eq!(count(&view, "me", now), 2);
    }

    #[test]
    fn a_stale_view_freezes_the_count_rather_than_forgetting_the_others() {
        let now = Instant::now() + Duration::from_secs(60);
        let ago = |ms: u64| now - Duration::from_millis(ms);
        // This process last heard itself 10 s ago, and b just before:
        // NATS is unreachable, b is counted as it was then.
        let view = seen(&[("me", ago(10_000)), ("b", ago(10_500)), ("c", ago(20_000))]);
        assert_eq!(count(&view, "me", now), 2);
    }

    #[test]
    fn the_replica_id_is_one_per_process_and_fits_a_bucket_key() {
        let id = replica_id();
        assert_eq!(id, replica_id());
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(key("notify-partner", id), format!("notify-partner.{id}"));
    }
}
