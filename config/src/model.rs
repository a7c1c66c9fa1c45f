//! The validated configuration: what `parse` hands the runner. Every value here
//! has passed validation, every default is filled in and every relative path
//! is already joined to the config file's folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::retry::RetryPolicy;

/// The server when neither `[nats] url` nor anything else says otherwise.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The name of the dead-letter stream jetrun creates when missing, unless
/// `[dead_letters] stream` names another.
pub const DLQ_STREAM: &str = "DLQ";
/// The subjects that stream captures, unless `[dead_letters] prefix` says
/// otherwise.
pub const DLQ_SUBJECTS: &str = "dlq.>";
/// The prefix of those subjects.
pub(crate) const DLQ_PREFIX: &str = "dlq";

/// `[dead_letters]`: the stream jetrun keeps dead letters in, and the
/// subjects it holds (`PREFIX.>`; a function's are `PREFIX.FUNCTION` unless
/// it names its own). Two teams sharing a NATS account name theirs apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetters {
    pub stream: String,
    pub prefix: String,
}

impl Default for DeadLetters {
    fn default() -> Self {
        DeadLetters {
            stream: DLQ_STREAM.to_string(),
            prefix: DLQ_PREFIX.to_string(),
        }
    }
}

impl DeadLetters {
    /// The subjects the dead-letter stream holds: `PREFIX.>`.
    pub fn subjects(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The dead-letter subject of a consumer whose config names none.
    pub fn subject(&self, consumer: &str) -> String {
        format!("{}.{consumer}", self.prefix)
    }
}

/// `[service]`: the NATS micro service request functions are endpoints of,
/// which is also its queue group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            name: crate::name::SERVICE.to_string(),
        }
    }
}

/// A whole, validated config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub nats: NatsConfig,
    pub metrics: MetricsConfig,
    /// `[telemetry]`: OpenTelemetry traces over OTLP; `None` (the section
    /// absent): no traces, and no tracing cost.
    pub telemetry: Option<TelemetryConfig>,
    /// How long the drain on SIGTERM/SIGINT may take before what is left is NAKed.
    pub shutdown_timeout: Duration,
    /// Streams jetrun creates when missing and updates when they differ, by name.
    pub streams: BTreeMap<String, StreamConfig>,
    /// Functions by name (the name is also the durable consumer's name).
    pub functions: BTreeMap<String, FunctionConfig>,
    /// Event-sourced aggregates by name (`[aggregates.NAME]`).
    pub aggregates: BTreeMap<String, AggregateConfig>,
    /// Declarative sagas by name (`[sagas.NAME]`).
    pub sagas: BTreeMap<String, SagaConfig>,
    /// `[dead_letters]`.
    pub dead_letters: DeadLetters,
    /// `[service]`.
    pub service: ServiceConfig,
    /// `[schedules] stream`: the stream jetrun keeps scheduled functions'
    /// schedules and ticks in ([`crate::name::SCHEDULES_STREAM`] unless
    /// set); made only when a function has a `schedule`.
    pub schedules_stream: String,
    /// What is valid but likely not meant, each with its key path and line
    /// (`jetrun check` prints them; `jetrun run` logs them).
    pub warnings: Vec<crate::ConfigError>,
}

/// `[sagas.NAME]`: a process over events. Its start event begins one
/// instance per key; each step publishes a command and awaits a reply; a
/// failure or a timeout undoes, in reverse order, what was done, then
/// `failed` is published. Every type is a subject a declared stream captures,
/// and each plays one role in the saga.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaConfig {
    pub name: String,
    /// The event type starting one instance.
    pub start: String,
    /// A JSON pointer into the start event's data naming the instance
    /// (`key = "order_id"` is `/order_id`).
    pub key: String,
    /// The whole saga's deadline, from its start: past it, what was done and
    /// the step in flight are undone. `None`: only the steps' own timeouts.
    pub timeout: Option<Duration>,
    /// Published when every step succeeded.
    pub completed: String,
    /// Published once a failed saga's undos are done.
    pub failed: String,
    /// How an undo awaiting its confirmation (`compensated`) is published
    /// again: attempt `n` is awaited for the step's timeout plus the policy's
    /// delay after attempt `n`; past `max_attempts` the instance is left stuck.
    /// `[defaults] retry` (or the built-in policy) unless the saga sets one.
    pub retry: RetryPolicy,
    /// The steps, in order; at least one.
    pub steps: Vec<SagaStep>,
    /// The saga's inputs (start, replies, undo confirmations) by the stream
    /// holding them: one durable consumer `saga-<name>` on each.
    pub consumers: Vec<StreamBinding>,
    /// Inputs applied at once in this process, per consumer (`[defaults] concurrency`).
    pub concurrency: usize,
    /// How long an instance is kept once it completed or failed (7 days
    /// unless set); a stuck one is kept until an operator ends it.
    pub retention: Duration,
}

/// `[[sagas.NAME.steps]]`: one step of a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaStep {
    /// Unique in its saga; the step's reply data is kept under it.
    pub name: String,
    /// The event type published to ask for the step.
    pub command: String,
    /// The reply types completing the step (at least one).
    pub success: Vec<String>,
    /// The reply types saying the step failed, so there is nothing to undo.
    pub failure: Vec<String>,
    /// The event type published to undo the step; `None`: nothing to undo.
    pub compensate: Option<String>,
    /// The reply confirming an undo; `None`: the undo is published once and
    /// not awaited.
    pub compensated: Option<String>,
    /// How long the reply (or an undo's confirmation) is awaited (30s unless set).
    /// For a delayed step, from the time its command is due.
    pub timeout: Duration,
    /// How long after the step is started its command is published (held in
    /// the schedules stream until then); the saga's `timeout` is extended by
    /// it. `None`: at once. An undo is never delayed.
    pub delay: Option<Duration>,
}

/// `[aggregates.NAME]`: entities whose events are their record, each
/// instance's on its own subjects of one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    pub name: String,
    /// The stream holding the events (declared in `[streams]`).
    pub stream: String,
    /// `subject = "order.{id}"`: the part before `{id}` and the part after
    /// it; an event of type `T` of instance `42` is stored on
    /// `<before>42<after>.T`.
    pub subject: SubjectTemplate,
    /// Where a command's data names the instance (a JSON pointer).
    pub id: String,
    /// Store a snapshot every this many events (in KV bucket
    /// `jetrun_snapshots_<name>`); `None`: never.
    pub snapshot_every: Option<u64>,
    /// How often a command is run again after another appended first.
    pub max_conflict_retries: u32,
}

/// A subject with one `{id}` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    pub before: String,
    pub after: String,
}

impl SubjectTemplate {
    /// The subject of instance `id` (`order.42`).
    pub fn instance(&self, id: &str) -> String {
        format!("{}{id}{}", self.before, self.after)
    }

    /// The filter matching every event of instance `id` (`order.42.>`).
    pub fn events_of(&self, id: &str) -> String {
        format!("{}.>", self.instance(id))
    }
}

/// What a function does with its input besides calling its handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Called with the event; what it emits is published.
    Plain,
    /// `aggregate = "NAME"`: a command handler, called with the command and
    /// the instance's history; appends what it returns.
    Aggregate(AggregateConfig),
    /// `projection = { bucket, key }`: called with the event (or request)
    /// and the state stored at its key; on a stream, stores what it returns.
    Projection(ProjectionConfig),
}

/// `projection = { bucket = "orders_by_user", key = "/user_id" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionConfig {
    /// The KV bucket holding the read model.
    pub bucket: String,
    /// A JSON pointer into the event's (or request's) data giving the key.
    pub key: String,
}

/// `[nats]`: how to reach the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    /// One or more server URLs (`url` as a string or a list; env `JETRUN_NATS_URL` overrides).
    pub urls: Vec<String>,
    pub auth: NatsAuth,
    pub tls: Option<TlsConfig>,
}

/// At most one way to authenticate.
#[derive(Debug, Clone, PartialEq)]
pub enum NatsAuth {
    None,
    /// A `.creds` file (JWT and nkey seed).
    Creds(PathBuf),
    /// A file holding an nkey seed.
    Nkey(PathBuf),
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

/// `[nats] tls = { ca, cert, key }`: `cert` and `key` come together.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

/// `[telemetry]`: where and how jetrun exports its spans (OTLP/HTTP,
/// protobuf).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The URL spans are posted to: `otlp_endpoint` with `/v1/traces`
    /// appended, unless it already ends so.
    pub traces_url: String,
    /// The `service.name` resource attribute (`jetrun` unless set).
    pub service_name: String,
    /// The share of traces started here that are recorded, from 0 to 1; a
    /// trace an input carries in keeps its sampled flag.
    pub sampling_ratio: f64,
    /// Headers sent with every export (an API key, say).
    pub headers: BTreeMap<String, String>,
}

/// `[streams.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub subjects: Vec<String>,
    pub storage: Storage,
    pub replicas: usize,
    /// `None`: kept forever (JetStream's default).
    pub max_age: Option<Duration>,
    /// `None`: JetStream's default (2 minutes).
    pub duplicate_window: Option<Duration>,
    pub retention: Retention,
    /// `manage`: whether jetrun updates the stream when its settings differ
    /// from these. `None`: only a stream jetrun created (its metadata says
    /// so); another is reported with the differences and left alone.
    pub manage: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Limits,
    Interest,
    WorkQueue,
}

/// `[functions.NAME]`, with `[defaults]` merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionConfig {
    /// The function's name, also its durable consumer's name.
    pub name: String,
    /// What runs it: the events of a stream, or requests.
    pub trigger: Trigger,
    pub role: Role,
    pub handler: Handler,
    /// Events (or requests) in flight for this function in this process.
    pub concurrency: usize,
    /// A handler running longer is cancelled: a retryable failure.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// `emits = [...]`: the subjects (wildcards allowed) the function may emit
    /// to; an emit outside them is a permanent failure. `None`: any subject.
    pub emits: Option<Vec<String>>,
    /// Events must carry JSON data; a body that does not parse is a permanent failure.
    pub json: bool,
    /// `key = ...` (with `on_dead_letter`, `missing_key`, `partitions`):
    /// events with one key handled one at a time, in stream order, across
    /// every replica. `None`: no ordering (stream functions only).
    pub key: Option<KeyConfig>,
    /// `batch = { size, wait }`: the handler gets up to `size` events per call.
    pub batch: Option<BatchConfig>,
    /// `rate = "N/s"` or `"N/m"`: handler calls started per period, across
    /// every replica of the function.
    pub rate: Option<Rate>,
    /// `schedule = ...` (with `time_zone`): the function runs on a schedule,
    /// each tick an event on `jetrun.schedule.<function>` in the schedules
    /// stream (its trigger is that stream's subject). `None`: no schedule.
    pub schedule: Option<ScheduleConfig>,
}

/// `schedule = "0 0 2 * * *"` and `time_zone = "Europe/Berlin"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// The expression as written: a 6-field cron (sec min hour day month
    /// weekday), `@every <duration>`, or `@yearly`, `@annually`,
    /// `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. What
    /// nats-server takes as `Nats-Schedule`.
    pub expression: String,
    /// The IANA time zone a cron expression is read in (`Nats-Schedule-Time-Zone`);
    /// `None`: UTC.
    pub time_zone: Option<String>,
}

/// How a keyed function reads its events' keys and what it does when one
/// fails for good or cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    /// `key`: where each event's key is read (a valid pointer, not `""`, or
    /// a token some subject of the function has).
    pub source: KeySource,
    /// `on_dead_letter`: what happens to the later events of a key whose
    /// event was dead-lettered.
    pub on_dead_letter: OnDeadLetter,
    /// `missing_key`: an event whose key cannot be read.
    pub missing_key: MissingKey,
    /// `partitions` (1 to 64, default 4): the keys are spread over this many
    /// pinned consumers, the most replicas that share the function's work.
    pub partitions: usize,
}

/// Where an event's key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `key = "/account_id"`: a JSON pointer (RFC 6901) into the event's data.
    Pointer(String),
    /// `key = "subject:N"`: the N-th token of the event's subject, 1-based.
    SubjectToken(usize),
}

/// `on_dead_letter = "continue" | "park"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDeadLetter {
    /// The next event of the key runs (the default).
    #[default]
    Continue,
    /// The later events of the key are dead-lettered as `parked` until the
    /// first is replayed.
    Park,
}

/// `missing_key = "dead_letter" | "unordered"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingKey {
    /// Dead-lettered as a permanent failure naming the key (the default).
    #[default]
    DeadLetter,
    /// Handled without ordering.
    Unordered,
}

/// `batch = { size = 100, wait = "50ms" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// The most events in one call: 1 to 10000, and at most the function's
    /// `max_ack_pending`.
    pub size: usize,
    /// How long a batch waits to fill before it goes out with fewer: not
    /// zero (default 50ms).
    pub wait: Duration,
}

/// `rate = "200/s"`: `calls` handler calls started per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// At least 1.
    pub calls: u32,
    /// One second (`/s`) or one minute (`/m`).
    pub per: Duration,
}

impl Rate {
    /// Calls per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.calls) / self.per.as_secs_f64()
    }
}

impl FunctionConfig {
    /// Where a stream function's events come from; `None` for a request function.
    pub fn binding(&self) -> Option<&StreamBinding> {
        match &self.trigger {
            Trigger::Stream(binding) => Some(binding),
            Trigger::Request { .. } => None,
        }
    }

    /// The subject a request function answers on; `None` for a stream function.
    pub fn request_subject(&self) -> Option<&str> {
        match &self.trigger {
            Trigger::Request { subject } => Some(subject),
            Trigger::Stream(_) => None,
        }
    }
}

/// What makes a function run.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// The events of a stream, through a durable consumer.
    Stream(StreamBinding),
    /// `request = "cmd.order.place"`: core NATS requests on this subject (an
    /// endpoint of the `jetrun` micro service); the reply is the function's
    /// result.
    Request { subject: String },
}

/// A durable consumer jetrun runs on a stream, and where what fails for good
/// goes: a stream function's, or one of a saga's.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamBinding {
    /// The durable consumer's name: the function's name, or `saga-<name>`.
    pub consumer: String,
    /// The subjects the consumer filters on (none overlapping another).
    pub subjects: Vec<String>,
    /// The stream the consumer lives on: the declared stream capturing every
    /// subject, or the one a function names with `stream`.
    pub stream: String,
    /// `false` when `stream` names a stream jetrun does not manage.
    pub managed: bool,
    /// The dead-letter subject (`dlq.<consumer>` unless set).
    pub dead_letter: String,
    /// JetStream ack wait of the consumer.
    pub ack_wait: Duration,
    /// JetStream max_ack_pending of the consumer.
    pub max_ack_pending: i64,
}

/// Exactly one of `builtin`, `exec`, `http`.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// A Rust function compiled in, by its registered name.
    Builtin(String),
    Exec(ExecConfig),
    Http(HttpConfig),
}

/// `exec = [...]` or `exec = { command, env, mode, workers, user, group }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// argv; a relative program path with a `/` is already joined to `dir`.
    pub command: Vec<String>,
    /// Added to the child's environment (which holds nothing else of the runner's
    /// but PATH, HOME, LANG and TZ, plus the JETRUN_* variables; with `user`,
    /// HOME is that user's home directory).
    pub env: BTreeMap<String, String>,
    pub mode: ExecMode,
    /// Long-lived processes in worker mode (1 in per-event mode).
    pub workers: usize,
    /// The working directory of the child: the config file's folder, so that
    /// relative paths in the arguments mean what they say in the file.
    pub dir: PathBuf,
    /// `user`: the account children run as (the runner must be root to
    /// switch); `None`: the runner's own.
    pub user: Option<Account>,
    /// `group`: the group children run as (only with `user`); `None`: the
    /// user's primary group.
    pub group: Option<Account>,
}

/// `user` or `group` of an exec table, as the file wrote it. Pure parsing
/// cannot look names up, so the runner resolves them against the machine's
/// account database when it builds the function, and reports an unknown one
/// with `path` and `line` like any other config error.
///
/// Two are equal when they name the same account, wherever the file says so:
/// a reload that only moves lines leaves the function running.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: AccountId,
    /// The key path, `functions.NAME.exec.user` or `...group`.
    pub path: String,
    /// The 1-based line of the value.
    pub line: usize,
}

impl PartialEq for Account {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Account {}

/// A user or group by name, or by numeric id (`65534` or `"65534"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountId {
    Name(String),
    Id(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecMode {
    /// One process per event (the default).
    PerEvent,
    /// `workers` long-lived processes speaking one JSON line each way.
    Worker,
}

/// `http = "url"` or `http = { url, headers, timeout }`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// Overrides the function's timeout for the HTTP call.
    pub timeout: Option<Duration>,
}
