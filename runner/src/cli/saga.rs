//! `jetrun saga list|show NAME`: a saga's instances, read from the KV bucket
//! the saga runtime keeps them in (`jetrun_saga_NAME`, one key per instance,
//! `corr_*` keys being its correlation index): one row per instance, or one
//! instance's timeline, state and data. The rows and the timeline are pure
//! functions of the stored instances; NATS is only in the `async` ones.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv::{self, EntryErrorKind, Operation};
use async_nats::jetstream::{self, ErrorCode};
use clap::{Subcommand, ValueEnum};
use futures::StreamExt as _;
use jetrun_config::SagaConfig;
use serde::Deserialize;
use serde_json::{json, Value};

use super::args::ConfigArg;
use super::output::{count, rfc3339, table};
use super::session::{self, Stopped};
use crate::runtime::config_file::Loaded;
use crate::saga::machine::{Cause, Instance, Millis, State};

/// `jetrun saga --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun saga list fulfil-order -c config/examples/ecommerce-saga.toml
  jetrun saga list fulfil-order --state stuck -c config/examples/ecommerce-saga.toml
  jetrun saga show fulfil-order o-1001 -c config/examples/ecommerce-saga.toml

Instances are read from KV bucket jetrun_saga_<saga>, where `jetrun run`
keeps them.";

const LIST_EXAMPLES: &str = "\
Examples:
  jetrun saga list fulfil-order -c config/examples/ecommerce-saga.toml
  jetrun saga list fulfil-order --state stuck -c config/examples/ecommerce-saga.toml
  jetrun saga list fulfil-order --json -c config/examples/ecommerce-saga.toml \\
    | jq -r '.[] | select(.state == \"running\") | .key'

Exit status 2 when the config declares no such saga, 1 when an instance
cannot be read (named on stderr; the others are listed), else 0.";

const SHOW_EXAMPLES: &str = "\
Examples:
  jetrun saga show fulfil-order o-1001 -c config/examples/ecommerce-saga.toml
  jetrun saga show fulfil-order o-1001 --json -c config/examples/ecommerce-saga.toml | jq .transitions

Exit status 1 when the saga has no such instance, 2 when the config declares
no such saga, else 0.";

/// How long a read of the bucket may wait for its next entry.
const READ_WAIT: Duration = Duration::from_secs(10);

/// The arguments of `jetrun saga`.
#[derive(clap::Args)]
pub(crate) struct SagaArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// List a saga's instances, oldest first.
    ///
    /// One row per instance: its key, state, current step, when it started
    /// and when it last changed (RFC 3339).
    #[command(after_help = LIST_EXAMPLES, visible_alias = "ls")]
    List(ListArgs),
    /// Show one instance: its timeline, then its state and data.
    ///
    /// One transition per line: when, what (command, reply, timeout,
    /// compensate, compensated, completed, failed), the step, and the type
    /// and id of the event published or received.
    #[command(after_help = SHOW_EXAMPLES, visible_alias = "info")]
    Show(ShowArgs),
}

/// The config file and one of its sagas.
#[derive(clap::Args)]
struct SagaArg {
    #[command(flatten)]
    config: ConfigArg,
    /// The saga, as named in `[sagas.*]`.
    saga: String,
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    target: SagaArg,
    /// Only the instances in this state.
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// Print a JSON array of the rows instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    target: SagaArg,
    /// The instance's key (the first column of `list`).
    key: String,
    /// Print the instance as stored (JSON) instead.
    #[arg(long)]
    json: bool,
}

/// A state to list, as `--state` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StateArg {
    Running,
    Compensating,
    Completed,
    Failed,
    Stuck,
}

impl StateArg {
    fn state(self) -> State {
        match self {
            StateArg::Running => State::Running,
            StateArg::Compensating => State::Compensating,
            StateArg::Completed => State::Completed,
            StateArg::Failed => State::Failed,
            StateArg::Stuck => State::Stuck,
        }
    }
}

/// Runs `jetrun saga VERB`.
pub(crate) async fn saga(args: SagaArgs) -> ExitCode {
    let target = match &args.verb {
        Verb::List(a) => &a.target,
        Verb::Show(a) => &a.target,
    };
    // Without a config file: the saga's bucket by its name, its steps shown
    // by number (their names are in the config).
    let loaded = match session::load_if_any(&target.config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let unconfigured = unconfigured(&target.saga);
    session::exit(
        async {
            let saga = match &loaded {
                Some(loaded) => loaded.config.sagas.get(&target.saga).ok_or_else(|| {
                    Stopped::Usage(unknown_saga(&target.saga, &target.config.path(), loaded))
                })?,
                None => &unconfigured,
            };
            let js = session::connect_to(loaded.as_ref().map(|l| &l.config.nats)).await?;
            Ok(match &args.verb {
                Verb::List(a) => list(&js, saga, a.state, a.json).await?,
                Verb::Show(a) => show(&js, saga, &a.key, a.json, &target.config.path()).await?,
            })
        }
        .await,
    )
}

/// Saga `name` as known without its config: its name (which names its
/// bucket), no steps.
fn unconfigured(name: &str) -> SagaConfig {
    SagaConfig {
        name: name.to_string(),
        start: String::new(),
        key: String::new(),
        timeout: None,
        completed: String::new(),
        failed: String::new(),
        retry: jetrun_config::RetryPolicy::default(),
        steps: Vec::new(),
        consumers: Vec::new(),
        concurrency: 1,
        retention: Duration::ZERO,
    }
}

fn unknown_saga(name: &str, path: &Path, loaded: &Loaded) -> String {
    let known: Vec<&str> = loaded.config.sagas.keys().map(String::as_str).collect();
    if known.is_empty() {
        format!(
            "{} declares no saga {name:?}; it declares none ([sagas.NAME])",
            path.display()
        )
    } else {
        format!(
            "{} declares no saga {name:?}; its sagas: {}",
            path.display(),
            known.join(", ")
        )
    }
}

// ---------------------------------------------------------------- reading

/// A saga's bucket and how many messages its stream holds.
struct Bucket {
    name: String,
    store: kv::Store,
    messages: u64,
}

/// The saga's bucket, or `None` when it does not exist (no `jetrun run` has
/// started the saga yet).
async fn open(js: &jetstream::Context, saga: &SagaConfig) -> anyhow::Result<Option<Bucket>> {
    let name = jetrun_config::name::saga_bucket(&saga.name);
    let stream = format!("KV_{name}");
    let messages = match js.get_stream(&stream).await {
        Ok(stream) => stream.cached_info().state.messages,
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                return Ok(None)
            }
            _ => return Err(err).with_context(|| format!("cannot read KV bucket {name}")),
        },
    };
    let store = js
        .get_key_value(&name)
        .await
        .with_context(|| format!("cannot open KV bucket {name}"))?;
    Ok(Some(Bucket {
        name,
        store,
        messages,
    }))
}

/// The last value of every instance key (index entries left out), read in
/// one pass over the bucket, in key order.
async fn scan(bucket: &Bucket) -> anyhow::Result<Vec<(String, bytes::Bytes)>> {
    let mut values = std::collections::BTreeMap::new();
    if bucket.messages == 0 {
        return Ok(Vec::new());
    }
    let mut entries = bucket
        .store
        .watch_with_history(">")
        .await
        .with_context(|| format!("cannot read KV bucket {}", bucket.name))?;
    loop {
        let entry = match tokio::time::timeout(READ_WAIT, entries.next()).await {
            Ok(Some(entry)) => {
                entry.with_context(|| format!("cannot read KV bucket {}", bucket.name))?
            }
            Ok(None) => break,
            Err(_) => {
                return Err(anyhow!(
                    "KV bucket {} sent nothing for {}s while it was being read",
                    bucket.name,
                    READ_WAIT.as_secs()
                ))
            }
        };
        let last = entry.delta == 0;
        if is_instance_key(&entry.key) {
            match entry.operation {
                Operation::Put => values.insert(entry.key, entry.value),
                Operation::Delete | Operation::Purge => values.remove(&entry.key),
            };
        }
        if last {
            break;
        }
    }
    Ok(values.into_iter().collect())
}

/// Whether a key of the bucket names an instance (`corr_*` are the
/// runtime's correlation index).
fn is_instance_key(key: &str) -> bool {
    !key.starts_with("corr_")
}

/// What the runtime stores at an instance's key; its outbox is not needed here.
#[derive(Deserialize)]
struct Stored {
    instance: Instance,
}

/// A stored value that is not an instance.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("is not a saga instance jetrun can read ({0})")]
struct NotAnInstance(String);

/// The instance in a stored value.
fn decode(value: &[u8]) -> Result<Instance, NotAnInstance> {
    serde_json::from_slice::<Stored>(value)
        .map(|stored| stored.instance)
        .map_err(|err| NotAnInstance(err.to_string()))
}

// ---------------------------------------------------------------- list

async fn list(
    js: &jetstream::Context,
    saga: &SagaConfig,
    state: Option<StateArg>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bucket = open(js, saga).await?;
    let stored = match &bucket {
        Some(bucket) => scan(bucket).await?,
        None => Vec::new(),
    };
    let mut code = ExitCode::SUCCESS;
    let mut rows = Vec::new();
    for (key, value) in &stored {
        match decode(value) {
            Ok(instance) => rows.push(Row::of(saga, key, &instance)),
            Err(why) => {
                eprintln!("jetrun: instance {key} of saga {} {why}", saga.name);
                code = ExitCode::FAILURE;
            }
        }
    }
    let total = rows.len();
    if let Some(state) = state {
        rows.retain(|row| row.state == state.state());
    }
    sort(&mut rows);
    if json {
        let rows: Vec<Value> = rows.iter().map(Row::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if bucket.is_none() {
        println!(
            "no instances of saga {}: its bucket {} does not exist yet (has `jetrun run` started \
             with this saga?)",
            saga.name,
            jetrun_config::name::saga_bucket(&saga.name)
        );
    } else {
        print!("{}", list_text(&saga.name, &rows, total, state));
    }
    Ok(code)
}

/// What `list` shows of one instance.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    key: String,
    state: State,
    step: String,
    started_ms: Millis,
    updated_ms: Millis,
}

impl Row {
    fn of(saga: &SagaConfig, key: &str, instance: &Instance) -> Row {
        Row {
            key: key.to_string(),
            state: instance.state,
            step: step_name(saga, instance.step),
            started_ms: instance.started_ms,
            updated_ms: instance.updated_ms,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "key": self.key,
            "state": self.state.label(),
            "step": self.step,
            "started": time(self.started_ms),
            "updated": time(self.updated_ms),
        })
    }
}

/// Oldest first; the key orders instances started in the same millisecond.
fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| (a.started_ms, &a.key).cmp(&(b.started_ms, &b.key)));
}

/// The table, then a line counting the rows; `total` is the number of
/// instances before `--state` filtered them.
fn list_text(saga: &str, rows: &[Row], total: usize, state: Option<StateArg>) -> String {
    let adjective = state.map_or(String::new(), |s| format!("{} ", s.state().label()));
    if rows.is_empty() {
        return match state {
            Some(_) => format!("no {adjective}instances of saga {saga} ({total} in all)\n"),
            None => format!("no instances of saga {saga}\n"),
        };
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.key.clone(),
                r.state.label().to_string(),
                r.step.clone(),
                time(r.started_ms),
                time(r.updated_ms),
            ]
        })
        .collect();
    let mut out = table(&["KEY", "STATE", "STEP", "STARTED", "UPDATED"], &cells);
    let instances = count(rows.len() as u64, &format!("{adjective}instance"));
    match state {
        Some(_) => {
            let _ = writeln!(out, "{instances} of saga {saga} ({total} in all)");
        }
        None => {
            let _ = writeln!(out, "{instances} of saga {saga}");
        }
    }
    out
}

// ---------------------------------------------------------------- show

async fn show(
    js: &jetstream::Context,
    saga: &SagaConfig,
    key: &str,
    json: bool,
    config: &Path,
) -> anyhow::Result<ExitCode> {
    let missing = |why: String| {
        eprintln!("jetrun: saga {} has no instance {key:?}{why}", saga.name);
        Ok(ExitCode::FAILURE)
    };
    let Some(bucket) = open(js, saga).await? else {
        return missing(format!(
            ": its bucket {} does not exist yet (has `jetrun run` started with this saga?)",
            jetrun_config::name::saga_bucket(&saga.name)
        ));
    };
    if !is_instance_key(key) {
        return missing(String::new());
    }
    let entry = match bucket.store.entry(key).await {
        Ok(entry) => entry,
        Err(err) if err.kind() == EntryErrorKind::InvalidKey => {
            return missing(" (it is not a valid KV key)".to_string())
        }
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot read {key} in KV bucket {}", bucket.name))
        }
    };
    let Some(entry) = entry.filter(|entry| entry.operation == Operation::Put) else {
        return missing(format!(
            "; `jetrun saga list {}` lists its instances",
            saga.name
        ));
    };
    if json {
        let stored: Value = serde_json::from_slice(&entry.value)
            .with_context(|| format!("instance {key} of saga {} is not JSON", saga.name))?;
        let instance = stored
            .get("instance")
            .ok_or_else(|| anyhow!("instance {key} of saga {} has no \"instance\"", saga.name))?;
        println!("{}", serde_json::to_string_pretty(instance)?);
        return Ok(ExitCode::SUCCESS);
    }
    let instance = decode(&entry.value).map_err(|why| {
        anyhow!(
            "instance {key} of saga {} {why}; `--json` prints it as stored",
            saga.name
        )
    })?;
    print!("{}", show_text(saga, &instance, config));
    Ok(ExitCode::SUCCESS)
}

/// The timeline, then the instance's state and data; for a stuck instance,
/// how to confirm its undo by hand.
fn show_text(saga: &SagaConfig, instance: &Instance, config: &Path) -> String {
    let mut out = timeline(instance);
    out.push('\n');
    let mut facts: Vec<(&str, String)> = vec![
        ("state", instance.state.label().to_string()),
        ("step", step_name(saga, instance.step)),
    ];
    if let Some(compensation) = &instance.compensation {
        facts.push(("cause", cause(saga, compensation.cause)));
        if !compensation.undone.is_empty() {
            facts.push(("undone", step_names(saga, &compensation.undone)));
        }
        if let Some((&first, rest)) = compensation.pending.split_first() {
            let mut pending = step_name(saga, first);
            if let Some(confirmation) = awaited(saga, instance, first) {
                let _ = write!(
                    pending,
                    " (published {}, awaiting {confirmation})",
                    count(u64::from(compensation.attempts), "time")
                );
            }
            if !rest.is_empty() {
                let _ = write!(pending, ", then {}", step_names(saga, rest));
            }
            facts.push(("to undo", pending));
        }
    }
    if let Some(deadline) = instance.next_deadline_ms() {
        facts.push(("next deadline", time(deadline)));
    }
    facts.push(("correlation id", instance.correlation_id.clone()));
    facts.push(("started", time(instance.started_ms)));
    facts.push(("updated", time(instance.updated_ms)));
    let width = facts
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0)
        + 1;
    for (label, value) in facts {
        let _ = writeln!(out, "{:<width$} {value}", format!("{label}:"));
    }
    let data = serde_json::to_string_pretty(&instance.data).unwrap_or_default();
    let _ = writeln!(out, "data:\n{data}");
    if instance.state == State::Stuck {
        out.push('\n');
        out.push_str(&stuck_hint(saga, instance, config));
    }
    out
}

/// One line per transition, oldest first.
fn timeline(instance: &Instance) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let cells: Vec<Vec<String>> = instance
        .transitions
        .iter()
        .map(|t| {
            vec![
                time(t.at_ms),
                t.kind.label().to_string(),
                dash(&t.step),
                dash(&t.event_type),
                dash(&t.event_id),
            ]
        })
        .collect();
    table(&["TIME", "KIND", "STEP", "EVENT TYPE", "EVENT ID"], &cells)
}

/// The confirmation the undo of `step` awaits, if it is awaited.
fn awaited<'a>(saga: &'a SagaConfig, instance: &Instance, step: usize) -> Option<&'a str> {
    if !matches!(instance.state, State::Compensating | State::Stuck) {
        return None;
    }
    saga.steps.get(step)?.compensated.as_deref()
}

/// What an operator can do for a stuck instance: confirm the undo by hand
/// once it is done, which resumes the undos.
fn stuck_hint(saga: &SagaConfig, instance: &Instance, config: &Path) -> String {
    let Some(compensation) = &instance.compensation else {
        return String::new();
    };
    let Some(&step) = compensation.pending.first() else {
        return String::new();
    };
    let name = step_name(saga, step);
    let Some(config_step) = saga.steps.get(step) else {
        return format!("stuck: the undo of step {name} was never confirmed.\n");
    };
    let undo = config_step.compensate.as_deref().unwrap_or("-");
    let mut out = format!(
        "stuck: the undo of step {name} ({undo}) was published {} and never confirmed.\n",
        count(u64::from(compensation.attempts), "time")
    );
    if let Some(confirmation) = &config_step.compensated {
        let data = keyed_data(&saga.key, &instance.key).to_string();
        let _ = write!(
            out,
            "Once it is done, confirm it to finish the undos:\n  jetrun publish -c {} {} {}\n",
            shell_quote(&config.display().to_string()),
            confirmation,
            shell_quote(&data)
        );
    }
    out
}

/// Data naming instance `key` at `pointer`, as a reply to the saga carries it.
fn keyed_data(pointer: &str, key: &str) -> Value {
    let tokens: Vec<&str> = pointer.split('/').skip(1).collect();
    tokens
        .into_iter()
        .rev()
        .fold(Value::String(key.to_string()), |inner, token| {
            let mut object = serde_json::Map::new();
            object.insert(token.replace("~1", "/").replace("~0", "~"), inner);
            Value::Object(object)
        })
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn cause(saga: &SagaConfig, cause: Cause) -> String {
    match cause {
        Cause::Failure { step } => format!("step {} answered failure", step_name(saga, step)),
        Cause::StepTimeout { step } => format!("step {} timed out", step_name(saga, step)),
        Cause::SagaTimeout { step } => {
            format!("the saga timed out during step {}", step_name(saga, step))
        }
    }
}

// ---------------------------------------------------------------- shared

/// A step's name; `#i` when the config no longer has step `i`.
fn step_name(saga: &SagaConfig, step: usize) -> String {
    saga.steps
        .get(step)
        .map_or_else(|| format!("#{step}"), |s| s.name.clone())
}

fn step_names(saga: &SagaConfig, steps: &[usize]) -> String {
    let names: Vec<String> = steps.iter().map(|&s| step_name(saga, s)).collect();
    names.join(", ")
}

fn time(ms: Millis) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Map;

    use super::*;
    use crate::saga::machine::{Compensation, Kind, Transition};

    const SECOND: Millis = 1_000;
    /// 2024-05-01T10:00:00Z.
    const T0: Millis = 1_714_557_600_000;

    fn saga() -> SagaConfig {
        let toml = r#"
[streams.ORDERS]
subjects = ["order.>", "inventory.>", "payment.>"]
[functions.idle]
subjects = ["order.idle"]
builtin = "noop"
[sagas.fulfil]
start = "order.placed"
key = "order_id"
completed = "order.fulfilled"
failed = "order.cancelled"
[[sagas.fulfil.steps]]
name = "reserve"
command = "inventory.reserve"
success = "inventory.reserved"
failure = "inventory.unavailable"
compensate = "inventory.release"
compensated = "inventory.released"
[[sagas.fulfil.steps]]
name = "charge"
command = "payment.charge"
success = "payment.charged"
failure = ["payment.declined"]
compensate = "payment.refund"
"#;
        let config = jetrun_config::parse(
            toml,
            &BTreeMap::new(),
            Path::new("/"),
            jetrun_functions::BUILTINS,
        )
        .unwrap();
        config.sagas["fulfil"].clone()
    }

    fn transition(
        at: Millis,
        kind: Kind,
        step: Option<&str>,
        event: Option<(&str, &str)>,
    ) -> Transition {
        Transition {
            at_ms: T0 + at,
            kind,
            step: step.map(str::to_string),
            event_type: event.map(|(t, _)| t.to_string()),
            event_id: event.map(|(_, id)| id.to_string()),
        }
    }

    /// Reserved, charge timed out, charge refunded, reserve's release
    /// published three times and never confirmed.
    fn stuck() -> Instance {
        let mut data = Map::new();
        data.insert("order_id".into(), json!("o-1"));
        data.insert("reserve".into(), json!({ "reservation": "r-9" }));
        Instance {
            saga: "fulfil".into(),
            key: "o-1".into(),
            state: State::Stuck,
            step: 0,
            data,
            correlation_id: "c-1".into(),
            started_ms: T0,
            updated_ms: T0 + 100 * SECOND,
            step_deadline_ms: None,
            saga_deadline_ms: None,
            completed: vec![0],
            compensation: Some(Compensation {
                cause: Cause::StepTimeout { step: 1 },
                pending: vec![0],
                undone: vec![1],
                attempts: 3,
            }),
            transitions: vec![
                transition(
                    0,
                    Kind::Command,
                    Some("reserve"),
                    Some(("inventory.reserve", "id-0")),
                ),
                transition(
                    SECOND,
                    Kind::Reply,
                    Some("reserve"),
                    Some(("inventory.reserved", "r-1")),
                ),
                transition(
                    SECOND,
                    Kind::Command,
                    Some("charge"),
                    Some(("payment.charge", "id-2")),
                ),
                transition(31 * SECOND, Kind::Timeout, Some("charge"), None),
                transition(
                    31 * SECOND,
                    Kind::Compensate,
                    Some("charge"),
                    Some(("payment.refund", "id-4")),
                ),
                transition(
                    31 * SECOND,
                    Kind::Compensate,
                    Some("reserve"),
                    Some(("inventory.release", "id-5")),
                ),
                transition(100 * SECOND, Kind::Timeout, Some("reserve"), None),
            ],
        }
    }

    fn running(key: &str, started: Millis) -> Instance {
        let mut instance = stuck();
        instance.key = key.into();
        instance.state = State::Running;
        instance.step = 1;
        instance.compensation = None;
        instance.started_ms = T0 + started;
        instance.updated_ms = T0 + started + SECOND;
        instance.step_deadline_ms = Some(T0 + started + 31 * SECOND);
        instance.transitions.truncate(3);
        instance
    }

    #[test]
    fn list_rows_are_sorted_by_start_and_counted() {
        let saga = saga();
        let mut rows = vec![
            Row::of(&saga, "o-2", &running("o-2", 5 * SECOND)),
            Row::of(&saga, "o-1", &stuck()),
            Row::of(&saga, "o-0", &running("o-0", 5 * SECOND)),
        ];
        sort(&mut rows);
        assert_eq!(
            list_text("fulfil", &rows, 3, None),
            "KEY  STATE    STEP     STARTED                   UPDATED\n\
             o-1  stuck    reserve  2024-05-01T10:00:00.000Z  2024-05-01T10:01:40.000Z\n\
             o-0  running  charge   2024-05-01T10:00:05.000Z  2024-05-01T10:00:06.000Z\n\
             o-2  running  charge   2024-05-01T10:00:05.000Z  2024-05-01T10:00:06.000Z\n\
             3 instances of saga fulfil\n"
        );
        rows.retain(|r| r.state == State::Stuck);
        assert!(list_text("fulfil", &rows, 3, Some(StateArg::Stuck))
            .ends_with("\n1 stuck instance of saga fulfil (3 in all)\n"));
        assert_eq!(
            list_text("fulfil", &[], 3, Some(StateArg::Failed)),
            "no failed instances of saga fulfil (3 in all)\n"
        );
        assert_eq!(
            list_text("fulfil", &[], 0, None),
            "no instances of saga fulfil\n"
        );
    }

    #[test]
    fn list_json_has_names_and_rfc3339_times() {
        let row = Row::of(&saga(), "o-1", &stuck());
        assert_eq!(
            row.to_json(),
            json!({
                "key": "o-1",
                "state": "stuck",
                "step": "reserve",
                "started": "2024-05-01T10:00:00.000Z",
                "updated": "2024-05-01T10:01:40.000Z",
            })
        );
    }

    #[test]
    fn show_prints_the_timeline_then_state_and_data() {
        let text = show_text(&saga(), &stuck(), Path::new("/etc/jetrun/jetrun.toml"));
        assert_eq!(
            text,
            "\
TIME                      KIND        STEP     EVENT TYPE          EVENT ID
2024-05-01T10:00:00.000Z  command     reserve  inventory.reserve   id-0
2024-05-01T10:00:01.000Z  reply       reserve  inventory.reserved  r-1
2024-05-01T10:00:01.000Z  command     charge   payment.charge      id-2
2024-05-01T10:00:31.000Z  timeout     charge   -                   -
2024-05-01T10:00:31.000Z  compensate  charge   payment.refund      id-4
2024-05-01T10:00:31.000Z  compensate  reserve  inventory.release   id-5
2024-05-01T10:01:40.000Z  timeout     reserve  -                   -

state:          stuck
step:           reserve
cause:          step charge timed out
undone:         charge
to undo:        reserve (published 3 times, awaiting inventory.released)
correlation id: c-1
started:        2024-05-01T10:00:00.000Z
updated:        2024-05-01T10:01:40.000Z
data:
{
  \"order_id\": \"o-1\",
  \"reserve\": {
    \"reservation\": \"r-9\"
  }
}

stuck: the undo of step reserve (inventory.release) was published 3 times and never confirmed.
Once it is done, confirm it to finish the undos:
  jetrun publish -c /etc/jetrun/jetrun.toml inventory.released '{\"order_id\":\"o-1\"}'
"
        );
    }

    #[test]
    fn show_gives_a_running_instance_its_deadline_and_no_undo() {
        let text = show_text(&saga(), &running("o-2", 0), Path::new("jetrun.toml"));
        let facts: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.is_empty())
            .skip(1)
            .take_while(|line| *line != "data:")
            .collect();
        assert_eq!(
            facts,
            [
                "state:          running",
                "step:           charge",
                "next deadline:  2024-05-01T10:00:31.000Z",
                "correlation id: c-1",
                "started:        2024-05-01T10:00:00.000Z",
                "updated:        2024-05-01T10:00:01.000Z",
            ]
        );
        assert!(!text.contains("stuck:"), "{text}");
    }

    #[test]
    fn state_arguments_are_the_stored_names() {
        for arg in StateArg::value_variants() {
            let name = arg.to_possible_value().unwrap();
            assert_eq!(name.get_name(), arg.state().label());
        }
    }

    #[test]
    fn a_stored_value_is_read_without_its_outbox() {
        let instance = stuck();
        let stored = json!({ "instance": instance, "outbox": [{ "anything": 1 }] });
        assert_eq!(decode(stored.to_string().as_bytes()), Ok(instance));
        let err = decode(b"{\"key\": 1}").unwrap_err().to_string();
        assert!(
            err.starts_with("is not a saga instance jetrun can read (missing field `instance`"),
            "{err}"
        );
    }

    #[test]
    fn a_hand_confirmation_names_the_instance_by_its_key() {
        assert_eq!(keyed_data("/order_id", "o-1"), json!({ "order_id": "o-1" }));
        assert_eq!(
            keyed_data("/order/id", "7"),
            json!({ "order": { "id": "7" } })
        );
        assert_eq!(keyed_data("/a~1b", "k"), json!({ "a/b": "k" }));
        assert_eq!(shell_quote("config/jetrun.toml"), "config/jetrun.toml");
        assert_eq!(shell_quote("my dir/it's.toml"), r"'my dir/it'\''s.toml'");
    }
}
