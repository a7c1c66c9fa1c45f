//! The events a contender works through: a fresh stream per contender and
//! run, filled with N 256-byte JSON bodies before the clock starts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use bytes::Bytes;

/// The size of every event body.
pub(crate) const BODY_LEN: usize = 256;
/// Publishes in flight before the oldest one's ack is awaited.
const PUBLISH_WINDOW: usize = 4096;
/// How long the stream may take to show every event it acknowledged.
const HELD_TIMEOUT: Duration = Duration::from_secs(30);

/// A contender's stream and subject for one run: `BENCH_<name>_<run>` on
/// `bench.<name>.<run>`.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) stream: String,
    pub(crate) subject: String,
}

impl Target {
    pub(crate) fn new(name: &str, run: usize) -> Self {
        Target {
            stream: format!("BENCH_{name}_{run}"),
            subject: format!("bench.{name}.{run}"),
        }
    }

    /// Creates the stream (file storage, like a deployment's).
    pub(crate) async fn create(&self, js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
        js.create_stream(stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.subject.clone()],
            ..Default::default()
        })
        .await
        .with_context(|| format!("create stream {}", self.stream))
    }

    /// Creates the stream and fills it with `events` events.
    pub(crate) async fn fill(
        &self,
        js: &jetstream::Context,
        events: u64,
    ) -> anyhow::Result<stream::Stream> {
        let stream = self.create(js).await?;
        publish(js, &self.subject, events).await?;
        wait_held(&stream, events).await?;
        Ok(stream)
    }

    /// The same with [`keyed_body`]s: event `n` has the key `n % keys`.
    pub(crate) async fn fill_keyed(
        &self,
        js: &jetstream::Context,
        events: u64,
        keys: u64,
    ) -> anyhow::Result<stream::Stream> {
        let stream = self.create(js).await?;
        publish_bodies(js, std::slice::from_ref(&self.subject), events, |n| {
            keyed_body(n, keys)
        })
        .await?;
        wait_held(&stream, events).await?;
        Ok(stream)
    }
}

/// Event `n`'s body with a key: `{"seq":n,"k":n % keys,...}`, padded to
/// [`BODY_LEN`] bytes like [`body`].
pub(crate) fn keyed_body(n: u64, keys: u64) -> Bytes {
    let head = format!(
        r#"{{"seq":{n},"k":{},"kind":"bench","pad":""#,
        n % keys.max(1)
    );
    pad_json(head, BODY_LEN)
}

/// Event `n`'s body: a JSON object padded to exactly [`BODY_LEN`] bytes.
pub(crate) fn body(n: u64) -> Bytes {
    body_of_len(n, BODY_LEN)
}

/// Event `n`'s body padded to `len` bytes (longer only when `len` is too
/// short for the number).
pub(crate) fn body_of_len(n: u64, len: usize) -> Bytes {
    let head = format!(r#"{{"seq":{n},"kind":"bench","pad":""#);
    pad_json(head, len)
}

/// `head` (a JSON object up to an open string), padded with `x` and closed
/// to `len` bytes.
fn pad_json(head: String, len: usize) -> Bytes {
    let tail = r#""}"#;
    let pad = len.saturating_sub(head.len() + tail.len());
    let mut text = String::with_capacity(len);
    text.push_str(&head);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str(tail);
    Bytes::from(text)
}

/// Publishes `events` bodies to `subject`, keeping up to [`PUBLISH_WINDOW`]
/// JetStream acks outstanding, and checks every one of them.
pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: &str,
    events: u64,
) -> anyhow::Result<()> {
    publish_spread(js, &[subject.to_string()], events, BODY_LEN).await
}

/// Publishes `events` bodies of `len` bytes, event `n` to `subjects[n %
/// subjects.len()]`, keeping up to [`PUBLISH_WINDOW`] JetStream acks
/// outstanding, and checks every one of them.
pub(crate) async fn publish_spread(
    js: &jetstream::Context,
    subjects: &[String],
    events: u64,
    len: usize,
) -> anyhow::Result<()> {
    publish_bodies(js, subjects, events, |n| body_of_len(n, len)).await
}

/// Publishes `body(n)` for `n` in `1..=events`, to `subjects[n %
/// subjects.len()]`, keeping up to [`PUBLISH_WINDOW`] JetStream acks
/// outstanding, and checks every one of them.
async fn publish_bodies(
    js: &jetstream::Context,
    subjects: &[String],
    events: u64,
    body: impl Fn(u64) -> Bytes,
) -> anyhow::Result<()> {
    let mut pending: VecDeque<PublishAckFuture> = VecDeque::with_capacity(PUBLISH_WINDOW);
    for n in 1..=events {
        if pending.len() == PUBLISH_WINDOW {
            if let Some(ack) = pending.pop_front() {
                ack.await.context("publish ack")?;
            }
        }
        let subject = &subjects[(n % subjects.len() as u64) as usize];
        let ack = js
            .publish(subject.clone(), body(n))
            .await
            .with_context(|| format!("publish to {subject}"))?;
        pending.push_back(ack);
    }
    for ack in pending {
        ack.await.context("publish ack")?;
    }
    Ok(())
}

/// Waits until the stream holds `events` messages.
pub(crate) async fn wait_held(stream: &stream::Stream, events: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + HELD_TIMEOUT;
    loop {
        let info = stream.get_info().await.context("stream info")?;
        if info.state.messages >= events {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "stream {} holds {} of the {events} events published after {HELD_TIMEOUT:?}",
                info.config.name,
                info.state.messages
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_256_bytes_of_json() {
        for n in [1, 99_999, u64::MAX] {
            let body = body(n);
            assert_eq!(body.len(), BODY_LEN);
            assert_eq!(body_of_len(n, 65_536).len(), 65_536);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["seq"], n);
        }
    }

    #[test]
    fn keyed_bodies_are_256_bytes_with_their_key() {
        let mut keys = std::collections::HashSet::new();
        for n in 1..=5_000 {
            let body = keyed_body(n, 1000);
            assert_eq!(body.len(), BODY_LEN);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["seq"], n);
            keys.insert(value.pointer("/k").unwrap().as_u64().unwrap());
        }
        assert_eq!(keys.len(), 1000);
    }

    #[test]
    fn targets_are_named_per_contender_and_run() {
        let target = Target::new("jetrun-noop", 2);
        assert_eq!(target.stream, "BENCH_jetrun-noop_2");
        assert_eq!(target.subject, "bench.jetrun-noop.2");
    }
}
