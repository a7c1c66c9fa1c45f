//! `jetrun status`: one row per configured function, read from the live
//! durable consumer and the dead-letter stream: pending, ack pending,
//! redelivered, dead letters, last activity. A function with no consumer
//! is named on stderr and makes the exit status 3; NATS unreachable (or any
//! other failure to read) is 1, a bad config 2.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, context::ConsumerInfoErrorKind};
use serde_json::{json, Value};

use super::args::ConfigArg;
use super::dlq::{self, Place};
use super::output::{rfc3339, table};
use super::session;
use crate::runtime::config_file::Loaded;

/// `jetrun status --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun status -c config/jetrun.toml
  jetrun status --json | jq '.[] | select(.dead_letters > 0)'

Exit status: 0 when every function's consumer is there; 3 when one has no
consumer (is `jetrun run` running with this config?); 1 when NATS cannot be
reached or read; 2 for a bad config.";

/// Exit status when a configured function has no consumer: not the 1 of
/// NATS unreachable, so a probe can tell "not running" from "cannot see".
const EXIT_NO_CONSUMER: u8 = 3;

/// The arguments of `jetrun status`.
#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only these functions. Without a config file, the functions to look
    /// for: each one's durable consumer (named after it) on whichever
    /// stream has it, and its dead letters on `dlq.FUNCTION`.
    functions: Vec<String>,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `status` says about one function.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    function: String,
    /// `None` for a function found without a config whose consumer is on no
    /// stream.
    stream: Option<String>,
    /// `None` when the durable consumer does not exist.
    consumer: Option<ConsumerState>,
    dead_letters: u64,
    dead_letter_subject: String,
}

#[derive(Debug, Clone, PartialEq)]
struct ConsumerState {
    pending: u64,
    ack_pending: usize,
    redelivered: usize,
    last_active: Option<SystemTime>,
}

impl ConsumerState {
    fn of(info: &consumer::Info) -> ConsumerState {
        let last_active = [info.delivered.last_active, info.ack_floor.last_active]
            .into_iter()
            .flatten()
            .map(SystemTime::from)
            .max();
        ConsumerState {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            redelivered: info.num_redelivered,
            last_active,
        }
    }
}

/// Runs `jetrun status`.
pub(crate) async fn status(args: StatusArgs) -> ExitCode {
    let loaded = match session::load_if_any(&args.config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if loaded.is_none() && args.functions.is_empty() {
        eprintln!(
            "jetrun: no config file ({}): name the functions to look for (`jetrun status \
             FUNCTION...`), or give one with -c",
            args.config.path().display()
        );
        return ExitCode::from(session::EXIT_USAGE);
    }
    if let Some(loaded) = &loaded {
        let path = args.config.path();
        for function in &args.functions {
            if let Err(why) = session::function(&loaded.config, &path, function) {
                return session::exit(Err(why));
            }
        }
    }
    let wanted = |name: &str| args.functions.is_empty() || args.functions.iter().any(|f| f == name);
    let rows = match rows(loaded.as_ref(), &args.functions, &wanted).await {
        Ok(rows) => rows,
        Err(err) => {
            eprintln!("jetrun: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let json: Vec<Value> = rows.iter().map(to_json).collect();
        match serde_json::to_string_pretty(&json) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("jetrun: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", status_table(&rows));
        if let Some(loaded) = &loaded {
            print_request_functions(&loaded.config, &wanted);
        }
    }
    let mut code = ExitCode::SUCCESS;
    for row in rows.iter().filter(|r| r.consumer.is_none()) {
        eprintln!(
            "jetrun: function {} has no consumer on stream {}; is `jetrun run` running with \
             this config?",
            row.function,
            row.stream.as_deref().unwrap_or("any")
        );
        code = ExitCode::from(EXIT_NO_CONSUMER);
    }
    code
}

/// One row per stream function of the config that `wanted` keeps, or,
/// without a config, per function named.
async fn rows(
    loaded: Option<&Loaded>,
    named: &[String],
    wanted: &dyn Fn(&str) -> bool,
) -> anyhow::Result<Vec<Row>> {
    let js = session::connect_to(loaded.map(|l| &l.config.nats)).await?;
    let Some(loaded) = loaded else {
        let mut rows = Vec::new();
        for function in named {
            rows.push(found(&js, function).await?);
        }
        return Ok(rows);
    };
    let mut rows = Vec::new();
    // Request functions have no consumer and no dead letters: listed after
    // the table.
    for function in loaded.config.functions.values() {
        let Some(binding) = function.binding().filter(|_| wanted(&function.name)) else {
            continue;
        };
        let place = Place::of(&loaded.config, function);
        // A keyed function's backlog: its first partition's (every
        // partition's consumer sees every event).
        let consumer = match &function.key {
            Some(_) => jetrun_config::name::partition_consumer(&binding.consumer, 0),
            None => binding.consumer.clone(),
        };
        rows.push(Row {
            function: function.name.clone(),
            stream: Some(binding.stream.clone()),
            consumer: consumer_state(&js, &binding.stream, &consumer).await?,
            dead_letters: dlq::count_letters(&js, &place).await?,
            dead_letter_subject: place.subject,
        });
    }
    Ok(rows)
}

/// A line per request function `wanted` keeps: where it answers.
fn print_request_functions(config: &jetrun_config::Config, wanted: &dyn Fn(&str) -> bool) {
    let service = &config.service.name;
    for function in config.functions.values().filter(|f| wanted(&f.name)) {
        if let Some(subject) = function.request_subject() {
            println!(
                "{} answers requests on {subject} ({service} micro service; see \
                 `$SRV.STATS.{service}`)",
                function.name
            );
        }
    }
}

/// Function `name` found without a config: its durable consumer (named
/// after it) on the first stream that has one, and its dead letters where
/// they are by default.
async fn found(js: &jetstream::Context, name: &str) -> anyhow::Result<Row> {
    use futures::TryStreamExt;
    let streams: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .context("cannot list the streams")?;
    let place = Place::by_default(name);
    let mut row = Row {
        function: name.to_string(),
        stream: None,
        consumer: None,
        dead_letters: dlq::count_letters(js, &place).await?,
        dead_letter_subject: place.subject,
    };
    for stream in streams {
        if let Some(consumer) = consumer_state(js, &stream, name).await? {
            row.stream = Some(stream);
            row.consumer = Some(consumer);
            break;
        }
    }
    Ok(row)
}

/// The durable consumer's state; `None` when it (or its stream) is missing.
async fn consumer_state(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> anyhow::Result<Option<ConsumerState>> {
    let handle = js
        .get_stream_no_info(stream)
        .await
        .with_context(|| format!("cannot read stream {stream}"))?;
    match handle.consumer_info(name).await {
        Ok(info) => Ok(Some(ConsumerState::of(&info))),
        Err(err)
            if matches!(
                err.kind(),
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
            ) =>
        {
            Ok(None)
        }
        Err(err) => Err(err).with_context(|| format!("cannot read consumer {name} on {stream}")),
    }
}

fn status_table(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let stream = r.stream.as_deref().unwrap_or("-");
            let mut cells = vec![r.function.clone(), stream.to_string()];
            match &r.consumer {
                Some(c) => cells.extend([
                    "yes".to_string(),
                    c.pending.to_string(),
                    c.ack_pending.to_string(),
                    c.redelivered.to_string(),
                ]),
                None => cells.extend(["missing", "-", "-", "-"].map(String::from)),
            }
            cells.push(r.dead_letters.to_string());
            cells.push(
                r.consumer
                    .as_ref()
                    .and_then(|c| c.last_active)
                    .map_or_else(|| "-".to_string(), rfc3339),
            );
            cells
        })
        .collect();
    table(
        &[
            "FUNCTION",
            "STREAM",
            "CONSUMER",
            "PENDING",
            "ACK PENDING",
            "REDELIVERED",
            "DEAD LETTERS",
            "LAST ACTIVE",
        ],
        &cells,
    )
}

fn to_json(row: &Row) -> Value {
    let c = row.consumer.as_ref();
    json!({
        "function": row.function,
        "stream": row.stream,
        "consumer": c.is_some(),
        "pending": c.map(|c| c.pending),
        "ack_pending": c.map(|c| c.ack_pending),
        "redelivered": c.map(|c| c.redelivered),
        "dead_letters": row.dead_letters,
        "dead_letter_subject": row.dead_letter_subject,
        "last_active": c.and_then(|c| c.last_active).map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                function: "reserve-stock".into(),
                stream: Some("ORDERS".into()),
                consumer: Some(ConsumerState {
                    pending: 12,
                    ack_pending: 3,
                    redelivered: 1,
                    last_active: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)),
                }),
                dead_letters: 2,
                dead_letter_subject: "dlq.reserve-stock".into(),
            },
            Row {
                function: "welcome-email".into(),
                stream: Some("USERS".into()),
                consumer: None,
                dead_letters: 0,
                dead_letter_subject: "dlq.welcome-email".into(),
            },
        ]
    }

    #[test]
    fn table_has_a_row_per_function() {
        assert_eq!(
            status_table(&rows()),
            "FUNCTION       STREAM  CONSUMER  PENDING  ACK PENDING  REDELIVERED  DEAD LETTERS  \
             LAST ACTIVE\n\
             reserve-stock  ORDERS  yes       12       3            1            2             \
             1970-01-01T00:00:01.500Z\n\
             welcome-email  USERS   missing   -        -            -            0             -\n"
        );
    }

    #[test]
    fn json_has_nulls_for_a_missing_consumer() {
        let rows = rows();
        let present = to_json(&rows[0]);
        assert_eq!(present["consumer"], true);
        assert_eq!(present["pending"], 12);
        assert_eq!(present["ack_pending"], 3);
        assert_eq!(present["redelivered"], 1);
        assert_eq!(present["dead_letters"], 2);
        assert_eq!(present["last_active"], "1970-01-01T00:00:01.500Z");
        let missing = to_json(&rows[1]);
        assert_eq!(missing["consumer"], false);
        assert_eq!(missing["pending"], Value::Null);
        assert_eq!(missing["last_active"], Value::Null);
    }
}
