//! Running one saga: its inputs (start, replies, undo confirmations) come
//! through durable consumers (`saga-NAME`, one per stream holding them) run
//! by `dispatch` like any function's, so they are recreated when deleted,
//! retried with the saga's backoff, dead-lettered when they can never apply
//! (`dlq.saga-NAME`) and drained at shutdown. Each instance is stored in KV
//! bucket `jetrun_saga_NAME` with compare-and-set on its revision, so two
//! replicas never advance one instance twice; what the machine decides is
//! stored first (as the instance's outbox) and published after, with the
//! machine's deterministic event ids. A watch on the bucket keeps every
//! instance's deadline and state in memory: a clock ticks instances whose
//! deadline passed (re-armed from the stored state at start), publishes an
//! outbox a crashed writer left behind, and sets the instance gauges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self};
use async_trait::async_trait;
use futures::StreamExt;
use jetrun_config::{name, SagaConfig, StreamBinding};
use jetrun_functions::{Context, Event, Failure, Function, Outcome as Handled, Output};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::machine::{self, Input, Instance, Millis, Outcome, Publish, Received, State};
use crate::dispatch::{self, Unit};
use crate::emit::{self, PublishError};
use crate::envelope;
use crate::headers::{self, BadHeader, Put};
use crate::layers::Metered;
use crate::metrics::SagaMetrics;
use crate::nats::BucketSpec;
use crate::shutdown::{retry_until, Shutdown};
use crate::tasks::{self, Supervision};

/// How often deadlines are looked at.
const TICK: Duration = Duration::from_millis(250);
/// An outbox older than this was left by a writer that died before
/// publishing it: it is published again.
const ORPHANED_OUTBOX: Millis = 3_000;
/// Compare-and-set attempts before an input is left to redelivery.
const CAS_ATTEMPTS: usize = 50;

/// Why a saga input was not applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SagaError {
    #[error("cannot read instance {key}: {reason}")]
    Read { key: String, reason: String },
    #[error("instance {key} kept changing under {CAS_ATTEMPTS} attempts to update it")]
    Contended { key: String },
    #[error("cannot encode instance {key}: {reason}")]
    Encode { key: String, reason: String },
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Header(#[from] BadHeader),
}

/// What is stored at an instance's key.
#[derive(Serialize, Deserialize)]
struct Stored {
    instance: Instance,
    /// What the last change decided to publish; emptied once published.
    #[serde(default)]
    outbox: Vec<Publish>,
    /// The saga's step names when the instance started: an instance keeps
    /// step indices, so one started under other steps (the config changed
    /// since) is left alone rather than misread.
    #[serde(default)]
    steps: Vec<String>,
}

fn step_names(saga: &SagaConfig) -> Vec<String> {
    saga.steps.iter().map(|s| s.name.clone()).collect()
}

/// One saga's running parts.
struct Saga {
    config: SagaConfig,
    js: jetstream::Context,
    kv: kv::Store,
    metrics: SagaMetrics,
    /// Every stored instance's next deadline, state and outbox age, from the watch.
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Clone, Copy)]
struct Known {
    deadline: Option<Millis>,
    state: State,
    /// When the stored outbox was written, if it is not empty.
    outbox_since: Option<Millis>,
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The index key naming the instance a correlation id belongs to.
fn correlation_key(correlation_id: &str) -> String {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, correlation_id.as_bytes());
    format!("corr_{}", id.simple())
}

/// Whether `key` can be a KV key as it is.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with("corr_")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '/' | '.'))
        && !key.starts_with('.')
        && !key.ends_with('.')
}

/// The consumer work of a saga: one unit per stream holding its inputs.
pub(crate) fn units(saga: &SagaConfig) -> Vec<Unit> {
    saga.consumers
        .iter()
        .map(|binding: &StreamBinding| Unit {
            name: format!("{}@{}", binding.consumer, binding.stream),
            serves: format!("saga {}", saga.name),
            binding: binding.clone(),
            retry: saga.retry,
            concurrency: saga.concurrency,
        })
        .collect()
}

/// Runs `config` until `shutdown` drains it: its consumers settle what they
/// hold, then the watch and the clock stop.
pub(crate) async fn run(
    config: SagaConfig,
    js: jetstream::Context,
    supervision: Supervision,
    shutdown: Shutdown,
) {
    let Supervision { metrics, readiness } = supervision.clone();
    let span = tracing::info_span!("saga", saga = %config.name);
    async {
        let bucket = name::saga_bucket(&config.name);
        let holds = format!("instances of saga {}", config.name);
        let spec = BucketSpec {
            name: &bucket,
            holds: &holds,
            history: 1,
            like: None,
        };
        let Some(kv) = retry_until("open the saga's KV bucket", &shutdown, || spec.open(&js)).await
        else {
            return;
        };
        let saga = Arc::new(Saga {
            metrics: metrics.for_saga(&config.name),
            config,
            js: js.clone(),
            kv,
            known: Mutex::default(),
        });
        let name = &saga.config.name;
        let (watched, clocked, stop) = (saga.clone(), saga.clone(), shutdown.clone());
        let (watch_span, clock_span) = (tracing::Span::current(), tracing::Span::current());
        let timers = [
            tasks::spawn(
                format!("saga-watch:{name}"),
                shutdown.clone(),
                supervision.clone(),
                move || {
                    watch_instances(watched.clone(), stop.clone()).instrument(watch_span.clone())
                },
            ),
            {
                let stop = shutdown.clone();
                tasks::spawn(
                    format!("saga-clock:{name}"),
                    shutdown.clone(),
                    supervision.clone(),
                    move || clock(clocked.clone(), stop.clone()).instrument(clock_span.clone()),
                )
            },
        ];
        let mut consumers = Vec::new();
        for unit in units(&saga.config) {
            let handles = metrics.for_function(&unit.name);
            let handler: Arc<dyn Function> = Arc::new(Inputs { saga: saga.clone() });
            let task = format!("consumer:{}", unit.name);
            let shared = Arc::new(dispatch::Shared {
                unit,
                handler: Metered::wrap(handler, &handles),
                emitter: None,
                js: js.clone(),
                metrics: handles,
            });
            let (readiness, stop) = (readiness.clone(), shutdown.clone());
            consumers.push(tasks::spawn(
                task,
                shutdown.clone(),
                supervision.clone(),
                move || dispatch::run(shared.clone(), readiness.clone(), stop.clone()),
            ));
        }
        tracing::info!(consumers = consumers.len(), "Saga running.");
        for task in consumers.into_iter().chain(timers) {
            let _ = task.await;
        }
    }
    .instrument(span)
    .await
}

/// The saga as its consumers' handler: each input applied to its instance.
struct Inputs {
    saga: Arc<Saga>,
}

#[async_trait]
impl Function for Inputs {
    async fn call(&self, event: &Event, _: &Context) -> Handled {
        match handle(&self.saga, event).await {
            Ok(()) => Ok(Output::default()),
            Err(err) => Err(Failure::retryable(err.to_string())),
        }
    }
}

/// Applies one input: a start event or a reply.
async fn handle(saga: &Saga, event: &Event) -> Result<(), SagaError> {
    let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_default();
    let received = Received {
        id: &event.id,
        event_type: &event.event_type,
        data: &data,
        correlation_id: event.correlationid.as_deref(),
    };
    if event.event_type == saga.config.start {
        let key = match machine::key_of(&saga.config, &data) {
            Ok(key) if valid_key(&key) => key,
            Ok(key) => {
                tracing::warn!(%key, "A start event's key cannot be a KV key (letters, digits, - _ = / . only); ignored.");
                saga.metrics.ignored("unknown");
                return Ok(());
            }
            Err(err) => {
                tracing::warn!(event_id = %event.id, %err, "A start event names no instance; ignored.");
                saga.metrics.ignored("unknown");
                return Ok(());
            }
        };
        let started = apply(
            saga,
            &key,
            Input::Start {
                key: &key,
                event: received,
            },
        )
        .await?;
        if started {
            // Best effort: a reply carrying neither key nor sagakey is
            // matched by its correlation id through this index.
            let correlation = event.correlationid.as_deref().unwrap_or(&event.id);
            let _ = saga
                .kv
                .put(correlation_key(correlation), key.clone().into())
                .await;
        }
        return Ok(());
    }
    let key = match instance_of(saga, &data, event).await {
        Some(key) => key,
        None => {
            saga.metrics.ignored("unknown");
            return Ok(());
        }
    };
    apply(saga, &key, Input::Reply(received)).await.map(|_| ())
}

/// The instance a reply belongs to: the key field in its data, else its
/// `sagakey` extension, else its correlation id.
async fn instance_of(saga: &Saga, data: &serde_json::Value, event: &Event) -> Option<String> {
    if let Ok(key) = machine::key_of(&saga.config, data) {
        return Some(key);
    }
    if let Some(key) = event.extensions.get("sagakey") {
        return Some(key.clone());
    }
    let correlation = event.correlationid.as_deref()?;
    let entry = saga.kv.get(correlation_key(correlation)).await.ok()??;
    String::from_utf8(entry.to_vec()).ok()
}

/// Feeds `input` to instance `key` with compare-and-set, then publishes what
/// the machine decided. `Ok(true)` when the instance changed.
async fn apply(saga: &Saga, key: &str, input: Input<'_>) -> Result<bool, SagaError> {
    if !valid_key(key) {
        saga.metrics.ignored("unknown");
        return Ok(false);
    }
    for _ in 0..CAS_ATTEMPTS {
        let entry = saga.kv.entry(key).await.map_err(|e| SagaError::Read {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        let (current, revision) = match &entry {
            Some(entry) if entry.operation == Operation::Put => (
                serde_json::from_slice::<Stored>(&entry.value).ok(),
                entry.revision,
            ),
            Some(entry) => (None, entry.revision),
            None => (None, 0),
        };
        if let Some(stored) = &current {
            if stored.steps != step_names(&saga.config) {
                tracing::error!(
                    %key, started_with = ?stored.steps,
                    "This instance started under other steps; it is left as it is (see `jetrun saga show`)."
                );
                saga.metrics.ignored("unexpected");
                return Ok(false);
            }
        }
        let now = now_ms();
        let change = match machine::advance(
            &saga.config,
            current.as_ref().map(|s| &s.instance),
            input,
            now,
        ) {
            Outcome::Unchanged(why) => {
                if let Some(reason) = why.label() {
                    saga.metrics.ignored(reason);
                }
                return Ok(false);
            }
            Outcome::Changed(change) => change,
        };
        let before = current.as_ref().map_or(0, |s| s.instance.transitions.len());
        let stored = Stored {
            instance: change.instance,
            outbox: change.publish,
            steps: step_names(&saga.config),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| SagaError::Encode {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        let written = if revision == 0 {
            saga.kv.create(key, bytes.into()).await.map_err(|_| ())
        } else {
            saga.kv
                .update(key, bytes.into(), revision)
                .await
                .map_err(|_| ())
        };
        let Ok(revision) = written else {
            // Another replica (or input) changed the instance first: read it
            // again and feed the input to what it is now.
            continue;
        };
        for transition in
            &stored.instance.transitions[before.min(stored.instance.transitions.len())..]
        {
            let step = transition.step.as_deref().unwrap_or("");
            saga.metrics.transition(step, transition.kind.label());
        }
        publish_outbox(saga, key, stored, revision).await?;
        return Ok(true);
    }
    Err(SagaError::Contended {
        key: key.to_string(),
    })
}

/// Publishes a stored outbox, then stores the instance without it.
async fn publish_outbox(
    saga: &Saga,
    key: &str,
    mut stored: Stored,
    revision: u64,
) -> Result<(), SagaError> {
    if stored.outbox.is_empty() {
        return Ok(());
    }
    for event in &stored.outbox {
        publish(saga, event).await?;
    }
    stored.outbox.clear();
    if let Ok(bytes) = serde_json::to_vec(&stored) {
        // Lost to a newer change: that one's outbox is its writer's to publish.
        let _ = saga.kv.update(key, bytes.into(), revision).await;
    }
    Ok(())
}

/// One event the machine decided on, in CloudEvents binary mode, with its
/// id as `Nats-Msg-Id` so a republish is dropped by the stream.
async fn publish(saga: &Saga, event: &Publish) -> Result<(), SagaError> {
    let source = format!("jetrun/saga/{}", saga.config.name);
    let mut headers = envelope::binary_headers(&envelope::Outgoing {
        id: &event.event_id,
        event_type: &event.event_type,
        source: &source,
        correlation_id: Some(&event.correlation_id),
        causation_id: event.causation_id.as_deref(),
        traced_from: None,
    })?;
    for (name, value) in &event.extensions {
        headers.put(headers::name(&format!("ce-{name}"))?, value)?;
    }
    let body = serde_json::to_vec(&event.data).unwrap_or_default();
    emit::publish(&saga.js, &event.event_type, headers, body.into()).await?;
    Ok(())
}

/// Keeps `known` in step with the bucket, from its whole history on, until
/// the drain.
async fn watch_instances(saga: Arc<Saga>, shutdown: Shutdown) {
    loop {
        let Some(mut entries) = retry_until("watch the saga's instances", &shutdown, || {
            saga.kv.watch_all_from_revision(1)
        })
        .await
        else {
            return;
        };
        loop {
            let entry = tokio::select! {
                () = shutdown.draining() => return,
                entry = entries.next() => entry,
            };
            let Some(Ok(entry)) = entry else { break };
            if entry.key.starts_with("corr_") {
                continue;
            }
            let steps = step_names(&saga.config);
            let known = (entry.operation == Operation::Put)
                .then(|| serde_json::from_slice::<Stored>(&entry.value).ok())
                .flatten()
                .map(|stored| Known {
                    deadline: if stored.steps == steps {
                        stored.instance.next_deadline_ms()
                    } else {
                        None
                    },
                    state: stored.instance.state,
                    outbox_since: (!stored.outbox.is_empty()).then_some(stored.instance.updated_ms),
                });
            let mut map = saga.known.lock().unwrap_or_else(|e| e.into_inner());
            match known {
                Some(known) => map.insert(entry.key.clone(), known),
                None => map.remove(&entry.key),
            };
            saga.metrics
                .count_states(map.values().map(|k| k.state.label()));
        }
    }
}

/// Ticks instances whose deadline passed, and publishes orphaned outboxes,
/// until the drain.
async fn clock(saga: Arc<Saga>, shutdown: Shutdown) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.draining() => return,
            _ = interval.tick() => {}
        }
        let now = now_ms();
        let (due, orphaned): (Vec<String>, Vec<String>) = {
            let map = saga.known.lock().unwrap_or_else(|e| e.into_inner());
            (
                map.iter()
                    .filter(|(_, k)| k.deadline.is_some_and(|d| d <= now))
                    .map(|(key, _)| key.clone())
                    .collect(),
                map.iter()
                    .filter(|(_, k)| k.outbox_since.is_some_and(|t| t + ORPHANED_OUTBOX <= now))
                    .map(|(key, _)| key.clone())
                    .collect(),
            )
        };
        for key in due {
            if let Err(err) = apply(&saga, &key, Input::Tick).await {
                tracing::warn!(%key, %err, "Cannot apply a timeout; trying again.");
            }
        }
        for key in orphaned {
            if let Ok(Some(entry)) = saga.kv.entry(&key).await {
                if let Ok(stored) = serde_json::from_slice::<Stored>(&entry.value) {
                    tracing::info!(%key, "Publishing what a stopped writer left unpublished.");
                    if let Err(err) = publish_outbox(&saga, &key, stored, entry.revision).await {
                        tracing::warn!(%key, %err, "Cannot publish the outbox yet.");
                    }
                }
            }
        }
    }
}
