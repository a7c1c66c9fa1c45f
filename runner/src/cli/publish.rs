//! `jetrun publish SUBJECT [DATA|-]`: one event in CloudEvents binary mode,
//! acknowledged by the stream that captures the subject; with `--delay` or
//! `--at`, held in the schedules stream until its time instead
//! ([`crate::delayed`]). The headers and what is printed are built by pure
//! functions; the command-line values are checked when parsed, so a bad one
//! is a usage error (status 2) before NATS is touched.

use std::io::Read;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, context::GetStreamByNameErrorKind, publish::PublishAck};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use jetrun_config::name::SCHEDULES_STREAM;
use jetrun_config::Config;
use jetrun_functions::Later;
use serde_json::{json, Value};

use super::args::InvalidValue;
use crate::delayed;
use crate::emit::{self, PublishError};
use crate::headers::{BadHeader, Put};

/// The arguments of `jetrun publish`.
#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// The subject, which is also the event's type.
    subject: String,
    /// The data; `-` reads it from stdin; none sends an empty body.
    data: Option<String>,
    /// A config file whose `[nats]` table (URLs, credentials, TLS) to connect
    /// with, under the connection flags, the environment and a `nats`
    /// context [default: none: nats://127.0.0.1:4222].
    #[arg(short, long, env = "JETRUN_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,
    /// The CloudEvents source.
    #[arg(long, default_value = "jetrun/cli", value_parser = attribute)]
    source: HeaderValue,
    /// The event type, when it differs from the subject.
    #[arg(long = "type", value_parser = attribute)]
    event_type: Option<HeaderValue>,
    /// The event id, also sent as Nats-Msg-Id (the stream drops a repeat
    /// within its duplicate window) [default: a new UUID].
    #[arg(long, value_parser = attribute)]
    id: Option<HeaderValue>,
    /// The correlation id (`ce-correlationid`) the event and everything it
    /// causes carry; without it, the runner derives one from the event.
    #[arg(long, value_parser = attribute)]
    correlation_id: Option<HeaderValue>,
    /// An extra header, KEY=VALUE; repeatable. One named like a header
    /// jetrun sets (`ce-time`, say) replaces it.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Store the event this long from now instead of at once (`30s`, `10m`,
    /// `1h30m`): it is held in the schedules stream until then (nats-server
    /// 2.12 or later; docs/schedules.md).
    #[arg(long, value_name = "DURATION", value_parser = delay, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Store the event at this time instead of at once, RFC 3339 with any
    /// offset (`2026-12-24T18:00:00Z`, `2026-12-24T19:00:00+01:00`); a past
    /// time stores it right away. Held as with --delay.
    #[arg(long, value_name = "TIME", value_parser = at)]
    at: Option<SystemTime>,
    /// Print `{"id", "stream", "sequence", "duplicate"}` instead of a line
    /// (with --delay or --at, also `"at"` and `"delayed": true`).
    #[arg(long)]
    json: bool,
}

impl PublishArgs {
    /// When the event is to be stored, if not at once.
    fn later(&self) -> Option<Later> {
        (self.delay.map(Later::After)).or(self.at.map(Later::At))
    }
}

/// `--delay`: a duration as the runner reads an emit's `"delay"`.
fn delay(text: &str) -> Result<Duration, InvalidValue> {
    let delay = humantime::parse_duration(text).map_err(|err| {
        InvalidValue(format!(
            "{text:?} is not a duration like 30s, 10m or 1h30m ({err})"
        ))
    })?;
    delayed::due(Later::After(delay), SystemTime::now())
        .map_err(|why| InvalidValue(format!("{text:?}: the event {why}")))?;
    Ok(delay)
}

/// `--at`: an RFC 3339 time with any offset, as the runner reads an emit's
/// `"at"`.
fn at(text: &str) -> Result<SystemTime, InvalidValue> {
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .map_err(|err| {
            InvalidValue(format!(
                "{text:?} is not an RFC 3339 time like 2026-12-24T18:00:00Z ({err})"
            ))
        })?;
    delayed::due(Later::At(at), SystemTime::now())
        .map_err(|why| InvalidValue(format!("{text:?}: the event {why}")))
}

/// A CloudEvents attribute given on the command line: not empty, and fit
/// for a header value (no CR or LF).
fn attribute(text: &str) -> Result<HeaderValue, InvalidValue> {
    if text.is_empty() {
        return Err(InvalidValue("must not be empty".into()));
    }
    HeaderValue::from_str(text)
        .map_err(|_| InvalidValue(format!("{text:?} must not contain CR or LF")))
}

/// `KEY=VALUE` as a header name and value.
fn header(text: &str) -> Result<(HeaderName, HeaderValue), InvalidValue> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(InvalidValue(format!("{text:?} must be KEY=VALUE")));
    };
    if key.is_empty() {
        return Err(InvalidValue(format!(
            "{text:?} has no header name before the ="
        )));
    }
    let name = HeaderName::from_str(key).map_err(|_| {
        InvalidValue(format!(
            "{key:?} is not a header name (printable ASCII, no spaces and no ':')"
        ))
    })?;
    let value = HeaderValue::from_str(value)
        .map_err(|_| InvalidValue(format!("the value of {key} must not contain CR or LF")))?;
    Ok((name, value))
}

/// Publishes the event and prints `published <id> to stream <S> at sequence
/// <n>` (a delayed one: [`scheduled_line`]); `config` is the one --config
/// names: its `[nats]` to connect with, its `[schedules] stream` to hold a
/// delayed event in.
pub(crate) async fn publish(args: PublishArgs, config: Option<Config>) -> anyhow::Result<()> {
    let body = match args.data.as_deref() {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the data from stdin")?;
            buf
        }
        Some(text) => text.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let id = match &args.id {
        Some(id) => id.clone(),
        None => attribute(&uuid::Uuid::new_v4().to_string())?,
    };
    let now = SystemTime::now();
    let headers = event_headers(&args, &id, &body, now)?;
    let connection = super::session::connection(config.as_ref().map(|c| &c.nats))?;
    let client = crate::nats::connect_once(&connection).await?;
    let js = jetstream::new(client);
    let subject = &args.subject;
    if let Some(later) = args.later() {
        let schedules = config
            .as_ref()
            .map_or(SCHEDULES_STREAM, crate::schedule::stream);
        let at = delayed::due(later, now).map_err(|why| anyhow::anyhow!("the event {why}"))?;
        let ack = hold(&js, schedules, subject, id.as_str(), at, headers, body).await?;
        if args.json {
            println!("{}", scheduled_json(id.as_str(), at, &ack));
            return Ok(());
        }
        println!("{}", scheduled_line(id.as_str(), subject, at, &ack));
        if ack.duplicate {
            eprintln!(
                "jetrun: stream {} has held a delayed event with id {id} within its duplicate \
                 window; it was not held again (one held keeps its own time; to delay one \
                 cancelled again, give it a new --id)",
                ack.stream
            );
        }
        return Ok(());
    }
    match emit::publish(&js, subject, headers, body.into()).await {
        Ok(ack) => {
            if args.json {
                let ack = json!({
                    "id": id.as_str(),
                    "stream": ack.stream,
                    "sequence": ack.sequence,
                    "duplicate": ack.duplicate,
                });
                println!("{ack}");
                return Ok(());
            }
            println!(
                "published {id} to stream {} at sequence {}",
                ack.stream, ack.sequence
            );
            if ack.duplicate {
                eprintln!(
                    "jetrun: stream {} already held an event with id {id}; it was not stored again",
                    ack.stream
                );
            }
            Ok(())
        }
        // A JetStream publish to a subject no stream captures gets "no
        // responders" from the server, which async-nats reports as this.
        Err(PublishError::NoStream { .. }) => bail!(
            "no stream captures subject {subject}; declare one in [streams.*] and run jetrun once"
        ),
        Err(err) => Err(err).with_context(|| format!("cannot publish to {subject}")),
    }
}

/// Holds the event for `subject` until `at` in the schedules stream
/// (`schedules` when none holds delayed events yet, which is then made):
/// the server must run `@at` schedules and a stream must capture `subject`
/// now. The holder's ack.
async fn hold(
    js: &jetstream::Context,
    schedules: &str,
    subject: &str,
    id: &str,
    at: SystemTime,
    headers: HeaderMap,
    body: Vec<u8>,
) -> anyhow::Result<PublishAck> {
    // Checked before the schedules stream is made: a hold that cannot
    // happen leaves nothing behind.
    emit::hold(js, subject).await.map_err(anyhow::Error::msg)?;
    // Made only when no stream holds delayed events: one another name
    // holds (a config's [schedules] stream, with no --config here) is used.
    let holder = delayed::hold_subject(id);
    match js.stream_by_subject(&holder).await {
        Ok(_) => {}
        Err(err) if err.kind() == GetStreamByNameErrorKind::NotFound => {
            crate::nats::ensure_schedules(js, schedules)
                .await
                .with_context(|| {
                    format!("cannot make stream {schedules}, which holds delayed events")
                })?;
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot look up the stream of {holder}"))
        }
    }
    emit::store_held(js, subject, id, at, headers, body.into())
        .await
        .map_err(|why| anyhow::anyhow!("cannot hold the event for {subject}: {why}"))
}

/// What `publish --delay` prints; for a repeat of a held id, without the
/// time asked for this time, which the held event does not take.
fn scheduled_line(id: &str, subject: &str, at: SystemTime, ack: &PublishAck) -> String {
    let at = match ack.duplicate {
        true => String::new(),
        false => format!(" at {}", delayed::rfc3339(at)),
    };
    format!(
        "scheduled {id} for {subject}{at} (stream {}, sequence {})",
        ack.stream, ack.sequence
    )
}

/// What `publish --delay --json` prints.
fn scheduled_json(id: &str, at: SystemTime, ack: &PublishAck) -> Value {
    json!({
        "id": id,
        "stream": ack.stream,
        "sequence": ack.sequence,
        "duplicate": ack.duplicate,
        "at": delayed::rfc3339(at),
        "delayed": true,
    })
}

/// The event's headers in binary mode: `ce-*` attributes, `Nats-Msg-Id`
/// (the event id), then the `--header`s, which replace same-named ones.
fn event_headers(
    args: &PublishArgs,
    id: &HeaderValue,
    body: &[u8],
    now: SystemTime,
) -> Result<HeaderMap, BadHeader> {
    let name = HeaderName::from_static;
    let mut headers = HeaderMap::new();
    headers.put(name("ce-specversion"), "1.0")?;
    headers.set(name("ce-id"), id.clone());
    match &args.event_type {
        Some(event_type) => headers.set(name("ce-type"), event_type.clone()),
        None => headers.put(name("ce-type"), &args.subject)?,
    }
    headers.set(name("ce-source"), args.source.clone());
    headers.put(
        name("ce-time"),
        &humantime::format_rfc3339_micros(now).to_string(),
    )?;
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        headers.put(name("ce-datacontenttype"), "application/json")?;
    }
    if let Some(correlation) = &args.correlation_id {
        headers.set(name("ce-correlationid"), correlation.clone());
    }
    headers.set(name("Nats-Msg-Id"), id.clone());
    for (name, value) in &args.headers {
        headers.set(name.clone(), value.clone());
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PublishArgs,
    }

    fn parse(argv: &[&str]) -> Result<PublishArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("publish").chain(argv.iter().copied()))
            .map(|cli| cli.args)
    }

    fn get(headers: &HeaderMap, name: &str) -> Option<String> {
        headers.get(name).map(|v| v.as_str().to_string())
    }

    #[test]
    fn every_flag_becomes_a_header() {
        let args = parse(&[
            "order.placed",
            r#"{"order_id":1}"#,
            "--type",
            "shop.order.placed",
            "--source",
            "shop/web",
            "--id",
            "order-1",
            "--correlation-id",
            "c-1",
            "--header",
            "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "--header",
            "X-Empty=",
            "--header",
            "X-Eq=a=b",
        ])
        .unwrap();
        let id = args.id.clone().unwrap();
        let headers =
            event_headers(&args, &id, br#"{"order_id":1}"#, SystemTime::UNIX_EPOCH).unwrap();
        let h = |name| get(&headers, name);
        assert_eq!(h("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(h("ce-id").as_deref(), Some("order-1"));
        assert_eq!(h("Nats-Msg-Id").as_deref(), Some("order-1"));
        assert_eq!(h("ce-type").as_deref(), Some("shop.order.placed"));
        assert_eq!(h("ce-source").as_deref(), Some("shop/web"));
        assert_eq!(h("ce-correlationid").as_deref(), Some("c-1"));
        assert_eq!(h("ce-time").as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(h("ce-datacontenttype").as_deref(), Some("application/json"));
        assert_eq!(
            h("traceparent").as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(h("X-Empty").as_deref(), Some(""));
        assert_eq!(h("X-Eq").as_deref(), Some("a=b"), "split at the first =");
    }

    #[test]
    fn defaults_type_is_the_subject_and_no_correlation_id() {
        let args = parse(&["user.registered", "not json"]).unwrap();
        let id = HeaderValue::from_lossy("x");
        let headers = event_headers(&args, &id, b"not json", SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(get(&headers, "ce-type").as_deref(), Some("user.registered"));
        assert_eq!(get(&headers, "ce-source").as_deref(), Some("jetrun/cli"));
        assert_eq!(get(&headers, "ce-correlationid"), None);
        assert_eq!(get(&headers, "ce-datacontenttype"), None, "not JSON");
    }

    #[test]
    fn a_header_replaces_one_jetrun_sets() {
        let args = parse(&["a.b", "--header", "ce-time=2024-01-01T00:00:00Z"]).unwrap();
        let id = HeaderValue::from_lossy("x");
        let headers = event_headers(&args, &id, b"", SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(headers.get_all("ce-time").count(), 1);
        assert_eq!(
            get(&headers, "ce-time").as_deref(),
            Some("2024-01-01T00:00:00Z")
        );
    }

    #[test]
    fn delay_and_at_say_when_and_exclude_each_other() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let when = |argv: &[&str]| {
            (parse(argv).unwrap().later()).map(|l| delayed::due(l, now).expect("holdable"))
        };
        assert_eq!(when(&["a.b"]), None);
        assert_eq!(
            when(&["a.b", "--delay", "1h30m"]),
            Some(now + Duration::from_secs(5_400))
        );
        let at = when(&["a.b", "--at", "2026-12-24T19:00:00+01:00"]).unwrap();
        assert_eq!(delayed::rfc3339(at), "2026-12-24T18:00:00.000Z");
        let both = parse(&["a.b", "--delay", "1m", "--at", "2026-12-24T18:00:00Z"]);
        let err = both.err().expect("both parsed");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    #[test]
    fn a_delayed_event_says_where_and_when_it_is_held() {
        let ack = |duplicate: bool| -> PublishAck {
            serde_json::from_value(json!({
                "stream": "JETRUN_SCHEDULES", "seq": 7, "duplicate": duplicate
            }))
            .unwrap()
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_798_135_200_250);
        assert_eq!(
            scheduled_line("r-1", "order.reminder", at, &ack(false)),
            "scheduled r-1 for order.reminder at 2026-12-24T18:00:00.250Z \
             (stream JETRUN_SCHEDULES, sequence 7)"
        );
        assert_eq!(
            scheduled_line("r-1", "order.reminder", at, &ack(true)),
            "scheduled r-1 for order.reminder (stream JETRUN_SCHEDULES, sequence 7)",
            "a repeat keeps the held event's time, not this one"
        );
        assert_eq!(
            scheduled_json("r-1", at, &ack(false)),
            json!({
                "id": "r-1",
                "stream": "JETRUN_SCHEDULES",
                "sequence": 7,
                "duplicate": false,
                "at": "2026-12-24T18:00:00.250Z",
                "delayed": true,
            })
        );
    }

    #[test]
    fn bad_values_are_usage_errors_naming_them() {
        for (argv, expected) in [
            (
                &["a.b", "--header", "novalue"][..],
                "\"novalue\" must be KEY=VALUE",
            ),
            (&["a.b", "--header", "=v"], "\"=v\" has no header name"),
            (
                &["a.b", "--header", "a b=c"],
                "\"a b\" is not a header name",
            ),
            (&["a.b", "--id", ""], "must not be empty"),
            (
                &["a.b", "--correlation-id", "x\ny"],
                "must not contain CR or LF",
            ),
            (
                &["a.b", "--delay", "soon"],
                "invalid value 'soon' for '--delay <DURATION>': \"soon\" is not a duration",
            ),
            (&["a.b", "--delay=-5m"], "'--delay <DURATION>'"),
            (
                &["a.b", "--at", "2026-12-24 18:00"],
                "for '--at <TIME>': \"2026-12-24 18:00\" is not an RFC 3339 time",
            ),
            (&["a.b", "--at", "2026-12-24T18:00:00"], "'--at <TIME>'"),
        ] {
            let err = parse(argv)
                .err()
                .unwrap_or_else(|| panic!("{argv:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{argv:?}");
            let message = err.to_string();
            assert!(message.contains(expected), "{argv:?}: {message}");
        }
    }
}
