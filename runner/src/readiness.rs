//! Whether the runner is ready: NATS connected, every function's consumer
//! bound, every saga's instances loaded, and no supervised task restarting.
//! `/readyz` reads it, and `/metrics` exports it as `jetrun_ready` and
//! `jetrun_function_bound`; the connection, the consumers and `tasks` write
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Clone, Default)]
pub(crate) struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    connected: AtomicBool,
    /// Counts the times the connection to NATS was established.
    connections: watch::Sender<u64>,
    /// Every configured function, and whether its consumer is bound.
    bound: Mutex<BTreeMap<String, bool>>,
    /// Supervised tasks down, waiting to be started again.
    down: Mutex<BTreeSet<String>>,
    /// State still being read at start (a saga's instances).
    loading: Mutex<BTreeSet<String>>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            connected: AtomicBool::new(false),
            connections: watch::channel(0).0,
            bound: Mutex::default(),
            down: Mutex::default(),
            loading: Mutex::default(),
        }
    }
}

impl Readiness {
    pub(crate) fn new<'a>(functions: impl IntoIterator<Item = &'a String>) -> Self {
        let readiness = Readiness::default();
        for function in functions {
            readiness.add(function);
        }
        readiness
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        let was = self.inner.connected.swap(connected, Ordering::Relaxed);
        if connected && !was {
            self.inner.connections.send_modify(|n| *n += 1);
        }
    }

    /// Sees a change each time the connection to NATS is established again.
    pub(crate) fn connections(&self) -> watch::Receiver<u64> {
        self.inner.connections.subscribe()
    }

    /// A function to wait for (not bound yet).
    pub(crate) fn add(&self, function: &str) {
        if let Ok(mut map) = self.inner.bound.lock() {
            map.entry(function.to_string()).or_insert(false);
        }
    }

    /// A function no longer run.
    pub(crate) fn remove(&self, function: &str) {
        if let Ok(mut map) = self.inner.bound.lock() {
            map.remove(function);
        }
    }

    pub(crate) fn set_bound(&self, function: &str, bound: bool) {
        if let Ok(mut map) = self.inner.bound.lock() {
            map.insert(function.to_string(), bound);
        }
    }

    /// A supervised task is down (restarting) or up again.
    pub(crate) fn set_down(&self, task: &str, down: bool) {
        if let Ok(mut set) = self.inner.down.lock() {
            if down {
                set.insert(task.to_string());
            } else {
                set.remove(task);
            }
        }
    }

    /// State the runner is reading (`what`, as `/readyz` names it) or has
    /// read.
    pub(crate) fn set_loading(&self, what: &str, loading: bool) {
        if let Ok(mut set) = self.inner.loading.lock() {
            if loading {
                set.insert(what.to_string());
            } else {
                set.remove(what);
            }
        }
    }

    /// Every function, and whether its consumer (or endpoint) is bound now.
    pub(crate) fn bound(&self) -> BTreeMap<String, bool> {
        self.inner
            .bound
            .lock()
            .map(|map| map.clone())
            .unwrap_or_default()
    }

    /// The supervised tasks down now.
    pub(crate) fn down(&self) -> Vec<String> {
        self.inner
            .down
            .lock()
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `None` when ready, else why not.
    pub(crate) fn not_ready_reason(&self) -> Option<String> {
        if !self.inner.connected.load(Ordering::Relaxed) {
            return Some("not connected to NATS".into());
        }
        let unbound: Vec<String> = self
            .inner
            .bound
            .lock()
            .ok()?
            .iter()
            .filter(|(_, bound)| !**bound)
            .map(|(name, _)| name.clone())
            .collect();
        if !unbound.is_empty() {
            return Some(format!("consumers not bound: {}", unbound.join(", ")));
        }
        let loading: Vec<String> = self.inner.loading.lock().ok()?.iter().cloned().collect();
        if !loading.is_empty() {
            return Some(format!("loading {}", loading.join(", ")));
        }
        let down = self.down();
        (!down.is_empty()).then(|| format!("tasks restarting: {}", down.join(", ")))
    }
}
