//! What runs in this process: each function (consuming its stream, or
//! answering requests) and each saga, started, stopped (drained) and swapped
//! one by one as a [`diff`] of the config says, so a reload touches only
//! what it changed; and the relay of delayed events, on the schedules
//! stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jetrun_config::{Config, FunctionConfig, SagaConfig, Trigger};
use jetrun_functions::Function;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::diff::{diff, Diff};
use crate::delayed;
use crate::dispatch::{self, Unit};
use crate::emit::{Emitter, Reserved};
use crate::flow::presence::Presence;
use crate::flow::rate::Limiter;
use crate::layers;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::request::{self, Endpoint};
use crate::saga;
use crate::shutdown::Control;
use crate::tasks::{self, Supervision};

/// One running part and the levers to stop it.
struct Running<C> {
    config: C,
    control: Control,
    task: JoinHandle<()>,
}

/// What a running part is, for the log.
trait Part {
    fn stopped(name: &str);
}

impl Part for FunctionConfig {
    fn stopped(name: &str) {
        tracing::info!(function = %name, "Function stopped.");
    }
}

impl Part for SagaConfig {
    fn stopped(name: &str) {
        tracing::info!(saga = %name, "Saga stopped.");
    }
}

/// The relay of delayed events, by where it reads and dead-letters.
impl Part for delayed::RelayAt {
    fn stopped(_: &str) {
        tracing::info!("Relay of delayed events stopped.");
    }
}

pub(crate) struct Supervisor {
    js: async_nats::jetstream::Context,
    /// The `jetrun` micro service, registered with the first request function.
    service: request::Service,
    metrics: Metrics,
    readiness: Readiness,
    /// How long a stopping part may take to finish what it has in flight.
    drain_timeout: Duration,
    functions: BTreeMap<String, Running<FunctionConfig>>,
    sagas: BTreeMap<String, Running<SagaConfig>>,
    /// The relay of delayed events, when the schedules stream is there.
    relay: Option<Running<delayed::RelayAt>>,
    /// What no emit may reach, for the config applied last.
    reserved: Arc<Reserved>,
}

/// What applying a config did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) functions: Diff,
    pub(crate) sagas: Diff,
}

impl Supervisor {
    pub(crate) fn new(
        js: async_nats::jetstream::Context,
        metrics: Metrics,
        readiness: Readiness,
        drain_timeout: Duration,
        service: &str,
    ) -> Self {
        Supervisor {
            service: request::Service {
                client: js.client(),
                name: service.to_string(),
                registered: Arc::new(OnceCell::new()),
            },
            js,
            metrics,
            readiness,
            drain_timeout,
            functions: BTreeMap::new(),
            sagas: BTreeMap::new(),
            relay: None,
            reserved: Arc::default(),
        }
    }

    pub(crate) fn set_drain_timeout(&mut self, timeout: Duration) {
        self.drain_timeout = timeout;
    }

    /// Moves to `functions` and `sagas`: what is no longer listed is drained
    /// and stopped, what changed is drained and started again with its new
    /// config, what is new is started; the rest keeps running untouched.
    pub(crate) async fn apply(
        &mut self,
        config: &Config,
        functions: Vec<(FunctionConfig, Arc<dyn Function>)>,
    ) -> Changes {
        let sagas = &config.sagas;
        self.reserved = Arc::new(Reserved::of(config));
        let changes = Changes {
            functions: diff(
                self.functions.iter().map(|(n, r)| (n.as_str(), &r.config)),
                functions.iter().map(|(f, _)| (f.name.as_str(), f)),
            ),
            sagas: diff(
                self.sagas.iter().map(|(n, r)| (n.as_str(), &r.config)),
                sagas.iter().map(|(n, s)| (n.as_str(), s)),
            ),
        };
        let stopping_functions: Vec<_> = (changes.functions.removed.iter())
            .chain(&changes.functions.changed)
            .filter_map(|name| self.functions.remove_entry(name))
            .collect();
        let stopping_sagas: Vec<_> = (changes.sagas.removed.iter())
            .chain(&changes.sagas.changed)
            .filter_map(|name| self.sagas.remove_entry(name))
            .collect();
        // A changed saga may read other streams now: its old units go too.
        let saga_units: Vec<String> = stopping_sagas
            .iter()
            .flat_map(|(_, r)| saga::units(&r.config))
            .map(|unit| unit.name)
            .collect();
        let timeout = self.drain_timeout;
        futures::future::join(
            futures::future::join_all(stopping_functions.into_iter().map(|r| stop(r, timeout))),
            futures::future::join_all(stopping_sagas.into_iter().map(|r| stop(r, timeout))),
        )
        .await;
        for name in changes.functions.removed.iter().chain(&saga_units) {
            self.readiness.remove(name);
        }
        let starting = |name: &str| {
            changes.functions.added.iter().any(|n| n == name)
                || changes.functions.changed.iter().any(|n| n == name)
        };
        for (config, handler) in functions {
            if starting(&config.name) {
                self.start_function(config, handler);
            }
        }
        for name in changes.sagas.added.iter().chain(&changes.sagas.changed) {
            if let Some(config) = sagas.get(name) {
                self.start_saga(config.clone());
            }
        }
        changes
    }

    /// Drains and stops everything.
    pub(crate) async fn stop_all(&mut self) {
        let timeout = self.drain_timeout;
        let functions = std::mem::take(&mut self.functions).into_iter();
        let sagas = std::mem::take(&mut self.sagas).into_iter();
        let relay = self.relay.take().map(|r| (delayed::RELAY.to_string(), r));
        futures::future::join3(
            futures::future::join_all(functions.map(|r| stop(r, timeout))),
            futures::future::join_all(sagas.map(|r| stop(r, timeout))),
            futures::future::join_all(relay.map(|r| stop(r, timeout))),
        )
        .await;
    }

    /// Relays the delayed events of the schedules stream `at` says (`None`:
    /// the stream is not there, none are relayed): started, or moved, or
    /// stopped.
    pub(crate) async fn relay_delayed(&mut self, at: Option<delayed::RelayAt>) {
        if self.relay.as_ref().map(|r| &r.config) == at.as_ref() {
            return;
        }
        if let Some(running) = self.relay.take() {
            self.readiness.remove(delayed::RELAY);
            stop((delayed::RELAY.to_string(), running), self.drain_timeout).await;
        }
        let Some(at) = at else { return };
        self.readiness.add(delayed::RELAY);
        let handles = self.metrics.for_function(delayed::RELAY);
        let relay = delayed::Relay::handler(&self.js, self.metrics.delayed_late.clone());
        let shared = Arc::new(dispatch::Shared {
            unit: delayed::unit(&at),
            handler: layers::Metered::wrap(relay, &handles),
            emitter: None,
            js: self.js.clone(),
            metrics: handles,
            presence: None,
            rate: None,
        });
        let (control, shutdown) = Control::new();
        let (readiness, stop) = (self.readiness.clone(), shutdown.clone());
        let task = tasks::spawn(
            format!("consumer:{}", delayed::RELAY),
            shutdown,
            self.supervision(),
            move || dispatch::run(shared.clone(), readiness.clone(), stop.clone()),
        );
        self.relay = Some(Running {
            config: at,
            control,
            task,
        });
    }

    fn supervision(&self) -> Supervision {
        Supervision {
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
        }
    }

    /// Starts `config`'s function with `handler`: consuming its stream, or
    /// answering requests, with its layers around it; supervised.
    fn start_function(&mut self, config: FunctionConfig, handler: Arc<dyn Function>) {
        let name = config.name.clone();
        self.readiness.add(&name);
        let handles = self.metrics.for_function(&name);
        let handler = layers::stack(&config, handler, &self.js, &self.metrics, &handles);
        let (control, shutdown) = Control::new();
        let readiness = self.readiness.clone();
        let task = match &config.trigger {
            Trigger::Request { subject } => {
                let endpoint = Endpoint {
                    function: name.clone(),
                    subject: subject.clone(),
                    concurrency: config.concurrency,
                };
                let service = self.service.clone();
                let metrics = self.metrics.for_requests(&name);
                let stop = shutdown.clone();
                tasks::spawn(
                    format!("endpoint:{name}"),
                    shutdown,
                    self.supervision(),
                    move || {
                        request::serve(
                            endpoint.clone(),
                            handler.clone(),
                            service.clone(),
                            metrics.clone(),
                            readiness.clone(),
                            stop.clone(),
                        )
                    },
                )
            }
            Trigger::Stream(binding) => {
                let presence = (config.key.is_some() || config.rate.is_some())
                    .then(|| Presence::join(&self.js, &name, self.supervision()));
                let rate = config.rate.zip(presence.clone()).map(|(rate, presence)| {
                    Limiter::new(rate, presence, handles.rate_limited.clone())
                });
                let shared = Arc::new(dispatch::Shared {
                    unit: Unit {
                        name: name.clone(),
                        serves: format!("function {name}"),
                        binding: binding.clone(),
                        retry: config.retry,
                        concurrency: config.concurrency,
                        key: config.key.clone(),
                        batch: config.batch,
                    },
                    handler,
                    emitter: Some(Emitter::new(
                        &self.js,
                        &config,
                        self.reserved.clone(),
                        &handles,
                    )),
                    js: self.js.clone(),
                    metrics: handles,
                    presence: presence.clone(),
                    rate,
                });
                let stop = shutdown.clone();
                let consumer = tasks::spawn(
                    format!("consumer:{name}"),
                    shutdown,
                    self.supervision(),
                    move || dispatch::run(shared.clone(), readiness.clone(), stop.clone()),
                );
                match presence {
                    // Left once the consumer has settled what it held, so
                    // the others take over this replica's share only then.
                    Some(presence) => tokio::spawn(async move {
                        let _ = consumer.await;
                        presence.leave().await;
                    }),
                    None => consumer,
                }
            }
        };
        self.functions.insert(
            name,
            Running {
                config,
                control,
                task,
            },
        );
    }

    /// Starts saga `config`: its consumers, its watch and its clock.
    fn start_saga(&mut self, config: SagaConfig) {
        for unit in saga::units(&config) {
            self.readiness.add(&unit.name);
        }
        let (control, shutdown) = Control::new();
        let (saga, js, supervision, stop) = (
            config.clone(),
            self.js.clone(),
            self.supervision(),
            shutdown.clone(),
        );
        let task = tasks::spawn(
            format!("saga:{}", config.name),
            shutdown,
            self.supervision(),
            move || saga::run(saga.clone(), js.clone(), supervision.clone(), stop.clone()),
        );
        self.sagas.insert(
            config.name.clone(),
            Running {
                config,
                control,
                task,
            },
        );
    }
}

/// Stops taking work, waits up to `timeout` for what is in flight, then has
/// what is left given back (NAKed, answered 503).
async fn stop<C: Part>((name, mut running): (String, Running<C>), timeout: Duration) {
    running.control.drain();
    if tokio::time::timeout(timeout, &mut running.task)
        .await
        .is_err()
    {
        tracing::warn!(%name, "Drain timeout reached; NAKing events still in flight.");
        running.control.abandon();
        let _ = running.task.await;
    }
    C::stopped(&name);
}
