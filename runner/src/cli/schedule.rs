//! `jetrun schedule list|trigger|cancel`: the scheduled functions and the
//! delayed events, read from where a runner keeps them (docs/schedules.md):
//! each schedule's holder message on `jetrun.schedules.<service>.<function>`
//! and its ticks on `jetrun.schedule.<function>`, each delayed event on
//! `jetrun.delayed.hold.<token>` until its time, all in the schedules stream.
//! `list` says, per function, its schedule, its next fire time, the last tick
//! and whether the stored schedule matches the config; `trigger` publishes
//! one tick now; `list --delayed` lists the delayed events waiting, and
//! `cancel` removes one not yet stored ([`crate::delayed`]). What a holder, a tick
//! and a delayed event say, the rows and the trigger's headers are pure
//! functions; NATS is only in the `async` ones.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, SubsecRound as _, Utc};
use clap::Subcommand;
use futures::TryStreamExt as _;
use jetrun_config::name::{schedule_holder_subject, schedule_tick_subject, SCHEDULES_STREAM};
use jetrun_config::schedule::Schedule;
use jetrun_config::{Config, FunctionConfig, ScheduleConfig};
use serde_json::{json, Value};

use super::args::{ConfigArg, FunctionArg};
use super::output::table;
use super::session::{self, Stopped};
use crate::delayed;
use crate::emit::{self, PublishError};
use crate::envelope::{self, Origin};
use crate::headers::{name, BadHeader, Put};
use crate::schedule::{JETRUN_SCHEDULE, JETRUN_SCHEDULED_AT, JETRUN_TIME_ZONE};

/// `jetrun schedule --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun schedule list -c config/examples/schedules.toml
  jetrun schedule trigger nightly-report -c config/examples/schedules.toml
  jetrun schedule list --delayed
  jetrun schedule cancel remind-1001

A scheduled function's ticks are events on jetrun.schedule.<function> in
stream JETRUN_SCHEDULES; its schedule is the message a runner stores on
jetrun.schedules.<service>.<function>. A delayed event (jetrun publish
--delay, an emit with \"delay\" or \"at\") waits there on
jetrun.delayed.hold.<token> until its time (docs/schedules.md).";

/// Exit status of `list` when a stored schedule is missing or differs from
/// the config: not the 1 of NATS unreachable, as `jetrun status` has it.
const EXIT_NOT_STORED: u8 = 3;

/// Exit status of `cancel` when no event with the id is held: NATS
/// answered, and what was asked for is not there (as [`EXIT_NOT_STORED`]).
const EXIT_NOT_HELD: u8 = 3;

/// The arguments of `jetrun schedule`.
#[derive(clap::Args)]
pub(crate) struct ScheduleArgs {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// List the scheduled functions.
    ///
    /// One row per scheduled function of the config: its schedule and time
    /// zone, its next fire time, the last tick stored (its scheduled time),
    /// and whether the schedule stored in NATS is the config's (yes,
    /// missing, differs). Without a config file, one row per schedule stored
    /// in stream JETRUN_SCHEDULES. Exit status 3 when a stored schedule is
    /// missing or differs (no runner has started with this config, or not
    /// since it changed).
    ///
    /// With --delayed, the delayed events waiting in the schedules stream
    /// instead, soonest first: each held one (state held) and each whose
    /// time came that no runner has stored on its subject yet (state due).
    #[command(after_help = LIST_EXAMPLES, visible_alias = "ls")]
    List(ListArgs),
    /// Fire one tick of a scheduled function now.
    ///
    /// The tick is published to jetrun.schedule.<function> with
    /// Jetrun-Scheduled-At set to now: the function handles it like any
    /// tick (retries, dead letters, metrics), once, on whichever replica
    /// pulls it. The schedule itself is left as it is.
    #[command(after_help = TRIGGER_EXAMPLES)]
    Trigger(TriggerArgs),
    /// Cancel a delayed event not yet stored on its subject.
    ///
    /// Removes the event with id ID from the schedules stream, held or due
    /// (its time came while no runner was up), so it is never stored on its
    /// subject, and prints what it removed. Exit status 3 when there is
    /// none: already delivered (or being delivered), cancelled, or never
    /// delayed. An event a runner stores while it is being cancelled may be
    /// delivered all the same.
    #[command(after_help = CANCEL_EXAMPLES)]
    Cancel(CancelArgs),
}

const LIST_EXAMPLES: &str = "\
Examples:
  jetrun schedule list -c config/examples/schedules.toml
  jetrun schedule list -c config/examples/schedules.toml --json | jq -r '.[].next'
  jetrun schedule list --delayed
  jetrun schedule list --delayed --json | jq -r '.[] | \"\\(.due) \\(.id)\"'";

const TRIGGER_EXAMPLES: &str = "\
Examples:
  jetrun schedule trigger nightly-report -c config/examples/schedules.toml
  jetrun schedule trigger nightly-report -c config/examples/schedules.toml --json";

const CANCEL_EXAMPLES: &str = "\
Examples:
  jetrun publish --delay 30m --id remind-1001 order.reminder '{\"order_id\": 1001}'
  jetrun schedule cancel remind-1001
  jetrun schedule cancel remind-1001 --json";

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// List the delayed events waiting in the schedules stream instead
    /// (`jetrun publish --delay`, emits with "delay" or "at").
    #[arg(long)]
    delayed: bool,
}

#[derive(clap::Args)]
struct TriggerArgs {
    #[command(flatten)]
    target: FunctionArg,
    /// Print `{"function", "id", "scheduled_at", "stream", "sequence"}`.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CancelArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The delayed event's id (`ce-id`), as `jetrun publish` printed it or
    /// `jetrun schedule list --delayed` lists it.
    id: String,
    /// Print what was removed as JSON, with `"cancelled": true`.
    #[arg(long)]
    json: bool,
}

/// Runs `jetrun schedule VERB`.
pub(crate) async fn schedule(args: ScheduleArgs) -> ExitCode {
    let config = match &args.verb {
        Verb::List(a) => &a.config,
        Verb::Trigger(a) => &a.target.config,
        Verb::Cancel(a) => &a.config,
    };
    // Without a config file: the schedules stored in JETRUN_SCHEDULES, on
    // the connection given.
    let loaded = match session::load_if_any(config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let config = loaded.as_ref().map(|l| &l.config);
    session::exit(
        async {
            match &args.verb {
                Verb::List(a) if a.delayed => list_delayed(config, a.json).await,
                Verb::List(a) => list(config, a.json).await,
                Verb::Trigger(a) => trigger(config, a).await,
                Verb::Cancel(a) => cancel(config, a).await,
            }
        }
        .await,
    )
}

/// The schedule of one function as a runner stored it: the holder message.
#[derive(Debug, Clone, PartialEq)]
struct Holder {
    service: String,
    function: String,
    /// `Nats-Schedule`, what the server fires by.
    expression: Option<String>,
    /// `Nats-Schedule-Time-Zone`.
    time_zone: Option<String>,
    /// `Nats-Schedule-Target`.
    target: Option<String>,
    /// When the stream stored it (an `@every` counts from there).
    stored_at: DateTime<Utc>,
}

impl Holder {
    /// The holder on `subject` (`jetrun.schedules.<service>.<function>`).
    fn read(subject: &str, headers: &HeaderMap, stored_at: DateTime<Utc>) -> Option<Holder> {
        let (service, function) = subject
            .strip_prefix("jetrun.schedules.")?
            .rsplit_once('.')?;
        Some(Holder {
            service: service.to_string(),
            function: function.to_string(),
            expression: header(headers, "Nats-Schedule").map(str::to_string),
            time_zone: header(headers, "Nats-Schedule-Time-Zone").map(str::to_string),
            target: header(headers, "Nats-Schedule-Target").map(str::to_string),
            stored_at,
        })
    }

    /// Whether it fires `schedule` for `function`, as the config says.
    fn matches(&self, function: &str, schedule: &ScheduleConfig) -> bool {
        self.expression.as_deref() == Some(schedule.expression.as_str())
            && self.time_zone == schedule.time_zone
            && self.target.as_deref() == Some(schedule_tick_subject(function).as_str())
    }
}

/// Whether the stored schedule is the config's.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stored {
    Yes,
    Missing,
    Differs,
}

impl Stored {
    fn of(function: &str, schedule: &ScheduleConfig, holder: Option<&Holder>) -> Stored {
        match holder {
            None => Stored::Missing,
            Some(holder) if holder.matches(function, schedule) => Stored::Yes,
            Some(_) => Stored::Differs,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Stored::Yes => "yes",
            Stored::Missing => "missing",
            Stored::Differs => "differs",
        }
    }
}

/// The last tick stored on a function's tick subject.
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    sequence: u64,
    /// The occurrence it was fired for (`Jetrun-Scheduled-At` of a
    /// triggered tick, else computed from `Nats-Schedule-Next` and the
    /// schedule that fired it); `None` when the headers do not say.
    scheduled_at: Option<String>,
    /// `Nats-Schedule-Next`, the server's next fire time after it.
    next: Option<DateTime<Utc>>,
    /// `Jetrun-Schedule`: the expression that fired it.
    expression: Option<String>,
    stored_at: DateTime<Utc>,
}

impl Tick {
    /// The tick at `sequence`, read as the function reads it
    /// ([`envelope::read_event`]): its `scheduled_at` is the event's time.
    fn read(stream: &str, message: &StreamMessage) -> Tick {
        let headers = &message.headers;
        let stored_at = stored_time(message.time);
        let origin = Origin {
            subject: message.subject.as_str(),
            stream,
            sequence: message.sequence,
            published: stored_at.into(),
        };
        let event = envelope::read_event(&origin, Some(headers), &message.payload).ok();
        Tick {
            sequence: message.sequence,
            scheduled_at: event.and_then(|event| event.time),
            next: header(headers, "Nats-Schedule-Next")
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
                .map(|next| next.with_timezone(&Utc)),
            expression: header(headers, JETRUN_SCHEDULE).map(str::to_string),
            stored_at,
        }
    }
}

/// One row of `list`.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    function: String,
    service: String,
    expression: String,
    time_zone: Option<String>,
    next: Option<String>,
    last_tick: Option<Tick>,
    stored: Stored,
}

/// The next fire time of `expression` after `now`: the server's word (the
/// last tick's `Nats-Schedule-Next`) while it is ahead and was said for
/// this very schedule; for an `@every`, which counts from when its holder
/// was stored, the first fire after that; else computed from the expression.
fn next_fire(
    expression: &str,
    time_zone: Option<&str>,
    holder: Option<&Holder>,
    last_tick: Option<&Tick>,
    now: DateTime<Utc>,
) -> Option<String> {
    let schedule = Schedule::parse(expression, time_zone).ok()?;
    let from_server = last_tick
        .filter(|tick| tick.expression.as_deref() == Some(expression))
        .and_then(|tick| tick.next)
        .filter(|next| *next > now)
        .map(|next| in_zone(next, time_zone));
    // nats-server counts an `@every` from when its holder was stored.
    let from_holder = || {
        holder
            .filter(|_| schedule.every().is_some())
            .and_then(|holder| schedule.next_after_stored(holder.stored_at, now))
            .map(|next| next.to_rfc3339_opts(SecondsFormat::AutoSi, time_zone.is_none()))
    };
    from_server.or_else(from_holder).or_else(|| {
        schedule
            .next_after(now)
            .map(|next| next.to_rfc3339_opts(SecondsFormat::AutoSi, time_zone.is_none()))
    })
}

/// `at` in `time_zone` (UTC without one, or with one chrono-tz does not
/// know), RFC 3339 with its offset (`Z` for UTC), as a tick's
/// `scheduled_at` is written.
fn in_zone(at: DateTime<Utc>, time_zone: Option<&str>) -> String {
    match time_zone.and_then(|zone| Schedule::parse("@daily", Some(zone)).ok()) {
        Some(schedule) => at
            .with_timezone(&schedule.time_zone())
            .to_rfc3339_opts(SecondsFormat::AutoSi, false),
        None => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

/// The row of a scheduled function of the config.
fn config_row(
    config: &Config,
    function: &str,
    schedule: &ScheduleConfig,
    holder: Option<&Holder>,
    last_tick: Option<Tick>,
    now: DateTime<Utc>,
) -> Row {
    let time_zone = schedule.time_zone.as_deref();
    Row {
        function: function.to_string(),
        service: config.service.name.clone(),
        expression: schedule.expression.clone(),
        time_zone: schedule.time_zone.clone(),
        next: next_fire(
            &schedule.expression,
            time_zone,
            holder.filter(|h| h.matches(function, schedule)),
            last_tick.as_ref(),
            now,
        ),
        stored: Stored::of(function, schedule, holder),
        last_tick,
    }
}

/// The row of a stored schedule, without a config.
fn stored_row(holder: &Holder, last_tick: Option<Tick>, now: DateTime<Utc>) -> Row {
    let expression = holder.expression.clone().unwrap_or_default();
    Row {
        function: holder.function.clone(),
        service: holder.service.clone(),
        next: next_fire(
            &expression,
            holder.time_zone.as_deref(),
            Some(holder),
            last_tick.as_ref(),
            now,
        ),
        expression,
        time_zone: holder.time_zone.clone(),
        last_tick,
        stored: Stored::Yes,
    }
}

/// The table of `list`; with `services`, a SERVICE column (a configless
/// list may show several configs' schedules).
fn list_table(rows: &[Row], services: bool) -> String {
    let mut headers = vec!["FUNCTION"];
    if services {
        headers.push("SERVICE");
    }
    headers.extend(["SCHEDULE", "TIME ZONE", "NEXT", "LAST TICK", "STORED"]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![row.function.clone()];
            if services {
                cells.push(row.service.clone());
            }
            let every = row.expression.starts_with("@every ");
            let zone = match (&row.time_zone, every) {
                (Some(zone), _) => zone.clone(),
                (None, true) => "-".to_string(),
                (None, false) => "UTC".to_string(),
            };
            let last = row.last_tick.as_ref().map(|tick| {
                (tick.scheduled_at.clone()).unwrap_or_else(|| format!("seq {}", tick.sequence))
            });
            cells.extend([
                row.expression.clone(),
                zone,
                row.next.clone().unwrap_or_else(|| "-".to_string()),
                last.unwrap_or_else(|| "-".to_string()),
                row.stored.word().to_string(),
            ]);
            cells
        })
        .collect();
    table(&headers, &cells)
}

fn row_json(row: &Row, stream: &str) -> Value {
    let last_tick = row.last_tick.as_ref().map(|tick| {
        json!({
            "sequence": tick.sequence,
            "scheduled_at": tick.scheduled_at,
            "stored_at": rfc3339(tick.stored_at),
        })
    });
    json!({
        "function": row.function,
        "service": row.service,
        "schedule": row.expression,
        "time_zone": row.time_zone,
        "next": row.next,
        "last_tick": last_tick,
        "stored": row.stored.word(),
        "stream": stream,
        "tick_subject": schedule_tick_subject(&row.function),
    })
}

/// Where a delayed event waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Until its time, on its own subject.
    Held,
    /// Its time came: on `jetrun.delayed.due` until a runner's relay stores
    /// it on its subject (at once while a runner runs).
    Due,
}

impl Wait {
    fn word(self) -> &'static str {
        match self {
            Wait::Held => "held",
            Wait::Due => "due",
        }
    }
}

/// A delayed event in the schedules stream, read from its headers.
#[derive(Debug, Clone, PartialEq)]
struct Pending {
    id: String,
    /// The subject it is to be stored on.
    subject: String,
    /// `ce-type`.
    event_type: Option<String>,
    /// When it is due, RFC 3339 UTC, as held.
    due: Option<String>,
    /// `ce-correlationid`.
    correlation: Option<String>,
    state: Wait,
    /// Its sequence in the schedules stream.
    sequence: u64,
}

impl Pending {
    /// The delayed event a message on a delayed-event subject holds; `None`
    /// for one jetrun did not hold (no id or subject to store it on).
    fn read(headers: &HeaderMap, sequence: u64, state: Wait) -> Option<Pending> {
        let get = |name: &str| header(headers, name).map(str::to_string);
        Some(Pending {
            id: get(delayed::FOR_ID)?,
            subject: get(delayed::FOR_SUBJECT)?,
            event_type: get("ce-type"),
            due: get(delayed::DUE_AT),
            correlation: get("ce-correlationid"),
            state,
            sequence,
        })
    }

    /// Its due time, for ordering: the ones that say none last.
    fn due_time(&self) -> Option<DateTime<Utc>> {
        let due = DateTime::parse_from_rfc3339(self.due.as_deref()?).ok()?;
        Some(due.with_timezone(&Utc))
    }
}

/// Soonest due first (those not saying when last), then by id.
fn by_due(events: &mut [Pending]) {
    events.sort_by_cached_key(|e| (e.due_time().is_none(), e.due_time(), e.id.clone()));
}

/// The table of `list --delayed`.
fn delayed_table(events: &[Pending]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let cells: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.subject.clone(),
                dash(&e.event_type),
                dash(&e.due),
                e.state.word().to_string(),
                dash(&e.correlation),
            ]
        })
        .collect();
    table(
        &["ID", "SUBJECT", "TYPE", "DUE", "STATE", "CORRELATION"],
        &cells,
    )
}

fn delayed_json(event: &Pending, stream: &str) -> Value {
    json!({
        "id": event.id,
        "subject": event.subject,
        "type": event.event_type,
        "due": event.due,
        "state": event.state.word(),
        "correlation_id": event.correlation,
        "stream": stream,
        "sequence": event.sequence,
    })
}

/// What `cancel` prints when it removed `event`.
fn cancelled_line(event: &Pending, stream: &str) -> String {
    format!(
        "cancelled {}: {} for {}, due {} (removed from stream {stream}, sequence {})",
        event.id,
        event.event_type.as_deref().unwrap_or("an event"),
        event.subject,
        event.due.as_deref().unwrap_or("-"),
        event.sequence
    )
}

/// Why `cancel` removed nothing for `id`: `due` when its time came and it
/// waits for a runner to store it.
fn not_held(id: &str, stream: &str, due: Option<&Pending>) -> String {
    match due {
        Some(event) => format!(
            "delayed event {id} is no longer held: its time came ({}), and a runner stores \
             it on {} (at once while one runs); too late to cancel",
            event.due.as_deref().unwrap_or("-"),
            event.subject
        ),
        None => format!(
            "no delayed event with id {id} is held in stream {stream}: it was delivered, \
             cancelled, or never delayed (`jetrun schedule list --delayed` lists those held)"
        ),
    }
}

/// The stream holding the schedules: the config's, else the default.
fn stream_of(config: Option<&Config>) -> String {
    config
        .map_or(SCHEDULES_STREAM, crate::schedule::stream)
        .to_string()
}

/// The scheduled functions of `config`, by name.
fn scheduled(config: &Config) -> impl Iterator<Item = (&FunctionConfig, &ScheduleConfig)> {
    (config.functions.values()).filter_map(|f| f.schedule.as_ref().map(|s| (f, s)))
}

async fn list(config: Option<&Config>, json: bool) -> Result<ExitCode, Stopped> {
    let stream_name = stream_of(config);
    let js = session::connect_to(config.map(|c| &c.nats)).await?;
    let stream = open(&js, &stream_name).await?;
    let now = Utc::now();
    let mut rows = Vec::new();
    match config {
        Some(config) => {
            for (function, schedule) in scheduled(config) {
                let name = &function.name;
                let holder_subject = schedule_holder_subject(&config.service.name, name);
                let (holder, tick) = match &stream {
                    Some(stream) => (
                        holder(stream, &holder_subject).await?,
                        last_tick(stream, name).await?,
                    ),
                    None => (None, None),
                };
                rows.push(config_row(
                    config,
                    name,
                    schedule,
                    holder.as_ref(),
                    tick,
                    now,
                ));
            }
        }
        None => {
            let Some(stream) = &stream else {
                eprintln!(
                    "jetrun: stream {stream_name} does not exist: no runner with a scheduled \
                     function has started on this NATS"
                );
                print_rows(&rows, &stream_name, json, true)?;
                return Ok(ExitCode::SUCCESS);
            };
            for holder in holders(stream, "jetrun.schedules.>").await? {
                let tick = last_tick(stream, &holder.function).await?;
                rows.push(stored_row(&holder, tick, now));
            }
        }
    }
    print_rows(&rows, &stream_name, json, config.is_none())?;
    let mut code = ExitCode::SUCCESS;
    for row in rows.iter().filter(|row| row.stored != Stored::Yes) {
        let what = match row.stored {
            Stored::Missing => "is not stored",
            _ => "stored differs from the config",
        };
        eprintln!(
            "jetrun: the schedule of function {} {what} (stream {stream_name}, subject {}); is \
             `jetrun run` running with this config? A runner stores it at start and on reload.",
            row.function,
            schedule_holder_subject(&row.service, &row.function)
        );
        code = ExitCode::from(EXIT_NOT_STORED);
    }
    Ok(code)
}

fn print_rows(rows: &[Row], stream: &str, json: bool, services: bool) -> anyhow::Result<()> {
    if json {
        let rows: Vec<Value> = rows.iter().map(|row| row_json(row, stream)).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", list_table(rows, services));
    }
    Ok(())
}

async fn list_delayed(config: Option<&Config>, json: bool) -> Result<ExitCode, Stopped> {
    let stream_name = stream_of(config);
    let js = session::connect_to(config.map(|c| &c.nats)).await?;
    let events = match open(&js, &stream_name).await? {
        Some(stream) => pending(&stream).await?,
        None => {
            eprintln!(
                "jetrun: stream {stream_name} does not exist: no runner or `jetrun publish \
                 --delay` has made it on this NATS"
            );
            Vec::new()
        }
    };
    if json {
        let rows: Vec<Value> = (events.iter())
            .map(|event| delayed_json(event, &stream_name))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("cannot print JSON")?
        );
    } else {
        print!("{}", delayed_table(&events));
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(config: Option<&Config>, args: &CancelArgs) -> Result<ExitCode, Stopped> {
    let id = &args.id;
    let stream_name = stream_of(config);
    let js = session::connect_to(config.map(|c| &c.nats)).await?;
    let not_held = |due: Option<&Pending>| {
        eprintln!("jetrun: {}", not_held(id, &stream_name, due));
        Ok(ExitCode::from(EXIT_NOT_HELD))
    };
    let Some(stream) = open(&js, &stream_name).await? else {
        return not_held(None);
    };
    let subject = delayed::hold_subject(id);
    let held = (last(&stream, &subject).await?)
        .and_then(|m| Pending::read(&m.headers, m.sequence, Wait::Held));
    let mut removed = None;
    if let Some(held) = held {
        let purged = stream
            .purge()
            .filter(&subject)
            .await
            .with_context(|| format!("cannot remove {subject} from stream {stream_name}"))?
            .purged;
        // None when the server fired it between the read and the purge.
        removed = (purged > 0).then_some(held);
    }
    if removed.is_none() {
        // Fired, and not yet stored by a runner: the due message can still
        // be removed (a relay that read it a moment before stores it).
        let due = due(&stream).await?.into_iter().find(|e| &e.id == id);
        let Some(due) = due else {
            return not_held(None);
        };
        match stream.delete_message(due.sequence).await {
            Ok(true) => removed = Some(due),
            Ok(false) => return not_held(Some(&due)),
            Err(err) if err.to_string().contains("no message found") => {
                return not_held(Some(&due))
            }
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!(
                        "cannot remove due event {id} from stream {stream_name}"
                    ))
                    .into())
            }
        }
    }
    let Some(removed) = removed else {
        return not_held(None);
    };
    if args.json {
        let mut out = delayed_json(&removed, &stream_name);
        out["cancelled"] = json!(true);
        println!("{out}");
    } else {
        println!("{}", cancelled_line(&removed, &stream_name));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a triggered tick carries, for `function` on `schedule`.
fn trigger_headers(
    expression: &str,
    time_zone: Option<&str>,
    scheduled_at: &str,
) -> Result<HeaderMap, BadHeader> {
    let mut headers = HeaderMap::new();
    headers.put(name(JETRUN_SCHEDULED_AT)?, scheduled_at)?;
    headers.put(name(JETRUN_SCHEDULE)?, expression)?;
    if let Some(zone) = time_zone {
        headers.put(name(JETRUN_TIME_ZONE)?, zone)?;
    }
    Ok(headers)
}

async fn trigger(config: Option<&Config>, args: &TriggerArgs) -> Result<ExitCode, Stopped> {
    let function = &args.target.function;
    let stream_name = stream_of(config);
    let js = session::connect_to(config.map(|c| &c.nats)).await?;
    let (expression, time_zone) = match config {
        Some(config) => {
            let path = args.target.config.path();
            let found = session::function(config, &path, function)?;
            let Some(schedule) = &found.schedule else {
                let names: Vec<&str> = scheduled(config).map(|(f, _)| f.name.as_str()).collect();
                return Err(Stopped::Usage(format!(
                    "function {function} has no schedule; {} schedules {}",
                    path.display(),
                    match names.is_empty() {
                        true => "no function".to_string(),
                        false => names.join(", "),
                    }
                )));
            };
            (schedule.expression.clone(), schedule.time_zone.clone())
        }
        None => {
            let filter = format!("jetrun.schedules.*.{function}");
            let stored = match open(&js, &stream_name).await? {
                Some(stream) => holders(&stream, &filter).await?,
                None => Vec::new(),
            };
            let Some(holder) = stored.into_iter().next() else {
                return Err(Stopped::Usage(format!(
                    "no schedule of function {function} is stored in stream {stream_name}; \
                     give the config that schedules it with -c"
                )));
            };
            (holder.expression.unwrap_or_default(), holder.time_zone)
        }
    };
    let at = in_zone(Utc::now().trunc_subsecs(3), time_zone.as_deref());
    let headers = trigger_headers(&expression, time_zone.as_deref(), &at)
        .map_err(|err| Stopped::Usage(err.to_string()))?;
    let subject = schedule_tick_subject(function);
    let body = json!({ "function": function }).to_string();
    let ack = match emit::publish(&js, &subject, headers, body.into()).await {
        Ok(ack) => ack,
        Err(PublishError::NoStream { .. }) => {
            return Err(Stopped::Failed(anyhow::anyhow!(
                "no stream captures {subject}: stream {stream_name} is made by `jetrun run` \
                 with a config that schedules a function; start it once"
            )))
        }
        Err(err) => return Err(Stopped::Failed(err.into())),
    };
    let id = format!("{function}@{at}");
    if args.json {
        let out = json!({
            "function": function,
            "id": id,
            "scheduled_at": at,
            "stream": ack.stream,
            "sequence": ack.sequence,
        });
        println!("{out}");
    } else {
        println!(
            "triggered {function}: tick {id} stored in stream {} at sequence {}",
            ack.stream, ack.sequence
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The stream `name`, or `None` when it does not exist.
async fn open(js: &jetstream::Context, name: &str) -> anyhow::Result<Option<Stream>> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(err).with_context(|| format!("cannot read stream {name}")),
        },
    }
}

/// The last message on `subject`, or `None` when there is none.
async fn last(stream: &Stream, subject: &str) -> anyhow::Result<Option<StreamMessage>> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {subject}")),
    }
}

/// The holder on `subject`.
async fn holder(stream: &Stream, subject: &str) -> anyhow::Result<Option<Holder>> {
    Ok(last(stream, subject)
        .await?
        .and_then(|m| Holder::read(subject, &m.headers, stored_time(m.time))))
}

/// The subjects of `stream` that `filter` matches and hold a message.
async fn subjects(stream: &Stream, filter: &str) -> anyhow::Result<Vec<String>> {
    stream
        .clone()
        .info_with_subjects(filter)
        .await
        .context("cannot read the schedules stream")?
        .map_ok(|(subject, _)| subject)
        .try_collect()
        .await
        .context("cannot read the schedules stream")
}

/// Every holder on the subjects `filter` matches, by subject.
async fn holders(stream: &Stream, filter: &str) -> anyhow::Result<Vec<Holder>> {
    let mut subjects = subjects(stream, filter).await?;
    subjects.sort();
    let mut found = Vec::new();
    for subject in subjects {
        if let Some(holder) = holder(stream, &subject).await? {
            found.push(holder);
        }
    }
    Ok(found)
}

/// The delayed events in `stream`, soonest first: each held one (the last
/// message on its hold subject), and each due one not yet relayed.
async fn pending(stream: &Stream) -> anyhow::Result<Vec<Pending>> {
    let subjects = subjects(stream, delayed::SUBJECTS).await?;
    let held = delayed::held_subjects();
    let mut found = Vec::new();
    for subject in subjects {
        if subject == delayed::DUE {
            found.extend(due(stream).await?);
        } else if jetrun_config::subject_matches(&held, &subject) {
            let message = last(stream, &subject).await?;
            found.extend(message.and_then(|m| Pending::read(&m.headers, m.sequence, Wait::Held)));
        }
    }
    by_due(&mut found);
    Ok(found)
}

/// The due events a relay has not stored yet, oldest first.
async fn due(stream: &Stream) -> anyhow::Result<Vec<Pending>> {
    let mut found = Vec::new();
    let mut from = 1;
    loop {
        let message = match stream
            .get_first_raw_message_by_subject(delayed::DUE, from)
            .await
        {
            Ok(message) => message,
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            Err(err) => return Err(err).context("cannot read the due delayed events"),
        };
        from = message.sequence + 1;
        found.extend(Pending::read(&message.headers, message.sequence, Wait::Due));
    }
    Ok(found)
}

/// The last tick of `function`.
async fn last_tick(stream: &Stream, function: &str) -> anyhow::Result<Option<Tick>> {
    let stream_name = stream.cached_info().config.name.clone();
    Ok(last(stream, &schedule_tick_subject(function))
        .await?
        .map(|message| Tick::read(&stream_name, &message)))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// When the stream stored a message.
fn stored_time(time: impl Into<SystemTime>) -> DateTime<Utc> {
    DateTime::<Utc>::from(time.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn holder(expression: &str, time_zone: Option<&str>) -> Holder {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Schedule", expression);
        headers.insert("Nats-Schedule-Target", "jetrun.schedule.report");
        if let Some(zone) = time_zone {
            headers.insert("Nats-Schedule-Time-Zone", zone);
        }
        let stored = at("2026-03-01T10:00:00.400Z");
        Holder::read("jetrun.schedules.shop.report", &headers, stored).unwrap()
    }

    #[test]
    fn a_holder_names_its_service_and_function_and_matches_the_config_or_not() {
        let stored = holder("0 0 2 * * *", Some("Europe/Berlin"));
        assert_eq!(
            (stored.service.as_str(), stored.function.as_str()),
            ("shop", "report")
        );
        let config = |expression: &str, zone: Option<&str>| ScheduleConfig {
            expression: expression.to_string(),
            time_zone: zone.map(str::to_string),
        };
        let same = config("0 0 2 * * *", Some("Europe/Berlin"));
        assert_eq!(Stored::of("report", &same, Some(&stored)), Stored::Yes);
        assert_eq!(Stored::of("report", &same, None), Stored::Missing);
        let other_zone = config("0 0 2 * * *", None);
        assert_eq!(
            Stored::of("report", &other_zone, Some(&stored)),
            Stored::Differs
        );
        let other_time = config("0 0 3 * * *", Some("Europe/Berlin"));
        assert_eq!(
            Stored::of("report", &other_time, Some(&stored)),
            Stored::Differs
        );
        assert!(Holder::read(
            "jetrun.schedule.report",
            &HeaderMap::new(),
            at("2026-01-01T00:00:00Z")
        )
        .is_none());
    }

    #[test]
    fn next_fire_is_the_servers_word_then_the_holders_phase_then_the_expression() {
        let now = at("2026-03-01T10:30:00Z");
        let tick = |next: &str| Tick {
            sequence: 7,
            scheduled_at: None,
            next: Some(at(next)),
            expression: Some("@every 1h".to_string()),
            stored_at: now,
        };
        let ahead = tick("2026-03-01T11:00:01Z");
        assert_eq!(
            next_fire("@every 1h", None, None, Some(&ahead), now).as_deref(),
            Some("2026-03-01T11:00:01Z")
        );
        // A next time already past says nothing; the holder's phase does.
        let past = tick("2026-03-01T10:00:00Z");
        let stored = holder("@every 1h", None);
        assert_eq!(
            next_fire("@every 1h", None, Some(&stored), Some(&past), now).as_deref(),
            Some("2026-03-01T11:00:00Z")
        );
        assert_eq!(
            next_fire("0 0 2 * * *", Some("Europe/Berlin"), None, None, now).as_deref(),
            Some("2026-03-02T02:00:00+01:00")
        );
        assert_eq!(next_fire("not a schedule", None, None, None, now), None);
    }

    #[test]
    fn a_trigger_carries_its_time_and_the_schedule_in_its_zone() {
        let now = at("2026-07-01T12:00:00.250Z");
        let when = in_zone(now, Some("Asia/Kolkata"));
        assert_eq!(when, "2026-07-01T17:30:00.250+05:30");
        assert_eq!(in_zone(now, None), "2026-07-01T12:00:00.250Z");
        let headers = trigger_headers("*/2 * * * * *", Some("Asia/Kolkata"), &when).unwrap();
        assert_eq!(header(&headers, "Jetrun-Scheduled-At"), Some(when.as_str()));
        assert_eq!(header(&headers, "Jetrun-Schedule"), Some("*/2 * * * * *"));
        assert_eq!(
            header(&headers, "Jetrun-Schedule-Time-Zone"),
            Some("Asia/Kolkata")
        );
    }

    /// What a delayed event's holder carries, as `jetrun publish --delay`
    /// and an emit hold it.
    fn held(id: &str, due: &str, correlation: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("ce-id", id);
        headers.insert("ce-type", "order.reminder");
        if let Some(correlation) = correlation {
            headers.insert("ce-correlationid", correlation);
        }
        headers.insert(delayed::FOR_SUBJECT, "order.remind");
        headers.insert(delayed::FOR_ID, id);
        headers.insert(delayed::DUE_AT, due);
        headers
    }

    #[test]
    fn delayed_events_are_listed_soonest_first_with_their_state() {
        let read = |id, due, correlation, sequence, state| {
            Pending::read(&held(id, due, correlation), sequence, state).unwrap()
        };
        let mut events = vec![
            read(
                "late",
                "2026-12-24T18:00:00.000Z",
                Some("c-9"),
                3,
                Wait::Held,
            ),
            read("b", "2026-12-24T17:00:00.000Z", None, 5, Wait::Held),
            read("a", "2026-12-24T17:00:00.000Z", None, 9, Wait::Held),
            read("fired", "2026-12-01T08:00:00.000Z", None, 12, Wait::Due),
        ];
        by_due(&mut events);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["fired", "a", "b", "late"]);
        let text = delayed_table(&events);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID     SUBJECT       TYPE            DUE                       STATE  CORRELATION"
        );
        assert_eq!(
            lines[1],
            "fired  order.remind  order.reminder  2026-12-01T08:00:00.000Z  due    -"
        );
        assert_eq!(
            lines[4],
            "late   order.remind  order.reminder  2026-12-24T18:00:00.000Z  held   c-9"
        );
        assert_eq!(
            delayed_json(&events[3], "JETRUN_SCHEDULES"),
            json!({
                "id": "late",
                "subject": "order.remind",
                "type": "order.reminder",
                "due": "2026-12-24T18:00:00.000Z",
                "state": "held",
                "correlation_id": "c-9",
                "stream": "JETRUN_SCHEDULES",
                "sequence": 3,
            })
        );
        assert_eq!(
            delayed_table(&[]),
            "ID  SUBJECT  TYPE  DUE  STATE  CORRELATION\n",
            "none: the header alone"
        );
    }

    #[test]
    fn a_message_jetrun_did_not_hold_is_not_listed() {
        assert!(Pending::read(&HeaderMap::new(), 1, Wait::Due).is_none());
        let mut no_subject = HeaderMap::new();
        no_subject.insert(delayed::FOR_ID, "x");
        assert!(Pending::read(&no_subject, 1, Wait::Due).is_none());
        // One that does not say when sorts last.
        let mut undated = HeaderMap::new();
        undated.insert(delayed::FOR_ID, "a");
        undated.insert(delayed::FOR_SUBJECT, "x.y");
        let mut events = vec![
            Pending::read(&undated, 1, Wait::Held).unwrap(),
            Pending::read(&held("z", "2030-01-01T00:00:00Z", None), 2, Wait::Held).unwrap(),
        ];
        by_due(&mut events);
        assert_eq!(events[0].id, "z");
        assert_eq!(
            delayed_table(&events).lines().nth(2).unwrap(),
            "a   x.y           -               -                     held   -"
        );
    }

    #[test]
    fn every_hold_subject_is_listed_and_cancel_says_what_it_did() {
        let held_subjects = delayed::held_subjects();
        for id in ["r-1", "order 7", "a.b.c"] {
            let subject = delayed::hold_subject(id);
            assert!(
                jetrun_config::subject_matches(&held_subjects, &subject),
                "{subject}"
            );
            assert!(!jetrun_config::subject_matches(
                &held_subjects,
                delayed::DUE
            ));
        }
        let event = Pending::read(
            &held("r-1", "2026-12-24T18:00:00.000Z", None),
            4,
            Wait::Held,
        )
        .unwrap();
        assert_eq!(
            cancelled_line(&event, "JETRUN_SCHEDULES"),
            "cancelled r-1: order.reminder for order.remind, due 2026-12-24T18:00:00.000Z \
             (removed from stream JETRUN_SCHEDULES, sequence 4)"
        );
        assert_eq!(
            not_held("r-2", "JETRUN_SCHEDULES", None),
            "no delayed event with id r-2 is held in stream JETRUN_SCHEDULES: it was \
             delivered, cancelled, or never delayed (`jetrun schedule list --delayed` lists \
             those held)"
        );
        let due = Pending {
            state: Wait::Due,
            ..event
        };
        let why = not_held("r-1", "JETRUN_SCHEDULES", Some(&due));
        assert!(
            why.starts_with(
                "delayed event r-1 is no longer held: its time came \
                 (2026-12-24T18:00:00.000Z)"
            ) && why.ends_with("too late to cancel"),
            "{why}"
        );
    }

    #[test]
    fn list_delayed_and_cancel_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ScheduleArgs,
        }
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("schedule").chain(argv.iter().copied()))
                .map(|cli| cli.args.verb)
        };
        assert!(matches!(
            parse(&["list", "--delayed", "--json"]),
            Ok(Verb::List(ListArgs {
                delayed: true,
                json: true,
                ..
            }))
        ));
        assert!(matches!(
            parse(&["ls"]),
            Ok(Verb::List(ListArgs { delayed: false, .. }))
        ));
        match parse(&["cancel", "r-1", "--json"]) {
            Ok(Verb::Cancel(args)) => assert!(args.id == "r-1" && args.json),
            _ => panic!("cancel r-1 did not parse"),
        }
        let missing = parse(&["cancel"]).err().expect("cancel without an id");
        assert_eq!(missing.exit_code(), 2);
    }

    #[test]
    fn the_table_has_a_service_column_only_without_a_config() {
        let row = Row {
            function: "report".to_string(),
            service: "shop".to_string(),
            expression: "@every 1h".to_string(),
            time_zone: None,
            next: Some("2026-03-01T11:00:00+00:00".to_string()),
            last_tick: None,
            stored: Stored::Missing,
        };
        let with = list_table(std::slice::from_ref(&row), true);
        assert!(with.starts_with("FUNCTION  SERVICE  SCHEDULE"), "{with}");
        let without = list_table(&[row], false);
        assert_eq!(
            without.lines().nth(1).unwrap(),
            "report    @every 1h  -          2026-03-01T11:00:00+00:00  -          missing"
        );
    }
}
