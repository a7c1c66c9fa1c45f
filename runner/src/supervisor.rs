//! The functions running in this process: started, stopped (drained) and
//! swapped one by one, so a config reload touches only what it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jetrun_config::FunctionConfig;
use jetrun_functions::Function;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use tokio::sync::OnceCell;

use crate::delivery::{self, Stop};
use crate::eventsourcing;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::request;

/// One running function and the levers to stop it.
struct Running {
    config: FunctionConfig,
    draining: watch::Sender<bool>,
    abandon: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub(crate) struct Supervisor {
    js: async_nats::jetstream::Context,
    /// The `jetrun` micro service, registered with the first request function.
    service: Arc<OnceCell<Arc<async_nats::service::Service>>>,
    metrics: Metrics,
    readiness: Readiness,
    /// How long a stopping function may take to finish its events in flight.
    drain_timeout: Duration,
    running: BTreeMap<String, Running>,
}

/// What a reload did, by function name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) added: Vec<String>,
    pub(crate) removed: Vec<String>,
    pub(crate) changed: Vec<String>,
    pub(crate) unchanged: usize,
}

impl Supervisor {
    pub(crate) fn new(
        js: async_nats::jetstream::Context,
        metrics: Metrics,
        readiness: Readiness,
        drain_timeout: Duration,
    ) -> Self {
        Supervisor {
            js,
            service: Arc::default(),
            metrics,
            readiness,
            drain_timeout,
            running: BTreeMap::new(),
        }
    }

    pub(crate) fn set_drain_timeout(&mut self, timeout: Duration) {
        self.drain_timeout = timeout;
    }

    /// Starts `config`'s function with `handler`: consuming its stream, or
    /// answering requests.
    pub(crate) fn start(&mut self, config: FunctionConfig, handler: Arc<dyn Function>) {
        let (draining, draining_rx) = watch::channel(false);
        let (abandon, abandon_rx) = watch::channel(false);
        self.readiness.add(&config.name);
        let handler = eventsourcing::wrap(&config, handler, &self.js, &self.metrics);
        let task = if config.request.is_some() {
            tokio::spawn(request::serve(
                config.clone(),
                handler,
                request::Service {
                    client: self.js.client(),
                    registered: self.service.clone(),
                },
                self.metrics.clone(),
                self.readiness.clone(),
                draining_rx,
                abandon_rx,
            ))
        } else {
            tokio::spawn(delivery::run(
                config.clone(),
                handler,
                self.js.clone(),
                self.metrics.for_function(&config.name),
                self.readiness.clone(),
                Stop {
                    draining: draining_rx,
                    abandon: abandon_rx,
                },
            ))
        };
        self.running.insert(
            config.name.clone(),
            Running {
                config,
                draining,
                abandon,
                task,
            },
        );
    }

    /// Moves to `functions`: functions no longer listed are drained and
    /// stopped, changed ones drained and started again with their new config
    /// and handler, new ones started; unchanged ones keep running untouched.
    pub(crate) async fn apply(
        &mut self,
        functions: Vec<(FunctionConfig, Arc<dyn Function>)>,
    ) -> Changes {
        let wanted: BTreeSet<&str> = functions.iter().map(|(f, _)| f.name.as_str()).collect();
        let mut changes = Changes::default();
        let mut stopping = Vec::new();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            if !wanted.contains(name.as_str()) {
                changes.removed.push(name.clone());
                stopping.extend(self.running.remove(&name));
            }
        }
        let mut starting = Vec::new();
        for (config, handler) in functions {
            match self.running.get(&config.name) {
                Some(running) if running.config == config => changes.unchanged += 1,
                Some(_) => {
                    changes.changed.push(config.name.clone());
                    stopping.extend(self.running.remove(&config.name));
                    starting.push((config, handler));
                }
                None => {
                    changes.added.push(config.name.clone());
                    starting.push((config, handler));
                }
            }
        }
        let timeout = self.drain_timeout;
        futures::future::join_all(stopping.into_iter().map(|r| stop(r, timeout))).await;
        for name in &changes.removed {
            self.readiness.remove(name);
        }
        for (config, handler) in starting {
            self.start(config, handler);
        }
        changes
    }

    /// Drains and stops every function.
    pub(crate) async fn stop_all(&mut self) {
        let timeout = self.drain_timeout;
        let all = std::mem::take(&mut self.running).into_values();
        futures::future::join_all(all.map(|r| stop(r, timeout))).await;
    }
}

/// Stops pulling, waits up to `timeout` for the events in flight, then has
/// what is left NAKed.
async fn stop(mut running: Running, timeout: Duration) {
    let name = running.config.name.clone();
    let _ = running.draining.send(true);
    if tokio::time::timeout(timeout, &mut running.task)
        .await
        .is_err()
    {
        tracing::warn!(function = %name, "Drain timeout reached; NAKing events still in flight.");
        let _ = running.abandon.send(true);
        let _ = running.task.await;
    }
    tracing::info!(function = %name, "Function stopped.");
}
