//! `jetrun events SUBJECT`: the history a stream stores on a subject
//! (wildcards allowed), oldest first, one event per line, read as a live
//! delivery reads it (`envelope::read_event`) through `nats::History`. How
//! a line looks is pure.

use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self};
use base64::prelude::{Engine, BASE64_STANDARD};
use jetrun_functions::Event;
use serde::Deserialize;
use serde_json::json;

use super::args::{ConfigArg, InvalidValue};
use super::output::rfc3339;
use super::session::{self, Stopped};
use crate::nats::{stream_info, History, Item, Start};

/// `jetrun events --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun events 'order.42.>'                 # an aggregate instance's history
  jetrun events order.placed -c config/jetrun.toml
  jetrun events 'order.*.placed' --json | jq -r .id
  jetrun events user.registered --stream USERS

Quote a subject with `>` or `*` in it: the shell reads them otherwise.
Columns: stream sequence, when the stream stored it (UTC), type, id, and the
data as compact JSON, or as text (`base64:...` when it is not UTF-8). It
prints what is stored when it starts and exits 0 (it does not follow); a
message that is not a readable event is named on stderr and makes the exit
status 1. The stream is the one storing SUBJECT (asked of JetStream); pass
--stream when several do.";

/// The arguments of `jetrun events`.
#[derive(clap::Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The subject, wildcards allowed (`order.42.>`, `order.*.placed`).
    #[arg(value_parser = filter_subject)]
    subject: String,
    /// One CloudEvent per line, in structured JSON, instead of columns.
    #[arg(long)]
    json: bool,
    /// The stream to read, when several store the subject.
    #[arg(long, value_name = "STREAM")]
    stream: Option<String>,
}

/// Runs `jetrun events`.
pub(crate) async fn events(args: EventsArgs) -> ExitCode {
    // Without a config file, the connection alone says where to read.
    let loaded = match session::load_if_any(&args.config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    session::exit(
        async {
            let nats = loaded.as_ref().map(|l| &l.config.nats);
            let js = session::connect_to(nats).await?;
            let stream = match &args.stream {
                Some(stream) => stream.clone(),
                None => match streams_storing(&js, &args.subject).await?.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(anyhow!(
                            "no stream stores subject {}; `nats stream ls` lists them",
                            args.subject
                        )
                        .into())
                    }
                    many => {
                        return Err(Stopped::Usage(format!(
                            "streams {} all store subject {}; pass --stream NAME",
                            many.join(", "),
                            args.subject
                        )))
                    }
                },
            };
            Ok(print_history(&js, &stream, &args.subject, args.json).await?)
        }
        .await,
    )
}

async fn print_history(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let Some(info) = stream_info(js, stream).await? else {
        return Err(anyhow!("stream {stream} does not exist"));
    };
    let mut history = History::open(
        js,
        stream,
        &[subject.to_string()],
        Start::Sequence(1),
        info.state.last_sequence,
        &format!("jetrun events {subject}"),
    )
    .await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut unreadable = 0u64;
    while let Some(item) = history.next().await? {
        let written = match item {
            Item::Message(message) => {
                let (sequence, stored) = (message.sequence, message.published);
                match message.event() {
                    Ok(event) if json => {
                        serde_json::to_writer(&mut out, &event.to_structured_json())
                            .map_err(std::io::Error::from)
                            .and_then(|()| out.write_all(b"\n"))
                    }
                    Ok(event) => writeln!(out, "{}", line(sequence, stored, &event)),
                    Err(why) => {
                        unreadable += 1;
                        out.flush().map(|()| {
                            eprintln!(
                                "jetrun: sequence {sequence} ({}) is not a readable event: {why}",
                                message.message.subject
                            )
                        })
                    }
                }
            }
            Item::Unreadable(stored) => {
                unreadable += 1;
                out.flush().map(|()| eprintln!("jetrun: {stored}"))
            }
        };
        match written {
            Ok(()) => {}
            // The reader has seen enough (`| head`): not an error.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(ExitCode::SUCCESS)
            }
            Err(err) => return Err(err).context("cannot write to stdout"),
        }
    }
    match out.flush() {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(err).context("cannot write to stdout")
        }
        _ => {}
    }
    Ok(if unreadable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The streams whose subjects overlap `subject`, as JetStream says.
async fn streams_storing(js: &jetstream::Context, subject: &str) -> anyhow::Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Names {
        #[serde(default)]
        streams: Option<Vec<String>>,
        total: usize,
    }
    let mut names = Vec::new();
    loop {
        let request = json!({"subject": subject, "offset": names.len()});
        let page: Response<Names> = js
            .request("STREAM.NAMES", &request)
            .await
            .context("cannot list streams")?;
        let page = match page {
            Response::Ok(page) => page,
            Response::Err { error } => return Err(anyhow!("cannot list streams: {error}")),
        };
        let got = page.streams.unwrap_or_default();
        let done = got.is_empty() || names.len() + got.len() >= page.total;
        names.extend(got);
        if done {
            names.sort();
            return Ok(names);
        }
    }
}

// ---------------------------------------------------------------- lines

/// `<stream seq>  <stored at>  <type>  <id>  <data>`.
fn line(sequence: u64, stored: SystemTime, event: &Event) -> String {
    let line = format!(
        "{sequence}  {}  {}  {}  {}",
        rfc3339(stored),
        event.event_type,
        event.id,
        data_column(event)
    );
    line.trim_end().to_string()
}

/// The data on one line: compact JSON when it is JSON (keys and numbers as
/// published), else the text with control characters escaped, else base64.
fn data_column(event: &Event) -> String {
    let data = event.data.as_ref();
    if event.is_json() {
        if let Some(compact) = compact_json(data) {
            return compact;
        }
    }
    match std::str::from_utf8(data) {
        Ok(text) => text
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_debug().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        Err(_) => format!("base64:{}", BASE64_STANDARD.encode(data)),
    }
}

/// `bytes` without the whitespace between JSON tokens; `None` when they are
/// not JSON.
fn compact_json(bytes: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).ok()?;
    let text = std::str::from_utf8(bytes).ok()?;
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() && c != '\u{feff}' {
            out.push(c);
        }
    }
    Some(out)
}

/// A subject filter: dot-separated tokens, `*` a whole token, `>` only last.
fn filter_subject(text: &str) -> Result<String, InvalidValue> {
    let tokens: Vec<&str> = text.split('.').collect();
    let bad = |why: &str| Err(InvalidValue(format!("{text:?} is not a subject: {why}")));
    if text.is_empty() {
        return bad("it is empty");
    }
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return bad("a token is empty (two dots, or a dot at an end)");
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it has whitespace in it");
        }
        if *token == ">" && i + 1 != tokens.len() {
            return bad("`>` can only be the last token");
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return bad("a wildcard (`*`, `>`) must be a whole token");
        }
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn event(data: &'static [u8], content_type: Option<&str>) -> Event {
        Event {
            id: "EVENTS:3".into(),
            source: "nats://EVENTS".into(),
            event_type: "order.placed".into(),
            datacontenttype: content_type.map(str::to_string),
            data: bytes::Bytes::from_static(data),
            ..Event::default()
        }
    }

    #[test]
    fn a_line_has_sequence_time_type_id_and_data() {
        let stored = SystemTime::UNIX_EPOCH + Duration::from_millis(1500);
        let e = event(b"{ \"order_id\": 42,\n \"note\": \"a b\" }", None);
        assert_eq!(
            line(3, stored, &e),
            "3  1970-01-01T00:00:01.500Z  order.placed  EVENTS:3  {\"order_id\":42,\"note\":\"a b\"}"
        );
        assert_eq!(
            line(3, stored, &event(b"", None)),
            "3  1970-01-01T00:00:01.500Z  order.placed  EVENTS:3"
        );
    }

    #[test]
    fn data_is_compact_json_text_or_base64() {
        assert_eq!(
            data_column(&event(b"[1, 2.50, {\"k\": \"x\\\" y\"}]", None)),
            r#"[1,2.50,{"k":"x\" y"}]"#
        );
        assert_eq!(data_column(&event(b"hello\nworld", None)), "hello\\nworld");
        assert_eq!(
            data_column(&event(b"{\"a\": 1}", Some("text/plain"))),
            "{\"a\": 1}",
            "declared as text: shown as sent"
        );
        assert_eq!(data_column(&event(b"\xff\x00", None)), "base64:/wA=");
    }

    #[test]
    fn compact_json_keeps_strings_whole() {
        assert_eq!(
            compact_json(b" { \"a b\" : \"c\\\\\" , \"d\" : [ ] } ").as_deref(),
            Some(r#"{"a b":"c\\","d":[]}"#)
        );
        assert_eq!(compact_json(b"{"), None);
    }

    #[test]
    fn subjects_may_have_whole_token_wildcards() {
        for ok in ["order.42.>", "order.*.placed", ">", "a"] {
            assert_eq!(filter_subject(ok).unwrap(), ok);
        }
        assert_eq!(
            filter_subject("order.>.x").unwrap_err().to_string(),
            "\"order.>.x\" is not a subject: `>` can only be the last token"
        );
        assert!(filter_subject("order..x").is_err());
        assert!(filter_subject("order.4*").is_err());
        assert!(filter_subject("a b").is_err());
        assert!(filter_subject("").is_err());
    }
}
