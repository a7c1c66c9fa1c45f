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
        mut on_message: impl FnMut(&jetstream::Message) + Send + 'static,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(harness.connect().await?);
        let name = &stream.cached_info().config.name;
        let consumer = js
            .get_stream(name)
            .await
            .with_context(|| format!("get stream {name}"))?
            .create_consumer(pull::Config {
                durable_name: Some(DURABLE.to_string()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: MAX_ACK_PENDING,
                max_deliver: -1,
                ..Default::default()
            })
            .await
            .with_context(|| format!("create consumer {DURABLE} on {name}"))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .with_context(|| format!("start pulling from {DURABLE} on {name}"))?;
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
