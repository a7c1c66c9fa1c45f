//! `jetrun replay FUNCTION`: runs a function over a range of its stream's
//! history in this process, through an ordered consumer of its own (the
//! function's durable consumer is not touched), with the handler a live
//! delivery uses (its role and middleware around it) and what it emits
//! published as a live delivery publishes it: same ids, so within the target
//! stream's duplicate window nothing is stored twice. Failures are reported,
//! not retried or dead-lettered.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::anyhow;
use async_nats::jetstream::stream::RetentionPolicy;
use clap::ArgGroup;
use jetrun_config::{Config, FunctionConfig, StreamBinding};
use jetrun_functions::{Context, Failure, Function};
use tracing::Instrument as _;

use super::args::{ConfigArg, InvalidValue};
use super::output::count;
use super::session::{self, Stopped, EXIT_INTERRUPTED, EXIT_USAGE};
use crate::emit::{Emitter, Reserved};
use crate::layers;
use crate::metrics::Metrics;
use crate::nats::{self, History, Item, Start, Stored};

/// `jetrun replay --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun replay reserve-stock --from-seq 1200 -c config/jetrun.toml
  jetrun replay reserve-stock --from-seq 1200 --until-seq 1300
  jetrun replay order_summary --since 1h -c config/examples/orders-cqrs.toml
  jetrun replay order_summary --since 2024-05-01T08:00:00Z -c config/examples/orders-cqrs.toml

Each event in range on the function's subjects is run, one at a time and in
order, through the function's handler as a live delivery runs it (JSON check,
aggregate or projection role, timeout), with JETRUN_ATTEMPT=1. What it emits
is published with the ids a live delivery gives it: within the target
stream's duplicate window (2 minutes unless the stream says otherwise) the
stream stores nothing twice. The function's durable consumer is not touched:
`jetrun run` can go on meanwhile.

A failed event is printed with its sequence and reason, and is neither
retried nor dead-lettered; the replay goes on with the next one. Exit status:
0 when every event succeeded, 1 when one failed (or NATS could not be used),
2 for a usage or config error (an unknown function; a request function, which
has no stream; a work-queue stream, which keeps no history), 130 when
interrupted (it says where to resume).";

/// The arguments of `jetrun replay`.
#[derive(clap::Args)]
#[command(group(ArgGroup::new("start").required(true).args(["from_seq", "since"])))]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The function, as named in `[functions.*]`.
    function: String,
    /// Start at this stream sequence (inclusive).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    from_seq: Option<u64>,
    /// Start at the first event stored at or after TIME: RFC 3339
    /// (`2024-05-01T08:00:00Z`) or a duration ago (`1h`, `30m`, `2d`).
    #[arg(long, value_name = "TIME", value_parser = since)]
    since: Option<Since>,
    /// Stop after this stream sequence (inclusive); by default, the stream's
    /// last sequence when the replay starts.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    until_seq: Option<u64>,
    /// Print the summary as a JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

/// `--since` as given, and the time it means.
#[derive(Debug, Clone)]
struct Since {
    time: SystemTime,
    text: String,
}

fn since(text: &str) -> Result<Since, InvalidValue> {
    since_at(text, SystemTime::now())
}

/// `text` as a time: RFC 3339 (any offset; no offset means UTC), or a
/// duration before `now`.
fn since_at(text: &str, now: SystemTime) -> Result<Since, InvalidValue> {
    let time = if let Ok(ago) = humantime::parse_duration(text) {
        now.checked_sub(ago)
            .ok_or_else(|| InvalidValue(format!("{text:?} ago is before the clock can tell")))?
    } else if let Ok(time) = async_nats::datetime::parse_rfc3339(text) {
        SystemTime::from(time)
    } else if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        time
    } else {
        return Err(InvalidValue(format!(
            "{text:?} is neither a time (RFC 3339, like 2024-05-01T08:00:00Z) nor a duration \
             ago (like 1h or 30m)"
        )));
    };
    Ok(Since {
        time,
        text: text.to_string(),
    })
}

/// Runs `jetrun replay`.
pub(crate) async fn replay(args: ReplayArgs) -> ExitCode {
    let loaded = match session::load(&args.config.path()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    session::exit(
        async {
            check(&loaded.config, &args)?;
            let (function, handler) = session::handler(&loaded, &args.function)?;
            let function = function.clone();
            let range = Range {
                start: match (args.from_seq, &args.since) {
                    (Some(from), _) => Start::Sequence(from),
                    (None, Some(since)) => Start::Time(since.time),
                    (None, None) => Start::Sequence(1),
                },
                since: args.since.map(|s| s.text),
                until: args.until_seq,
            };
            let json = args.json;
            Ok(run(&loaded.config, function, handler, range, json).await?)
        }
        .await,
    )
}

/// What makes a replay impossible before NATS is asked anything.
fn check(config: &Config, args: &ReplayArgs) -> Result<(), Stopped> {
    let function = session::function(config, &args.config.path(), &args.function)?;
    if let Some(request) = function.request_subject() {
        return Err(Stopped::Usage(format!(
            "function {} answers requests on {request}: it has no stream, so there is no \
             history to replay",
            function.name
        )));
    }
    if let (Some(from), Some(until)) = (args.from_seq, args.until_seq) {
        if until < from {
            return Err(Stopped::Usage(format!(
                "--until-seq {until} is before --from-seq {from}: nothing to replay"
            )));
        }
    }
    Ok(())
}

/// The range asked for.
struct Range {
    start: Start,
    /// `--since` as typed, to be said back.
    since: Option<String>,
    until: Option<u64>,
}

async fn run(
    config: &Config,
    function: FunctionConfig,
    handler: Arc<dyn Function>,
    range: Range,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let js = session::connect(&config.nats).await?;
    let Some(binding) = function.binding().cloned() else {
        return Err(anyhow!("function {} has no stream", function.name));
    };
    let stream = &binding.stream;
    let Some(info) = nats::stream_info(&js, stream).await? else {
        return Err(anyhow!(
            "stream {stream} of function {} does not exist; has `jetrun run` run with this config?",
            function.name
        ));
    };
    if info.config.retention == RetentionPolicy::WorkQueue {
        eprintln!(
            "jetrun: stream {stream} has retention workqueue: it keeps no history once an event \
             is acknowledged, and refuses a second consumer; there is nothing to replay"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let created = nats::created_ns(&info);
    let state = &info.state;
    let last = match range.until {
        Some(until) if until > state.last_sequence => {
            eprintln!(
                "jetrun: note: stream {stream} ends at sequence {}; replaying up to it",
                state.last_sequence
            );
            state.last_sequence
        }
        Some(until) => until,
        None => state.last_sequence,
    };
    if let Start::Sequence(from) = range.start {
        if from < state.first_sequence && state.messages > 0 {
            eprintln!(
                "jetrun: note: stream {stream} holds sequences {} to {} only; what came before \
                 is no longer stored",
                state.first_sequence, state.last_sequence
            );
        }
    }

    let metrics = Metrics::new();
    let handles = metrics.for_function(&function.name);
    let handler = layers::stack(&function, handler, &js, &metrics, &handles);
    let reserved = Arc::new(Reserved::of(config));
    let emitter = Emitter::new(&js, &function, reserved, &handles);
    let mut history = History::open(
        &js,
        stream,
        &binding.subjects,
        range.start,
        last,
        &format!("jetrun replay {}", function.name),
    )
    .await?;
    let first = match range.start {
        Start::Sequence(from) => Some(from),
        Start::Time(_) => None,
    };
    let mut tally = Tally::default();
    let mut progress = Progress::new(&function.name, first, last);
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let mut resume_at = first;
    let interrupted = loop {
        let step = async {
            let Some(item) = history.next().await? else {
                return anyhow::Ok(None);
            };
            Ok(Some(match item {
                Item::Message(stored) => {
                    let result = replay_one(
                        &*handler,
                        &function.name,
                        &binding,
                        &emitter,
                        &stored,
                        created,
                    )
                    .await;
                    let subject = stored.message.subject.to_string();
                    (stored.sequence, subject, result.map_err(|f| f.message))
                }
                Item::Unreadable(unreadable) => (
                    unreadable.sequence,
                    unreadable.subject.clone(),
                    Err(unreadable.to_string()),
                ),
            }))
        };
        tokio::select! {
            step = step => match step? {
                None => break false,
                Some((sequence, subject, result)) => {
                    resume_at = Some(sequence + 1);
                    tally.events += 1;
                    match result {
                        Ok(duplicates) => {
                            tally.succeeded += 1;
                            tally.duplicates += duplicates as u64;
                        }
                        Err(why) => {
                            tally.failed += 1;
                            progress.clear();
                            eprintln!("jetrun: sequence {sequence} ({subject}) failed: {why}");
                        }
                    }
                    progress.update(sequence, &tally);
                }
            },
            _ = &mut interrupt => break true,
        }
    };
    progress.clear();
    tally.emitted = handles.emitted.get();
    match json {
        true => println!(
            "{}",
            serde_json::json!({
                "function": function.name,
                "stream": stream,
                "from_seq": first,
                "since": range.since,
                "until_seq": last,
                "events": tally.events,
                "succeeded": tally.succeeded,
                "failed": tally.failed,
                "emitted": tally.emitted,
                "duplicates": tally.duplicates,
                "interrupted": interrupted,
            })
        ),
        false => println!("{}", summary(&function.name, stream, &range, last, &tally)),
    }
    if interrupted {
        let resume = match resume_at {
            Some(at) => format!("; resume with --from-seq {at}"),
            None => String::new(),
        };
        eprintln!("jetrun: interrupted{resume}");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs one stored event through the handler and publishes what it
/// emitted; how many of those the target streams already held.
async fn replay_one(
    handler: &dyn Function,
    function: &str,
    binding: &StreamBinding,
    emitter: &Emitter,
    stored: &Stored,
    stream_created: u64,
) -> Result<usize, Failure> {
    let event = stored.event()?;
    let ctx = Context {
        function: function.to_string(),
        attempt: 1,
        subject: stored.message.subject.to_string(),
        stream: binding.stream.clone(),
        stream_created,
        sequence: stored.sequence,
        trace: None,
    };
    let span = tracing::info_span!(
        "replay",
        function = %function,
        event_id = %event.id,
        event_type = %event.event_type,
        sequence = stored.sequence,
    );
    async {
        let output = handler.call(&event, &ctx).await?;
        emitter.publish(&event, &output.emits).await
    }
    .instrument(span)
    .await
}

/// What a replay did so far.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    events: u64,
    succeeded: u64,
    failed: u64,
    emitted: u64,
    /// Emitted events the target streams already held.
    duplicates: u64,
}

/// The line printed at the end.
fn summary(function: &str, stream: &str, range: &Range, last: u64, tally: &Tally) -> String {
    let span = match (&range.since, range.start) {
        (Some(since), _) => format!("since {since}, up to sequence {last}"),
        (None, Start::Sequence(from)) => format!("sequences {from} to {last}"),
        (None, Start::Time(_)) => format!("up to sequence {last}"),
    };
    let mut line = format!(
        "replay of {function} (stream {stream}, {span}): {}, {} succeeded, {} failed, {} emitted",
        count(tally.events, "event"),
        tally.succeeded,
        tally.failed,
        tally.emitted
    );
    if tally.duplicates > 0 {
        line.push_str(&format!(
            " ({} already stored, dropped as duplicates)",
            tally.duplicates
        ));
    }
    line
}

/// How far a replay is, on stderr: one line redrawn in place at a terminal,
/// else a line now and then.
struct Progress {
    function: String,
    first: Option<u64>,
    last: u64,
    tty: bool,
    shown: Option<Instant>,
    drawn: bool,
}

/// How often the line is redrawn at a terminal.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// How often a line is printed when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    fn new(function: &str, first: Option<u64>, last: u64) -> Progress {
        Progress {
            function: function.to_string(),
            first,
            last,
            tty: std::io::stderr().is_terminal(),
            shown: None,
            drawn: false,
        }
    }

    fn update(&mut self, at: u64, tally: &Tally) {
        let first = *self.first.get_or_insert(at);
        let every = if self.tty { REDRAW_EVERY } else { LINE_EVERY };
        let now = Instant::now();
        match self.shown {
            Some(shown) if now.duration_since(shown) < every => return,
            // Not a line for a replay that is over within the first wait.
            None if !self.tty => {
                self.shown = Some(now);
                return;
            }
            _ => {}
        }
        self.shown = Some(now);
        let text = progress_text(&self.function, first, self.last, at, tally);
        let mut stderr = std::io::stderr().lock();
        if self.tty {
            let _ = write!(stderr, "\r\x1b[K{text}");
            self.drawn = true;
        } else {
            let _ = writeln!(stderr, "{text}");
        }
        let _ = stderr.flush();
    }

    /// Takes the line off the terminal, before other output.
    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.drawn = false;
        }
    }
}

fn progress_text(function: &str, first: u64, last: u64, at: u64, tally: &Tally) -> String {
    let done = at.saturating_sub(first) + 1;
    let all = last.saturating_sub(first) + 1;
    let percent = (done.min(all) * 100) / all.max(1);
    format!(
        "replaying {function}: sequence {at} of {first} to {last} ({percent}%), {}, {} failed",
        count(tally.events, "event"),
        tally.failed
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReplayArgs,
    }

    fn parse(argv: &[&str]) -> Result<ReplayArgs, clap::Error> {
        let argv = std::iter::once("replay").chain(argv.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    fn config() -> Config {
        let toml = r#"
[streams.ORDERS]
subjects = ["order.>"]
[functions.reserve]
subjects = ["order.placed"]
builtin = "reserve_stock"
[functions.ask]
request = "cmd.order.ask"
builtin = "reserve_stock"
"#;
        jetrun_config::parse(
            toml,
            &Default::default(),
            std::path::Path::new("/"),
            jetrun_functions::BUILTINS,
        )
        .unwrap()
    }

    #[test]
    fn a_start_is_required_and_only_one() {
        assert!(parse(&["reserve", "--from-seq", "3"]).is_ok());
        assert!(parse(&["reserve", "--since", "1h", "--until-seq", "9"]).is_ok());
        for argv in [
            &["reserve"][..],
            &["reserve", "--from-seq", "3", "--since", "1h"],
            &["reserve", "--from-seq", "0"],
            &["reserve", "--since", "yesterday"],
        ] {
            let err = parse(argv).err().unwrap_or_else(|| panic!("{argv:?}"));
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn since_is_a_time_or_a_duration_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_550_400);
        let at = |text| {
            since_at(text, now)
                .map(|s| s.time)
                .map_err(|e| e.to_string())
        };
        assert_eq!(at("1h"), Ok(now - Duration::from_secs(3600)));
        let eight = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_550_400 - 7200);
        assert_eq!(at("2024-05-01T06:00:00Z"), Ok(eight));
        assert_eq!(at("2024-05-01T08:00:00+02:00"), Ok(eight));
        assert_eq!(at("2024-05-01 06:00:00"), Ok(eight));
        assert_eq!(
            at("soon").unwrap_err(),
            "\"soon\" is neither a time (RFC 3339, like 2024-05-01T08:00:00Z) nor a duration \
             ago (like 1h or 30m)"
        );
    }

    #[test]
    fn usage_errors_are_found_before_nats() {
        let config = config();
        let with =
            |argv: &[&str]| check(&config, &parse(argv).unwrap()).map_err(|err| err.to_string());
        assert_eq!(with(&["reserve", "--from-seq", "1"]), Ok(()));
        assert_eq!(
            with(&["nope", "--from-seq", "1", "-c", "j.toml"]).unwrap_err(),
            "j.toml declares no function \"nope\"; its functions: ask, reserve"
        );
        assert_eq!(
            with(&["ask", "--from-seq", "1"]).unwrap_err(),
            "function ask answers requests on cmd.order.ask: it has no stream, so there is no \
             history to replay"
        );
        assert_eq!(
            with(&["reserve", "--from-seq", "5", "--until-seq", "4"]).unwrap_err(),
            "--until-seq 4 is before --from-seq 5: nothing to replay"
        );
    }

    #[test]
    fn the_summary_says_what_was_done() {
        let tally = Tally {
            events: 3,
            succeeded: 2,
            failed: 1,
            emitted: 2,
            duplicates: 2,
        };
        let range = Range {
            start: Start::Sequence(3),
            since: None,
            until: None,
        };
        assert_eq!(
            summary("reserve", "ORDERS", &range, 7, &tally),
            "replay of reserve (stream ORDERS, sequences 3 to 7): 3 events, 2 succeeded, \
             1 failed, 2 emitted (2 already stored, dropped as duplicates)"
        );
        let range = Range {
            start: Start::Time(SystemTime::UNIX_EPOCH),
            since: Some("1h".into()),
            until: None,
        };
        assert_eq!(
            summary("reserve", "ORDERS", &range, 7, &Tally::default()),
            "replay of reserve (stream ORDERS, since 1h, up to sequence 7): 0 events, \
             0 succeeded, 0 failed, 0 emitted"
        );
    }

    #[test]
    fn progress_is_by_sequence() {
        let tally = Tally {
            events: 10,
            failed: 1,
            ..Tally::default()
        };
        assert_eq!(
            progress_text("reserve", 101, 300, 150, &tally),
            "replaying reserve: sequence 150 of 101 to 300 (25%), 10 events, 1 failed"
        );
        assert!(progress_text("r", 5, 5, 5, &tally).contains("(100%)"));
    }
}
