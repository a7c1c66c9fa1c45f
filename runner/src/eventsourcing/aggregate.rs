//! An aggregate's command handler: for each command, load the instance (its
//! snapshot, if any, and the events after it), call the function with both,
//! and append what it returns against the version it read. Another command
//! appending first makes the append fail (`Nats-Expected-Last-Subject-Sequence`
//! over all of the instance's subjects); the instance is then loaded again
//! and the function run again, up to `max_conflict_retries`, then the
//! command fails with 409.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use futures::StreamExt;
use jetrun_config::AggregateConfig;
use jetrun_functions::{Context, Event, Failure, Function, Outcome, Output};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::envelope::{self, Origin};

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

/// Deletes an ephemeral consumer when dropped, in the background.
struct DeleteOnDrop(Option<(jetstream::stream::Stream, String)>);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some((stream, name)) = self.0.take() {
            tokio::spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
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
    conflicts: IntCounter,
    appended: IntCounter,
}

impl CommandHandler {
    pub(crate) fn new(
        function: &str,
        aggregate: AggregateConfig,
        inner: Arc<dyn Function>,
        js: jetstream::Context,
        (conflicts, appended): (IntCounter, IntCounter),
    ) -> Self {
        CommandHandler {
            function: function.to_string(),
            aggregate,
            inner,
            js,
            instances: std::sync::Mutex::default(),
            snapshots: OnceCell::new(),
            conflicts,
            appended,
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
                let bucket = format!("jetrun_snapshots_{}", self.aggregate.name);
                match self.js.get_key_value(&bucket).await {
                    Ok(store) => Ok(store),
                    Err(_) => self
                        .js
                        .create_key_value(kv::Config {
                            bucket: bucket.clone(),
                            description: format!(
                                "jetrun: snapshots of aggregate {}",
                                self.aggregate.name
                            ),
                            history: 1,
                            ..Default::default()
                        })
                        .await
                        .map_err(|err| {
                            Failure::retryable(format!("cannot create KV bucket {bucket}: {err}"))
                        }),
                }
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
                .map_err(|err| Failure::retryable(format!("cannot read the snapshot: {err}")))?;
            if let Some(bytes) = stored {
                if let Ok(snapshot) = serde_json::from_slice::<Snapshot>(&bytes) {
                    instance.version = snapshot.version;
                    instance.last_sequence = snapshot.sequence;
                    instance.snapshot = Some(snapshot.state);
                }
            }
        }
        let failed = |what: &str, err: &dyn std::fmt::Display| {
            Failure::retryable(format!(
                "cannot read the history of {} {id}: {what}: {err}",
                self.aggregate.name
            ))
        };
        let stream = self
            .js
            .get_stream(&self.aggregate.stream)
            .await
            .map_err(|e| failed("stream", &e))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.aggregate.subject.events_of(id),
                deliver_policy: match instance.last_sequence {
                    0 => DeliverPolicy::All,
                    seq => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                },
                ..Default::default()
            })
            .await
            .map_err(|e| failed("consumer", &e))?;
        // Delete the consumer once read rather than let it wait out its
        // inactivity: nats-server 2.15 allows 1,000 consumers per stream by
        // default, and busy instances load often.
        let name = consumer.cached_info().name.clone();
        let _cleanup = DeleteOnDrop(Some((stream.clone(), name)));
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(instance);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| failed("messages", &e))?;
        while (instance.history.len() as u64) < pending {
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Err(failed("message", &err)),
                None => return Err(failed("messages", &"ended early")),
            };
            let info = message.info().map_err(|e| failed("message info", &e))?;
            let origin = Origin {
                subject: message.subject.as_str(),
                stream: &self.aggregate.stream,
                sequence: info.stream_sequence,
                published: info.published.into(),
            };
            instance.last_sequence = info.stream_sequence;
            let event = envelope::read_event(&origin, message.headers.as_ref(), &message.payload)
                .map(|e| e.to_structured_json())
                .unwrap_or_else(
                    |_| json!({"id": format!("{}:{}", origin.stream, origin.sequence)}),
                );
            instance.history.push(event);
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
        let batch = (events.len() > 1).then(|| uuid::Uuid::new_v4().to_string());
        let last = events.len() - 1;
        let mut stored = instance.last_sequence;
        for (index, (new, subject)) in events.iter().zip(&subjects).enumerate() {
            // The guard goes on the first event: in a batch it holds for all.
            let guard = (index == 0).then_some(instance.last_sequence);
            let mut headers = self.headers(id, index, new, command, guard);
            if let Some(batch) = &batch {
                headers.insert("Nats-Batch-Id", batch.as_str());
                headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
                if index == last {
                    headers.insert("Nats-Batch-Commit", "1");
                }
            }
            let body: bytes::Bytes = serde_json::to_vec(&new.data).unwrap_or_default().into();
            let failed = |err: &dyn std::fmt::Display| {
                let text = err.to_string();
                if text.contains("wrong last sequence") {
                    AppendError::Conflict
                } else {
                    AppendError::Failed(Failure::retryable(format!(
                        "cannot append {} to {subject}: {text}",
                        new.event_type
                    )))
                }
            };
            if batch.is_some() && index < last {
                // The batch's first message is a request the server answers
                // (empty, or an error); the ones after it are plain publishes.
                let client = self.js.client();
                if index == 0 {
                    let reply = client
                        .request_with_headers(subject.clone(), headers, body)
                        .await
                        .map_err(|e| failed(&e))?;
                    if let Ok(answer) = serde_json::from_slice::<Value>(&reply.payload) {
                        if let Some(error) = answer.get("error") {
                            return Err(failed(&error));
                        }
                    }
                } else {
                    client
                        .publish_with_headers(subject.clone(), headers, body)
                        .await
                        .map_err(|e| failed(&e))?;
                }
                continue;
            }
            let ack = match self
                .js
                .publish_with_headers(subject.clone(), headers, body)
                .await
            {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match ack {
                Ok(ack) => stored = ack.sequence,
                Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(AppendError::Conflict)
                }
                Err(err) => return Err(failed(&err)),
            }
        }
        self.appended.inc_by(events.len() as u64);
        Ok((instance.version + events.len() as u64, stored))
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
    ) -> HeaderMap {
        let event_id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}\u{0}{}\u{0}{index}", self.aggregate.name, command.id).as_bytes(),
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
        });
        if let Some(expected) = guard {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expected.to_string().as_str(),
            );
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence-Subject",
                self.aggregate.subject.events_of(id).as_str(),
            );
        }
        headers
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
                match self.append(&id, &instance, &decision.append, command).await {
                    Ok(appended) => appended,
                    Err(AppendError::Conflict) => {
                        self.conflicts.inc();
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
