//! `baseline` and `baseline-1000`: a bare async-nats durable pull consumer in
//! the bench process that acks each message: what the NATS client alone can
//! do, the ceiling jetrun is compared to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backlog::Target;
use crate::harness::Harness;
use crate::measure::{self, ConsumerCpu, Start, Throughput};

/// The runner's pull batch: `min(concurrency, MAX_BATCH)` with MAX_BATCH = 256
/// in runner/src/delivery/mod.rs, so 256 at the bench's concurrency.
pub(crate) const RUNNER_BATCH: usize = 256;
/// How long a pull request waits on the server, as the runner's.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The runner's default `max_ack_pending`.
const MAX_ACK_PENDING: i64 = 10_000;
/// The durable consumer's name.
pub(crate) const DURABLE: &str = "baseline";

/// Fills a fresh stream with `events` events and times a bare consumer with a
/// pull batch of `batch` through them.
pub(crate) async fn run(
    harness: &Harness,
    name: &str,
    run: usize,
    events: u64,
    batch: usize,
) -> anyhow::Result<Throughput> {
    let target = Target::new(name, run);
    let stream = target.fill(&harness.js, events).await?;
    let (first_tx, first_rx) = oneshot::channel();
    let mut first_tx = Some(first_tx);
    let consumer = BareConsumer::start(harness, &stream, batch, move |_| {
        if let Some(first) = first_tx.take() {
            let _ = first.send(SystemTime::now());
        }
    })
    .await?;
    let cpu = harness.cpu_probe(ConsumerCpu::Process(std::process::id()));
    let measured = measure::throughput(
        &stream,
        DURABLE,
        events,
        Start::Reported(first_rx),
        &cpu,
        &mut || consumer.check(),
    )
    .await;
    consumer.stop();
    measured
}

/// The most inputs `jetrun-emit` may hold at once at the default
/// `concurrency` of 16: 16 handler slots, a 512-message prefetch buffer and a
/// 256-input window waiting for emits (`held_at_most` in
/// runner/src/dispatch/pull.rs). `baseline-emit` keeps as many in flight.
pub(crate) const EMIT_IN_FLIGHT: usize = 16 + 512 + 256;

/// The headers `baseline-emit` writes on each event it publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EmitHeaders {
    /// `Nats-Msg-Id` alone: the server work of an emit and nothing more.
    MsgId,
    /// The CloudEvents binary-mode block jetrun writes on an event `echo`
    /// emits for a bare input (runner/src/envelope.rs `binary_headers`): the
    /// same nine names, values of the same sizes, the time formatted per
    /// event.
    CloudEvents,
}

impl EmitHeaders {
    /// The headers of the event emitted for input `sequence` of `stream`.
    fn of(self, stream: &str, sequence: u64) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("5f0c4b2a-9d1e-5c3b-8a7f-{sequence:012x}");
        headers.insert("Nats-Msg-Id", id.as_str());
        if self == EmitHeaders::CloudEvents {
            let input = format!("{stream}:{sequence}");
            let time = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
            headers.insert("ce-specversion", "1.0");
            headers.insert("ce-id", id.as_str());
            headers.insert("ce-type", "bench.echoed");
            headers.insert("ce-source", "jetrun/echo");
            headers.insert("ce-time", time.as_str());
            headers.insert("ce-datacontenttype", "application/json");
            headers.insert("ce-correlationid", input.as_str());
            headers.insert("ce-causationid", input.as_str());
        }
        headers
    }
}

/// Fills a fresh stream with `events` events and times the bare client doing
/// what `echo` makes the server do: for each input, publish one event with
/// `headers` to a second stream and wait for its ack, then ack the input;
/// [`EMIT_IN_FLIGHT`] inputs at once.
pub(crate) async fn run_emit(
    harness: &Harness,
    name: &str,
    run: usize,
    events: u64,
    headers: EmitHeaders,
) -> anyhow::Result<Throughput> {
    let target = Target::new(name, run);
    let stream = target.fill(&harness.js, events).await?;
    let emitted = Target {
        stream: crate::contenders::jetrun::echoed_stream(&target),
        subject: crate::contenders::jetrun::echoed_subject(&target),
    };
    let emitted_stream = emitted.create(&harness.js).await?;
    let js = jetstream::new(harness.connect().await?);
    let mut messages = pull_from(&js, &stream, DURABLE, None, RUNNER_BATCH).await?;
    let (first_tx, first_rx) = oneshot::channel();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let failed = failure.clone();
    let subject = emitted.subject.clone();
    let task = tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(EMIT_IN_FLIGHT));
        let mut first_tx = Some(first_tx);
        let mut in_flight = tokio::task::JoinSet::new();
        let problem = loop {
            while let Some(done) = in_flight.try_join_next() {
                if let Ok(Err(problem)) = done {
                    if let Ok(mut failure) = failed.lock() {
                        *failure = Some(problem);
                    }
                }
            }
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break "the slots closed".to_string();
            };
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(err)) => break format!("pull failed: {err}"),
                None => break "the message stream ended".to_string(),
            };
            if let Some(first) = first_tx.take() {
                let _ = first.send(SystemTime::now());
            }
            let (js, subject) = (js.clone(), subject.clone());
            in_flight.spawn(async move {
                let headers = message
                    .info()
                    .map(|info| headers.of(info.stream, info.stream_sequence))
                    .map_err(|err| format!("no metadata: {err}"))?;
                let ack = js
                    .publish_with_headers(subject, headers, message.payload.clone())
                    .await
                    .map_err(|err| format!("publish failed: {err}"))?;
                ack.await
                    .map_err(|err| format!("publish ack failed: {err}"))?;
                message
                    .ack()
                    .await
                    .map_err(|err| format!("ack failed: {err}"))?;
                drop(slot);
                Ok::<(), String>(())
            });
        };
        if let Ok(mut failure) = failed.lock() {
            failure.get_or_insert(problem);
        }
    });
    let cpu = harness.cpu_probe(ConsumerCpu::Process(std::process::id()));
    let check = || -> anyhow::Result<()> {
        if let Some(problem) = failure.lock().ok().and_then(|f| f.clone()) {
            bail!("the baseline-emit consumer stopped: {problem}");
        }
        Ok(())
    };
    let measured = measure::throughput(
        &stream,
        DURABLE,
        events,
        Start::Reported(first_rx),
        &cpu,
        &mut || check(),
    )
    .await;
    task.abort();
    let measured = measured?;
    let held = emitted_stream
        .clone()
        .get_info()
        .await
        .context("info of the emitted stream")?
        .state
        .messages;
    if held != events {
        bail!("baseline-emit handled {events} events but its stream holds {held} emitted ones");
    }
    Ok(measured)
}

/// Creates the durable consumer `durable` on `stream` (on `subject` only,
/// when given) and starts pulling from it, `batch` at a time.
async fn pull_from(
    js: &jetstream::Context,
    stream: &stream::Stream,
    durable: &str,
    subject: Option<&str>,
    batch: usize,
) -> anyhow::Result<pull::Stream> {
    let name = &stream.cached_info().config.name;
    js.get_stream(name)
        .await
        .with_context(|| format!("get stream {name}"))?
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_string()),
            filter_subject: subject.unwrap_or_default().to_string(),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: MAX_ACK_PENDING,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .with_context(|| format!("create consumer {durable} on {name}"))?
        .stream()
        .max_messages_per_batch(batch)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .with_context(|| format!("start pulling from {durable} on {name}"))
}

/// The consumer task: pulls with `consumer.stream()` (a continuous pull,
/// refilled as batches drain) and acks every message after handing it to
/// `on_message`.
pub(crate) struct BareConsumer {
    task: JoinHandle<()>,
    failure: Arc<Mutex<Option<String>>>,
}

impl BareConsumer {
    /// Creates the durable consumer [`DURABLE`] on `stream`, on a connection
    /// of its own, and starts consuming.
    pub(crate) async fn start(
        harness: &Harness,
        stream: &stream::Stream,
        batch: usize,
        on_message: impl FnMut(&jetstream::Message) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(harness.connect().await?);
        Self::start_on(&js, stream, DURABLE, None, batch, on_message).await
    }

    /// Creates the durable consumer `durable` on `stream`, on `subject`
    /// only when given, and starts consuming on `js`'s connection.
    pub(crate) async fn start_on(
        js: &jetstream::Context,
        stream: &stream::Stream,
        durable: &str,
        subject: Option<&str>,
        batch: usize,
        mut on_message: impl FnMut(&jetstream::Message) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let mut messages = pull_from(js, stream, durable, subject, batch).await?;
        let failure = Arc::new(Mutex::new(None));
        let failed = failure.clone();
        let task = tokio::spawn(async move {
            let problem = loop {
                match messages.next().await {
                    Some(Ok(message)) => {
                        on_message(&message);
                        if let Err(err) = message.ack().await {
                            break format!("ack failed: {err}");
                        }
                    }
                    Some(Err(err)) => break format!("pull failed: {err}"),
                    None => break "the message stream ended".to_string(),
                }
            };
            if let Ok(mut failure) = failed.lock() {
                *failure = Some(problem);
            }
        });
        Ok(BareConsumer { task, failure })
    }

    /// An error once the consumer has stopped.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if let Some(problem) = self.failure.lock().ok().and_then(|f| f.clone()) {
            bail!("the baseline consumer stopped: {problem}");
        }
        Ok(())
    }

    pub(crate) fn stop(self) {
        self.task.abort();
    }
}
