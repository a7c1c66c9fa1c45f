//! `jetrun dlq list|show|replay|purge FUNCTION`: a function's dead letters,
//! read from where its runner put them (its `dead_letter` subject, in `DLQ`
//! or the declared stream capturing it), and sent back to their original
//! subject. What a dead letter says, the headers a replay carries and the
//! tables are pure functions; NATS is only in the `async` ones.
//!
//! A replay is published with `Nats-Msg-Id: replay:<DLQ seq>:<stream>:<seq>`
//! and the dead letter is deleted only once the publish is acknowledged: a
//! replay cut short is safe to run again (the target stream drops the repeat
//! within its duplicate window), and a finished one leaves nothing to replay
//! twice.
//!
//! A dead letter a key was parked behind (`on_dead_letter = "park"`) is
//! replayed with `Jetrun-Unparks: <stream>:<seq>`, which lifts the park,
//! then the dead letters parked behind it (`Jetrun-Parked-Behind`), in
//! their order: they reach the function after it, in order.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderName};
use base64::prelude::{Engine, BASE64_STANDARD};
use clap::Subcommand;
use futures::TryStreamExt as _;
use jetrun_config::{Config, FunctionConfig, DLQ_STREAM};
use serde_json::{json, Value};

use super::args::{FunctionArg, InvalidValue};
use super::output::{count, first_line, hex_dump, rfc3339, table};
use super::session::{self, Stopped};
use crate::emit::{self, PublishError, Reserved};
use crate::flow::park;
use crate::headers::{is_server_directive, BadHeader, Put};

/// `jetrun dlq --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun dlq list reserve-stock -c config/jetrun.toml
  jetrun dlq show reserve-stock 12
  jetrun dlq replay reserve-stock --seq 12 13
  jetrun dlq replay reserve-stock --all
  jetrun dlq purge reserve-stock --older-than 7d

Dead letters are read from the function's dead_letter subject (dlq.<function>
unless the config says otherwise) in stream DLQ.";

/// The arguments of `jetrun dlq`.
#[derive(clap::Args)]
pub(crate) struct DlqArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// List a function's dead letters.
    ///
    /// One row per dead letter: its sequence in the dead-letter stream, when
    /// it failed, the reason, the attempts made, the original subject and
    /// the first line of the error (all of it with --json).
    #[command(after_help = LIST_EXAMPLES, visible_alias = "ls")]
    List(ListArgs),
    /// Show one dead letter: every header, and the body.
    ///
    /// The body is printed as text when it is UTF-8, else as a hex dump
    /// (base64 with --json); the line before it says which.
    #[command(after_help = SHOW_EXAMPLES, visible_alias = "info")]
    Show(ShowArgs),
    /// Send dead letters back to their original subject.
    ///
    /// Each is republished (its body, and its headers minus the Jetrun-*
    /// ones) with a JetStream publish, and deleted from the dead-letter
    /// stream only once that publish is acknowledged. A dead letter whose
    /// key was parked behind it (on_dead_letter = "park") is followed by
    /// the dead letters parked behind it, in order.
    #[command(after_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
    /// Delete a function's dead letters: all, or those older than --older-than.
    #[command(after_help = PURGE_EXAMPLES)]
    Purge(PurgeArgs),
}

const LIST_EXAMPLES: &str = "\
Examples:
  jetrun dlq list reserve-stock -c config/jetrun.toml
  jetrun dlq list reserve-stock --json | jq -r '.[].error'";

const SHOW_EXAMPLES: &str = "\
Examples:
  jetrun dlq show reserve-stock 12
  jetrun dlq show reserve-stock 12 --json | jq -r .body";

const REPLAY_EXAMPLES: &str = "\
Examples:
  jetrun dlq replay reserve-stock --seq 12
  jetrun dlq replay reserve-stock --seq 12 13 14
  jetrun dlq replay reserve-stock --all
  jetrun dlq replay reserve-stock --seq 12 --to order.placed.retry

A replay carries Nats-Msg-Id replay:<DLQ seq>:<stream>:<sequence>: run again
within the target stream's duplicate window, it stores nothing new. Replaying
the dead letter a key is parked behind (on_dead_letter = park) unparks the
key and replays the dead letters parked behind it after it, in order. A dead
letter whose body was cut (Jetrun-Body-Truncated) is refused; republish the
event from its original stream and sequence instead.";

const PURGE_EXAMPLES: &str = "\
Examples:
  jetrun dlq purge reserve-stock --older-than 7d
  jetrun dlq purge reserve-stock";

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    target: FunctionArg,
    /// Print a JSON array, the whole error included, instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    target: FunctionArg,
    /// The dead letter's sequence in its stream (the first column of `list`).
    seq: u64,
    /// Print a JSON object (body as text, or base64 when it is not UTF-8).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    target: FunctionArg,
    /// The dead letters to replay, by sequence; repeatable, or several
    /// after one --seq (`--seq 3 4`, `--seq 3,4`).
    #[arg(long, num_args = 1.., value_delimiter = ',', required_unless_present = "all",
          conflicts_with = "all")]
    seq: Vec<u64>,
    /// Replay every dead letter of the function, oldest first.
    #[arg(long)]
    all: bool,
    /// Publish to this subject instead of each one's Jetrun-Original-Subject.
    #[arg(long, value_name = "SUBJECT", value_parser = publish_subject)]
    to: Option<String>,
}

#[derive(clap::Args)]
struct PurgeArgs {
    #[command(flatten)]
    target: FunctionArg,
    /// Delete only dead letters that failed longer ago than this (`1h`,
    /// `7d`); all of them without it.
    #[arg(long, value_name = "DURATION", value_parser = age)]
    older_than: Option<Age>,
}

/// A duration as given on the command line, kept to be said back as typed.
#[derive(Debug, Clone)]
struct Age {
    duration: Duration,
    text: String,
}

fn age(text: &str) -> Result<Age, InvalidValue> {
    humantime::parse_duration(text)
        .map(|duration| Age {
            duration,
            text: text.to_string(),
        })
        .map_err(|err| InvalidValue(format!("{text:?} is not a duration like 1h or 7d: {err}")))
}

fn publish_subject(text: &str) -> Result<String, InvalidValue> {
    if jetrun_config::is_publish_subject(text) {
        Ok(text.to_string())
    } else {
        Err(InvalidValue(format!(
            "{text:?} is not a subject to publish to (dot-separated tokens, no wildcards)"
        )))
    }
}

/// Runs `jetrun dlq VERB`.
pub(crate) async fn dlq(args: DlqArgs) -> ExitCode {
    let target = match &args.verb {
        Verb::List(a) => &a.target,
        Verb::Show(a) => &a.target,
        Verb::Replay(a) => &a.target,
        Verb::Purge(a) => &a.target,
    };
    // Without a config file: the function's dead letters where they are by
    // default (`dlq.FUNCTION` in `DLQ`), on the connection given.
    let loaded = match session::load_if_any(&target.config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    session::exit(
        async {
            let (place, guard, nats) = match &loaded {
                // The relay of delayed events is no function of the config.
                Some(loaded) if target.function == crate::delayed::RELAY => {
                    let config = &loaded.config;
                    let guard = Guard {
                        reserved: Reserved::of(config),
                        emits: None,
                    };
                    (Place::of_relay(config), guard, Some(&config.nats))
                }
                Some(loaded) => {
                    let config = &loaded.config;
                    let function =
                        session::function(config, &target.config.path(), &target.function)?;
                    if let Some(subject) = function.request_subject() {
                        return Err(Stopped::Usage(format!(
                            "{} answers requests on {subject}: a failed request is answered \
                             with an error, never dead-lettered",
                            function.name
                        )));
                    }
                    let guard = Guard {
                        reserved: Reserved::of(config),
                        emits: function.emits.clone(),
                    };
                    (Place::of(config, function), guard, Some(&config.nats))
                }
                None => {
                    let guard = Guard {
                        reserved: Reserved::default_spaces(),
                        emits: None,
                    };
                    (Place::by_default(&target.function), guard, None)
                }
            };
            let js = session::connect_to(nats).await?;
            Ok(match &args.verb {
                Verb::List(a) => list(&js, &place, a.json).await?,
                Verb::Show(a) => show(&js, &place, a.seq, a.json).await?,
                Verb::Replay(a) => replay(&js, &place, &guard, a).await?,
                Verb::Purge(a) => purge(&js, &place, a.older_than.as_ref()).await?,
            })
        }
        .await,
    )
}

/// Where a function's dead letters are.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Place {
    pub(super) function: String,
    /// Its `dead_letter` subject.
    pub(super) subject: String,
    /// The stream capturing that subject: `DLQ`, or a declared one.
    pub(super) stream: String,
    /// Whether other configured functions dead-letter to the same subject,
    /// in which case only messages whose `Jetrun-Function` names this one
    /// are its dead letters.
    pub(super) shared: bool,
}

impl Place {
    /// Where `function` (a stream function) dead-letters.
    pub(super) fn of(config: &Config, function: &FunctionConfig) -> Place {
        let dead_letter = |f: &FunctionConfig| f.binding().map(|b| b.dead_letter.clone());
        let subject = dead_letter(function).unwrap_or_default();
        let dead_letters = &config.dead_letters;
        let stream = if jetrun_config::subject_matches(&dead_letters.subjects(), &subject) {
            dead_letters.stream.clone()
        } else {
            config
                .streams
                .iter()
                .find(|(_, s)| {
                    s.subjects
                        .iter()
                        .any(|filter| jetrun_config::subject_matches(filter, &subject))
                })
                .map_or_else(|| dead_letters.stream.clone(), |(name, _)| name.clone())
        };
        let shared = config
            .functions
            .values()
            .any(|f| f.name != function.name && dead_letter(f).as_ref() == Some(&subject));
        Place {
            function: function.name.clone(),
            subject,
            stream,
            shared,
        }
    }

    /// Where the relay of delayed events dead-letters, as `config` says.
    pub(super) fn of_relay(config: &Config) -> Place {
        let at = crate::delayed::RelayAt::of(config);
        Place {
            function: crate::delayed::RELAY.to_string(),
            subject: at.dead_letter,
            stream: config.dead_letters.stream.clone(),
            shared: false,
        }
    }

    /// Where `function` dead-letters when no config says otherwise:
    /// `dlq.FUNCTION` in `DLQ`, only the letters naming it
    /// (`Jetrun-Function`).
    pub(super) fn by_default(function: &str) -> Place {
        Place {
            function: function.to_string(),
            subject: jetrun_config::DeadLetters::default().subject(function),
            stream: DLQ_STREAM.to_string(),
            shared: true,
        }
    }

    /// Whether `message` (stored in this place's stream) is one of the
    /// function's dead letters.
    fn holds(&self, message: &StreamMessage) -> bool {
        message.subject.as_str() == self.subject
            && (!self.shared
                || header(&message.headers, "Jetrun-Function") == Some(self.function.as_str()))
    }

    fn describe(&self) -> String {
        format!("subject {} in stream {}", self.subject, self.stream)
    }
}

/// The dead-letter stream, or `None` when it does not exist (no dead letter
/// was ever stored).
async fn open(js: &jetstream::Context, place: &Place) -> anyhow::Result<Option<Stream>> {
    match js.get_stream(&place.stream).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err) => match err.kind() {
            async_nats::jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(err).with_context(|| format!("cannot read stream {}", place.stream)),
        },
    }
}

/// Every dead letter of the function, oldest first.
async fn scan(js: &jetstream::Context, place: &Place) -> anyhow::Result<Vec<StreamMessage>> {
    let Some(stream) = open(js, place).await? else {
        return Ok(Vec::new());
    };
    let mut letters = Vec::new();
    let mut next = 1;
    loop {
        let got = stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(place.subject.clone())
            .send()
            .await;
        match got {
            Ok(message) => {
                next = message.sequence + 1;
                if place.holds(&message) {
                    letters.push(message);
                }
            }
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Ok(letters),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", place.describe()))
            }
        }
    }
}

/// How many dead letters the function has.
pub(super) async fn count_letters(js: &jetstream::Context, place: &Place) -> anyhow::Result<u64> {
    if place.shared {
        return Ok(scan(js, place).await?.len() as u64);
    }
    let Some(stream) = open(js, place).await? else {
        return Ok(0);
    };
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(&place.subject)
        .await
        .with_context(|| format!("cannot read stream {}", place.stream))?
        .try_collect()
        .await
        .with_context(|| format!("cannot read stream {}", place.stream))?;
    Ok(subjects
        .iter()
        .filter(|(subject, _)| *subject == place.subject)
        .map(|(_, n)| *n as u64)
        .sum())
}

/// Why one dead letter cannot be had.
#[derive(Debug, thiserror::Error)]
enum Missing {
    #[error(
        "DLQ {seq}: no dead letter of {function} at this sequence (already replayed or purged?)"
    )]
    Gone { seq: u64, function: String },
    #[error("DLQ {seq} is not a dead letter of {function}: it is on subject {subject}{by}")]
    NotIts {
        seq: u64,
        function: String,
        subject: String,
        by: String,
    },
}

/// The function's dead letter at `seq`.
async fn get(js: &jetstream::Context, place: &Place, seq: u64) -> anyhow::Result<StreamMessage> {
    let gone = || Missing::Gone {
        seq,
        function: place.function.clone(),
    };
    let Some(stream) = open(js, place).await? else {
        return Err(gone().into());
    };
    let message = match stream.get_raw_message(seq).await {
        Ok(message) => message,
        Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => return Err(gone().into()),
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot read sequence {seq} of {}", place.stream))
        }
    };
    if !place.holds(&message) {
        let by = match header(&message.headers, "Jetrun-Function") {
            Some(other) if message.subject.as_str() == place.subject => {
                format!(", from function {other}")
            }
            _ => String::new(),
        };
        return Err(Missing::NotIts {
            seq,
            function: place.function.clone(),
            subject: message.subject.to_string(),
            by,
        }
        .into());
    }
    Ok(message)
}

// ---------------------------------------------------------------- list

async fn list(js: &jetstream::Context, place: &Place, json: bool) -> anyhow::Result<ExitCode> {
    let letters = scan(js, place).await?;
    let summaries: Vec<Summary> = letters.iter().map(Summary::of).collect();
    if json {
        let rows: Vec<Value> = summaries.iter().map(Summary::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if summaries.is_empty() {
        println!(
            "no dead letters for {} ({})",
            place.function,
            place.describe()
        );
    } else {
        print!("{}", list_table(&summaries));
        println!(
            "{} of {} ({})",
            count(summaries.len() as u64, "dead letter"),
            place.function,
            place.describe()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What `list` shows of one dead letter.
#[derive(Debug, Clone, PartialEq)]
struct Summary {
    sequence: u64,
    stored_at: String,
    failed_at: Option<String>,
    reason: Option<String>,
    attempts: Option<String>,
    error: Option<String>,
    original_subject: Option<String>,
    original_stream: Option<String>,
    original_sequence: Option<String>,
    /// The original body's length, when the dead letter's is cut.
    body_truncated: Option<String>,
}

impl Summary {
    fn of(message: &StreamMessage) -> Summary {
        let h = |name| header(&message.headers, name).map(str::to_string);
        Summary {
            sequence: message.sequence,
            stored_at: rfc3339(SystemTime::from(message.time)),
            failed_at: h("Jetrun-Failed-At"),
            reason: h("Jetrun-Reason"),
            attempts: h("Jetrun-Attempts"),
            error: h("Jetrun-Error"),
            original_subject: h("Jetrun-Original-Subject"),
            original_stream: h("Jetrun-Original-Stream"),
            original_sequence: h("Jetrun-Original-Sequence"),
            body_truncated: h("Jetrun-Body-Truncated"),
        }
    }

    fn to_json(&self) -> Value {
        let number = |v: &Option<String>| match v.as_deref().map(str::parse::<u64>) {
            Some(Ok(n)) => json!(n),
            Some(Err(_)) => json!(v),
            None => Value::Null,
        };
        json!({
            "sequence": self.sequence,
            "stored_at": self.stored_at,
            "failed_at": self.failed_at,
            "reason": self.reason,
            "attempts": number(&self.attempts),
            "error": self.error,
            "original_subject": self.original_subject,
            "original_stream": self.original_stream,
            "original_sequence": number(&self.original_sequence),
            "body_truncated": number(&self.body_truncated),
        })
    }
}

/// The most of an error a row of `list` shows.
const ERROR_WIDTH: usize = 80;

fn list_table(rows: &[Summary]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut error = first_line(r.error.as_deref().unwrap_or("-"), ERROR_WIDTH);
            if r.body_truncated.is_some() {
                error.insert_str(0, "[body cut] ");
            }
            vec![
                r.sequence.to_string(),
                r.failed_at.clone().unwrap_or_else(|| r.stored_at.clone()),
                dash(&r.reason),
                dash(&r.attempts),
                dash(&r.original_subject),
                error,
            ]
        })
        .collect();
    table(
        &["SEQ", "FAILED AT", "REASON", "ATTEMPTS", "SUBJECT", "ERROR"],
        &cells,
    )
}

// ---------------------------------------------------------------- show

async fn show(
    js: &jetstream::Context,
    place: &Place,
    seq: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let message = get(js, place, seq).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&show_json(&message))?);
    } else {
        print!("{}", show_text(&message));
    }
    Ok(ExitCode::SUCCESS)
}

/// Headers in a stable order: jetrun's in the order DESIGN.md lists them,
/// then the rest by name.
fn sorted_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    const ORDER: &[&str] = &[
        "Jetrun-Function",
        "Jetrun-Reason",
        "Jetrun-Error",
        "Jetrun-Attempts",
        "Jetrun-Original-Subject",
        "Jetrun-Original-Stream",
        "Jetrun-Original-Sequence",
        "Jetrun-Failed-At",
        "Jetrun-Body-Truncated",
        "Jetrun-Original-Headers-Base64",
    ];
    let mut all: Vec<(String, String)> = headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_string()))
        })
        .collect();
    let rank = |name: &str| {
        ORDER
            .iter()
            .position(|o| o.eq_ignore_ascii_case(name))
            .unwrap_or(ORDER.len())
    };
    // Stable: several values of one header keep their order.
    all.sort_by(|a, b| {
        (rank(&a.0), a.0.to_ascii_lowercase()).cmp(&(rank(&b.0), b.0.to_ascii_lowercase()))
    });
    all
}

fn show_text(message: &StreamMessage) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "DLQ sequence {} (subject {}, stored {})",
        message.sequence,
        message.subject,
        rfc3339(SystemTime::from(message.time))
    );
    out.push_str("headers:\n");
    for (name, value) in sorted_headers(&message.headers) {
        let _ = writeln!(out, "  {name}: {value}");
    }
    let body = message.payload.as_ref();
    let cut = match (
        header(&message.headers, "Jetrun-Body-Truncated"),
        header(&message.headers, "Jetrun-Body-Object"),
    ) {
        (Some(len), Some(object)) => format!(
            "; cut from {len} bytes, the whole body is in object store {object} (`jetrun dlq \
             replay` sends it whole)"
        ),
        (Some(len), None) => format!(
            "; cut from {len} bytes, the whole event is in stream {} at sequence {}",
            header(&message.headers, "Jetrun-Original-Stream").unwrap_or("?"),
            header(&message.headers, "Jetrun-Original-Sequence").unwrap_or("?"),
        ),
        _ => String::new(),
    };
    match std::str::from_utf8(body) {
        Ok(text) => {
            let _ = writeln!(out, "body ({} bytes, UTF-8 text{cut}):", body.len());
            out.push_str(text);
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "body ({} bytes, not UTF-8, shown as hex{cut}):",
                body.len()
            );
            out.push_str(&hex_dump(body));
        }
    }
    out
}

fn show_json(message: &StreamMessage) -> Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in sorted_headers(&message.headers) {
        if let Value::Array(values) = headers
            .entry(name)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            values.push(Value::String(value));
        }
    }
    let body = message.payload.as_ref();
    let (encoding, text) = match std::str::from_utf8(body) {
        Ok(text) => ("utf-8", text.to_string()),
        Err(_) => ("base64", BASE64_STANDARD.encode(body)),
    };
    json!({
        "sequence": message.sequence,
        "subject": message.subject.as_str(),
        "stored_at": rfc3339(SystemTime::from(message.time)),
        "headers": headers,
        "body_encoding": encoding,
        "body": text,
    })
}

// ---------------------------------------------------------------- replay

/// Where a replay may go: not to a reserved subject the function's `emits`
/// does not name outright.
struct Guard {
    reserved: Reserved,
    emits: Option<Vec<String>>,
}

async fn replay(
    js: &jetstream::Context,
    place: &Place,
    guard: &Guard,
    args: &ReplayArgs,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let letters: Vec<anyhow::Result<StreamMessage>> = if args.all {
        let letters = scan(js, place).await?;
        if letters.is_empty() {
            println!(
                "no dead letters for {} ({})",
                place.function,
                place.describe()
            );
        }
        letters.into_iter().map(Ok).collect()
    } else {
        let mut seen = BTreeSet::new();
        let mut letters = Vec::new();
        for &seq in args.seq.iter().filter(|&&seq| seen.insert(seq)) {
            letters.push(get(js, place, seq).await);
        }
        letters
    };
    // Dead letters replayed by this run, as the followers of a parked
    // key's blocker or on their own: each goes once.
    let mut replayed = BTreeSet::new();
    // Every dead letter, read once the first blocker needs its followers.
    let mut all: Option<Vec<StreamMessage>> = None;
    for letter in letters {
        let message = match letter {
            Ok(message) if replayed.contains(&message.sequence) => continue,
            Ok(message) => message,
            Err(err) => {
                failed = true;
                eprintln!("jetrun: {err:#}");
                continue;
            }
        };
        replayed.insert(message.sequence);
        match replay_one(js, place, guard, &message, args.to.as_deref()).await {
            Ok(line) => println!("{line}"),
            Err(err) => {
                failed = true;
                eprintln!("jetrun: {err:#}");
                continue;
            }
        }
        let Some(blocker) = blocker_of(&message) else {
            continue;
        };
        if all.is_none() {
            all = Some(scan(js, place).await?);
        }
        for follower in parked_behind(all.as_deref().unwrap_or_default(), &blocker) {
            if !replayed.insert(follower.sequence) {
                continue;
            }
            match replay_one(js, place, guard, follower, args.to.as_deref()).await {
                Ok(line) => println!("{line}, parked behind {blocker}"),
                Err(err) => {
                    failed = true;
                    eprintln!("jetrun: {err:#}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The blocker a dead letter's key may be parked behind: the letter's own
/// original event, when it is a keyed function's (`Jetrun-Key`) and was
/// not itself parked.
fn blocker_of(message: &StreamMessage) -> Option<park::Blocker> {
    let h = |name| header(&message.headers, name);
    h(park::KEY_HEADER)?;
    if h("Jetrun-Reason") == Some("parked") {
        return None;
    }
    Some(park::Blocker {
        stream: h("Jetrun-Original-Stream")?.to_string(),
        sequence: h("Jetrun-Original-Sequence")?.parse().ok()?,
    })
}

/// The dead letters parked behind `blocker`, in their order.
fn parked_behind<'a>(
    letters: &'a [StreamMessage],
    blocker: &park::Blocker,
) -> impl Iterator<Item = &'a StreamMessage> {
    let behind = blocker.to_string();
    letters
        .iter()
        .filter(move |m| header(&m.headers, park::PARKED_BEHIND) == Some(behind.as_str()))
}

/// Republishes one dead letter, waits for the ack, then deletes it; the
/// line saying what happened.
async fn replay_one(
    js: &jetstream::Context,
    place: &Place,
    guard: &Guard,
    message: &StreamMessage,
    to: Option<&str>,
) -> anyhow::Result<String> {
    let seq = message.sequence;
    let plan = Plan::of(message, to).map_err(|why| anyhow!("DLQ {seq}: {why}"))?;
    guard
        .reserved
        .check(&plan.subject, guard.emits.as_deref())
        .map_err(|why| anyhow!("DLQ {seq}: not replayed: {why}"))?;
    if header(&message.headers, "Jetrun-Original-Headers-Base64").is_some() {
        eprintln!(
            "jetrun: note: DLQ {seq}'s original header block could not be read; it is replayed \
             with the headers that could"
        );
    }
    let body = match &plan.object {
        Some(object) => whole_body(js, object)
            .await
            .with_context(|| format!("DLQ {seq}: cannot read its whole body from {object}"))?,
        None => message.payload.clone(),
    };
    let subject = plan.subject.clone();
    let ack = match emit::publish(js, &subject, plan.headers, body).await {
        Ok(ack) => ack,
        Err(PublishError::NoStream { .. }) => {
            return Err(anyhow!(
                "DLQ {seq}: no stream captures subject {subject}; nothing was published"
            ))
        }
        Err(err) => {
            return Err(err).with_context(|| {
                format!("DLQ {seq}: cannot publish to {subject}; the dead letter is kept")
            })
        }
    };
    let stream = js.get_stream_no_info(&place.stream).await?;
    stream.delete_message(seq).await.with_context(|| {
        format!(
            "DLQ {seq} was replayed to {subject} (stream {} sequence {}) but could not be \
             deleted from {}; replaying it again within the duplicate window stores nothing new",
            ack.stream, ack.sequence, place.stream
        )
    })?;
    if let Some(object) = &plan.object {
        if let Err(err) = delete_body(js, object).await {
            eprintln!("jetrun: note: DLQ {seq} was replayed; its body {object} is kept: {err:#}");
        }
    }
    let mut line = format!(
        "replayed DLQ {seq} to {subject} (stream {} sequence {})",
        ack.stream, ack.sequence
    );
    if ack.duplicate {
        line.push_str(": duplicate, already replayed");
    }
    Ok(line)
}

/// Why a dead letter is not replayed.
#[derive(Debug, thiserror::Error)]
enum NotReplayable {
    #[error(
        "not replayed: its body is cut ({kept} of {len} bytes, Jetrun-Body-Truncated); the \
         whole event is in stream {stream} at sequence {sequence}, republish it from there"
    )]
    BodyCut {
        kept: usize,
        len: String,
        stream: String,
        sequence: String,
    },
    #[error("has no Jetrun-Original-Subject; pass --to SUBJECT")]
    NoSubject,
    #[error(transparent)]
    Header(#[from] BadHeader),
}

/// Where a replay goes and what it carries.
#[derive(Debug)]
struct Plan {
    subject: String,
    headers: HeaderMap,
    /// `bucket/name` of its whole body, when the dead letter's was cut.
    object: Option<String>,
}

/// The whole body kept at `bucket/name` of the dead letters' object store.
async fn whole_body(js: &jetstream::Context, object: &str) -> anyhow::Result<bytes::Bytes> {
    use tokio::io::AsyncReadExt as _;
    let (bucket, name) = object.split_once('/').unwrap_or((object, ""));
    let store = js.get_object_store(bucket).await?;
    let mut reader = store.get(name).await?;
    let mut body = Vec::new();
    reader.read_to_end(&mut body).await?;
    Ok(body.into())
}

/// Deletes every whole body kept for `function`'s dead letters (their
/// objects are named `<function>/<stream>@<created>/<sequence>`).
async fn delete_bodies_of(js: &jetstream::Context, function: &str) {
    use futures::StreamExt as _;
    let Ok(store) = js.get_object_store(crate::nats::DEAD_LETTER_BODIES).await else {
        return;
    };
    let Ok(mut objects) = store.list().await else {
        return;
    };
    let prefix = format!("{function}/");
    while let Some(Ok(object)) = objects.next().await {
        if object.name.starts_with(&prefix) {
            let _ = store.delete(&object.name).await;
        }
    }
}

async fn delete_body(js: &jetstream::Context, object: &str) -> anyhow::Result<()> {
    let (bucket, name) = object.split_once('/').unwrap_or((object, ""));
    js.get_object_store(bucket).await?.delete(name).await?;
    Ok(())
}

impl Plan {
    /// The replay of `message`: to `to` or its original subject, with its
    /// headers minus every `Jetrun-*` one and the dead letter's
    /// `Nats-Msg-Id`, plus the replay's own `Nats-Msg-Id`, and, for one
    /// a key may be parked behind, `Jetrun-Unparks`. A dead letter with a
    /// cut body is refused.
    fn of(message: &StreamMessage, to: Option<&str>) -> Result<Plan, NotReplayable> {
        let h = |name| header(&message.headers, name);
        let stream = h("Jetrun-Original-Stream").unwrap_or("-");
        let sequence = h("Jetrun-Original-Sequence").unwrap_or("-");
        let object = h("Jetrun-Body-Object").map(str::to_string);
        if let (Some(len), None) = (h("Jetrun-Body-Truncated"), &object) {
            return Err(NotReplayable::BodyCut {
                kept: message.payload.len(),
                len: len.to_string(),
                stream: stream.to_string(),
                sequence: sequence.to_string(),
            });
        }
        let subject = match (to, h("Jetrun-Original-Subject")) {
            (Some(to), _) => to.to_string(),
            // A delayed event the relay could not store: to its own
            // subject, now that its time is past.
            (None, Some(crate::delayed::DUE)) => match h(crate::delayed::FOR_SUBJECT) {
                Some(subject) => subject.to_string(),
                None => return Err(NotReplayable::NoSubject),
            },
            (None, Some(original)) => original.to_string(),
            (None, None) => return Err(NotReplayable::NoSubject),
        };
        let mut headers = HeaderMap::new();
        for (name, values) in message.headers.iter() {
            let text: &str = name.as_ref();
            if text.to_ascii_lowercase().starts_with("jetrun-") || is_server_directive(text) {
                continue;
            }
            for value in values {
                headers.add(name.clone(), value.clone());
            }
        }
        // The dead letter's own id names the original event's stream (as
        // created: one made again is another) and sequence; a dead letter
        // from before it did is named by its stream and sequence alone.
        let id = match h("Nats-Msg-Id") {
            Some(letter) => format!("replay:{}:{letter}", message.sequence),
            None => format!("replay:{}:{stream}:{sequence}", message.sequence),
        };
        headers.put(HeaderName::from_static("Nats-Msg-Id"), &id)?;
        // A delayed event's own TTL, which it carried while held.
        if h("Jetrun-Original-Subject") == Some(crate::delayed::DUE) {
            if let Some(ttl) = h(crate::delayed::FOR_TTL) {
                headers.put(HeaderName::from_static("Nats-TTL"), ttl)?;
            }
        }
        if let Some(blocker) = blocker_of(message) {
            headers.put(HeaderName::from_static(park::UNPARKS), &blocker.to_string())?;
        }
        Ok(Plan {
            subject,
            headers,
            object,
        })
    }
}

// ---------------------------------------------------------------- purge

async fn purge(
    js: &jetstream::Context,
    place: &Place,
    older_than: Option<&Age>,
) -> anyhow::Result<ExitCode> {
    let Some(stream) = open(js, place).await? else {
        println!("purged 0 dead letters of {}", place.function);
        return Ok(ExitCode::SUCCESS);
    };
    if older_than.is_none() && !place.shared {
        let purged = stream
            .purge()
            .filter(&place.subject)
            .await
            .with_context(|| format!("cannot purge {}", place.describe()))?
            .purged;
        delete_bodies_of(js, &place.function).await;
        println!(
            "purged {} of {}",
            count(purged, "dead letter"),
            place.function
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cutoff = older_than.map(|age| SystemTime::now() - age.duration);
    let letters = scan(js, place).await?;
    let mut purged = 0;
    let mut kept = 0;
    for message in &letters {
        let failed_at = failed_at(message);
        if cutoff.is_some_and(|cutoff| failed_at >= cutoff) {
            kept += 1;
            continue;
        }
        if let Some(object) = header(&message.headers, "Jetrun-Body-Object") {
            if let Err(err) = delete_body(js, object).await {
                eprintln!("jetrun: note: cannot delete {object}: {err:#}");
            }
        }
        // Gone already (replayed or purged meanwhile) is as good as deleted.
        match stream.delete_message(message.sequence).await {
            Ok(_) => purged += 1,
            Err(err) => {
                let gone = matches!(
                    err.kind(),
                    async_nats::jetstream::stream::DeleteMessageErrorKind::JetStream(e)
                        if e.error_code() == ErrorCode::NO_MESSAGE_FOUND
                            || e.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                );
                if !gone {
                    return Err(err).with_context(|| {
                        format!(
                            "cannot delete DLQ {} after purging {purged}",
                            message.sequence
                        )
                    });
                }
            }
        }
    }
    match older_than {
        Some(age) => println!(
            "purged {} of {} older than {} ({kept} newer kept)",
            count(purged, "dead letter"),
            place.function,
            age.text
        ),
        None => println!(
            "purged {} of {}",
            count(purged, "dead letter"),
            place.function
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// When the dead letter's event failed: `Jetrun-Failed-At`, else when it
/// was stored.
fn failed_at(message: &StreamMessage) -> SystemTime {
    header(&message.headers, "Jetrun-Failed-At")
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .unwrap_or_else(|| SystemTime::from(message.time))
}

// ---------------------------------------------------------------- shared

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(
        sequence: u64,
        subject: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> StreamMessage {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, *value);
        }
        StreamMessage {
            subject: subject.into(),
            sequence,
            headers: map,
            payload: bytes::Bytes::copy_from_slice(body),
            time: SystemTime::UNIX_EPOCH.into(),
        }
    }

    const LETTER: &[(&str, &str)] = &[
        ("X-Tenant", "acme"),
        ("ce-id", "order-7"),
        ("Jetrun-Function", "reserve-stock"),
        ("Jetrun-Reason", "permanent"),
        ("Jetrun-Error", "order has no items"),
        ("Jetrun-Attempts", "1"),
        ("Jetrun-Original-Subject", "order.placed"),
        ("Jetrun-Original-Stream", "ORDERS"),
        ("Jetrun-Original-Sequence", "7"),
        ("Jetrun-Failed-At", "2024-05-01T10:00:00.000Z"),
        ("Nats-Msg-Id", "ORDERS@1714557600000000000:7:reserve-stock"),
    ];

    #[test]
    fn a_delayed_event_the_relay_dead_lettered_is_replayed_to_its_own_subject() {
        let letter: &[(&str, &str)] = &[
            ("ce-id", "remind-7"),
            ("Jetrun-Delayed-Subject", "order.reminder"),
            ("Jetrun-Delayed-Id", "remind-7"),
            ("Jetrun-Delayed-TTL", "1h"),
            ("Jetrun-Function", "jetrun-delayed"),
            ("Jetrun-Reason", "exhausted"),
            ("Jetrun-Original-Subject", "jetrun.delayed.due"),
            ("Jetrun-Original-Stream", "JETRUN_SCHEDULES"),
            ("Jetrun-Original-Sequence", "9"),
        ];
        let plan = Plan::of(&message(3, "dlq.jetrun-delayed", letter, b"{}"), None).unwrap();
        assert_eq!(plan.subject, "order.reminder");
        assert_eq!(header(&plan.headers, "Jetrun-Delayed-Subject"), None);
        assert_eq!(header(&plan.headers, "Nats-TTL"), Some("1h"));
        assert_eq!(header(&plan.headers, "ce-id"), Some("remind-7"));
        let without: Vec<_> = (letter.iter())
            .filter(|(n, _)| *n != "Jetrun-Delayed-Subject")
            .copied()
            .collect();
        assert!(Plan::of(&message(3, "dlq.jetrun-delayed", &without, b"{}"), None).is_err());
        let config = jetrun_config::parse(
            "[dead_letters]\nprefix = \"team.dlq\"\n[streams.EV]\nsubjects = [\"ev.>\"]\n\
             [functions.f]\nsubjects = [\"ev.x\"]\nexec = [\"true\"]\n",
            &Default::default(),
            std::path::Path::new("."),
            &[],
        )
        .expect("valid config");
        let place = Place::of_relay(&config);
        assert_eq!(
            (place.subject.as_str(), place.stream.as_str()),
            (
                "team.dlq.jetrun-delayed",
                config.dead_letters.stream.as_str()
            )
        );
    }

    #[test]
    fn a_replay_drops_jetrun_headers_and_carries_its_own_id() {
        let plan = Plan::of(&message(12, "dlq.reserve-stock", LETTER, b"{}"), None).unwrap();
        assert_eq!(plan.subject, "order.placed");
        let mut names: Vec<String> = plan
            .headers
            .iter()
            .map(|(n, _)| AsRef::<str>::as_ref(n).to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["Nats-Msg-Id", "X-Tenant", "ce-id"]);
        assert_eq!(
            header(&plan.headers, "Nats-Msg-Id"),
            Some("replay:12:ORDERS@1714557600000000000:7:reserve-stock")
        );
        let older: Vec<_> = LETTER
            .iter()
            .filter(|(n, _)| *n != "Nats-Msg-Id")
            .copied()
            .collect();
        let plan = Plan::of(&message(12, "dlq.reserve-stock", &older, b"{}"), None).unwrap();
        assert_eq!(
            header(&plan.headers, "Nats-Msg-Id"),
            Some("replay:12:ORDERS:7"),
            "a dead letter without an id of its own"
        );
        let to = Plan::of(&message(12, "dlq.x", LETTER, b""), Some("order.retry")).unwrap();
        assert_eq!(to.subject, "order.retry");
    }

    #[test]
    fn a_parked_keys_blocker_unparks_it_and_brings_its_followers() {
        let mut blocker = LETTER.to_vec();
        blocker.push(("Jetrun-Key", "a-1"));
        let first = message(12, "dlq.reserve-stock", &blocker, b"{}");
        let plan = Plan::of(&first, None).unwrap();
        assert_eq!(header(&plan.headers, "Jetrun-Unparks"), Some("ORDERS:7"));
        assert_eq!(header(&plan.headers, "Jetrun-Key"), None);
        let unkeyed = Plan::of(&message(12, "dlq.reserve-stock", LETTER, b"{}"), None).unwrap();
        assert_eq!(header(&unkeyed.headers, "Jetrun-Unparks"), None);
        let follower = |seq: u64, behind: &'static str| {
            let mut headers: Vec<(&str, &str)> = LETTER
                .iter()
                .filter(|(n, _)| *n != "Jetrun-Reason")
                .copied()
                .collect();
            headers.extend([
                ("Jetrun-Reason", "parked"),
                ("Jetrun-Key", "a-1"),
                ("Jetrun-Parked-Behind", behind),
            ]);
            message(seq, "dlq.reserve-stock", &headers, b"{}")
        };
        let parked = follower(13, "ORDERS:7");
        assert_eq!(blocker_of(&parked), None, "a parked letter parks nothing");
        assert_eq!(
            header(&Plan::of(&parked, None).unwrap().headers, "Jetrun-Unparks"),
            None
        );
        let letters = [
            first,
            follower(13, "ORDERS:7"),
            follower(14, "ORDERS:9"),
            follower(15, "ORDERS:7"),
        ];
        let blocker = blocker_of(&letters[0]).unwrap();
        let behind: Vec<u64> = parked_behind(&letters, &blocker)
            .map(|m| m.sequence)
            .collect();
        assert_eq!(behind, [13, 15]);
    }

    #[test]
    fn a_cut_body_is_not_replayed() {
        let mut headers = LETTER.to_vec();
        headers.push(("Jetrun-Body-Truncated", "2000000"));
        let err = Plan::of(&message(3, "dlq.x", &headers, b"abc"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not replayed: its body is cut (3 of 2000000 bytes, Jetrun-Body-Truncated); the \
             whole event is in stream ORDERS at sequence 7, republish it from there"
        );
    }

    #[test]
    fn no_original_subject_needs_to() {
        let err = Plan::of(&message(3, "dlq.x", &[("X", "y")], b""), None).unwrap_err();
        assert!(err.to_string().contains("pass --to"), "{err}");
    }

    #[test]
    fn list_rows_and_json() {
        let summary = Summary::of(&message(12, "dlq.reserve-stock", LETTER, b"{}"));
        let table = list_table(std::slice::from_ref(&summary));
        assert_eq!(
            table,
            "SEQ  FAILED AT                 REASON     ATTEMPTS  SUBJECT       ERROR\n\
             12   2024-05-01T10:00:00.000Z  permanent  1         order.placed  order has no items\n"
        );
        let json = summary.to_json();
        assert_eq!(json["attempts"], 1);
        assert_eq!(json["original_sequence"], 7);
        assert_eq!(json["body_truncated"], Value::Null);
        assert_eq!(json["error"], "order has no items");
        assert_eq!(json["stored_at"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn errors_are_cut_to_one_short_line() {
        assert_eq!(first_line("short\nsecond", 80), "short");
        let long = "é".repeat(100);
        let cut = first_line(&long, 80);
        assert_eq!(cut.chars().count(), 80);
        assert!(cut.ends_with("..."));
    }

    #[test]
    fn show_prints_jetrun_headers_first_and_binary_as_hex() {
        let text = show_text(&message(5, "dlq.reserve-stock", LETTER, b"\x00\xffab"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "DLQ sequence 5 (subject dlq.reserve-stock, stored 1970-01-01T00:00:00.000Z)"
        );
        assert_eq!(lines[2], "  Jetrun-Function: reserve-stock");
        assert_eq!(lines[9], "  Jetrun-Failed-At: 2024-05-01T10:00:00.000Z");
        assert_eq!(lines[10], "  ce-id: order-7");
        assert_eq!(lines[13], "body (4 bytes, not UTF-8, shown as hex):");
        assert_eq!(
            lines[14],
            "00000000  00 ff 61 62                                       |..ab|"
        );
        let text = show_text(&message(5, "dlq.x", &[], b"{\"n\":1}"));
        assert!(
            text.ends_with("body (7 bytes, UTF-8 text):\n{\"n\":1}\n"),
            "{text}"
        );
        let json = show_json(&message(5, "dlq.x", LETTER, b"\xff"));
        assert_eq!(json["body_encoding"], "base64");
        assert_eq!(json["body"], "/w==");
        assert_eq!(json["headers"]["Jetrun-Attempts"][0], "1");
    }

    #[test]
    fn the_place_of_dead_letters() {
        let toml = r#"
[streams.ORDERS]
subjects = ["order.>"]
[functions.a]
subjects = ["order.placed"]
builtin = "reserve_stock"
[functions.b]
subjects = ["order.paid"]
builtin = "reserve_stock"
dead_letter = "order.failed"
[functions.c]
subjects = ["order.shipped"]
builtin = "reserve_stock"
dead_letter = "order.failed"
"#;
        let config = jetrun_config::parse(
            toml,
            &Default::default(),
            std::path::Path::new("/"),
            jetrun_functions::BUILTINS,
        )
        .unwrap();
        let place = |name: &str| Place::of(&config, &config.functions[name]);
        assert_eq!(
            place("a"),
            Place {
                function: "a".into(),
                subject: "dlq.a".into(),
                stream: "DLQ".into(),
                shared: false
            }
        );
        let b = place("b");
        assert_eq!((b.stream.as_str(), b.shared), ("ORDERS", true));
        let from =
            |function: &str| message(1, "order.failed", &[("Jetrun-Function", function)], b"");
        assert!(b.holds(&from("b")));
        assert!(!b.holds(&from("c")));
        assert!(!place("a").holds(&from("a")), "another subject");
    }

    #[test]
    fn tables_align_columns() {
        let out = table(
            &["A", "LONG HEADER", "C"],
            &[vec!["wide cell".into(), "x".into(), "last".into()]],
        );
        assert_eq!(
            out,
            "A          LONG HEADER  C\nwide cell  x            last\n"
        );
    }
}
