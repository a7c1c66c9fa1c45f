//! Running one saga: its inputs (start, replies, undo confirmations) come
//! through durable consumers (`saga-NAME`, one per stream holding them) run
//! by `dispatch` like any function's, so they are recreated when deleted,
//! retried with the saga's backoff, dead-lettered when they can never apply
//! (`dlq.saga-NAME`) and drained at shutdown. Each instance is stored in KV
//! bucket `jetrun_saga_NAME` with compare-and-set on its revision, so two
//! replicas never advance one instance twice; what the machine decides is
//! stored first (as the instance's outbox) and published after, with the
//! machine's deterministic event ids; a delayed step's command is held in
//! the schedules stream until it is due (`delayed`). An instance that ends (completed or
//! failed) is stored with a per-message TTL, the saga's `retention`, after
//! which nats-server purges it; a stuck one is kept. A watch on the bucket
//! keeps, for the instances still running, their next deadline and any
//! outbox a writer left unpublished, in structures ordered by time, and the
//! count of every state for the gauges: a clock ticks what is due, re-armed
//! from the stored state at start. Its time is the wall clock read once at
//! start and then moved on by a monotonic one: it never goes back within a
//! runner.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self};
use async_nats::{HeaderMap, HeaderName};
use async_trait::async_trait;
use futures::StreamExt;
use jetrun_config::{name, SagaConfig, StreamBinding};
use jetrun_functions::{
    Context, Event, Failure, Function, Outcome as Handled, Output, TraceContext,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::machine::{self, Input, Instance, Millis, Outcome, Publish, Received, State, Why};
use crate::dispatch::{self, Unit};
use crate::emit::{self, PublishError};
use crate::envelope;
use crate::headers::{self, BadHeader, Put};
use crate::layers::Metered;
use crate::metrics::{SagaMetrics, SAGA_STATES};
use crate::nats::BucketSpec;
use crate::readiness::Readiness;
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
    /// The instance would be bigger than a message may be: it cannot change
    /// any more (the input is dead-lettered).
    #[error(
        "instance {key} would take {bytes} bytes, more than the server's max_payload; its \
         data grows with each reply, so it cannot change any more"
    )]
    TooBig { key: String, bytes: usize },
    /// A reply whose instance cannot be found (yet: the start event may still
    /// be on its way); retried, then dead-lettered.
    #[error("no instance of saga {saga} answers to this reply (yet)")]
    NoInstance { saga: String },
    /// A delayed step's command cannot be held (yet): the server runs no
    /// message schedules, or no stream captures its subject or the holder's.
    #[error("cannot hold command {event_type} until its step's delay is over: {reason}")]
    Hold { event_type: String, reason: String },
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
    /// What the watch has seen of the stored instances.
    known: Mutex<Known>,
    clock: Clock,
}

/// The stored instances as the watch saw them: each one's state (for the
/// gauges), and for those still running their next deadline and the age of
/// an unpublished outbox, ordered by time so the clock finds what is due
/// without a look at the rest.
#[derive(Default)]
struct Known {
    states: HashMap<String, State>,
    timers: HashMap<String, Timers>,
    deadlines: BTreeSet<(Millis, String)>,
    /// When an unpublished outbox counts as orphaned, by instance.
    orphans: BTreeSet<(Millis, String)>,
    /// How many instances are in each state, in the order of `SAGA_STATES`.
    counts: [i64; SAGA_STATES.len()],
}

#[derive(Clone, Copy, Default, PartialEq)]
struct Timers {
    deadline: Option<Millis>,
    /// When the stored outbox was written, if it is not empty.
    outbox_since: Option<Millis>,
}

impl Known {
    fn index(state: State) -> usize {
        match state {
            State::Running => 0,
            State::Compensating => 1,
            State::Completed => 2,
            State::Failed => 3,
            State::Stuck => 4,
        }
    }

    /// Records what is now stored at `key` (`None`: nothing, deleted or purged).
    fn set(&mut self, key: &str, now: Option<(State, Timers)>) {
        if let Some(old) = self.states.remove(key) {
            self.counts[Self::index(old)] -= 1;
        }
        if let Some(old) = self.timers.remove(key) {
            if let Some(deadline) = old.deadline {
                self.deadlines.remove(&(deadline, key.to_string()));
            }
            if let Some(since) = old.outbox_since {
                self.orphans
                    .remove(&(since + ORPHANED_OUTBOX, key.to_string()));
            }
        }
        let Some((state, timers)) = now else { return };
        self.counts[Self::index(state)] += 1;
        self.states.insert(key.to_string(), state);
        if timers != Timers::default() {
            if let Some(deadline) = timers.deadline {
                self.deadlines.insert((deadline, key.to_string()));
            }
            if let Some(since) = timers.outbox_since {
                self.orphans
                    .insert((since + ORPHANED_OUTBOX, key.to_string()));
            }
            self.timers.insert(key.to_string(), timers);
        }
    }

    /// The instances whose deadline, or whose outbox's wait, is over at `now`.
    fn due(&self, now: Millis) -> (Vec<String>, Vec<String>) {
        let upto = |set: &BTreeSet<(Millis, String)>| {
            set.iter()
                .take_while(|(at, _)| *at <= now)
                .map(|(_, key)| key.clone())
                .collect()
        };
        (upto(&self.deadlines), upto(&self.orphans))
    }
}

/// The runner's time in milliseconds since the UNIX epoch: the wall clock
/// read once, then moved on by a monotonic clock, so a deadline never comes
/// back because the wall clock was set back. Replicas compare their own
/// clocks' times with what another stored: see `docs/events.md` on skew.
struct Clock {
    wall_at_start: Millis,
    start: std::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall_at_start: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as Millis)
                .unwrap_or(0),
            start: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> Millis {
        self.wall_at_start + self.start.elapsed().as_millis() as Millis
    }
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
            key: None,
            batch: None,
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
            message_ttl: true,
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
            clock: Clock::new(),
        });
        let name = &saga.config.name;
        readiness.set_loading(&holds, true);
        let (watched, clocked, stop) = (saga.clone(), saga.clone(), shutdown.clone());
        let loaded = Loaded {
            readiness: readiness.clone(),
            what: holds.clone(),
        };
        let (watch_span, clock_span) = (tracing::Span::current(), tracing::Span::current());
        let timers = [
            tasks::spawn(
                format!("saga-watch:{name}"),
                shutdown.clone(),
                supervision.clone(),
                move || {
                    watch_instances(watched.clone(), loaded.clone(), stop.clone())
                        .instrument(watch_span.clone())
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
                presence: None,
                rate: None,
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
        readiness.set_loading(&holds, false);
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
    async fn call(&self, event: &Event, ctx: &Context) -> Handled {
        let saga = &self.saga;
        match handle(saga, event, ctx.trace.as_ref()).await {
            Ok(()) => Ok(Output::default()),
            Err(err @ SagaError::TooBig { .. }) => {
                saga.metrics.too_big();
                tracing::error!(%err, "A saga instance cannot be stored; its input is dead-lettered.");
                Err(Failure::permanent(err.to_string()))
            }
            Err(err @ SagaError::NoInstance { .. }) => {
                if saga.config.retry.is_last(ctx.attempt) {
                    saga.metrics.ignored("unknown");
                }
                Err(Failure::retryable(err.to_string()))
            }
            Err(err) => Err(Failure::retryable(err.to_string())),
        }
    }
}

/// Applies one input: a start event or a reply. What it publishes carries
/// `trace` (the handler call's span, with traces) when given, else none.
async fn handle(saga: &Saga, event: &Event, trace: Option<&TraceContext>) -> Result<(), SagaError> {
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
        // A reply carrying neither key nor sagakey is matched by its
        // correlation id through this index: written before the first command
        // goes out, so no reply can come before it.
        let correlation = event.correlationid.as_deref().unwrap_or(&event.id);
        saga.kv
            .put(correlation_key(correlation), key.clone().into())
            .await
            .map_err(|err| SagaError::Read {
                key: key.clone(),
                reason: format!("cannot index its correlation id: {err}"),
            })?;
        apply(
            saga,
            &key,
            Input::Start {
                key: &key,
                event: received,
            },
            trace,
        )
        .await?;
        return Ok(());
    }
    let no_instance = || SagaError::NoInstance {
        saga: saga.config.name.clone(),
    };
    let key = instance_of(saga, &data, event)
        .await
        .ok_or_else(no_instance)?;
    match apply(saga, &key, Input::Reply(received), trace).await? {
        Applied::Unknown => Err(no_instance()),
        Applied::Changed | Applied::Unchanged => Ok(()),
    }
}

/// What applying an input did.
#[derive(Debug, PartialEq)]
enum Applied {
    Changed,
    Unchanged,
    /// There is no such instance.
    Unknown,
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
/// the machine decided.
async fn apply(
    saga: &Saga,
    key: &str,
    input: Input<'_>,
    trace: Option<&TraceContext>,
) -> Result<Applied, SagaError> {
    if !valid_key(key) {
        return Ok(Applied::Unknown);
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
                return Ok(Applied::Unchanged);
            }
        }
        let now = saga.clock.now_ms();
        let change = match machine::advance(
            &saga.config,
            current.as_ref().map(|s| &s.instance),
            input,
            now,
        ) {
            Outcome::Unchanged(Why::Unknown) => return Ok(Applied::Unknown),
            Outcome::Unchanged(why) => {
                if let Some(reason) = why.label() {
                    saga.metrics.ignored(reason);
                }
                return Ok(Applied::Unchanged);
            }
            Outcome::Changed(change) => change,
        };
        let before = current.as_ref().map_or(0, |s| s.instance.transitions.len());
        let stored = Stored {
            instance: change.instance,
            outbox: change.publish,
            steps: step_names(&saga.config),
        };
        let revision = match write(saga, key, &stored, revision).await {
            Ok(revision) => revision,
            // Another replica (or input) changed the instance first: read it
            // again and feed the input to what it is now.
            Err(Written::Conflict) => continue,
            Err(Written::Failed(err)) => return Err(err),
        };
        let was_running = current.as_ref().is_none_or(|s| !ended(&s.instance.state));
        if was_running && ended(&stored.instance.state) {
            expire_index(saga, &stored.instance).await;
        }
        for transition in
            &stored.instance.transitions[before.min(stored.instance.transitions.len())..]
        {
            let step = transition.step.as_deref().unwrap_or("");
            saga.metrics.transition(step, transition.kind.label());
        }
        publish_outbox(saga, key, stored, revision, trace).await?;
        return Ok(Applied::Changed);
    }
    Err(SagaError::Contended {
        key: key.to_string(),
    })
}

/// Why an instance was not written.
enum Written {
    /// Another writer changed it after it was read.
    Conflict,
    Failed(SagaError),
}

/// Stores `stored` at `key`, provided the key is still at `revision` (0: it
/// has no message): the new revision. An instance that ended is stored with
/// the saga's retention as its TTL.
async fn write(saga: &Saga, key: &str, stored: &Stored, revision: u64) -> Result<u64, Written> {
    let bytes = serde_json::to_vec(stored).map_err(|e| {
        Written::Failed(SagaError::Encode {
            key: key.to_string(),
            reason: e.to_string(),
        })
    })?;
    let mut headers = HeaderMap::new();
    headers.put_number(
        HeaderName::from_static("Nats-Expected-Last-Subject-Sequence"),
        revision,
    );
    if ended(&stored.instance.state) {
        headers.put_number(
            HeaderName::from_static("Nats-TTL"),
            saga.config.retention.as_secs().max(1),
        );
    }
    let subject = format!("$KV.{}.{key}", name::saga_bucket(&saga.config.name));
    let size = bytes.len();
    match emit::publish(&saga.js, &subject, headers, bytes.into()).await {
        Ok(ack) => Ok(ack.sequence),
        Err(PublishError::WrongLastSequence { .. }) => Err(Written::Conflict),
        Err(PublishError::TooBig { .. }) => Err(Written::Failed(SagaError::TooBig {
            key: key.to_string(),
            bytes: size,
        })),
        Err(err) => Err(Written::Failed(err.into())),
    }
}

/// Whether an instance in `state` has ended (and is kept for the retention).
fn ended(state: &State) -> bool {
    matches!(state, State::Completed | State::Failed)
}

/// Gives an ended instance's correlation index entry the saga's retention
/// as its TTL, provided the entry still names this instance (a later start
/// may have reused the correlation id). Best effort: an entry left behind
/// only costs its bytes in the bucket.
async fn expire_index(saga: &Saga, instance: &Instance) {
    let index = correlation_key(&instance.correlation_id);
    let entry = match saga.kv.entry(&index).await {
        Ok(Some(entry)) if entry.operation == Operation::Put => entry,
        Ok(_) => return,
        Err(err) => {
            tracing::warn!(key = %instance.key, %err, "Cannot read an ended instance's correlation index; it is kept.");
            return;
        }
    };
    if entry.value != instance.key.as_bytes() {
        return;
    }
    let mut headers = HeaderMap::new();
    headers.put_number(
        HeaderName::from_static("Nats-Expected-Last-Subject-Sequence"),
        entry.revision,
    );
    headers.put_number(
        HeaderName::from_static("Nats-TTL"),
        saga.config.retention.as_secs().max(1),
    );
    let subject = format!("$KV.{}.{index}", name::saga_bucket(&saga.config.name));
    let value = instance.key.clone().into_bytes().into();
    match emit::publish(&saga.js, &subject, headers, value).await {
        Ok(_) | Err(PublishError::WrongLastSequence { .. }) => {}
        Err(err) => {
            tracing::warn!(key = %instance.key, %err, "Cannot expire an ended instance's correlation index; it is kept.");
        }
    }
}

/// Publishes a stored outbox, then stores the instance without it.
async fn publish_outbox(
    saga: &Saga,
    key: &str,
    mut stored: Stored,
    revision: u64,
    trace: Option<&TraceContext>,
) -> Result<(), SagaError> {
    if stored.outbox.is_empty() {
        return Ok(());
    }
    for event in &stored.outbox {
        publish(saga, event, trace).await?;
    }
    stored.outbox.clear();
    // Lost to a newer change: that one's outbox is its writer's to publish.
    let _ = write(saga, key, &stored, revision).await;
    Ok(())
}

/// One event the machine decided on, in CloudEvents binary mode, with its
/// id as `Nats-Msg-Id` so a republish is dropped by the stream. One with a
/// due time (a delayed step's command) is held in the schedules stream
/// until then, under the same id: a republish within that stream's
/// duplicate window holds it once, and only the first is counted.
async fn publish(
    saga: &Saga,
    event: &Publish,
    trace: Option<&TraceContext>,
) -> Result<(), SagaError> {
    let source = format!("jetrun/saga/{}", saga.config.name);
    let mut headers = envelope::binary_headers(&envelope::Outgoing {
        id: &event.event_id,
        event_type: &event.event_type,
        source: &source,
        correlation_id: Some(&event.correlation_id),
        causation_id: event.causation_id.as_deref(),
        traced_from: None,
        trace,
    })?;
    for (name, value) in &event.extensions {
        headers.put(headers::name(&format!("ce-{name}"))?, value)?;
    }
    let body = serde_json::to_vec(&event.data).unwrap_or_default();
    let Some(due) = event.due_ms else {
        emit::publish(&saga.js, &event.event_type, headers, body.into()).await?;
        return Ok(());
    };
    let at = UNIX_EPOCH + Duration::from_millis(due);
    let ack = emit::publish_later(
        &saga.js,
        &event.event_type,
        &event.event_id,
        at,
        headers,
        body.into(),
    )
    .await
    .map_err(|reason| SagaError::Hold {
        event_type: event.event_type.clone(),
        reason,
    })?;
    if !ack.duplicate {
        saga.metrics.delayed.inc();
    }
    Ok(())
}

/// Keeps `known` in step with the bucket, from its whole history on, until
/// the drain.
async fn watch_instances(saga: Arc<Saga>, loaded: Loaded, shutdown: Shutdown) {
    loop {
        let Some((mut entries, held)) =
            retry_until("watch the saga's instances", &shutdown, || {
                let kv = saga.kv.clone();
                async move {
                    let held = kv.status().await?.info.state.messages;
                    Ok::<_, async_nats::Error>((kv.watch_all_from_revision(1).await?, held))
                }
            })
            .await
        else {
            return;
        };
        let mut loading = held > 0;
        if !loading {
            loaded.done();
        }
        let steps = step_names(&saga.config);
        loop {
            let entry = tokio::select! {
                () = shutdown.draining() => return,
                entry = entries.next() => entry,
            };
            let Some(Ok(entry)) = entry else { break };
            // Caught up with the bucket, whatever the last entry was (a
            // correlation index entry or its expiry's marker included).
            if loading && entry.delta == 0 {
                loading = false;
                loaded.done();
            }
            if entry.key.starts_with("corr_") {
                continue;
            }
            let now = (entry.operation == Operation::Put)
                .then(|| serde_json::from_slice::<Stored>(&entry.value).ok())
                .flatten()
                .map(|stored| {
                    let timers = Timers {
                        deadline: if stored.steps == steps {
                            stored.instance.next_deadline_ms()
                        } else {
                            None
                        },
                        outbox_since: (!stored.outbox.is_empty())
                            .then_some(stored.instance.updated_ms),
                    };
                    (stored.instance.state, timers)
                });
            let mut known = saga.known.lock().unwrap_or_else(|e| e.into_inner());
            known.set(&entry.key, now);
            // Once caught up, the gauges follow each change; while the watch
            // replays the bucket's history, once at its end.
            if entry.delta == 0 {
                saga.metrics.set_states(&known.counts);
            }
        }
    }
}

/// Tells readiness when a saga's instances are read, the first time the
/// watch catches up with the bucket.
#[derive(Clone)]
struct Loaded {
    readiness: Readiness,
    what: String,
}

impl Loaded {
    fn done(&self) {
        self.readiness.set_loading(&self.what, false);
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
        let (due, orphaned) = saga
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .due(saga.clock.now_ms());
        for key in due {
            if let Err(err) = apply(&saga, &key, Input::Tick, None).await {
                tracing::warn!(%key, %err, "Cannot apply a timeout; trying again.");
            }
        }
        for key in orphaned {
            if let Ok(Some(entry)) = saga.kv.entry(&key).await {
                if let Ok(stored) = serde_json::from_slice::<Stored>(&entry.value) {
                    tracing::info!(%key, "Publishing what a stopped writer left unpublished.");
                    if let Err(err) =
                        publish_outbox(&saga, &key, stored, entry.revision, None).await
                    {
                        tracing::warn!(%key, %err, "Cannot publish the outbox yet.");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers(deadline: Option<Millis>, outbox_since: Option<Millis>) -> Timers {
        Timers {
            deadline,
            outbox_since,
        }
    }

    #[test]
    fn known_instances_are_ordered_by_time_and_counted_by_state() {
        let mut known = Known::default();
        known.set("a", Some((State::Running, timers(Some(300), None))));
        known.set("b", Some((State::Running, timers(Some(100), None))));
        known.set("c", Some((State::Completed, timers(None, None))));
        known.set("d", Some((State::Compensating, timers(Some(200), Some(0)))));
        assert_eq!(known.counts, [2, 1, 1, 0, 0]);
        let (due, orphaned) = known.due(250);
        assert_eq!(due, ["b", "d"]);
        assert!(orphaned.is_empty());
        assert_eq!(known.due(ORPHANED_OUTBOX).1, ["d"]);
        // b moves on: its old deadline goes; c is purged.
        known.set("b", Some((State::Completed, timers(None, None))));
        known.set("c", None);
        assert_eq!(known.due(250).0, ["d"]);
        assert_eq!(known.counts, [1, 1, 1, 0, 0]);
        assert_eq!(
            known.timers.len(),
            2,
            "only instances with timers are kept in them"
        );
    }

    #[test]
    fn counts_follow_the_gauges_order() {
        use State::*;
        for state in [Running, Compensating, Completed, Failed, Stuck] {
            assert_eq!(SAGA_STATES[Known::index(state)], state.label());
        }
    }

    #[test]
    fn the_clock_never_goes_back() {
        let clock = Clock::new();
        let first = clock.now_ms();
        assert!(clock.now_ms() >= first);
    }
}
