//! Latency at a fixed publish rate, for the baseline consumer and jetrun's
//! `noop`. jetrun has no per-event hook, so both are measured the same way
//! from outside: a plain subscription to `$JS.ACK.>` sees every ack the
//! consumer sends, its subject carries the stream sequence, and the
//! publisher recorded when it sent that sequence. Publish → ack seen is an
//! upper bound of publish → handler start. The baseline also reports publish
//! → receive, from the send time each event carries in a header.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backlog::{self, Target};
use crate::contenders::baseline::{self, BareConsumer};
use crate::contenders::jetrun::{no_dead_letters, Function, Tuning};
use crate::harness::Harness;
use crate::measure;
use crate::runner::Runner;

/// The header holding the publish time, in ns since the bench's epoch.
const SENT_HEADER: &str = "Bench-Sent-Ns";
/// Events sent in the first second are not counted.
const WARM_UP: Duration = Duration::from_secs(1);
/// Time for the last acks to reach the observer after the ack floor moved.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) samples: usize,
    /// Counted events whose latency was not observed.
    pub(crate) missing: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct LatencyReport {
    pub(crate) rate: u64,
    pub(crate) seconds: u64,
    /// One per `--latency-samples`, each measured on fresh streams.
    pub(crate) samples: Vec<LatencySample>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct LatencySample {
    /// Baseline, publish → received by the consumer.
    pub(crate) baseline_receive: Percentiles,
    /// Baseline, publish → its ack seen on `$JS.ACK`.
    pub(crate) baseline_ack: Percentiles,
    /// jetrun `noop` (default config), publish → its ack seen on `$JS.ACK`.
    pub(crate) jetrun_ack: Percentiles,
    /// jetrun with the Python worker (default config), publish → ack seen.
    pub(crate) python_ack: Percentiles,
}

impl LatencyReport {
    /// Median over the samples of jetrun-noop's percentile ÷ the baseline's.
    pub(crate) fn median_ratio(&self, of: fn(&Percentiles) -> f64) -> Option<f64> {
        let ratios: Vec<f64> = self
            .samples
            .iter()
            .map(|s| of(&s.jetrun_ack) / of(&s.baseline_ack))
            .filter(|r| r.is_finite())
            .collect();
        crate::report::median(&ratios)
    }
}

/// Measures `--latency-samples` samples, each: the baseline, jetrun `noop`,
/// then jetrun's Python worker, each on a fresh stream.
pub(crate) async fn run(harness: &Harness) -> anyhow::Result<LatencyReport> {
    let epoch = Instant::now();
    let mut samples = Vec::new();
    for sample in 1..=harness.options.latency_samples.max(1) {
        let (baseline_receive, baseline_ack) = baseline_latency(harness, sample, epoch).await?;
        let jetrun_ack = jetrun_latency(harness, sample, Function::Noop, epoch).await?;
        let python_ack = jetrun_latency(harness, sample, Function::PythonWorker, epoch).await?;
        samples.push(LatencySample {
            baseline_receive,
            baseline_ack,
            jetrun_ack,
            python_ack,
        });
    }
    Ok(LatencyReport {
        rate: harness.options.rate,
        seconds: harness.options.seconds,
        samples,
    })
}

async fn baseline_latency(
    harness: &Harness,
    sample: usize,
    epoch: Instant,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    let target = Target::new("latency-baseline", sample);
    let stream = target.create(&harness.js).await?;
    let observer = AckObserver::start(harness, &target.stream, baseline::DURABLE, epoch).await?;
    // (sent, received) per message that carried a send time.
    let received: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let record = received.clone();
    let consumer = BareConsumer::start(
        harness,
        &stream,
        baseline::RUNNER_BATCH,
        move |message: &jetstream::Message| {
            let now = nanos(epoch.elapsed());
            let sent = message
                .headers
                .as_ref()
                .and_then(|h| h.get(SENT_HEADER))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            if let (Some(sent), Ok(mut record)) = (sent, record.lock()) {
                record.push((sent, now));
            }
        },
    )
    .await?;
    let published = publish_at_rate(harness, &target.subject, epoch).await?;
    measure::ack_floor_reaches(&stream, baseline::DURABLE, published.last(), &mut || {
        consumer.check()
    })
    .await?;
    tokio::time::sleep(SETTLE).await;
    consumer.stop();
    let acks = observer.finish();
    let receive: Vec<u64> = received
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(sent, _)| *sent >= published.counted_from)
        .map(|(sent, at)| at.saturating_sub(sent))
        .collect();
    Ok((
        percentiles(receive, published.counted()),
        percentiles(published.join(&acks), published.counted()),
    ))
}

async fn jetrun_latency(
    harness: &Harness,
    sample: usize,
    function: Function,
    epoch: Instant,
) -> anyhow::Result<Percentiles> {
    let name = format!("latency-{}", function.name());
    let target = Target::new(&name, sample);
    let stream = target.create(&harness.js).await?;
    let config = function.config(harness, &target, Tuning::default())?;
    let mut runner = Runner::start(harness, &format!("{name}-{sample}"), &config)?;
    runner.wait_ready().await?;
    let observer = AckObserver::start(harness, &target.stream, function.name(), epoch).await?;
    let published = publish_at_rate(harness, &target.subject, epoch).await?;
    measure::ack_floor_reaches(&stream, function.name(), published.last(), &mut || {
        runner.check_alive()
    })
    .await?;
    tokio::time::sleep(SETTLE).await;
    runner.stop().await?;
    no_dead_letters(harness).await?;
    let acks = observer.finish();
    if harness.options.keep {
        published.write_csv(&acks, &harness.path(&format!("{name}-{sample}.csv")))?;
    }
    Ok(percentiles(published.join(&acks), published.counted()))
}

/// What the publisher sent: (stream sequence, send time) per event, and from
/// when on they count (the warm-up's end).
struct Published {
    sent: Vec<(u64, u64)>,
    counted_from: u64,
}

impl Published {
    fn last(&self) -> u64 {
        self.sent.iter().map(|s| s.0).max().unwrap_or(0)
    }

    fn counted(&self) -> usize {
        self.sent
            .iter()
            .filter(|s| s.1 >= self.counted_from)
            .count()
    }

    /// With `--keep`: `sequence,sent_ns,latency_ns` per event (latency empty
    /// when no ack was seen), to see when the slow ones were sent.
    fn write_csv(&self, acks: &[(u64, u64)], path: &std::path::Path) -> anyhow::Result<()> {
        use std::fmt::Write as _;
        let mut first_ack = std::collections::HashMap::with_capacity(acks.len());
        for &(sequence, at) in acks {
            first_ack.entry(sequence).or_insert(at);
        }
        let mut text = String::from("sequence,sent_ns,latency_ns\n");
        for (sequence, at) in &self.sent {
            let latency = first_ack
                .get(sequence)
                .map(|ack: &u64| ack.saturating_sub(*at).to_string())
                .unwrap_or_default();
            let _ = writeln!(text, "{sequence},{at},{latency}");
        }
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }

    /// Latencies of counted events: ack seen − sent, by stream sequence; the
    /// first ack of a sequence counts.
    fn join(&self, acks: &[(u64, u64)]) -> Vec<u64> {
        let mut first_ack = std::collections::HashMap::with_capacity(acks.len());
        for &(sequence, at) in acks {
            first_ack.entry(sequence).or_insert(at);
        }
        self.sent
            .iter()
            .filter(|(_, at)| *at >= self.counted_from)
            .filter_map(|(sequence, at)| Some(first_ack.get(sequence)?.saturating_sub(*at)))
            .collect()
    }
}

/// Publishes `--rate` events per second for the warm-up plus `--seconds`,
/// each stamped with its send time (ns since `epoch`), and reads the stream
/// sequence of each from its JetStream ack.
async fn publish_at_rate(
    harness: &Harness,
    subject: &str,
    epoch: Instant,
) -> anyhow::Result<Published> {
    let rate = harness.options.rate.max(1);
    let total = rate * (WARM_UP.as_secs() + harness.options.seconds);
    let (tx, mut rx) = mpsc::channel::<(u64, PublishAckFuture)>(65_536);
    let collector: JoinHandle<anyhow::Result<Vec<(u64, u64)>>> = tokio::spawn(async move {
        let mut sent = Vec::new();
        while let Some((at, ack)) = rx.recv().await {
            let ack = ack.await.context("publish ack")?;
            sent.push((ack.sequence, at));
        }
        Ok(sent)
    });
    let start = tokio::time::Instant::now();
    let counted_from = nanos(epoch.elapsed() + WARM_UP);
    for n in 0..total {
        tokio::time::sleep_until(start + Duration::from_nanos(n * 1_000_000_000 / rate)).await;
        let at = nanos(epoch.elapsed());
        let mut headers = HeaderMap::new();
        headers.insert(SENT_HEADER, at.to_string().as_str());
        let ack = harness
            .js
            .publish_with_headers(subject.to_string(), headers, backlog::body(n + 1))
            .await
            .with_context(|| format!("publish to {subject}"))?;
        if tx.send((at, ack)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let sent = collector.await.context("publish ack collector")??;
    Ok(Published { sent, counted_from })
}

/// A plain subscription to `$JS.ACK.>` recording, per stream sequence, when
/// one durable's first ack of it went by.
struct AckObserver {
    task: JoinHandle<()>,
    seen: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl AckObserver {
    async fn start(
        harness: &Harness,
        stream: &str,
        durable: &str,
        epoch: Instant,
    ) -> anyhow::Result<Self> {
        let client = harness.connect().await?;
        let mut subscription = client
            .subscribe("$JS.ACK.>")
            .await
            .context("subscribe to $JS.ACK.>")?;
        client.flush().await.context("flush the ack subscription")?;
        let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let record = seen.clone();
        let (stream, durable) = (stream.to_string(), durable.to_string());
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(message) = subscription.next().await {
                let at = nanos(epoch.elapsed());
                if !is_ack(&message.payload) {
                    continue;
                }
                let Some(ack) = parse_ack_subject(message.subject.as_str()) else {
                    continue;
                };
                if ack.stream == stream && ack.consumer == durable {
                    if let Ok(mut seen) = record.lock() {
                        seen.push((ack.stream_sequence, at));
                    }
                }
            }
        });
        Ok(AckObserver { task, seen })
    }

    /// Stops observing; (stream sequence, time seen) per ack.
    fn finish(self) -> Vec<(u64, u64)> {
        self.task.abort();
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Whether an ack subject's payload is a positive ack (`+ACK`, or empty).
fn is_ack(payload: &[u8]) -> bool {
    payload.is_empty() || payload == b"+ACK"
}

#[derive(Debug, PartialEq, Eq)]
struct AckSubject<'a> {
    stream: &'a str,
    consumer: &'a str,
    stream_sequence: u64,
}

/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>`,
/// or the newer form with `<domain>.<account hash>` before the stream and a
/// random token after.
fn parse_ack_subject(subject: &str) -> Option<AckSubject<'_>> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let rest = match tokens.as_slice() {
        ["$JS", "ACK", rest @ ..] if rest.len() == 7 => rest,
        ["$JS", "ACK", _domain, _account, rest @ ..] if rest.len() >= 7 => rest,
        _ => return None,
    };
    Some(AckSubject {
        stream: rest[0],
        consumer: rest[1],
        stream_sequence: rest[3].parse().ok()?,
    })
}

fn percentiles(mut samples: Vec<u64>, counted: usize) -> Percentiles {
    samples.sort_unstable();
    let at = |p: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1] as f64 / 1e6
    };
    Percentiles {
        samples: samples.len(),
        missing: counted.saturating_sub(samples.len()),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Fails when a consumer saw nothing at all: the method is broken, not slow.
pub(crate) fn check(report: &LatencyReport) -> anyhow::Result<()> {
    for (n, sample) in report.samples.iter().enumerate() {
        for (name, p) in [
            ("baseline publish → receive", &sample.baseline_receive),
            ("baseline publish → ack", &sample.baseline_ack),
            ("jetrun-noop publish → ack", &sample.jetrun_ack),
            ("jetrun-python-worker publish → ack", &sample.python_ack),
        ] {
            if p.samples == 0 {
                bail!(
                    "latency sample {}: no sample for {name} ({} events missing)",
                    n + 1,
                    p.missing
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_forms_give_the_stream_sequence() {
        assert_eq!(
            parse_ack_subject("$JS.ACK.BENCH_x_1.noop.1.42.40.1700000000000000000.7"),
            Some(AckSubject {
                stream: "BENCH_x_1",
                consumer: "noop",
                stream_sequence: 42
            })
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.hub.ACCHASH.S.c.2.9.8.1700000000000000000.0.r4nd"),
            Some(AckSubject {
                stream: "S",
                consumer: "c",
                stream_sequence: 9
            })
        );
        assert_eq!(parse_ack_subject("$JS.ACK.S.c.1"), None);
        assert_eq!(parse_ack_subject("$JS.API.INFO"), None);
        assert!(is_ack(b"") && is_ack(b"+ACK"));
        assert!(!is_ack(b"+WPI") && !is_ack(b"-NAK"));
    }

    #[test]
    fn latencies_join_on_the_sequence_and_skip_the_warm_up() {
        let published = Published {
            sent: vec![(1, 5), (2, 100), (3, 200)],
            counted_from: 50,
        };
        let acks = [(2, 150), (1, 10), (2, 400)];
        assert_eq!(published.join(&acks), vec![50]);
        assert_eq!((published.last(), published.counted()), (3, 2));
        let p = percentiles(published.join(&acks), published.counted());
        assert_eq!((p.samples, p.missing), (1, 1));
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let p = percentiles((1..=1000).map(|ms| ms * 1_000_000).collect(), 1000);
        assert_eq!(
            (p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms),
            (500.0, 990.0, 999.0, 1000.0)
        );
    }
}
