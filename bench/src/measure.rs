//! How every throughput contender is timed, the same way: from its first
//! delivery to the moment its durable consumer's ack floor reaches the last
//! event (read from consumer info, whose ack floor carries the server's time
//! of that last ack), with the CPU the server and the consumer spent between.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{consumer, stream};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::process_stats;
use crate::pulls::PullStats;

/// How often consumer info is read while waiting for the ack floor.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(20);
/// How often it is read while waiting for the first delivery.
const FIRST_POLL_EVERY: Duration = Duration::from_millis(2);
/// How long the consumer may take to deliver its first event (a runner or
/// Python process starting, its consumer being created).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the ack floor may stay still before the events count as lost.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What one contender did in one run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Throughput {
    pub(crate) events: u64,
    pub(crate) seconds: f64,
    pub(crate) events_per_second: f64,
    /// nats-server CPU per event, in µs.
    pub(crate) server_cpu_us: Option<f64>,
    /// The consumer's CPU per event (its process, plus its children for
    /// jetrun), in µs.
    pub(crate) consumer_cpu_us: Option<f64>,
    /// Deliveries beyond one per event.
    pub(crate) redelivered: u64,
    /// The consumer process's peak RSS (jetrun only), in KiB.
    pub(crate) peak_rss_kib: Option<u64>,
    /// Its pull requests, with `--count-pulls`.
    pub(crate) pulls: Option<PullStats>,
}

/// When the clock starts.
pub(crate) enum Start {
    /// The bench's own consumer sends the time it received its first message.
    Reported(oneshot::Receiver<SystemTime>),
    /// Consumer info is read until it shows a delivery (within a few ms).
    Polled,
}

/// Whose CPU the measurement counts.
pub(crate) struct CpuProbe {
    pub(crate) server: u32,
    pub(crate) consumer: ConsumerCpu,
}

pub(crate) enum ConsumerCpu {
    /// A process alone (the bench itself: nats-server is its child).
    Process(u32),
    /// A process with its children and their children (jetrun and its workers).
    Tree(u32),
}

impl CpuProbe {
    pub(crate) fn read(&self) -> (Option<Duration>, Option<Duration>) {
        let consumer = match self.consumer {
            ConsumerCpu::Process(pid) => process_stats::cpu_of(pid),
            ConsumerCpu::Tree(pid) => process_stats::cpu_of_tree(pid),
        };
        (process_stats::cpu_of(self.server), consumer)
    }
}

/// Times `durable` on `stream` working through `events` events. `check` is
/// called at every poll and fails the measurement when the consumer's
/// process died.
pub(crate) async fn throughput(
    stream: &stream::Stream,
    durable: &str,
    events: u64,
    start: Start,
    cpu: &CpuProbe,
    check: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Throughput> {
    let started = match start {
        Start::Reported(first) => tokio::time::timeout(START_TIMEOUT, first)
            .await
            .with_context(|| format!("{durable} received nothing within {START_TIMEOUT:?}"))?
            .with_context(|| format!("{durable} stopped before its first message"))?,
        Start::Polled => first_delivery(stream, durable, check).await?,
    };
    let clock = Instant::now();
    let cpu_before = cpu.read();
    let (ended, info) = ack_floor_reaches(stream, durable, events, check).await?;
    let cpu_after = cpu.read();
    Ok(Timed {
        events,
        started,
        ended,
        clock,
        cpu: (cpu_before, cpu_after),
        redelivered: redeliveries(&info),
    }
    .throughput())
}

/// Times several durables on `stream` sharing `events` events between them,
/// from the first delivery of the first one to the last ack of any: done
/// when each has nothing pending and nothing waiting for an ack. The CPU
/// counts from `cpu_before`, read before the consumers started: with a
/// hundred of them, many events are handled while the last ones bind.
pub(crate) async fn throughput_of_all(
    stream: &stream::Stream,
    durables: &[String],
    events: u64,
    cpu: &CpuProbe,
    cpu_before: CpuReading,
    check: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Throughput> {
    let Some(first) = durables.first() else {
        bail!("no consumer to time");
    };
    let started = first_delivery(stream, first, check).await?;
    let clock = Instant::now();
    let mut ended = started;
    let mut redelivered = 0;
    // One at a time: a drained consumer stays drained, and the server is not
    // asked about a hundred consumers every poll.
    for durable in durables {
        let (at, info) = settle(stream, durable, check, |info| {
            info.num_pending == 0 && info.num_ack_pending == 0 && info.ack_floor.stream_sequence > 0
        })
        .await?;
        ended = ended.max(at);
        redelivered += redeliveries(&info);
    }
    let cpu_after = cpu.read();
    Ok(Timed {
        events,
        started,
        ended,
        clock,
        cpu: (cpu_before, cpu_after),
        redelivered,
    }
    .throughput())
}

/// nats-server's CPU and the consumer's, so far.
pub(crate) type CpuReading = (Option<Duration>, Option<Duration>);

/// What a measurement saw, before it is turned into rates.
struct Timed {
    events: u64,
    /// The server's time of the first delivery.
    started: SystemTime,
    /// The server's time of the last ack.
    ended: SystemTime,
    /// When the bench saw the first delivery: the fallback for a clock that
    /// went backwards.
    clock: Instant,
    /// The CPU read at the first delivery and at the last ack.
    cpu: (CpuReading, CpuReading),
    redelivered: u64,
}

impl Timed {
    fn throughput(self) -> Throughput {
        let elapsed = self
            .ended
            .duration_since(self.started)
            .unwrap_or_else(|_| self.clock.elapsed())
            .max(Duration::from_micros(1));
        let events = self.events;
        let per_event = |before: Option<Duration>, after: Option<Duration>| {
            let used = after?.checked_sub(before?)?;
            Some(used.as_secs_f64() * 1e6 / events as f64)
        };
        let (before, after) = self.cpu;
        Throughput {
            events,
            seconds: elapsed.as_secs_f64(),
            events_per_second: events as f64 / elapsed.as_secs_f64(),
            server_cpu_us: per_event(before.0, after.0),
            consumer_cpu_us: per_event(before.1, after.1),
            redelivered: self.redelivered,
            peak_rss_kib: None,
            pulls: None,
        }
    }
}

/// Deliveries beyond one per event.
fn redeliveries(info: &consumer::Info) -> u64 {
    info.delivered
        .consumer_sequence
        .saturating_sub(info.delivered.stream_sequence)
}

/// Reads consumer info until it shows a first delivery (the consumer may not
/// exist yet); returns the server's time of the latest delivery it shows.
async fn first_delivery(
    stream: &stream::Stream,
    durable: &str,
    check: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<SystemTime> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        check()?;
        if let Ok(info) = stream.consumer_info(durable).await {
            if info.delivered.stream_sequence > 0 {
                return Ok(info
                    .delivered
                    .last_active
                    .map(SystemTime::from)
                    .unwrap_or_else(SystemTime::now));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "consumer {durable} on {} delivered nothing within {START_TIMEOUT:?}",
                stream.cached_info().config.name
            );
        }
        tokio::time::sleep(FIRST_POLL_EVERY).await;
    }
}

/// Waits until the ack floor reaches stream sequence `last`; returns the
/// server's time of the last ack and the final consumer info. Fails when the
/// floor does not move for [`STALL_TIMEOUT`]: events were lost or are stuck.
pub(crate) async fn ack_floor_reaches(
    stream: &stream::Stream,
    durable: &str,
    last: u64,
    check: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(SystemTime, consumer::Info)> {
    settle(stream, durable, check, |info| {
        info.ack_floor.stream_sequence >= last
    })
    .await
}

/// Reads consumer info until `done` says so; returns the server's time of
/// the last ack and the final consumer info. Fails when the ack floor does
/// not move for [`STALL_TIMEOUT`].
async fn settle(
    stream: &stream::Stream,
    durable: &str,
    check: &mut dyn FnMut() -> anyhow::Result<()>,
    done: impl Fn(&consumer::Info) -> bool,
) -> anyhow::Result<(SystemTime, consumer::Info)> {
    let name = &stream.cached_info().config.name;
    let mut progress = (0u64, Instant::now());
    loop {
        check()?;
        let info = stream
            .consumer_info(durable)
            .await
            .with_context(|| format!("consumer info of {durable} on {name}"))?;
        let floor = info.ack_floor.stream_sequence;
        if done(&info) {
            let at = info
                .ack_floor
                .last_active
                .map(SystemTime::from)
                .unwrap_or_else(SystemTime::now);
            return Ok((at, info));
        }
        if floor != progress.0 {
            progress = (floor, Instant::now());
        } else if progress.1.elapsed() > STALL_TIMEOUT {
            bail!(
                "events lost or stuck: the ack floor of {durable} on {name} stayed at {floor} \
                 for {STALL_TIMEOUT:?} (ack pending {}, pending {}, redelivered {}, delivered up \
                 to {})",
                info.num_ack_pending,
                info.num_pending,
                info.num_redelivered,
                info.delivered.stream_sequence,
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
