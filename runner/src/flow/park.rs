//! `on_dead_letter = "park"`: a key whose event was dead-lettered is parked
//! behind it, and its later events are dead-lettered too (reason `parked`,
//! `Jetrun-Parked-Behind: <stream>:<seq>`) without running the handler,
//! until `jetrun dlq replay` sends the first one back with
//! `Jetrun-Unparks: <stream>:<seq>`.
//!
//! The parks live in KV bucket `jetrun_parked` (`<function>.<key, base64url>`
//! holding the blocker as JSON), so every replica sees a park made on
//! another: each keeps its functions' parks in memory through a watch
//! ([`Parked::of`]), and a park made or lifted here is applied at once.
//! Every change carries the bucket's revision and an older one never undoes
//! a newer, so the watch catching up late cannot bring back a lifted park.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use async_nats::jetstream::Context;
use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use futures::{StreamExt as _, TryStreamExt as _};
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::key::Key;
use crate::nats::{self, BucketError};

/// On a dead letter of a keyed function: the key of its event.
pub(crate) const KEY_HEADER: &str = "Jetrun-Key";
/// On a parked event's dead letter: the blocker it waits behind.
pub(crate) const PARKED_BEHIND: &str = "Jetrun-Parked-Behind";
/// On a replayed dead letter: the park it lifts (its own original event).
pub(crate) const UNPARKS: &str = "Jetrun-Unparks";

/// The pause before the watch of the parks starts again after it ended.
const WATCH_PAUSE: Duration = Duration::from_secs(1);

/// The dead-lettered event a parked key waits behind: said
/// `<stream>:<sequence>` in the headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Blocker {
    pub(crate) stream: String,
    pub(crate) sequence: u64,
}

impl Blocker {
    /// `<stream>:<sequence>` read back (a stream name may hold `:`, a
    /// sequence not).
    pub(crate) fn parse(text: &str) -> Option<Blocker> {
        let (stream, sequence) = text.trim().rsplit_once(':')?;
        Some(Blocker {
            stream: stream.to_string(),
            sequence: sequence.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.stream, self.sequence)
    }
}

/// What the bucket holds for a parked key: the blocker, and the key as it
/// is (the bucket's key holds it encoded), for `nats kv get`.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    stream: String,
    sequence: u64,
    key: String,
}

/// The bucket key of `function`'s park of `key`: the key in base64url, which
/// any key can be written in.
fn bucket_key(function: &str, key: &Key) -> String {
    format!(
        "{function}.{}",
        BASE64_URL_SAFE_NO_PAD.encode(key.as_str().as_bytes())
    )
}

/// What happened last to one bucket key, and at which revision.
#[derive(Debug, Clone, PartialEq)]
enum Slot {
    Parked { blocker: Blocker, revision: u64 },
    Lifted { revision: u64 },
}

impl Slot {
    fn revision(&self) -> u64 {
        match self {
            Slot::Parked { revision, .. } | Slot::Lifted { revision } => *revision,
        }
    }
}

/// One function's parks as this process knows them: pure, fed by the
/// watch and by what this process does.
#[derive(Debug, Default)]
struct Parks {
    slots: HashMap<String, Slot>,
}

impl Parks {
    /// Applies what the bucket said at `revision`, unless something newer
    /// is known already.
    fn apply(&mut self, bucket_key: &str, slot: Slot) {
        match self.slots.get(bucket_key) {
            Some(known) if known.revision() >= slot.revision() => {}
            _ => {
                self.slots.insert(bucket_key.to_string(), slot);
            }
        }
    }

    /// Lifts the park made at `revision` (by this process: the delete's own
    /// revision comes with the watch, and is newer).
    fn lift(&mut self, bucket_key: &str, revision: u64) {
        if self.blocker(bucket_key).is_some_and(|(_, r)| r == revision) {
            self.slots
                .insert(bucket_key.to_string(), Slot::Lifted { revision });
        }
    }

    fn blocker(&self, bucket_key: &str) -> Option<(&Blocker, u64)> {
        match self.slots.get(bucket_key) {
            Some(Slot::Parked { blocker, revision }) => Some((blocker, *revision)),
            _ => None,
        }
    }

    fn parked(&self) -> usize {
        self.slots
            .values()
            .filter(|slot| matches!(slot, Slot::Parked { .. }))
            .count()
    }
}

/// Why a park could not be read, made or lifted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParkError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error("cannot {what} in KV bucket {bucket}: {reason}", bucket = jetrun_config::name::PARKED_KEYS)]
    Kv { what: &'static str, reason: String },
}

fn kv_error(what: &'static str) -> impl FnOnce(async_nats::Error) -> ParkError {
    move |err| ParkError::Kv {
        what,
        reason: err.to_string(),
    }
}

/// How long a lookup waits for the parked keys to be read.
const LOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A park-mode function's parks, kept up to date by a watch.
pub(crate) struct Parked {
    function: String,
    store: kv::Store,
    parks: Mutex<Parks>,
    /// Set once the watch has read what the bucket held when it started.
    loaded: watch::Sender<bool>,
    /// `jetrun_parked_keys{function}`.
    gauge: IntGauge,
}

/// Every function's parks in this process, each watched once.
fn registry() -> &'static Mutex<HashMap<String, Arc<Parked>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<Parked>>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

impl Parked {
    /// `function`'s parks: watched from the first call on (for as long as
    /// the process runs), shared by every later one.
    pub(crate) async fn of(
        js: &Context,
        function: &str,
        gauge: &IntGauge,
    ) -> Result<Arc<Parked>, ParkError> {
        if let Some(parked) = lock(registry()).get(function) {
            return Ok(parked.clone());
        }
        let store = nats::parked_keys(js).await?;
        let mut registry = lock(registry());
        if let Some(parked) = registry.get(function) {
            return Ok(parked.clone());
        }
        let parked = Arc::new(Parked {
            function: function.to_string(),
            store,
            parks: Mutex::default(),
            loaded: watch::Sender::new(false),
            gauge: gauge.clone(),
        });
        tokio::spawn(watch_parks(parked.clone()));
        registry.insert(function.to_string(), parked.clone());
        Ok(parked)
    }

    /// The blocker `key` is parked behind, if it is; waits for the watch
    /// to have read the bucket first (an error when it has not within
    /// [`LOAD_WAIT`]: the event is tried again later, never run unchecked).
    pub(crate) async fn blocker(&self, key: &Key) -> Result<Option<Blocker>, ParkError> {
        let mut loaded = self.loaded.subscribe();
        match tokio::time::timeout(LOAD_WAIT, loaded.wait_for(|loaded| *loaded)).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(ParkError::Kv {
                    what: "read the parked keys",
                    reason: format!("not read within {}s", LOAD_WAIT.as_secs()),
                })
            }
        }
        let bucket_key = bucket_key(&self.function, key);
        Ok(lock(&self.parks)
            .blocker(&bucket_key)
            .map(|(blocker, _)| blocker.clone()))
    }

    /// Parks `key` behind `blocker`; a park already there stays. The
    /// blocker the key is parked behind now.
    pub(crate) async fn park(&self, key: &Key, blocker: Blocker) -> Result<Blocker, ParkError> {
        let bucket_key = bucket_key(&self.function, key);
        let stored = Stored {
            stream: blocker.stream.clone(),
            sequence: blocker.sequence,
            key: key.as_str().to_string(),
        };
        let value = serde_json::to_vec(&stored).unwrap_or_default();
        match self.store.create(&bucket_key, value.into()).await {
            Ok(revision) => {
                self.apply(
                    &bucket_key,
                    Slot::Parked {
                        blocker: blocker.clone(),
                        revision,
                    },
                );
                Ok(blocker)
            }
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
                let entry = self
                    .store
                    .entry(&bucket_key)
                    .await
                    .map_err(|err| kv_error("read a park")(err.into()))?;
                match entry.and_then(|entry| Some((read(&entry)?, entry.revision))) {
                    Some((existing, revision)) => {
                        self.apply(
                            &bucket_key,
                            Slot::Parked {
                                blocker: existing.clone(),
                                revision,
                            },
                        );
                        Ok(existing)
                    }
                    None => Err(ParkError::Kv {
                        what: "park a key",
                        reason: format!("{bucket_key} changed meanwhile; trying again"),
                    }),
                }
            }
            Err(err) => Err(kv_error("park a key")(err.into())),
        }
    }

    /// Lifts `key`'s park when it is the one behind `blocker`; whether it
    /// was (a key parked behind another event, or not parked, stays so).
    pub(crate) async fn unpark(&self, key: &Key, blocker: &Blocker) -> Result<bool, ParkError> {
        let bucket_key = bucket_key(&self.function, key);
        let revision = match lock(&self.parks).blocker(&bucket_key) {
            Some((parked, revision)) if parked == blocker => revision,
            _ => return Ok(false),
        };
        self.store
            .delete_expect_revision(&bucket_key, Some(revision))
            .await
            .map_err(|err| kv_error("lift a park")(err.into()))?;
        let mut parks = lock(&self.parks);
        parks.lift(&bucket_key, revision);
        self.gauge.set(parks.parked() as i64);
        Ok(true)
    }

    fn apply(&self, bucket_key: &str, slot: Slot) {
        let mut parks = lock(&self.parks);
        parks.apply(bucket_key, slot);
        self.gauge.set(parks.parked() as i64);
    }
}

/// The blocker a bucket entry holds, if it holds one.
fn read(entry: &kv::Entry) -> Option<Blocker> {
    if entry.operation != Operation::Put {
        return None;
    }
    let stored: Stored = serde_json::from_slice(&entry.value).ok()?;
    Some(Blocker {
        stream: stored.stream,
        sequence: stored.sequence,
    })
}

/// Keeps `parked` in step with the bucket, for as long as the process runs.
async fn watch_parks(parked: Arc<Parked>) {
    loop {
        if let Err(err) = follow(&parked).await {
            tracing::warn!(function = %parked.function, %err, "Watch of the parked keys ended; starting it again.");
        }
        tokio::time::sleep(WATCH_PAUSE).await;
    }
}

/// One watch of `parked`'s keys, from what the bucket holds now on.
async fn follow(parked: &Parked) -> Result<(), async_nats::Error> {
    let prefix = format!("{}.", parked.function);
    let filter = format!("$KV.{}.{prefix}>", jetrun_config::name::PARKED_KEYS);
    let held: usize = parked
        .store
        .stream
        .info_with_subjects(&filter)
        .await?
        .map_ok(|(_, count)| count)
        .try_fold(0, |sum, count| async move { Ok(sum + count) })
        .await?;
    let mut entries = parked
        .store
        .watch_with_history(format!("{prefix}>"))
        .await?;
    if held == 0 {
        parked.loaded.send_replace(true);
    }
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let slot = match read(&entry) {
            Some(blocker) => Slot::Parked {
                blocker,
                revision: entry.revision,
            },
            None => Slot::Lifted {
                revision: entry.revision,
            },
        };
        parked.apply(&entry.key, slot);
        if entry.delta == 0 {
            parked.loaded.send_replace(true);
        }
    }
    Err("the watch ended".into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a replay header names: the blocker in `Jetrun-Unparks`, if the
/// message carries one that reads.
pub(crate) fn unparks(headers: Option<&async_nats::HeaderMap>) -> Option<Blocker> {
    Blocker::parse(headers?.get(UNPARKS)?.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocker(stream: &str, sequence: u64) -> Blocker {
        Blocker {
            stream: stream.into(),
            sequence,
        }
    }

    #[test]
    fn blockers_read_back_as_written() {
        let b = blocker("PAYMENTS", 42);
        assert_eq!(b.to_string(), "PAYMENTS:42");
        assert_eq!(Blocker::parse("PAYMENTS:42"), Some(b));
        assert_eq!(Blocker::parse("a:b:7"), Some(blocker("a:b", 7)));
        assert_eq!(Blocker::parse("PAYMENTS"), None);
        assert_eq!(Blocker::parse("PAYMENTS:x"), None);
    }

    #[test]
    fn any_key_makes_a_bucket_key() {
        let key = |k: &str| bucket_key("apply-payment", &Key::for_tests(k));
        assert_eq!(key("a-1"), "apply-payment.YS0x");
        let odd = key("a b.c/é\n*>");
        let encoded = odd.strip_prefix("apply-payment.").unwrap();
        assert!(
            encoded
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{odd}"
        );
    }

    #[test]
    fn an_older_revision_never_undoes_a_newer_one() {
        let mut parks = Parks::default();
        let parked = |revision| Slot::Parked {
            blocker: blocker("S", 7),
            revision,
        };
        parks.apply("f.k", parked(3));
        assert_eq!(parks.parked(), 1);
        parks.apply("f.k", Slot::Lifted { revision: 3 });
        assert_eq!(parks.parked(), 1, "same revision: the park stays");
        // Lifted here: the delete's revision is still to come.
        parks.lift("f.k", 3);
        assert_eq!(parks.parked(), 0);
        parks.apply("f.k", parked(3));
        assert_eq!(parks.parked(), 0, "the watch's late echo of the park");
        parks.apply("f.k", Slot::Lifted { revision: 4 });
        parks.apply("f.k", parked(5));
        assert_eq!(
            parks.blocker("f.k").map(|(b, r)| (b.clone(), r)),
            Some((blocker("S", 7), 5))
        );
    }
}
