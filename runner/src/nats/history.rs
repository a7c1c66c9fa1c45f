//! Reading what a stream stores: [`History`], a range of a stream's messages
//! on some subjects through an ordered reader of its own (`jetrun events`,
//! `jetrun replay`, projection rebuilds and aggregate loads share it). A
//! message whose header block the NATS client cannot read comes as
//! [`Item::Unreadable`] (see `vendor/async-nats/PATCHED.md`).

use std::time::SystemTime;

use anyhow::{anyhow, Context as _};
use async_nats::connection::UNREADABLE_HEADERS;
use async_nats::jetstream::consumer::pull::Ordered;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::Info as StreamInfo;
use async_nats::jetstream::{self, ErrorCode};
use futures::StreamExt as _;
use jetrun_functions::{Event, Failure};

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

/// A stored message whose header block the NATS client cannot read.
#[derive(Debug, thiserror::Error)]
#[error(
    "sequence {sequence} ({subject}) has a header block the NATS client cannot read \
     ({why}); skipped (`nats stream get` shows it)"
)]
pub(crate) struct Unreadable {
    pub(crate) sequence: u64,
    pub(crate) subject: String,
    pub(crate) why: String,
}

/// A stream's messages on some subjects, from a start up to a last sequence
/// (inclusive), oldest first, through an ordered reader of its own, deleted
/// when the read is dropped. The read ends at the last sequence, or where
/// the stream ends when it is shorter; it does not wait for new messages.
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
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    return Err(err).with_context(|| format!("cannot read stream {}", self.stream))
                }
                None => return Err(anyhow!("reading stream {} stopped", self.stream)),
            };
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
            if pending == 0 || sequence == self.last {
                self.stop();
            }
            let headers = message.headers.as_ref();
            if headers.is_some_and(|h| h.get(UNREADABLE_HEADERS).is_some()) {
                let why = headers
                    .and_then(|h| h.get("Jetrun-Unreadable-Headers-Reason"))
                    .map_or_else(String::new, |v| v.to_string());
                return Ok(Some(Item::Unreadable(Unreadable {
                    sequence,
                    subject: message.subject.to_string(),
                    why,
                })));
            }
            return Ok(Some(Item::Message(Box::new(Stored {
                message,
                stream: self.stream.clone(),
                sequence,
                published,
            }))));
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
            why: "header isn't valid utf-8".into(),
        };
        assert_eq!(
            bad.to_string(),
            "sequence 7 (ev.x) has a header block the NATS client cannot read (header isn't \
             valid utf-8); skipped (`nats stream get` shows it)"
        );
    }
}
