//! Reading what a stream stores: [`History`], a range of a stream's messages
//! on some subjects through an ordered reader of its own (`jetrun events`,
//! `jetrun replay`, projection rebuilds and aggregate loads share it), with
//! a way past a message the NATS client cannot be handed; and the stream's
//! message-get API ([`next_stored`]), which hands over any stored message,
//! headers base64-encoded, whatever they hold.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _};
use async_nats::jetstream::consumer::pull::Ordered;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::Info as StreamInfo;
use async_nats::jetstream::{self, ErrorCode};
use base64::prelude::{Engine, BASE64_STANDARD};
use futures::StreamExt as _;
use jetrun_functions::{Event, Failure};
use serde::Deserialize;
use serde_json::json;

use super::consumer::Reader;
use crate::envelope::{self, Origin};

/// The stream's info; `None` when it does not exist.
pub(crate) async fn stream_info(
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

/// A message as the stream's message-get API returns it.
#[derive(Debug, Deserialize)]
pub(crate) struct RawStored {
    pub(crate) subject: String,
    pub(crate) seq: u64,
    /// The header block, base64.
    #[serde(default)]
    pub(crate) hdrs: Option<String>,
    /// The body, base64.
    #[serde(default)]
    pub(crate) data: Option<String>,
    /// When it was stored, RFC 3339.
    pub(crate) time: String,
}

impl RawStored {
    /// The raw header block (`NATS/1.0\r\n...`); `None` when there is none.
    pub(crate) fn header_block(&self) -> Option<Vec<u8>> {
        let hdrs = self.hdrs.as_deref()?;
        Some(BASE64_STANDARD.decode(hdrs.as_bytes()).unwrap_or_default())
    }

    /// The body, byte for byte.
    pub(crate) fn body(&self) -> Vec<u8> {
        match &self.data {
            Some(data) => BASE64_STANDARD.decode(data.as_bytes()).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Whether its header block is one the NATS client cannot read.
    pub(crate) fn has_unreadable_headers(&self) -> bool {
        self.header_block()
            .is_some_and(|raw| std::str::from_utf8(&raw).is_err())
    }
}

/// The first message stored at or after sequence `from` on any of `filters`,
/// through the stream's message-get API.
pub(crate) async fn next_stored(
    js: &jetstream::Context,
    stream: &str,
    filters: &[String],
    from: u64,
) -> anyhow::Result<Option<RawStored>> {
    #[derive(Deserialize)]
    struct Reply {
        message: Option<RawStored>,
    }
    let mut first: Option<RawStored> = None;
    for filter in filters {
        let request = json!({"seq": from, "next_by_subj": filter});
        let reply: Reply = js
            .request(format!("STREAM.MSG.GET.{stream}"), &request)
            .await?;
        if let Some(message) = reply.message {
            if first.as_ref().is_none_or(|m| message.seq < m.seq) {
                first = Some(message);
            }
        }
    }
    Ok(first)
}

/// Where a history read starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// At this stream sequence, inclusive.
    Sequence(u64),
    /// At the first message stored at or after this time.
    Time(SystemTime),
}

/// What a history read yields.
pub(crate) enum Item {
    Message(Box<Stored>),
    /// A message stored in range that the reader could not hand over.
    Unreadable(Unreadable),
}

/// A message read from the stream, with what JetStream said of it.
pub(crate) struct Stored {
    pub(crate) message: jetstream::Message,
    pub(crate) stream: String,
    pub(crate) sequence: u64,
    pub(crate) published: SystemTime,
}

impl Stored {
    /// The event it carries, read as a live delivery reads it.
    pub(crate) fn event(&self) -> Result<Event, Failure> {
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
pub(crate) struct Unreadable {
    pub(crate) sequence: u64,
    pub(crate) subject: String,
    /// Whether its header block is not UTF-8 (else it just never came).
    pub(crate) bad_headers: bool,
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
/// (inclusive), oldest first, through an ordered reader of its own, deleted
/// when the read is dropped. The read ends at the last sequence, or where
/// the stream ends when it is shorter; it does not wait for new messages.
///
/// async-nats 0.51 drops its connection on a message with a header value
/// that is not UTF-8 (PITFALLS.md), so such a message never arrives. When
/// nothing comes for [`IDLE`] though more is stored, the stream's
/// message-get API says what is next: a message whose headers cannot be read
/// (or that still does not come through a fresh reader) is yielded as
/// [`Item::Unreadable`] and the read goes on past it.
pub(crate) struct History {
    js: jetstream::Context,
    stream: String,
    filters: Vec<String>,
    describes: String,
    last: u64,
    start: Start,
    messages: Option<Ordered>,
    /// The reader's name, to delete it once done.
    reader: Option<String>,
    /// Whether more messages are stored in range.
    more: bool,
    /// The sequence a stalled read was last reopened at.
    reopened_at: Option<u64>,
}

impl History {
    /// Opens the read; `describes` names the reader for whoever lists the
    /// stream's consumers meanwhile.
    pub(crate) async fn open(
        js: &jetstream::Context,
        stream: &str,
        filters: &[String],
        start: Start,
        last: u64,
        describes: &str,
    ) -> anyhow::Result<History> {
        let mut history = History {
            js: js.clone(),
            stream: stream.to_string(),
            filters: filters.to_vec(),
            describes: describes.to_string(),
            last,
            start,
            messages: None,
            reader: None,
            more: !matches!(start, Start::Sequence(first) if first > last),
            reopened_at: None,
        };
        if history.more {
            history.reopen().await?;
        }
        Ok(history)
    }

    async fn reopen(&mut self) -> anyhow::Result<()> {
        self.stop_reader();
        let start = match self.start {
            Start::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            Start::Time(time) => DeliverPolicy::ByStartTime {
                start_time: time.into(),
            },
        };
        let consumer = Reader {
            stream: &self.stream,
            subjects: &self.filters,
            start,
            describes: &self.describes,
        }
        .open(&self.js)
        .await?;
        self.reader = Some(consumer.cached_info().name.clone());
        if consumer.cached_info().num_pending == 0 {
            self.stop();
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
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Item>> {
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
                    // Drop the reader first: a message it keeps trying to
                    // deliver keeps cutting the connection.
                    self.stop_reader();
                    if let Some(item) = self.past_a_stall().await? {
                        return Ok(Some(item));
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.more = false;
        self.stop_reader();
    }

    /// Drops the reader and deletes it on the server, in the background:
    /// nats-server allows 1,000 consumers per stream by default, and busy
    /// aggregates load often.
    fn stop_reader(&mut self) {
        self.messages = None;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(name) = self.reader.take() {
            let (js, stream) = (self.js.clone(), self.stream.clone());
            runtime.spawn(async move {
                if let Ok(stream) = js.get_stream_no_info(&stream).await {
                    let _ = stream.delete_consumer(&name).await;
                }
            });
        }
    }

    /// After [`IDLE`] with nothing: the end of the range, a fresh reader at
    /// the next stored message, or that message as unreadable.
    async fn past_a_stall(&mut self) -> anyhow::Result<Option<Item>> {
        let next = match self.start {
            Start::Sequence(from) => next_stored(&self.js, &self.stream, &self.filters, from).await,
            Start::Time(since) => {
                next_stored_since(&self.js, &self.stream, &self.filters, since).await
            }
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
        let bad_headers = next.has_unreadable_headers();
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
}

/// The first message stored at or after `since` on `filters`. Only a read
/// stalled before its first message gets here: one look per message until
/// one is recent enough.
async fn next_stored_since(
    js: &jetstream::Context,
    stream: &str,
    filters: &[String],
    since: SystemTime,
) -> anyhow::Result<Option<RawStored>> {
    let mut from = 1;
    while let Some(message) = next_stored(js, stream, filters, from).await? {
        let stored = async_nats::datetime::parse_rfc3339(&message.time).ok();
        if stored.is_some_and(|stored| SystemTime::from(stored) >= since) {
            return Ok(Some(message));
        }
        from = message.seq + 1;
    }
    Ok(None)
}

impl Drop for History {
    fn drop(&mut self) {
        self.stop_reader();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn a_stored_message_hands_over_its_raw_parts() {
        let raw = RawStored {
            subject: "ev.x".into(),
            seq: 3,
            hdrs: Some(BASE64_STANDARD.encode(b"NATS/1.0\r\nX: \xff\r\n\r\n")),
            data: Some(BASE64_STANDARD.encode(b"body")),
            time: "2024-05-01T08:00:00Z".into(),
        };
        assert!(raw.has_unreadable_headers());
        assert_eq!(raw.body(), b"body");
    }
}
