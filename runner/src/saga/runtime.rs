//! Running one saga: durable consumers (`saga-NAME`, one per stream holding
//! its start and reply types) feed the machine; each instance is stored in
//! KV bucket `jetrun_saga_NAME` with compare-and-set on its revision, so two
//! replicas never advance one instance twice; what the machine decides is
//! stored first (as the instance's outbox) and published after, with the
//! machine's deterministic event ids. A watch on the bucket keeps every
//! instance's deadline and state in memory: a clock ticks instances whose
//! deadline passed (re-armed from the stored state at start), publishes an
//! outbox a crashed writer left behind, and sets the instance gauges.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use jetrun_config::{SagaConfig, StreamConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::machine::{self, Input, Instance, Millis, Outcome, Publish, Received, State, Why};
use crate::delivery::until_set;
use crate::envelope::{self, Origin};
use crate::metrics::SagaMetrics;
use crate::readiness::Readiness;

/// How often deadlines are looked at.
const TICK: Duration = Duration::from_millis(250);
/// An outbox older than this was left by a writer that died before
/// publishing it: it is published again.
const ORPHANED_OUTBOX: Millis = 3_000;
/// Compare-and-set attempts before a message is left to redelivery.
const CAS_ATTEMPTS: usize = 50;

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

/// The KV bucket of a saga's instances.
pub(crate) fn bucket(saga: &str) -> String {
    format!("jetrun_saga_{saga}")
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

/// Runs `config` until `draining` is set.
pub(crate) async fn run(
    config: SagaConfig,
    streams: BTreeMap<String, StreamConfig>,
    js: jetstream::Context,
    metrics: SagaMetrics,
    readiness: Readiness,
    mut draining: watch::Receiver<bool>,
) {
    let name = format!("saga:{}", config.name);
    readiness.add(&name);
    let kv = loop {
        match open_bucket(&js, &config.name).await {
            Ok(kv) => break kv,
            Err(err) => {
                tracing::warn!(saga = %config.name, %err, "Cannot open the saga's KV bucket; retrying.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = until_set(&mut draining) => return,
                }
            }
        }
    };
    let saga = Arc::new(Saga {
        config,
        js,
        kv,
        metrics,
        known: Mutex::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_instances(saga.clone()));
    tasks.spawn(clock(saga.clone()));
    let groups = subjects_by_stream(&saga.config, &streams);
    let mut bound = 0;
    for (stream, subjects) in groups {
        let consumer = loop {
            match bind(&saga, &stream, subjects.clone()).await {
                Ok(consumer) => break consumer,
                Err(err) => {
                    tracing::warn!(saga = %saga.config.name, %stream, %err, "Cannot bind the saga's consumer; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = until_set(&mut draining) => return,
                    }
                }
            }
        };
        bound += 1;
        tasks.spawn(consume(saga.clone(), consumer, draining.clone()));
    }
    tracing::info!(saga = %saga.config.name, consumers = bound, "Saga running.");
    readiness.set_bound(&name, true);
    until_set(&mut draining).await;
    readiness.set_bound(&name, false);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

async fn open_bucket(js: &jetstream::Context, saga: &str) -> Result<kv::Store, async_nats::Error> {
    let bucket = bucket(saga);
    if let Ok(kv) = js.get_key_value(&bucket).await {
        return Ok(kv);
    }
    Ok(js
        .create_key_value(kv::Config {
            bucket,
            description: format!("jetrun: instances of saga {saga}"),
            history: 1,
            ..Default::default()
        })
        .await?)
}

/// The saga's input types (start, replies, undo confirmations), grouped by
/// the declared stream capturing each.
fn subjects_by_stream(
    saga: &SagaConfig,
    streams: &BTreeMap<String, StreamConfig>,
) -> BTreeMap<String, Vec<String>> {
    let mut inputs = vec![saga.start.clone()];
    for step in &saga.steps {
        inputs.extend(step.success.iter().cloned());
        inputs.extend(step.failure.iter().cloned());
        inputs.extend(step.compensated.iter().cloned());
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for subject in inputs {
        let stream = streams.iter().find(|(_, s)| {
            s.subjects
                .iter()
                .any(|pattern| jetrun_config::subject_matches(pattern, &subject))
        });
        if let Some((stream, _)) = stream {
            let group = groups.entry(stream.clone()).or_default();
            if !group.contains(&subject) {
                group.push(subject);
            }
        }
    }
    groups
}

async fn bind(
    saga: &Saga,
    stream: &str,
    subjects: Vec<String>,
) -> Result<jetstream::consumer::PullConsumer, async_nats::Error> {
    let name = format!("saga-{}", saga.config.name);
    let handle = saga.js.get_stream(stream).await?;
    let config = PullConfig {
        durable_name: Some(name.clone()),
        description: Some(format!("jetrun saga {}", saga.config.name)),
        filter_subjects: subjects,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        deliver_policy: DeliverPolicy::All,
        max_ack_pending: 1_000,
        ..Default::default()
    };
    match handle.get_consumer::<PullConfig>(&name).await {
        Ok(consumer) => Ok(consumer),
        Err(_) => Ok(handle.create_consumer(config).await?),
    }
}

/// Feeds every message of one consumer to the machine.
async fn consume(
    saga: Arc<Saga>,
    consumer: jetstream::consumer::PullConsumer,
    mut draining: watch::Receiver<bool>,
) {
    loop {
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(saga = %saga.config.name, %err, "Cannot pull; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                () = until_set(&mut draining) => return,
            };
            match next {
                Some(Ok(message)) => {
                    let ack = match handle(&saga, &message).await {
                        Ok(()) => AckKind::Ack,
                        Err(err) => {
                            tracing::warn!(saga = %saga.config.name, %err, "Saga input not applied; it will be redelivered.");
                            AckKind::Nak(Some(Duration::from_secs(1)))
                        }
                    };
                    let _ = message.ack_with(ack).await;
                }
                Some(Err(err)) => {
                    tracing::debug!(saga = %saga.config.name, %err, "Pull error.");
                }
                None => break,
            }
        }
    }
}

/// Applies one message: a start event or a reply.
async fn handle(saga: &Saga, message: &jetstream::Message) -> Result<(), String> {
    let info = message.info().map_err(|e| e.to_string())?;
    let origin = Origin {
        subject: message.subject.as_str(),
        stream: info.stream,
        sequence: info.stream_sequence,
        published: info.published.into(),
    };
    let event = match envelope::read_event(&origin, message.headers.as_ref(), &message.payload) {
        Ok(event) => event,
        Err(failure) => {
            tracing::warn!(saga = %saga.config.name, subject = %origin.subject, error = %failure, "Not an event; ignored.");
            saga.metrics.ignored("unknown");
            return Ok(());
        }
    };
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
                tracing::warn!(saga = %saga.config.name, %key, "A start event's key cannot be a KV key (letters, digits, - _ = / . only); ignored.");
                saga.metrics.ignored("unknown");
                return Ok(());
            }
            Err(err) => {
                tracing::warn!(saga = %saga.config.name, event_id = %event.id, %err, "A start event names no instance; ignored.");
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
    let key = match instance_of(saga, &data, &event).await {
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
async fn instance_of(
    saga: &Saga,
    data: &serde_json::Value,
    event: &jetrun_functions::Event,
) -> Option<String> {
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
async fn apply(saga: &Saga, key: &str, input: Input<'_>) -> Result<bool, String> {
    if !valid_key(key) {
        saga.metrics.ignored("unknown");
        return Ok(false);
    }
    for _ in 0..CAS_ATTEMPTS {
        let entry = saga.kv.entry(key).await.map_err(|e| e.to_string())?;
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
                    saga = %saga.config.name, %key, started_with = ?stored.steps,
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
                if !matches!(why, Why::NotDue) {
                    saga.metrics.ignored(match why {
                        Why::Duplicate => "duplicate",
                        Why::Late => "late",
                        Why::Unexpected => "unexpected",
                        Why::Unknown | Why::NotDue => "unknown",
                    });
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
        let bytes = serde_json::to_vec(&stored).map_err(|e| e.to_string())?;
        let written = if revision == 0 {
            saga.kv
                .create(key, bytes.into())
                .await
                .map_err(|e| e.to_string())
        } else {
            saga.kv
                .update(key, bytes.into(), revision)
                .await
                .map_err(|e| e.to_string())
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
            saga.metrics.transition(step, transition.kind);
        }
        publish_outbox(saga, key, stored, revision).await?;
        return Ok(true);
    }
    Err(format!(
        "instance {key} kept changing under {CAS_ATTEMPTS} attempts to update it"
    ))
}

/// Publishes a stored outbox, then stores the instance without it.
async fn publish_outbox(
    saga: &Saga,
    key: &str,
    mut stored: Stored,
    revision: u64,
) -> Result<(), String> {
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
async fn publish(saga: &Saga, event: &Publish) -> Result<(), String> {
    let source = format!("jetrun/saga/{}", saga.config.name);
    let mut headers = envelope::binary_headers(&envelope::Outgoing {
        id: &event.event_id,
        event_type: &event.event_type,
        source: &source,
        correlation_id: Some(&event.correlation_id),
        causation_id: event.causation_id.as_deref(),
        traced_from: None,
    });
    for (name, value) in &event.extensions {
        headers.insert(format!("ce-{name}").as_str(), value.as_str());
    }
    let body = serde_json::to_vec(&event.data).unwrap_or_default();
    let ack = saga
        .js
        .publish_with_headers(event.event_type.clone(), headers, body.into())
        .await
        .map_err(|e| format!("cannot publish {}: {e}", event.event_type))?;
    ack.await
        .map(|_| ())
        .map_err(|e| format!("{} not stored: {e}", event.event_type))
}

/// Keeps `known` in step with the bucket, from its whole history on.
async fn watch_instances(saga: Arc<Saga>) {
    loop {
        let mut entries = match saga.kv.watch_all_from_revision(1).await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(saga = %saga.config.name, %err, "Cannot watch the saga's instances; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            let Ok(entry) = entry else { break };
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
            saga.metrics.count_states(map.values().map(|k| k.state));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Ticks instances whose deadline passed, and publishes orphaned outboxes.
async fn clock(saga: Arc<Saga>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
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
                tracing::warn!(saga = %saga.config.name, %key, %err, "Cannot apply a timeout; trying again.");
            }
        }
        for key in orphaned {
            if let Ok(Some(entry)) = saga.kv.entry(&key).await {
                if let Ok(stored) = serde_json::from_slice::<Stored>(&entry.value) {
                    tracing::info!(saga = %saga.config.name, %key, "Publishing what a stopped writer left unpublished.");
                    if let Err(err) = publish_outbox(&saga, &key, stored, entry.revision).await {
                        tracing::warn!(saga = %saga.config.name, %key, %err, "Cannot publish the outbox yet.");
                    }
                }
            }
        }
    }
}
