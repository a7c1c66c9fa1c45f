//! The config file's JSON Schema (draft-07), for editors (Taplo, Even Better
//! TOML) and `config/jetrun.schema.json`. It describes the file as users write
//! it: the types below mirror the TOML, key for key, and are never built, only
//! described. The parser stays the authority: the schema checks keys, types,
//! enums, ranges and the shape of durations, names and subjects; what depends
//! on other tables (a stream capturing a function's subjects, overlaps,
//! names a saga derives) is for `jetrun check`.
//!
//! Every string may hold `${VAR}`, replaced from the environment before it
//! is checked, so a string with a shape (a duration, an enum, a subject)
//! also accepts any string containing `${`.

// The types are descriptions, read by `#[derive(JsonSchema)]` only.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value};

/// The schema, as committed in `config/jetrun.schema.json`: pretty JSON and
/// a final newline.
pub fn json_schema() -> String {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<File>();
    let mut value = schema.to_value();
    tidy(&mut value);
    let mut text = serde_json::to_string_pretty(&value).expect("a JSON value serializes");
    text.push('\n');
    text
}

/// `${` anywhere: the value is read from the environment, and checked then.
const VAR: &str = r"\$\{";

/// A pattern accepting what `rule` matches whole, or a `${VAR}` value.
macro_rules! or_var {
    ($rule:expr) => {
        concat!("^(?:", $rule, ")$|\\$\\{")
    };
}

/// humantime's units, longest first within each family.
macro_rules! duration_rule {
    () => {
        r"\s*(?:[0-9][0-9\s]*(?:\.\s*[0-9][0-9\s]*)?(?:nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+"
    };
}

/// One subject token: no whitespace, control character, `.`, `*` or `>`.
macro_rules! token {
    () => {
        r"[^\s\x00-\x1f\x7f-\x9f.*>]+"
    };
}

/// A string matching `pattern`.
fn pattern(pattern: &str) -> Schema {
    json_schema!({ "type": "string", "pattern": pattern })
}

/// The schema of one of a few strings, or a `${VAR}` value.
fn one_of(choices: &[&str]) -> Schema {
    json_schema!({
        "type": "string",
        "anyOf": [{ "enum": choices }, { "pattern": VAR }]
    })
}

/// A value type whose schema is written out: with its own definition (a
/// `$ref`) when it has an id, else inlined where used.
macro_rules! value_type {
    ($(#[$doc:meta])* $name:ident, $id:literal, $schema:expr) => {
        $(#[$doc])*
        struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                $id.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        struct $name;

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

value_type!(
    /// A humantime duration.
    Duration,
    "Duration",
    {
        let mut s = pattern(or_var!(duration_rule!()));
        s.insert(
            "description".into(),
            "A duration: 250ms, 30s, 5m, 7d, also 1h 30m (humantime).".into(),
        );
        s
    }
);

value_type!(
    /// A subject filter: tokens split by `.`, `*` a whole token, `>` the last.
    SubjectFilter,
    "SubjectFilter",
    {
        let mut s = pattern(or_var!(concat!(
            "(?:",
            token!(),
            r"|\*)(?:\.(?:",
            token!(),
            r"|\*))*(?:\.>)?|>"
        )));
        s.insert(
            "description".into(),
            "A NATS subject; wildcards allowed (* one token, > the rest).".into(),
        );
        s
    }
);

value_type!(
    /// A subject a message can be published to: no wildcards.
    Subject,
    "Subject",
    {
        let mut s = pattern(or_var!(concat!(token!(), r"(?:\.", token!(), ")*")));
        s.insert(
            "description".into(),
            "A NATS subject without wildcards (an event type).".into(),
        );
        s
    }
);

/// An event type, or a non-empty list of them.
#[derive(JsonSchema)]
#[schemars(untagged)]
enum Subjects {
    One(Subject),
    Many(#[schemars(length(min = 1))] Vec<Subject>),
}

/// A function, aggregate, saga, step or bucket name: letters, digits, `-`, `_`.
macro_rules! name_rule {
    () => {
        "[A-Za-z0-9_-]+"
    };
}

/// A stream name: no whitespace, control character, `.`, `*`, `>`, `/`, `\`.
macro_rules! stream_name_rule {
    () => {
        r"[^\s\x00-\x1f\x7f-\x9f.*>/\\]+"
    };
}

/// A name as a table key (no `${VAR}` there).
const NAME: &str = concat!("^", name_rule!(), "$");
/// A stream name as a table key.
const STREAM_NAME: &str = concat!("^", stream_name_rule!(), "$");

value_type!(
    /// A string that is not empty (a path, a name, a field name or JSON pointer).
    NonEmpty,
    json_schema!({ "type": "string", "minLength": 1 })
);

value_type!(
    /// `[metrics] listen`.
    Listen,
    pattern(or_var!(
        r"(?:[0-9.]+|\[[0-9A-Fa-f:.]+(?:%[^\]]+)?\]|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt]|):[0-9]+"
    ))
);

value_type!(
    /// `storage`.
    Storage,
    one_of(&["file", "memory"])
);

value_type!(
    /// A stream's `retention`.
    RetentionPolicy,
    one_of(&["limits", "interest", "workqueue"])
);

value_type!(
    /// An exec function's `mode`.
    Mode,
    one_of(&["per-event", "worker"])
);

value_type!(
    /// `user` or `group`: a name, or a numeric id as an integer or a string.
    Account,
    json_schema!({
        "anyOf": [
            { "type": "integer", "minimum": 0, "maximum": 4294967294u32 },
            { "type": "string", "pattern": "^[^\\s:\\u0000]+$" }
        ]
    })
);

/// A jetrun config file (jetrun.toml).
#[derive(JsonSchema)]
#[schemars(title = "jetrun configuration", deny_unknown_fields)]
// Without [dead_letters] stream, the dead-letter stream is DLQ: no
// [streams.*] entry may take that name.
#[schemars(extend(
    "if" = { "not": {
        "required": ["dead_letters"],
        "properties": { "dead_letters": { "required": ["stream"] } }
    } },
    "then" = { "properties": { "streams": { "propertyNames": { "not": { "const": "DLQ" } } } } }
))]
struct File {
    /// Where NATS is and how jetrun authenticates.
    nats: Option<Nats>,
    /// Where Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz) are served.
    metrics: Option<Metrics>,
    /// OpenTelemetry traces over OTLP/HTTP: a span per handled event, with children for the handler call, each emit and the dead-letter write. Absent: no traces.
    telemetry: Option<Telemetry>,
    /// What every function gets unless it says otherwise: concurrency, timeout, retry, ack_wait, max_ack_pending.
    defaults: Option<Defaults>,
    /// Streams jetrun creates when missing and updates when they differ, by name. Every function's subjects must be held by one of them; the dead-letter stream (DLQ, holding dlq.>, unless [dead_letters] says otherwise) is jetrun's own.
    #[schemars(extend("propertyNames" = { "pattern": STREAM_NAME }))]
    streams: Option<BTreeMap<String, Stream>>,
    /// The functions, by name: the name is also the durable JetStream consumer's (letters, digits, -, _). At least one.
    #[schemars(extend("propertyNames" = { "pattern": NAME }, "minProperties" = 1))]
    functions: BTreeMap<String, Function>,
    /// Event-sourced aggregates, by name (letters, digits, -, _): a function with aggregate = NAME is the command handler.
    #[schemars(extend("propertyNames" = { "pattern": NAME }))]
    aggregates: Option<BTreeMap<String, Aggregate>>,
    /// Declarative sagas, by name (letters, digits, -, _).
    #[schemars(extend("propertyNames" = { "pattern": NAME }))]
    sagas: Option<BTreeMap<String, Saga>>,
    /// Where dead letters are kept: the stream and the prefix of its subjects.
    dead_letters: Option<DeadLettersTable>,
    /// The NATS micro service request functions are endpoints of.
    service: Option<Service>,
    /// Where scheduled functions' schedules and ticks are kept: the stream jetrun makes (only when a function has a schedule).
    schedules: Option<Schedules>,
    /// How long the drain on SIGTERM/SIGINT may take before what is left is NAKed.
    #[schemars(extend("default" = "30s"))]
    shutdown_timeout: Option<Duration>,
}

/// `[dead_letters]`: two teams sharing a NATS account name theirs apart.
#[derive(JsonSchema)]
#[schemars(rename = "DeadLetters", deny_unknown_fields)]
struct DeadLettersTable {
    /// The stream jetrun creates for dead letters; no [streams.*] entry may take the name.
    #[schemars(extend("default" = "DLQ", "pattern" = STREAM_NAME))]
    stream: Option<String>,
    /// The stream holds PREFIX.>; a function dead-letters to PREFIX.FUNCTION unless it names its own dead_letter.
    #[schemars(extend("default" = "dlq", "pattern" = "^[^\\s*>]+$"))]
    prefix: Option<String>,
}

/// `[service]`: the micro service of request functions (also their queue group).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Service {
    /// Its name: letters, digits, - and _.
    #[schemars(extend("default" = "jetrun", "pattern" = "^[A-Za-z0-9_-]+$"))]
    name: Option<String>,
}

/// `[schedules]`: two teams sharing a NATS account name theirs apart.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Schedules {
    /// The stream jetrun makes for scheduled functions (holding jetrun.schedule.> and jetrun.schedules.>, with message schedules allowed); no [streams.*] entry may take the name.
    #[schemars(extend("default" = "JETRUN_SCHEDULES", "pattern" = STREAM_NAME))]
    stream: Option<String>,
}

/// `[nats]`: servers, authentication (at most one of creds, nkey, user + password, token), TLS.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[schemars(extend("dependencies" = {
    "creds": { "not": { "anyOf": [
        { "required": ["nkey"] }, { "required": ["user"] },
        { "required": ["password"] }, { "required": ["token"] }
    ] } },
    "nkey": { "not": { "anyOf": [
        { "required": ["creds"] }, { "required": ["user"] },
        { "required": ["password"] }, { "required": ["token"] }
    ] } },
    "token": { "not": { "anyOf": [
        { "required": ["creds"] }, { "required": ["nkey"] },
        { "required": ["user"] }, { "required": ["password"] }
    ] } },
    "user": ["password"],
    "password": ["user"]
}))]
struct Nats {
    /// A server URL or a non-empty list of them (a cluster). The environment variable JETRUN_NATS_URL (comma-separated) overrides it.
    #[schemars(extend("default" = "nats://127.0.0.1:4222"))]
    url: Option<Urls>,
    /// A .creds file (JWT and nkey seed), relative to the config file's folder.
    creds: Option<NonEmpty>,
    /// An nkey seed file, relative to the config file's folder.
    nkey: Option<NonEmpty>,
    /// User name, with password.
    user: Option<NonEmpty>,
    /// Password, with user.
    password: Option<String>,
    /// An authentication token.
    token: Option<NonEmpty>,
    /// TLS files, relative to the config file's folder; cert and key together.
    tls: Option<Tls>,
}

/// A server URL or a non-empty list of them.
#[derive(JsonSchema)]
#[schemars(untagged)]
enum Urls {
    One(#[schemars(length(min = 1))] String),
    Many(#[schemars(length(min = 1))] Vec<NonEmpty>),
}

/// `tls = { ca, cert, key }`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[schemars(extend("dependencies" = { "cert": ["key"], "key": ["cert"] }))]
struct Tls {
    /// The CA certificate file.
    ca: Option<NonEmpty>,
    /// The client certificate file (with key).
    cert: Option<NonEmpty>,
    /// The client key file (with cert).
    key: Option<NonEmpty>,
}

/// `[metrics]`: where /metrics, /healthz and /readyz are served.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Metrics {
    /// The address to serve on: an IP address and port (127.0.0.1:9600, [::]:9600), localhost:PORT (127.0.0.1), or :PORT for every IPv4 interface (0.0.0.0:PORT). No other host name is resolved.
    #[schemars(extend("default" = "127.0.0.1:9600"))]
    listen: Option<Listen>,
}

value_type!(
    /// `[telemetry] otlp_endpoint`.
    OtlpEndpoint,
    pattern(or_var!(r"https?://[^/?#\s]+[^\s]*"))
);

/// `[telemetry]`: where jetrun sends its spans (OTLP/HTTP, protobuf).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Telemetry {
    /// The OTLP/HTTP receiver, like http://127.0.0.1:4318 (an OpenTelemetry Collector); spans go to its /v1/traces unless the URL ends with it.
    otlp_endpoint: OtlpEndpoint,
    /// The service.name of jetrun's spans.
    #[schemars(extend("default" = "jetrun"))]
    service_name: Option<NonEmpty>,
    /// The share of traces started here that are recorded (0 to 1); an input's trace keeps its sampled flag.
    #[schemars(range(min = 0.0, max = 1.0), extend("default" = 1.0))]
    sampling_ratio: Option<f64>,
    /// Headers sent with every export (an API key, say).
    #[schemars(extend("propertyNames" = { "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" }))]
    headers: Option<BTreeMap<String, String>>,
}

/// `[defaults]`: what every function inherits.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Defaults {
    /// Handler calls running at once per function per runner (at least 1).
    #[schemars(range(min = 1), extend("default" = 16))]
    concurrency: Option<u64>,
    /// Non-zero: a slower handler call is cancelled, and counts as a failure.
    #[schemars(extend("default" = "30s"))]
    timeout: Option<Duration>,
    /// How failed events are retried; a function's retry is merged over it key by key.
    retry: Option<Retry>,
    /// Non-zero: how long JetStream waits for an ack before redelivering.
    #[schemars(extend("default" = "30s"))]
    ack_wait: Option<Duration>,
    /// Events delivered and not yet acked, per function; at least concurrency.
    #[schemars(range(min = 1), extend("default" = 10000))]
    max_ack_pending: Option<u64>,
}

/// `retry = { max_attempts, initial_delay, multiplier, max_delay, jitter }`: the delay before attempt n+1 is min(initial_delay * multiplier^(n-1), max_delay), moved by up to ± jitter of itself.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Retry {
    /// Attempts in all, the first included; past the last a failed event is dead-lettered.
    #[schemars(range(min = 1, max = 4294967295u32), extend("default" = 5))]
    max_attempts: Option<u64>,
    /// The delay after the first failure.
    #[schemars(extend("default" = "1s"))]
    initial_delay: Option<Duration>,
    /// What each delay is multiplied by (at least 1.0).
    #[schemars(range(min = 1.0), extend("default" = 2.0))]
    multiplier: Option<f64>,
    /// The longest delay (not shorter than initial_delay).
    #[schemars(extend("default" = "5m"))]
    max_delay: Option<Duration>,
    /// The share of each delay it is moved by at random, from 0.0 to 1.0.
    #[schemars(range(min = 0.0, max = 1.0), extend("default" = 0.1))]
    jitter: Option<f64>,
}

/// `[streams.NAME]`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Stream {
    /// The subjects the stream holds: a non-empty list, none overlapping another stream's nor dlq.>.
    #[schemars(length(min = 1))]
    subjects: Vec<SubjectFilter>,
    /// Where the stream keeps its messages.
    #[schemars(extend("default" = "file"))]
    storage: Option<Storage>,
    /// Copies of each message, on that many servers: 1 to 5.
    #[schemars(range(min = 1, max = 5), extend("default" = 1))]
    replicas: Option<u64>,
    /// Non-zero: messages older than this are removed (JetStream's default: kept).
    max_age: Option<Duration>,
    /// Non-zero, no longer than max_age: publishes with the same Nats-Msg-Id within it are stored once (JetStream's default otherwise).
    duplicate_window: Option<Duration>,
    /// When messages are removed: by the limits, once every consumer acked them (interest), or once one did (workqueue).
    #[schemars(extend("default" = "limits"))]
    retention: Option<RetentionPolicy>,
    /// Whether jetrun updates the stream when its settings differ from these. Unset: only a stream jetrun created; any other is reported with the differences and left alone. false: never created nor updated by jetrun.
    manage: Option<bool>,
}

/// `[functions.NAME]`: exactly one handler (builtin, exec or http), and subjects (it consumes a stream), request (it answers requests) or schedule (it runs on a schedule).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[schemars(extend("allOf" = [
    { "oneOf": [
        { "required": ["builtin"] }, { "required": ["exec"] }, { "required": ["http"] }
    ] },
    { "oneOf": [
        { "required": ["subjects"] }, { "required": ["request"] }, { "required": ["schedule"] }
    ] },
    { "not": { "required": ["schedule", "stream"] } },
    { "not": { "required": ["aggregate", "projection"] } },
    { "if": { "required": ["request"] }, "then": { "not": { "anyOf": [
        { "required": ["stream"] }, { "required": ["dead_letter"] }, { "required": ["emits"] },
        { "required": ["key"] }, { "required": ["on_dead_letter"] },
        { "required": ["missing_key"] }, { "required": ["partitions"] },
        { "required": ["batch"] }, { "required": ["rate"] }
    ] } } },
    { "not": { "required": ["batch", "aggregate"] } },
    { "not": { "required": ["batch", "projection"] } }
]))]
#[schemars(extend("dependencies" = {
    "on_dead_letter": ["key"], "missing_key": ["key"], "partitions": ["key"],
    "time_zone": ["schedule"]
}))]
struct Function {
    /// A built-in function compiled into jetrun, by its registered name.
    builtin: Option<NonEmpty>,
    /// A program: an argv list (one process per event, the event as JSON on stdin), or a table with command.
    exec: Option<Exec>,
    /// An endpoint events are POSTed to (CloudEvents over HTTP): an http(s):// URL, or a table with url.
    http: Option<Http>,
    /// The subject filters the function runs for: a non-empty list, none overlapping another, all captured by one stream. Required unless request.
    #[schemars(length(min = 1))]
    subjects: Option<Vec<SubjectFilter>>,
    /// The subject (wildcards allowed) the function answers requests on, instead of subjects; no stream, dead_letter or emits then.
    request: Option<SubjectFilter>,
    /// The name of an [aggregates.NAME]: the function is its command handler.
    #[schemars(regex(pattern = or_var!(name_rule!())))]
    aggregate: Option<String>,
    /// A read model in a KV bucket: on a stream function it updates it (concurrency and max_ack_pending then default to 1: events in stream order), on a request function it reads it (a query).
    projection: Option<Projection>,
    /// A stream jetrun does not declare, to consume from (default: the declared stream capturing the subjects).
    #[schemars(regex(pattern = or_var!(stream_name_rule!())))]
    stream: Option<String>,
    /// Handler calls running at once per runner (at least 1; events pulled ahead hold no slot). A projection on a stream defaults to 1, and its max_ack_pending to its concurrency.
    #[schemars(range(min = 1), extend("default" = 16))]
    concurrency: Option<u64>,
    /// Non-zero: a slower handler call is cancelled, and counts as a failure.
    #[schemars(extend("default" = "30s"))]
    timeout: Option<Duration>,
    /// How failed events are retried, merged key by key over [defaults] retry.
    retry: Option<Retry>,
    /// Non-zero: how long JetStream waits for an ack before redelivering.
    #[schemars(extend("default" = "30s"))]
    ack_wait: Option<Duration>,
    /// Events delivered and not yet acked; at least concurrency.
    #[schemars(range(min = 1), extend("default" = 10000))]
    max_ack_pending: Option<u64>,
    /// Where events that failed for good go: a subject without wildcards, captured by the dead-letter stream (dlq.>, or [dead_letters] prefix then .>) or a declared stream (default: dlq.NAME, or PREFIX.NAME).
    dead_letter: Option<Subject>,
    /// The subjects (wildcards allowed) the function may emit to; an emit outside is a permanent failure (default: any subject).
    #[schemars(length(min = 1))]
    emits: Option<Vec<SubjectFilter>>,
    /// Whether the event's data must be JSON: an event whose data is not goes straight to the dead letters.
    #[schemars(extend("default" = false))]
    json: Option<bool>,
    /// The function runs on a schedule instead of subjects, each tick an event on jetrun.schedule.NAME: a 6-field cron (second minute hour day month weekday, like "0 0 2 * * *"), "@every DURATION" (Go syntax, at least 1s, like "@every 1m30s"), or @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly. Needs nats-server 2.14 or later.
    schedule: Option<ScheduleText>,
    /// With a cron schedule: the IANA time zone it is read in, like "Europe/Berlin" (default: UTC).
    #[schemars(regex(pattern = or_var!(r"[A-Za-z][A-Za-z0-9_+/-]*")))]
    time_zone: Option<String>,
    /// Events with one key are handled one at a time, in stream order, across every replica (different keys in parallel): a JSON pointer into the event's data, like "/account_id", or "subject:N", the N-th subject token (from 1). Stream functions only.
    key: Option<Key>,
    /// With key: what happens to the later events of a key whose event was dead-lettered: handled as usual (continue), or dead-lettered as parked until the first is replayed (park).
    #[schemars(extend("default" = "continue"))]
    on_dead_letter: Option<OnDeadLetterChoice>,
    /// With key: an event whose key cannot be read is dead-lettered (dead_letter) or handled without ordering (unordered).
    #[schemars(extend("default" = "dead_letter"))]
    missing_key: Option<MissingKeyChoice>,
    /// With key: the pinned consumers the keys are spread over, the most runner replicas that share the function's work (1 to 64).
    #[schemars(range(min = 1, max = 64), extend("default" = 4))]
    partitions: Option<u64>,
    /// The handler gets up to size events per call, or fewer after wait. Stream functions only, not an aggregate's command handler nor a projection; max_ack_pending at least size.
    batch: Option<Batch>,
    /// Handler calls started per second ("N/s") or per minute ("N/m"), N at least 1, across every replica of the function. Stream functions only.
    rate: Option<RateText>,
}

value_type!(
    /// `key`: a JSON pointer (not "") or `subject:N`.
    Key,
    pattern(or_var!(r"(?:/(?:[^~/]|~[01])*)+|subject:0*[1-9][0-9]*"))
);

value_type!(
    /// `on_dead_letter`.
    OnDeadLetterChoice,
    one_of(&["continue", "park"])
);

value_type!(
    /// `missing_key`.
    MissingKeyChoice,
    one_of(&["dead_letter", "unordered"])
);

value_type!(
    /// `schedule`: six cron fields, `@every` and a duration, or a named schedule.
    ScheduleText,
    pattern(or_var!(
        r"\s*[^\s@]+(?:\s+[^\s@]+){5}\s*|@every [0-9.]+[a-zµμ]+(?:[0-9.]+[a-zµμ]+)*|@(?:yearly|annually|monthly|weekly|daily|midnight|hourly)"
    ))
);

value_type!(
    /// `rate`.
    RateText,
    pattern(or_var!("0*[1-9][0-9]*/[sm]"))
);

/// `batch = { size, wait }`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Batch {
    /// The most events in one handler call: 1 to 10000.
    #[schemars(range(min = 1, max = 10000))]
    size: u64,
    /// Non-zero: how long a batch waits to fill before it goes out with fewer events.
    #[schemars(extend("default" = "50ms"))]
    wait: Option<Duration>,
}

/// `exec = [argv...]` or `exec = { command, env, mode, workers, user, group }`.
#[derive(JsonSchema)]
#[schemars(untagged)]
enum Exec {
    Argv(Argv),
    Table(ExecTable),
}

/// An argv list: the program (a relative path with a / is relative to the config file's folder), then its arguments.
#[derive(JsonSchema)]
#[schemars(transparent)]
struct Argv(#[schemars(length(min = 1))] Vec<String>);

/// `exec = { command, env, mode, workers, user, group }`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[schemars(extend("dependencies" = {
    "workers": {
        "properties": { "mode": { "anyOf": [{ "const": "worker" }, { "pattern": VAR }] } },
        "required": ["mode"]
    },
    "group": ["user"]
}))]
struct ExecTable {
    /// The argv list: the program, then its arguments.
    command: Argv,
    /// Variables added to the child's otherwise minimal environment.
    #[schemars(extend("propertyNames" = { "pattern": "^[^=\\u0000]+$" }))]
    env: Option<BTreeMap<String, String>>,
    /// per-event: one process per event; worker: long-lived processes, one JSON line each way.
    #[schemars(extend("default" = "per-event"))]
    mode: Option<Mode>,
    /// Worker processes (mode = "worker" only).
    #[schemars(range(min = 1), extend("default" = 1))]
    workers: Option<u64>,
    /// The user children run as: a name or a numeric id (needs jetrun running as root to switch).
    user: Option<Account>,
    /// The group children run as (needs user): a name or a numeric id; default: the user's primary group.
    group: Option<Account>,
}

/// `http = "url"` or `http = { url, headers, timeout }`.
#[derive(JsonSchema)]
#[schemars(untagged)]
enum Http {
    Url(HttpUrl),
    Table(HttpTable),
}

/// An http:// or https:// URL.
#[derive(JsonSchema)]
#[schemars(transparent)]
struct HttpUrl(
    #[schemars(regex(pattern = or_var!(r"https?://\S+")))]
    String,
);

/// `http = { url, headers, timeout }`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct HttpTable {
    /// The endpoint events are POSTed to.
    url: HttpUrl,
    /// Headers sent with every request.
    headers: Option<BTreeMap<String, String>>,
    /// Non-zero, no longer than the function's timeout: the HTTP call's own limit.
    timeout: Option<Duration>,
}

/// `projection = { bucket, key }`.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Projection {
    /// The KV bucket of the read model (letters, digits, -, _; not a name jetrun keeps, like jetrun_...).
    #[schemars(regex(pattern = or_var!(name_rule!())))]
    bucket: String,
    /// A field name or a JSON pointer into the event's data giving the key, like "/user_id".
    key: NonEmpty,
}

/// `[aggregates.NAME]`: an event-sourced entity.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Aggregate {
    /// A declared stream holding the aggregate's events.
    #[schemars(regex(pattern = or_var!(stream_name_rule!())))]
    stream: String,
    /// A subject with one {id} token, like "order.{id}"; the stream must capture order.*.>.
    #[schemars(regex(pattern = or_var!(concat!(
        "(?:[^\\s.*>]+\\.)*\\{id\\}(?:\\.[^\\s.*>]+)*"
    ))))]
    subject: String,
    /// A field name or JSON pointer into a command's data naming the instance.
    id: NonEmpty,
    /// A snapshot in KV bucket jetrun_snapshots_NAME every that many events (default: none).
    #[schemars(range(min = 1))]
    snapshot_every: Option<u64>,
    /// How often a command whose append lost a race is tried again.
    #[schemars(range(min = 0, max = 4294967295u32), extend("default" = 5))]
    max_conflict_retries: Option<u64>,
}

/// `[sagas.NAME]`: a process over events, one instance per key.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct Saga {
    /// The event type starting one instance.
    start: Subject,
    /// A field name or JSON pointer into the start event's data naming the instance (a string or a number there).
    key: NonEmpty,
    /// Non-zero: the whole saga's deadline, from its start (default: only the steps' timeouts).
    timeout: Option<Duration>,
    /// The event type published when every step succeeded.
    completed: Subject,
    /// The event type published once a failed saga's undos are done.
    failed: Subject,
    /// As a function's retry, merged over [defaults]: how an undo awaiting its confirmation is published again, and how an input that cannot be applied yet is retried before it is dead-lettered to dlq.saga-NAME.
    retry: Option<Retry>,
    /// Non-zero: how long an instance that completed or failed is kept in its bucket.
    #[schemars(extend("default" = "7d"))]
    retention: Option<Duration>,
    /// The steps, in order: [[sagas.NAME.steps]], one at least.
    #[schemars(length(min = 1))]
    steps: Vec<Step>,
}

/// `[[sagas.NAME.steps]]`: one step of a saga.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[schemars(extend("dependencies" = { "compensated": ["compensate"] }))]
struct Step {
    /// Letters, digits, -, _; unique in the saga. The step's reply data is kept under it.
    #[schemars(regex(pattern = or_var!(name_rule!())))]
    name: String,
    /// The event type published to ask for the step.
    command: Subject,
    /// The event type, or a non-empty list of them, completing the step.
    success: Subjects,
    /// The event type, or a non-empty list of them, saying the step failed (nothing of it to undo).
    failure: Option<Subjects>,
    /// The event type published to undo the step (default: nothing to undo).
    compensate: Option<Subject>,
    /// The event type confirming the undo, which is then awaited (needs compensate; default: the undo is published once).
    compensated: Option<Subject>,
    /// Non-zero: how long the reply (or the undo's confirmation) is awaited; for a delayed step, from the time its command is due.
    #[schemars(extend("default" = "30s"))]
    timeout: Option<Duration>,
    /// Non-zero: the step's command is published this much after the step starts (held in the schedules stream; nats-server 2.12), and the saga's timeout is extended by it (default: at once). Undos are never delayed.
    delay: Option<Duration>,
}

/// The generated schema, tidied: no `null` (TOML has none), no `format`
/// (Rust's integer widths), and doc comments' line breaks joined.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(map) => {
            strip_null(map);
            if map.get("format").is_some_and(Value::is_string) {
                map.remove("format");
            }
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = text.replace('\n', " ");
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// schemars writes an optional key as `T or null`; TOML has no null, so the
/// key's schema is `T`.
fn strip_null(map: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            map.insert("type".into(), only);
        }
    }
    let Some(Value::Array(choices)) = map.get_mut("anyOf") else {
        return;
    };
    choices.retain(|c| c.get("type").and_then(Value::as_str) != Some("null"));
    if choices.len() != 1 {
        return;
    }
    let Some(Value::Object(only)) = map
        .remove("anyOf")
        .and_then(|mut c| c.get_mut(0).map(Value::take))
    else {
        return;
    };
    if only.contains_key("$ref") || only.keys().any(|k| map.contains_key(k)) {
        // draft-07 ignores the siblings of a `$ref`.
        match map.get_mut("allOf") {
            Some(Value::Array(all)) => all.push(Value::Object(only)),
            _ => {
                map.insert("allOf".into(), Value::Array(vec![Value::Object(only)]));
            }
        }
    } else {
        map.extend(only);
    }
}
