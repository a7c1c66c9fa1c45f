//! jetrun's configuration: the TOML schema, parsing and validation. Pure: text
//! and an environment map in, a validated [`Config`] or every error out; no I/O.

mod error;
mod model;
pub mod name;
mod parse;
mod retry;
pub mod schedule;
mod schema;
mod subject;
mod vars;

use std::collections::BTreeMap;
use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use model::{
    Account, AccountId, AggregateConfig, BatchConfig, Config, DeadLetters, ExecConfig, ExecMode,
    FunctionConfig, Handler, HttpConfig, KeyConfig, KeySource, MetricsConfig, MissingKey, NatsAuth,
    NatsConfig, OnDeadLetter, ProjectionConfig, Rate, Retention, Role, SagaConfig, SagaStep,
    ScheduleConfig, ServiceConfig, Storage, StreamBinding, StreamConfig, SubjectTemplate,
    TelemetryConfig, TlsConfig, Trigger, DEFAULT_NATS_URL, DLQ_STREAM, DLQ_SUBJECTS,
};
pub use retry::{InvalidRetry, RetryPolicy};
pub use schema::json_schema;

/// Whether `subject` (no wildcards) is matched by the subject filter
/// `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    subject::captures(pattern, subject)
}

/// Whether `subject` is one a message can be published to: valid tokens, no
/// wildcards.
pub fn is_publish_subject(subject: &str) -> bool {
    subject::check(subject, false).is_ok()
}

/// A subject the filter `pattern` matches, for examples: each `*` is `1`,
/// a `>` is `example` (`order.*.placed` gives `order.1.placed`).
pub fn subject_example(pattern: &str) -> String {
    pattern
        .split('.')
        .map(|token| match token {
            "*" => "1",
            ">" => "example",
            token => token,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Parses and validates a config file.
///
/// - `text`: the file's contents.
/// - `env`: the process environment, for `${VAR}` in string values and the
///   `JETRUN_NATS_URL` override (comma-separated server URLs).
/// - `base_dir`: the config file's folder; relative paths (creds, nkey, TLS
///   files, an exec program path containing a `/`) are joined to it, and exec
///   functions run in it.
/// - `builtins`: the names of the registered built-in functions.
///
/// Returns every error of the file, each with its key path and line, sorted
/// by line; a TOML syntax error is reported alone.
pub fn parse(
    text: &str,
    env: &BTreeMap<String, String>,
    base_dir: &Path,
    builtins: &[&str],
) -> Result<Config, ConfigErrors> {
    parse::parse(text, env, base_dir, builtins)
}
