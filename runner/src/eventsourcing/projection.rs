//! Projections: a stream function with `projection = { bucket, key }` keeps a
//! read model in a KV bucket. For each event it reads the state at the
//! event's key, calls the function with both, and stores what it returns
//! against the revision it read (running the function again when another
//! writer stored first). Each stored value carries the stream sequence of
//! the event that made it (`Jetrun-Applied-Sequence`) and which stream that
//! was (`Jetrun-Applied-Stream`: its name and creation time), and an event
//! of that same stream not newer than that is skipped: a redelivery or a
//! replay cannot apply twice. An event of a stream deleted and made again
//! (its sequences started over) is another stream's, and applies.
//!
//! A projection on a request function is a query: it reads the state at the
//! request's key and answers with what the function returns, storing
//! nothing.
//!
//! Readers find the bucket through a pointer: key `<bucket>` of KV bucket
//! [`POINTERS`] names the physical bucket holding the model, the configured
//! name itself when there is none. `jetrun projection rebuild` builds a new
//! one aside and moves the pointer once it has caught up; readers re-read
//! the pointer after [`POINTER_TTL`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self, kv, ErrorCode};
use async_nats::{HeaderMap, HeaderName};
use jetrun_config::ProjectionConfig;
use jetrun_functions::{Context, Event, Failure, Function, Outcome, Output};
use prometheus::IntCounter;
use serde_json::{json, Value};

use crate::emit::{self, PublishError};
use crate::headers::Put;
use crate::metrics::ProjectionMetrics;
use crate::nats::BucketSpec;

/// The KV bucket of pointers: key = a projection's configured bucket, value
/// = the bucket holding its read model now.
pub(crate) const POINTERS: &str = jetrun_config::name::PROJECTION_POINTERS;

/// Why the value stored at a key cannot be read as a state.
#[derive(Debug, thiserror::Error)]
#[error("the value at revision {revision} is not JSON ({reason}); a projection's state is JSON")]
pub(crate) struct NotJson {
    revision: u64,
    reason: String,
}

/// Why a pointer could not be moved.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot point {POINTERS}.{logical} at {physical}: {reason} (did another rebuild of \
     {logical} move it meanwhile?)"
)]
pub(crate) struct SwitchFailed {
    logical: String,
    physical: String,
    reason: String,
}

/// How long a reader trusts the pointer it read. A rebuild waits twice this
/// after moving the pointer before it counts on every reader having moved.
pub(crate) const POINTER_TTL: Duration = Duration::from_secs(1);

/// The header on a stored value naming the stream sequence of the event
/// that wrote it.
pub(crate) const APPLIED_SEQUENCE: &str = "Jetrun-Applied-Sequence";

/// The header on a stored value naming the stream (`NAME@CREATED`, its
/// creation time in Unix nanoseconds) of the event that wrote it. A value
/// without it (written before jetrun wrote it) is taken to be of the
/// stream being read.
pub(crate) const APPLIED_STREAM: &str = "Jetrun-Applied-Stream";

/// How `APPLIED_STREAM` names the stream an event was delivered from;
/// `None` when its creation time is not known.
fn applied_stream(ctx: &Context) -> Option<String> {
    (ctx.stream_created != 0).then(|| format!("{}@{}", ctx.stream, ctx.stream_created))
}

/// How often an event is run again after losing the race to store, before
/// it becomes a retryable failure.
const MAX_CONFLICT_RUNS: u32 = 10;

/// What a projection function returns.
#[derive(Debug, Clone, PartialEq)]
enum Change {
    /// `{"state": value}`.
    Store(Value),
    /// `{"delete": true}` (or `{"state": null}`).
    Delete,
}

impl Change {
    /// The `outcome` label of `jetrun_projection_updates_total`, and its counter.
    fn outcome<'m>(&self, metrics: &'m ProjectionMetrics) -> (&'static str, &'m IntCounter) {
        match self {
            Change::Store(_) => ("stored", &metrics.stored),
            Change::Delete => ("deleted", &metrics.deleted),
        }
    }
}

/// A key's stored value as read.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    /// The state; `null` when the key was never written or is deleted.
    state: Value,
    /// The KV revision read (0: the key has no message), the guard of the
    /// next write.
    revision: u64,
    /// The stream sequence of the last event applied to the key (0: none).
    applied: u64,
    /// The stream that event was of (see [`APPLIED_STREAM`]).
    applied_stream: Option<String>,
}

impl Stored {
    const NONE: Stored = Stored {
        state: Value::Null,
        revision: 0,
        applied: 0,
        applied_stream: None,
    };

    /// The last message on a key's subject: a value, or a delete or purge
    /// marker (state `null`, its applied sequence kept).
    fn of(headers: &HeaderMap, payload: &[u8], revision: u64) -> Result<Stored, NotJson> {
        let header = |name: &str| headers.get(name).map(|v| v.as_str());
        let applied = header(APPLIED_SEQUENCE)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let removed = header("KV-Operation").is_some_and(|op| op == "DEL" || op == "PURGE")
            || header("Nats-Marker-Reason").is_some();
        let state = if removed {
            Value::Null
        } else {
            serde_json::from_slice(payload).map_err(|err| NotJson {
                revision,
                reason: err.to_string(),
            })?
        };
        Ok(Stored {
            state,
            revision,
            applied,
            applied_stream: header(APPLIED_STREAM).map(str::to_string),
        })
    }
}

/// The key an event or request names: the string or number at `pointer` in
/// its data, fit to be a KV key. Anything else is a permanent failure.
fn key_of(data: &[u8], pointer: &str, what: &str) -> Result<String, Failure> {
    let data: Value = serde_json::from_slice(data)
        .map_err(|err| Failure::permanent(format!("the {what}'s data is not JSON: {err}")))?;
    let key = match data.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(Failure::permanent(format!(
                "the {what}'s {pointer} must be a string or a number to name a projection key, \
                 got {other}"
            )))
        }
        None => {
            return Err(Failure::permanent(format!(
                "the {what}'s data has no {pointer}, the projection's key"
            )))
        }
    };
    if !is_valid_key(&key) {
        return Err(Failure::permanent(format!(
            "the {what}'s {pointer} is {key:?}, which cannot be a KV key: use letters, digits \
             and - _ = / . (not at either end, not two in a row)"
        )));
    }
    Ok(key)
}

/// A KV key: letters, digits and `-_=/.`, dots neither at an end nor doubled
/// (each dot starts a subject token).
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '/' | '.'))
}

/// A projection function's result: `{"state": value}` or `{"delete": true}`.
fn parse_change(result: &[u8]) -> Result<Change, Failure> {
    let invalid = |why: String| {
        Failure::permanent(format!(
            "a projection returns {{\"state\": <new state>}} or {{\"delete\": true}}: {why}"
        ))
    };
    let value: Value = serde_json::from_slice(result).map_err(|err| {
        let text = String::from_utf8_lossy(result);
        invalid(format!("{err}: {:?}", truncate(&text, 200)))
    })?;
    let Value::Object(mut fields) = value else {
        return Err(invalid(format!(
            "got {}",
            truncate(&value.to_string(), 200)
        )));
    };
    let delete = match fields.remove("delete") {
        None => false,
        Some(Value::Bool(delete)) => delete,
        Some(other) => {
            return Err(invalid(format!(
                "delete must be true or false, got {other}"
            )))
        }
    };
    let state = fields.remove("state");
    if let Some(name) = fields.keys().next() {
        return Err(invalid(format!("unknown field {name:?}")));
    }
    match (delete, state) {
        (true, Some(_)) => Err(invalid("both state and delete".into())),
        (true, None) | (false, Some(Value::Null)) => Ok(Change::Delete),
        (false, Some(state)) => Ok(Change::Store(state)),
        (false, None) => Err(invalid("neither state nor delete".into())),
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// An error reading from KV naming what was read; always retryable.
fn read_failed(what: &str, err: &dyn std::fmt::Display) -> Failure {
    super::unavailable(format!("cannot read {what}: {err}"))
}

/// The current pointer of projection bucket `logical`: the bucket holding
/// its read model and the pointer's KV revision (`None`: no pointer, the
/// model is in `logical` itself). Read from the stream leader, never a
/// replica that may lag.
pub(crate) async fn pointer(
    js: &jetstream::Context,
    logical: &str,
) -> Result<(String, Option<u64>), Failure> {
    let what = || format!("the pointer of projection bucket {logical} in {POINTERS}");
    let pointers = js
        .get_stream_no_info(format!("KV_{POINTERS}"))
        .await
        .map_err(|err| read_failed(&what(), &err))?;
    match pointers
        .get_last_raw_message_by_subject(&format!("$KV.{POINTERS}.{logical}"))
        .await
    {
        Ok(message) => {
            let operation = message.headers.get("KV-Operation").map(|v| v.as_str());
            let physical = String::from_utf8_lossy(&message.payload).trim().to_string();
            if matches!(operation, Some("DEL" | "PURGE")) || physical.is_empty() {
                Ok((logical.to_string(), Some(message.sequence)))
            } else {
                Ok((physical, Some(message.sequence)))
            }
        }
        Err(err) => match err.kind() {
            LastRawMessageErrorKind::NoMessageFound => Ok((logical.to_string(), None)),
            LastRawMessageErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok((logical.to_string(), None))
            }
            _ => Err(read_failed(&what(), &err)),
        },
    }
}

/// The [`POINTERS`] bucket, created when missing.
pub(crate) async fn pointers(js: &jetstream::Context) -> Result<kv::Store, Failure> {
    BucketSpec {
        name: POINTERS,
        holds: "the bucket holding each projection's read model, by the bucket its functions name",
        history: 10,
        like: None,
        message_ttl: false,
    }
    .open(js)
    .await
    .map_err(|err| super::unavailable(err.to_string()))
}

/// Points readers of projection bucket `logical` at `physical`, provided
/// the pointer is still at `revision` (as [`pointer`] read it): a rebuild
/// racing another fails instead of undoing it. Returns the pointer's new
/// revision.
pub(crate) async fn switch(
    pointers: &kv::Store,
    logical: &str,
    revision: Option<u64>,
    physical: &str,
) -> Result<u64, SwitchFailed> {
    let written = match revision {
        None => pointers
            .create(logical, physical.to_string().into())
            .await
            .map_err(|err| err.to_string()),
        Some(revision) => pointers
            .update(logical, physical.to_string().into(), revision)
            .await
            .map_err(|err| err.to_string()),
    };
    written.map_err(|reason| SwitchFailed {
        logical: logical.to_string(),
        physical: physical.to_string(),
        reason,
    })
}

/// Creates KV bucket `name` for a read model, with the settings of
/// `like` (the bucket it replaces) when given, else history 1 and the
/// defaults. A bucket that exists already (another runner made it first)
/// is fine.
pub(crate) async fn create_bucket(
    js: &jetstream::Context,
    name: &str,
    like: Option<&stream::Config>,
) -> Result<(), Failure> {
    let holds = format!("a projection's read model ({name})");
    BucketSpec {
        name,
        holds: &holds,
        history: 1,
        like,
        message_ttl: false,
    }
    .open(js)
    .await
    .map(|_| ())
    .map_err(|err| super::unavailable(err.to_string()))
}

/// One physical bucket holding a read model.
#[derive(Clone)]
struct Bucket {
    name: String,
    stream: stream::Stream<()>,
    js: jetstream::Context,
}

/// Why a write did not happen.
enum WriteError {
    /// Another writer stored to the key after it was read.
    Conflict,
    Failed(Failure),
}

impl Bucket {
    async fn new(js: &jetstream::Context, name: &str) -> Result<Bucket, Failure> {
        let stream = js
            .get_stream_no_info(format!("KV_{name}"))
            .await
            .map_err(|err| Failure::permanent(format!("KV bucket {name:?}: {err}")))?;
        Ok(Bucket {
            name: name.to_string(),
            stream,
            js: js.clone(),
        })
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.name)
    }

    /// The stored value of `key`; `None` when the bucket does not exist.
    async fn read(&self, key: &str) -> Result<Option<Stored>, Failure> {
        let what = || format!("key {key} of KV bucket {}", self.name);
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(key))
            .await
        {
            Ok(message) => Stored::of(&message.headers, &message.payload, message.sequence)
                .map(Some)
                .map_err(|why| Failure::permanent(format!("{}: {why}", what()))),
            Err(err) => match err.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(Some(Stored::NONE)),
                LastRawMessageErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(read_failed(&what(), &err)),
            },
        }
    }

    /// Stores `change` at `key`, provided the key is still at `revision`,
    /// recording `applied` as its applied sequence, of `stream`. Returns the
    /// new revision.
    async fn write(
        &self,
        key: &str,
        change: &Change,
        revision: u64,
        (applied, stream): (u64, Option<&str>),
    ) -> Result<u64, WriteError> {
        let mut headers = HeaderMap::new();
        headers.put_number(
            HeaderName::from_static("Nats-Expected-Last-Subject-Sequence"),
            revision,
        );
        headers.put_number(HeaderName::from_static(APPLIED_SEQUENCE), applied);
        if let Some(stream) = stream {
            headers
                .put(HeaderName::from_static(APPLIED_STREAM), stream)
                .map_err(|err| WriteError::Failed(Failure::permanent(err.to_string())))?;
        }
        let body = match change {
            Change::Store(state) => serde_json::to_vec(state).unwrap_or_default(),
            Change::Delete => {
                headers
                    .put(HeaderName::from_static("KV-Operation"), "DEL")
                    .map_err(|err| WriteError::Failed(Failure::permanent(err.to_string())))?;
                Vec::new()
            }
        };
        let subject = self.subject(key);
        match emit::publish(&self.js, &subject, headers, body.into()).await {
            Ok(ack) => Ok(ack.sequence),
            Err(PublishError::WrongLastSequence { .. }) => Err(WriteError::Conflict),
            Err(err) => Err(WriteError::Failed(super::unavailable(format!(
                "cannot store key {key} in KV bucket {}: {err}",
                self.name
            )))),
        }
    }
}

/// Where a projection's read model is: its configured bucket resolved
/// through the pointer, the answer trusted for [`POINTER_TTL`].
struct ReadModel {
    js: jetstream::Context,
    logical: String,
    cached: Mutex<Option<(Instant, Bucket)>>,
}

impl ReadModel {
    fn new(js: jetstream::Context, logical: &str) -> Self {
        ReadModel {
            js,
            logical: logical.to_string(),
            cached: Mutex::new(None),
        }
    }

    /// The bucket holding the model now.
    async fn bucket(&self) -> Result<Bucket, Failure> {
        if let Some((at, bucket)) = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            if at.elapsed() < POINTER_TTL {
                return Ok(bucket.clone());
            }
        }
        let started = Instant::now();
        let (physical, _) = pointer(&self.js, &self.logical).await?;
        let bucket = Bucket::new(&self.js, &physical).await?;
        *self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((started, bucket.clone()));
        Ok(bucket)
    }

    /// The stored value of `key` and the bucket it was read from; `None`
    /// when that bucket does not exist. A bucket gone from under a cached
    /// pointer (a rebuild deleted it) sends the reader to the pointer again.
    async fn read(&self, key: &str) -> Result<(Bucket, Option<Stored>), Failure> {
        let bucket = self.bucket().await?;
        if let Some(stored) = bucket.read(key).await? {
            return Ok((bucket, Some(stored)));
        }
        *self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let fresh = self.bucket().await?;
        if fresh.name == bucket.name {
            return Ok((bucket, None));
        }
        let stored = fresh.read(key).await?;
        Ok((fresh, stored))
    }
}

/// `document` as the data of `like`: the input a function that answers gets.
fn input_event(like: &Event, document: &Value) -> Event {
    Event {
        data: serde_json::to_vec(document).unwrap_or_default().into(),
        datacontenttype: Some("application/json".into()),
        ..like.clone()
    }
}

/// A stream function's projection: applies each event to the state at its
/// key. Its result (ignored by a live delivery, read by `jetrun
/// projection`) says what became of the event:
/// `{"outcome": "stored"|"deleted"|"skipped", "bucket", "key", "revision"}`.
pub(crate) struct Projector {
    function: String,
    projection: ProjectionConfig,
    inner: Arc<dyn Function>,
    model: ReadModel,
    metrics: ProjectionMetrics,
}

impl Projector {
    pub(crate) fn new(
        function: &str,
        projection: ProjectionConfig,
        inner: Arc<dyn Function>,
        js: jetstream::Context,
        metrics: ProjectionMetrics,
    ) -> Self {
        Projector {
            function: function.to_string(),
            model: ReadModel::new(js, &projection.bucket),
            projection,
            inner,
            metrics,
        }
    }

    /// Counts `outcome` and says it as the call's result.
    fn answer(
        &self,
        (outcome, counter): (&str, &IntCounter),
        bucket: &Bucket,
        key: &str,
        revision: u64,
    ) -> Output {
        counter.inc();
        let result = json!({
            "outcome": outcome,
            "bucket": bucket.name,
            "key": key,
            "revision": revision,
        });
        Output::result(serde_json::to_vec(&result).unwrap_or_default())
    }
}

#[async_trait::async_trait]
impl Function for Projector {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        let key = key_of(&event.data, &self.projection.key, "event")?;
        let cloud_event = event.to_structured_json();
        for _ in 0..MAX_CONFLICT_RUNS {
            let (bucket, stored) = self.model.read(&key).await?;
            let stored = match stored {
                Some(stored) => stored,
                None => {
                    create_bucket(&bucket.js, &bucket.name, None).await?;
                    Stored::NONE
                }
            };
            // Sequence 0 is no stream's: nothing to guard with. Another
            // stream's sequence (one made again, say) says nothing of this one's.
            let stream = applied_stream(ctx);
            let same_stream = match (&stored.applied_stream, &stream) {
                (Some(stored), Some(now)) => stored == now,
                _ => true,
            };
            if ctx.sequence != 0 && same_stream && stored.applied >= ctx.sequence {
                let skipped = ("skipped", &self.metrics.skipped);
                return Ok(self.answer(skipped, &bucket, &key, stored.revision));
            }
            let input = json!({"event": cloud_event, "key": key, "state": stored.state});
            let output = self.inner.call(&input_event(event, &input), ctx).await?;
            let change = parse_change(output.result.as_deref().unwrap_or_default())?;
            let applied = if same_stream {
                ctx.sequence.max(stored.applied)
            } else {
                ctx.sequence
            };
            let stream = stream.or(stored.applied_stream);
            let guard = (applied, stream.as_deref());
            match bucket.write(&key, &change, stored.revision, guard).await {
                Ok(revision) => {
                    let outcome = change.outcome(&self.metrics);
                    return Ok(self.answer(outcome, &bucket, &key, revision));
                }
                Err(WriteError::Conflict) => {
                    self.metrics.conflict.inc();
                    tracing::debug!(function = %self.function, bucket = %bucket.name, %key, "Another writer stored first; running again.");
                }
                Err(WriteError::Failed(failure)) => return Err(failure),
            }
        }
        Err(Failure::retryable(format!(
            "key {key} of projection bucket {} was changed by other writers {MAX_CONFLICT_RUNS} \
             times in a row; gave up for now",
            self.projection.bucket
        )))
    }
}

/// A request function's projection: answers with what the function makes
/// of the request and the state at its key. Stores nothing.
pub(crate) struct Query {
    projection: ProjectionConfig,
    inner: Arc<dyn Function>,
    model: ReadModel,
}

impl Query {
    pub(crate) fn new(
        _function: &str,
        projection: ProjectionConfig,
        inner: Arc<dyn Function>,
        js: jetstream::Context,
    ) -> Self {
        Query {
            model: ReadModel::new(js, &projection.bucket),
            projection,
            inner,
        }
    }
}

#[async_trait::async_trait]
impl Function for Query {
    async fn call(&self, request: &Event, ctx: &Context) -> Outcome {
        let key = key_of(&request.data, &self.projection.key, "request")?;
        let (_, stored) = self.model.read(&key).await?;
        let state = stored.map_or(Value::Null, |stored| stored.state);
        let input = json!({"request": request.to_structured_json(), "key": key, "state": state});
        self.inner.call(&input_event(request, &input), ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value at revision 12 with `headers`.
    fn stored(headers: &[(&str, &str)], payload: &[u8]) -> Result<Stored, NotJson> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        Stored::of(&map, payload, 12)
    }

    #[test]
    fn keys_are_strings_or_numbers_at_the_pointer() {
        let key = |data: &str| key_of(data.as_bytes(), "/user/id", "event");
        assert_eq!(key(r#"{"user": {"id": "u7"}}"#).unwrap(), "u7");
        assert_eq!(key(r#"{"user": {"id": 42}}"#).unwrap(), "42");
        assert_eq!(key(r#"{"user": {"id": "a/b=c.d"}}"#).unwrap(), "a/b=c.d");
        let err = key(r#"{"user": {}}"#).unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(
            err.message,
            "the event's data has no /user/id, the projection's key"
        );
        let err = key(r#"{"user": {"id": true}}"#).unwrap_err();
        assert_eq!(
            err.message,
            "the event's /user/id must be a string or a number to name a projection key, got true"
        );
        assert!(key("not json").unwrap_err().is_permanent());
    }

    #[test]
    fn keys_must_be_valid_kv_keys() {
        for bad in ["", "a b", "a*", "a>", ".a", "a.", "a..b", "ü", "a\nb"] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
        for good in ["u7", "a.b", "a-b_c=d/e", "42", "1.5"] {
            assert!(is_valid_key(good), "{good:?}");
        }
        let err = key_of(br#"{"id": "u 7"}"#, "/id", "request").unwrap_err();
        assert!(err.is_permanent());
        assert!(err
            .message
            .starts_with("the request's /id is \"u 7\", which cannot be a KV key"));
    }

    #[test]
    fn a_projection_stores_a_state_or_deletes() {
        assert_eq!(
            parse_change(br#"{"state": {"count": 2}}"#).unwrap(),
            Change::Store(json!({"count": 2}))
        );
        assert_eq!(
            parse_change(br#"{"state": 0}"#).unwrap(),
            Change::Store(json!(0))
        );
        assert_eq!(
            parse_change(br#"{"delete": true}"#).unwrap(),
            Change::Delete
        );
        assert_eq!(parse_change(br#"{"state": null}"#).unwrap(), Change::Delete);
        assert_eq!(
            parse_change(br#"{"delete": false, "state": []}"#).unwrap(),
            Change::Store(json!([]))
        );
        for (bad, why) in [
            (&br#"{}"#[..], "neither state nor delete"),
            (br#"{"state": 1, "delete": true}"#, "both state and delete"),
            (br#"{"state": 1, "count": 2}"#, "unknown field \"count\""),
            (
                br#"{"delete": "yes"}"#,
                "delete must be true or false, got \"yes\"",
            ),
            (br#"[1]"#, "got [1]"),
        ] {
            let err = parse_change(bad).unwrap_err();
            assert!(err.is_permanent());
            assert_eq!(
                err.message,
                format!(
                    "a projection returns {{\"state\": <new state>}} or {{\"delete\": true}}: {why}"
                )
            );
        }
        assert!(parse_change(b"").unwrap_err().is_permanent());
    }

    #[test]
    fn a_stored_value_carries_its_applied_sequence() {
        let put = stored(
            &[(APPLIED_SEQUENCE, "9"), (APPLIED_STREAM, "ORDERS@5")],
            br#"{"count":3}"#,
        )
        .unwrap();
        assert_eq!(
            put,
            Stored {
                state: json!({"count": 3}),
                revision: 12,
                applied: 9,
                applied_stream: Some("ORDERS@5".into()),
            }
        );
        let put_by_hand = stored(&[], b"7").unwrap();
        assert_eq!((put_by_hand.state, put_by_hand.applied), (json!(7), 0));
        assert!(stored(&[], b"not json")
            .unwrap_err()
            .to_string()
            .contains("revision 12 is not JSON"));
    }

    #[test]
    fn a_delete_marker_is_a_null_state_that_keeps_its_sequence() {
        let deleted = stored(&[("KV-Operation", "DEL"), (APPLIED_SEQUENCE, "30")], b"").unwrap();
        assert_eq!(
            deleted,
            Stored {
                state: Value::Null,
                revision: 12,
                applied: 30,
                applied_stream: None,
            }
        );
        let purged = stored(&[("KV-Operation", "PURGE")], b"").unwrap();
        assert_eq!((purged.state, purged.applied), (Value::Null, 0));
    }
}
