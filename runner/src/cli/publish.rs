//! `jetrun publish SUBJECT [DATA|-]`: one event in CloudEvents binary mode,
//! acknowledged by the stream that captures the subject. The headers are
//! built by a pure function; the command-line values are checked when parsed,
//! so a bad one is a usage error (status 2) before NATS is touched.

use std::io::Read;
use std::str::FromStr;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use async_nats::{HeaderMap, HeaderName, HeaderValue};

use super::args::InvalidValue;
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
    /// Print `{"id", "stream", "sequence", "duplicate"}` instead of a line.
    #[arg(long)]
    json: bool,
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
/// <n>`; `nats` is the config's `[nats]` when --config names one.
pub(crate) async fn publish(
    args: PublishArgs,
    nats: Option<jetrun_config::NatsConfig>,
) -> anyhow::Result<()> {
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
    let headers = event_headers(&args, &id, &body, SystemTime::now())?;
    let connection = super::session::connection(nats.as_ref())?;
    let client = crate::nats::connect_once(&connection).await?;
    let js = async_nats::jetstream::new(client);
    let subject = &args.subject;
    match emit::publish(&js, subject, headers, body.into()).await {
        Ok(ack) => {
            if args.json {
                let ack = serde_json::json!({
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
