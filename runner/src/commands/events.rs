//! `jetrun events SUBJECT`: the history a stream stores on a subject
//! (wildcards allowed), oldest first, one event per line, read as a live
//! delivery reads it (`envelope::read_event`). Also [`History`], the reader
//! `jetrun replay` shares: an ordered ephemeral consumer over a range of a
//! stream, which leaves every durable consumer alone, with a way past a
//! message the NATS client cannot be handed. How a line looks is pure.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::Info as StreamInfo;
use async_nats::jetstream::{self, ErrorCode};
use base64::prelude::{Engine, BASE64_STANDARD};
use futures::StreamExt as _;
use jetrun_functions::Event;
use serde::Deserialize;
use serde_json::json;

use super::dlq;
use crate::cli::ConfigArg;
use crate::config_file;
use crate::envelope::{self, Origin};

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

/// Exit status for a usage error.
const EXIT_USAGE: u8 = 2;

/// Runs `jetrun events`.
pub(crate) async fn events(args: EventsArgs) -> ExitCode {
    let loaded = match config_file::load(&args.config.config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let result = async {
        let client = crate::nats::connect_once(&loaded.config.nats).await?;
        let js = jetstream::new(client);
        let stream = match &args.stream {
            Some(stream) => stream.clone(),
            None => match streams_storing(&js, &args.subject).await?.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(anyhow!(
                        "no stream stores subject {}; `nats stream ls` lists them",
                        args.subject
                    ))
                }
                many => {
                    eprintln!(
                        "jetrun: streams {} all store subject {}; pass --stream NAME",
                        many.join(", "),
                        args.subject
                    );
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            },
        };
        print_history(&js, &stream, &args.subject, args.json).await
    }
    .await;
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("jetrun: {err:#}");
            ExitCode::FAILURE
        }
    }
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
                let (sequence, stored) = message.origin();
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

/// The stream's info; `None` when it does not exist.
pub(super) async fn stream_info(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<Option<StreamInfo>> {
    match js.get_stream(stream).await {
        Ok(handle) => Ok(Some(handle.cached_info().clone())),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(err).with_context(|| format!("cannot read stream {stream}")),
        },
    }
}

// ---------------------------------------------------------------- lines

/// `<stream seq>  <stored at>  <type>  <id>  <data>`.
fn line(sequence: u64, stored: SystemTime, event: &Event) -> String {
    let line = format!(
        "{sequence}  {}  {}  {}  {}",
        dlq::rfc3339(stored),
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
fn filter_subject(text: &str) -> Result<String, String> {
    let tokens: Vec<&str> = text.split('.').collect();
    let bad = |why: &str| Err(format!("{text:?} is not a subject: {why}"));
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

// ---------------------------------------------------------------- history

/// Where a history read starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Start {
    /// At this stream sequence, inclusive.
    Sequence(u64),
    /// At the first message stored at or after this time.
    Time(SystemTime),
}

/// What a history read yields.
pub(super) enum Item {
    Message(Box<Stored>),
    /// A message stored in range that the consumer could not hand over.
    Unreadable(Unreadable),
}

/// A message read from the stream, with what JetStream said of it.
pub(super) struct Stored {
    pub(super) message: jetstream::Message,
    pub(super) stream: String,
    pub(super) sequence: u64,
    pub(super) published: SystemTime,
}

impl Stored {
    /// Its stream sequence and when the stream stored it.
    pub(super) fn origin(&self) -> (u64, SystemTime) {
        (self.sequence, self.published)
    }

    /// The event it carries, read as a live delivery reads it.
    pub(super) fn event(&self) -> Result<Event, jetrun_functions::Failure> {
        let origin = Origin {
            subject: self.message.subject.as_str(),
            stream: &self.stream,
            sequence: self.sequence,
            published: self.published,
        };
        envelope::read_event(
            &origin,
            self.message.headers.as_ref(),
            &self.message.payload,
        )
    }
}

/// A stored message the NATS client could not be handed.
#[derive(Debug)]
pub(super) struct Unreadable {
    pub(super) sequence: u64,
    pub(super) subject: String,
    /// Whether its header block is not UTF-8 (else it just never came).
    pub(super) bad_headers: bool,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sequence {} ({}) ", self.sequence, self.subject)?;
        if self.bad_headers {
            f.write_str(
                "has a header value that is not UTF-8, which the NATS client cannot read; \
                 skipped (`nats stream get` shows it)",
            )
        } else {
            f.write_str("is stored but was never delivered to this reader; skipped")
        }
    }
}

/// How long a read waits for the next message, when more are stored,
/// before asking the stream what is next.
const IDLE: Duration = Duration::from_secs(5);

/// A stream's messages on some subjects, from a start up to a last sequence
/// (inclusive), oldest first, through an ordered ephemeral consumer of its
/// own. The read ends at the last sequence, or where the stream ends when it
/// is shorter; it does not wait for new messages.
///
/// async-nats 0.51 drops its connection on a message with a header value
/// that is not UTF-8 (PITFALLS.md), so such a message never arrives. When
/// nothing comes for [`IDLE`] though more is stored, the stream's
/// message-get API says what is next: a message whose headers cannot be read
/// (or that still does not come through a fresh consumer) is yielded as
/// [`Item::Unreadable`] and the read goes on past it.
pub(super) struct History {
    js: jetstream::Context,
    stream: String,
    filters: Vec<String>,
    description: String,
    last: u64,
    start: Start,
    messages: Option<Ordered>,
    /// Whether more messages are stored in range.
    more: bool,
    /// The sequence a stalled read was last reopened at.
    reopened_at: Option<u64>,
}

impl History {
    /// Opens the read; `description` names the consumer for whoever lists
    /// the stream's consumers meanwhile.
    pub(super) async fn open(
        js: &jetstream::Context,
        stream: &str,
        filters: &[String],
        start: Start,
        last: u64,
        description: &str,
    ) -> anyhow::Result<History> {
        let mut history = History {
            js: js.clone(),
            stream: stream.to_string(),
            filters: filters.to_vec(),
            description: description.to_string(),
            last,
            start,
            messages: None,
            more: !matches!(start, Start::Sequence(first) if first > last),
            reopened_at: None,
        };
        if history.more {
            history.reopen().await?;
        }
        Ok(history)
    }

    async fn reopen(&mut self) -> anyhow::Result<()> {
        self.messages = None;
        let deliver_policy = match self.start {
            Start::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            Start::Time(time) => DeliverPolicy::ByStartTime {
                start_time: time.into(),
            },
        };
        let (filter_subject, filter_subjects) = match self.filters.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let stream = self
            .js
            .get_stream_no_info(&self.stream)
            .await
            .with_context(|| format!("cannot read stream {}", self.stream))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                description: Some(self.description.clone()),
                filter_subject,
                filter_subjects,
                deliver_policy,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read stream {}", self.stream))?;
        if consumer.cached_info().num_pending == 0 {
            self.more = false;
            return Ok(());
        }
        self.messages = Some(
            consumer
                .messages()
                .await
                .with_context(|| format!("cannot read stream {}", self.stream))?,
        );
        Ok(())
    }

    /// The next message in range; `None` at the end.
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            if !self.more {
                return Ok(None);
            }
            let Some(messages) = self.messages.as_mut() else {
                self.reopen().await?;
                continue;
            };
            match tokio::time::timeout(IDLE, messages.next()).await {
                Ok(Some(Ok(message))) => {
                    let info = message
                        .info()
                        .map_err(|err| anyhow!("a message without JetStream metadata: {err}"))?;
                    let (sequence, pending) = (info.stream_sequence, info.pending);
                    let published = SystemTime::from(info.published);
                    if sequence > self.last {
                        self.stop();
                        return Ok(None);
                    }
                    self.start = Start::Sequence(sequence + 1);
                    self.reopened_at = None;
                    if pending == 0 || sequence == self.last {
                        self.stop();
                    }
                    return Ok(Some(Item::Message(Box::new(Stored {
                        message,
                        stream: self.stream.clone(),
                        sequence,
                        published,
                    }))));
                }
                Ok(Some(Err(err))) => {
                    return Err(err).with_context(|| format!("cannot read stream {}", self.stream))
                }
                Ok(None) => return Err(anyhow!("reading stream {} stopped", self.stream)),
                Err(_idle) => {
                    // Drop the consumer first: a message it keeps trying to
                    // deliver keeps cutting the connection.
                    self.messages = None;
                    if let Some(item) = self.past_a_stall().await? {
                        return Ok(Some(item));
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.more = false;
        self.messages = None;
    }

    /// After [`IDLE`] with nothing: the end of the range, a fresh consumer
    /// at the next stored message, or that message as unreadable.
    async fn past_a_stall(&mut self) -> anyhow::Result<Option<Item>> {
        let next = match self.start {
            Start::Sequence(from) => self.next_stored(from).await,
            Start::Time(since) => self.next_stored_since(since).await,
        };
        let next = match next {
            Ok(next) => next,
            // Asked while the connection is down: ask again after a fresh wait.
            Err(err) => {
                tracing::debug!(error = %format!("{err:#}"), "Cannot look up the next message.");
                return Ok(None);
            }
        };
        let Some(next) = next.filter(|next| next.seq <= self.last) else {
            self.stop();
            return Ok(None);
        };
        let bad_headers = next.hdrs.as_deref().is_some_and(|hdrs| {
            BASE64_STANDARD
                .decode(hdrs.as_bytes())
                .map_or(true, |raw| std::str::from_utf8(&raw).is_err())
        });
        if bad_headers || self.reopened_at == Some(next.seq) {
            self.start = Start::Sequence(next.seq + 1);
            self.reopened_at = None;
            self.more = next.seq < self.last;
            return Ok(Some(Item::Unreadable(Unreadable {
                sequence: next.seq,
                subject: next.subject,
                bad_headers,
            })));
        }
        self.start = Start::Sequence(next.seq);
        self.reopened_at = Some(next.seq);
        Ok(None)
    }

    /// The first message stored at or after `since` on the filters. Only
    /// a read stalled before its first message gets here: one look per
    /// message until one is recent enough.
    async fn next_stored_since(&self, since: SystemTime) -> anyhow::Result<Option<RawMessage>> {
        let mut from = 1;
        while let Some(message) = self.next_stored(from).await? {
            let stored = async_nats::datetime::parse_rfc3339(&message.time).ok();
            if stored.is_some_and(|stored| SystemTime::from(stored) >= since) {
                return Ok(Some(message));
            }
            from = message.seq + 1;
        }
        Ok(None)
    }

    /// The first message stored at or after `from` on the filters, through
    /// the stream's message-get API (which hands headers over base64-encoded).
    async fn next_stored(&self, from: u64) -> anyhow::Result<Option<RawMessage>> {
        #[derive(Deserialize)]
        struct Reply {
            message: Option<RawMessage>,
        }
        let mut first: Option<RawMessage> = None;
        for filter in &self.filters {
            let request = json!({"seq": from, "next_by_subj": filter});
            let reply: Reply = self
                .js
                .request(format!("STREAM.MSG.GET.{}", self.stream), &request)
                .await?;
            if let Some(message) = reply.message {
                if first.as_ref().is_none_or(|m| message.seq < m.seq) {
                    first = Some(message);
                }
            }
        }
        Ok(first)
    }
}

/// A message as the stream's message-get API returns it.
#[derive(Deserialize)]
struct RawMessage {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    /// When it was stored, RFC 3339.
    time: String,
}

/// `n` with its noun, plural when it is not 1.
pub(super) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
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
            assert_eq!(filter_subject(ok).as_deref(), Ok(ok));
        }
        assert_eq!(
            filter_subject("order.>.x").unwrap_err(),
            "\"order.>.x\" is not a subject: `>` can only be the last token"
        );
        assert!(filter_subject("order..x").is_err());
        assert!(filter_subject("order.4*").is_err());
        assert!(filter_subject("a b").is_err());
        assert!(filter_subject("").is_err());
    }

    #[test]
    fn unreadable_messages_say_why() {
        let bad = Unreadable {
            sequence: 7,
            subject: "ev.x".into(),
            bad_headers: true,
        };
        assert!(bad
            .to_string()
            .starts_with("sequence 7 (ev.x) has a header value that is not UTF-8"));
        assert_eq!(count(1, "event"), "1 event");
        assert_eq!(count(0, "event"), "0 events");
    }
}
