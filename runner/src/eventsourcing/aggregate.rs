//! An aggregate's command handler: for each command, load the instance (its
//! snapshot, if any, and the events after it), call the function with both,
//! and append what it returns against the version it read. Another command
//! appending first makes the append fail (`Nats-Expected-Last-Subject-Sequence`
//! over all of the instance's subjects); the instance is then loaded again
//! and the function run again, up to `max_conflict_retries`, then the
//! command fails with 409.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, HeaderName};
use jetrun_config::{name, AggregateConfig};
use jetrun_functions::{Context, Event, Failure, Function, Outcome, Output};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::emit::{self, PublishError};
use crate::envelope;
use crate::headers::{BadHeader, Put};
use crate::metrics::AggregateMetrics;
use crate::nats::{self, BucketSpec, History, Item, Start};

/// What a command handler returns.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    #[serde(default)]
    append: Vec<NewEvent>,
    reply: Option<Value>,
    snapshot: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Value,
}

/// A stored snapshot: the state after `version` events, the last of them at
/// stream sequence `sequence`.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u64,
    sequence: u64,
    state: Value,
}

/// An instance as loaded.
struct Instance {
    /// Events in the instance (0 for a new one).
    version: u64,
    /// The stream sequence of its last event (0: none).
    last_sequence: u64,
    snapshot: Option<Value>,
    /// The events after the snapshot, oldest first, as CloudEvents JSON.
    history: Vec<Value>,
}

/// Why an append did not happen.
enum AppendError {
    /// Another command appended first.
    Conflict,
    Failed(Failure),
}

pub(crate) struct CommandHandler {
    function: String,
    aggregate: AggregateConfig,
    inner: Arc<dyn Function>,
    js: jetstream::Context,
    /// One lock per instance with a command in progress: this process runs
    /// one command per instance at a time, so its own commands never
    /// conflict; only another replica's can.
    instances: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    snapshots: OnceCell<kv::Store>,
    metrics: AggregateMetrics,
}

impl CommandHandler {
    pub(crate) fn new(
        function: &str,
        aggregate: AggregateConfig,
        inner: Arc<dyn Function>,
        js: jetstream::Context,
        metrics: AggregateMetrics,
    ) -> Self {
        CommandHandler {
            function: function.to_string(),
            aggregate,
            inner,
            js,
            instances: std::sync::Mutex::default(),
            snapshots: OnceCell::new(),
            metrics,
        }
    }

    /// The instance a command names: the string or number at the
    /// aggregate's `id` pointer in its data, fit to be a subject token.
    fn instance_id(&self, command: &Event) -> Result<String, Failure> {
        let data: Value = serde_json::from_slice(&command.data)
            .map_err(|err| Failure::permanent(format!("the command's data is not JSON: {err}")))?;
        let pointer = &self.aggregate.id;
        let id = match data.pointer(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return Err(Failure::permanent(format!(
                    "the command's {pointer} must be a string or a number, got {other}"
                )))
            }
            None => {
                return Err(Failure::permanent(format!(
                    "the command's data has no {pointer} naming the {} instance",
                    self.aggregate.name
                )))
            }
        };
        let valid = !id.is_empty()
            && !id
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control());
        if !valid {
            return Err(Failure::permanent(format!(
                "{id:?} cannot name an instance: no dots, wildcards or spaces"
            )));
        }
        Ok(id)
    }

    /// The lock of instance `id`, shared by the commands on it in flight.
    fn instance_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut instances = self
            .instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = instances.get(id).and_then(Weak::upgrade) {
            return lock;
        }
        if instances.len() >= 1024 {
            instances.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        instances.insert(id.to_string(), Arc::downgrade(&lock));
        lock
    }

    async fn snapshots(&self) -> Result<&kv::Store, Failure> {
        self.snapshots
            .get_or_try_init(|| async {
                let bucket = name::snapshot_bucket(&self.aggregate.name);
                let holds = format!("snapshots of aggregate {}", self.aggregate.name);
                BucketSpec {
                    name: &bucket,
                    holds: &holds,
                    history: 1,
                    like: None,
                    message_ttl: false,
                }
                .open(&self.js)
                .await
                .map_err(|err| super::unavailable(err.to_string()))
            })
            .await
    }

    /// The instance's snapshot (when the aggregate keeps them) and the
    /// events after it.
    async fn load(&self, id: &str) -> Result<Instance, Failure> {
        let mut instance = Instance {
            version: 0,
            last_sequence: 0,
            snapshot: None,
            history: Vec::new(),
        };
        if self.aggregate.snapshot_every.is_some() {
            let store = self.snapshots().await?;
            let stored = store
                .get(id)
                .await
                .map_err(|err| super::unavailable(format!("cannot read the snapshot: {err}")))?;
            if let Some(bytes) = stored {
                if let Ok(snapshot) = serde_json::from_slice::<Snapshot>(&bytes) {
                    instance.version = snapshot.version;
                    instance.last_sequence = snapshot.sequence;
                    instance.snapshot = Some(snapshot.state);
                }
            }
        }
        let failed = |err: &dyn std::fmt::Display| {
            super::unavailable(format!(
                "cannot read the history of {} {id}: {err}",
                self.aggregate.name
            ))
        };
        let stream = &self.aggregate.stream;
        let last = match nats::stream_info(&self.js, stream).await {
            Ok(Some(info)) => info.state.last_sequence,
            Ok(None) => return Err(failed(&format!("stream {stream} does not exist"))),
            Err(err) => return Err(failed(&format!("{err:#}"))),
        };
        let mut history = History::open(
            &self.js,
            stream,
            &[self.aggregate.subject.events_of(id)],
            Start::Sequence(instance.last_sequence + 1),
            last,
            &format!("jetrun: a load of {} {id}", self.aggregate.name),
        )
        .await
        .map_err(|err| failed(&format!("{err:#}")))?;
        loop {
            // An event of the instance that cannot be read fails the command:
            // deciding on a history with a hole in it could append anything.
            let unreadable = |sequence: u64, why: &dyn std::fmt::Display| {
                self.metrics.unreadable.inc();
                Failure::retryable(format!(
                    "{} {id} cannot be loaded: its event at {stream} sequence {sequence} cannot \
                     be read ({why}); fix or remove it (`jetrun events`)",
                    self.aggregate.name
                ))
                .with_status(500)
            };
            let stored = match history.next().await {
                Ok(Some(Item::Message(stored))) => stored,
                Ok(Some(Item::Unreadable(bad))) => return Err(unreadable(bad.sequence, &bad.why)),
                Ok(None) => break,
                Err(err) => return Err(failed(&format!("{err:#}"))),
            };
            instance.last_sequence = stored.sequence;
            let event = stored
                .event()
                .map_err(|why| unreadable(stored.sequence, &why))?;
            instance.history.push(event.to_structured_json());
        }
        instance.version += instance.history.len() as u64;
        Ok(instance)
    }

    /// Appends `events` to instance `id` as loaded, guarded by the
    /// instance's last sequence: one event with a plain publish, several as
    /// one atomic batch (all stored or none). `(version, last sequence)`.
    async fn append(
        &self,
        id: &str,
        instance: &Instance,
        events: &[NewEvent],
        command: &Event,
        trace: Option<&envelope::TraceContext>,
    ) -> Result<(u64, u64), AppendError> {
        let mut subjects = Vec::with_capacity(events.len());
        for new in events {
            let subject = format!("{}.{}", self.aggregate.subject.instance(id), new.event_type);
            if !jetrun_config::is_publish_subject(&subject) || new.event_type.is_empty() {
                return Err(AppendError::Failed(Failure::permanent(format!(
                    "appended event type {:?} cannot end a subject ({subject})",
                    new.event_type
                ))));
            }
            subjects.push(subject);
        }
        let mut messages = Vec::with_capacity(events.len());
        for (index, (new, subject)) in events.iter().zip(subjects).enumerate() {
            // The guard goes on the first event: in a batch it holds for all.
            let guard = (index == 0).then_some(instance.last_sequence);
            let headers = self
                .headers(id, index, new, command, guard, trace)
                .map_err(|err| {
                    AppendError::Failed(Failure::permanent(format!(
                        "appended event {}: {err}",
                        new.event_type
                    )))
                })?;
            let body: bytes::Bytes = serde_json::to_vec(&new.data).unwrap_or_default().into();
            messages.push((subject, headers, body));
        }
        match emit::publish_batch(&self.js, messages).await {
            Ok(ack) => {
                self.metrics.appended.inc_by(events.len() as u64);
                Ok((instance.version + events.len() as u64, ack.sequence))
            }
            Err(PublishError::WrongLastSequence { .. }) => Err(AppendError::Conflict),
            Err(err) => Err(AppendError::Failed(super::unavailable(format!(
                "cannot append to {} {id}: {err}",
                self.aggregate.name
            )))),
        }
    }

    /// An appended event's headers: CloudEvents binary mode, the command's
    /// correlation id, the command as its cause, an id (also `Nats-Msg-Id`)
    /// from the command and the event's place in what it appends, and the
    /// sequence guard.
    fn headers(
        &self,
        id: &str,
        index: usize,
        new: &NewEvent,
        command: &Event,
        guard: Option<u64>,
        trace: Option<&envelope::TraceContext>,
    ) -> Result<HeaderMap, BadHeader> {
        // The command's source and id (what a requester sends again), the
        // instance and the place in what it appends: a command sent again is
        // stored once, and two commands that merely share an id are not.
        let event_id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!(
                "{}\u{0}{}\u{0}{}\u{0}{id}\u{0}{index}",
                self.aggregate.name, command.source, command.id
            )
            .as_bytes(),
        )
        .to_string();
        let source = format!("jetrun/{}", self.function);
        let mut headers = envelope::binary_headers(&envelope::Outgoing {
            id: &event_id,
            event_type: &new.event_type,
            source: &source,
            correlation_id: Some(command.correlationid.as_deref().unwrap_or(&command.id)),
            causation_id: Some(&command.id),
            traced_from: Some(command),
            // With traces, the handler call's span (`Context::trace`).
            trace,
        })?;
        if let Some(expected) = guard {
            headers.put_number(
                HeaderName::from_static("Nats-Expected-Last-Subject-Sequence"),
                expected,
            );
            headers.put(
                HeaderName::from_static("Nats-Expected-Last-Subject-Sequence-Subject"),
                &self.aggregate.subject.events_of(id),
            )?;
        }
        Ok(headers)
    }

    /// Stores `state` as the snapshot of `id` at `version` (its last event
    /// at stream sequence `sequence`) when the append crossed a multiple of
    /// `snapshot_every`. A failure only costs a longer load later: it is
    /// logged, not returned.
    async fn maybe_snapshot(
        &self,
        id: &str,
        before: u64,
        (version, sequence): (u64, u64),
        state: Option<Value>,
    ) {
        let (Some(every), Some(state)) = (self.aggregate.snapshot_every, state) else {
            return;
        };
        if version / every == before / every {
            return;
        }
        let snapshot = Snapshot {
            version,
            sequence,
            state,
        };
        let stored = match self.snapshots().await {
            Ok(store) => store
                .put(id, serde_json::to_vec(&snapshot).unwrap_or_default().into())
                .await
                .map_err(|e| e.to_string()),
            Err(failure) => Err(failure.message),
        };
        if let Err(err) = stored {
            tracing::warn!(aggregate = %self.aggregate.name, %id, %err, "Cannot store a snapshot.");
        }
    }
}

#[async_trait::async_trait]
impl Function for CommandHandler {
    async fn call(&self, command: &Event, ctx: &Context) -> Outcome {
        let id = self.instance_id(command)?;
        let lock = self.instance_lock(&id);
        let _turn = lock.lock().await;
        let retries = self.aggregate.max_conflict_retries;
        for _ in 0..=retries {
            let instance = self.load(&id).await?;
            let input = json!({
                "command": command.to_structured_json(),
                "aggregate": {
                    "id": id,
                    "version": instance.version,
                    "history": instance.history,
                    "snapshot": instance.snapshot,
                },
            });
            let document = Event {
                data: serde_json::to_vec(&input).unwrap_or_default().into(),
                datacontenttype: Some("application/json".into()),
                ..command.clone()
            };
            let output = self.inner.call(&document, ctx).await?;
            let result = output.result.unwrap_or_default();
            let decision: Decision = serde_json::from_slice(&result).map_err(|err| {
                Failure::permanent(format!(
                    "a command handler returns {{\"append\": [{{\"type\", \"data\"}}], \"reply\"?, \
                     \"snapshot\"?}}: {err}"
                ))
            })?;
            let appended = if decision.append.is_empty() {
                (instance.version, instance.last_sequence)
            } else {
                let trace = ctx.trace.as_ref();
                match self
                    .append(&id, &instance, &decision.append, command, trace)
                    .await
                {
                    Ok(appended) => appended,
                    Err(AppendError::Conflict) => {
                        self.metrics.conflicts.inc();
                        tracing::debug!(aggregate = %self.aggregate.name, %id, "Another command appended first; running again.");
                        continue;
                    }
                    Err(AppendError::Failed(failure)) => return Err(failure),
                }
            };
            self.maybe_snapshot(&id, instance.version, appended, decision.snapshot)
                .await;
            let version = appended.0;
            let reply = decision
                .reply
                .unwrap_or_else(|| json!({"version": version, "appended": decision.append.len()}));
            return Ok(Output::result(
                serde_json::to_vec(&reply).unwrap_or_default(),
            ));
        }
        Err(Failure::retryable(format!(
            "{} {id} was changed by other commands {} times in a row; gave up",
            self.aggregate.name,
            retries + 1
        ))
        .with_status(409))
    }
}
