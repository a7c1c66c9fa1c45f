//! The throughput contenders: each works through the same backlog of
//! 256-byte JSON events on a fresh stream, timed by [`crate::measure`].

pub(crate) mod baseline;
mod faststream;
pub(crate) mod jetrun;

use serde::{Serialize, Serializer};

use crate::backlog::Target;
use crate::harness::Harness;
use crate::measure::Throughput;
use crate::pulls::PullCounter;

/// Why a contender [`Prepared`] was not told about is skipped.
const NOT_PREPARED: &str = "not prepared (not in the selection given to Prepared::new)";

/// One row of the table, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Contender {
    /// A bare async-nats durable pull consumer in the bench, with the runner's batch.
    Baseline,
    /// The same with a pull batch of 1,000.
    Baseline1000,
    /// The bare client doing `echo`'s server work: consume, publish one event
    /// with a `Nats-Msg-Id` and wait for its ack, then ack the input, with as
    /// many inputs in flight as jetrun may hold at its default concurrency.
    BaselineEmit,
    /// The same writing the CloudEvents headers jetrun writes on each emit,
    /// so that `jetrun-emit` against it is jetrun's own overhead alone.
    BaselineEmitCe,
    /// `jetrun run` with the `noop` built-in and the default config.
    JetrunNoop,
    /// The same with `concurrency = --concurrency` (256).
    JetrunNoop256,
    /// `noop` keyed by `key = "/k"`, the events spread over 1,000 keys,
    /// default `partitions` (4), one runner: the cost of ordering.
    Keyed1000,
    /// `noop` with `batch = { size = 100, wait = "5ms" }`: `noop` handles a
    /// batch in one call, so this is the cost (or gain) of batching alone.
    Batch100,
    /// `jetrun run` with the `echo` built-in, default config: one emitted
    /// event per input.
    JetrunEmit,
    /// `jetrun run` with a no-op Python function in exec worker mode, default
    /// config (one worker).
    JetrunPythonWorker,
    /// The same with `workers = --workers` (2).
    JetrunPythonWorker2,
    /// `jetrun run` with a no-op shell script, one process per event.
    JetrunExecPerEvent,
    /// A FastStream 0.7 no-op JetStream pull subscriber.
    FaststreamNoop,
}

/// A run of a contender.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Measured(Throughput),
    /// Not measured, and why (FastStream not installable, no `echo` built-in).
    Skipped(String),
}

impl Contender {
    pub(crate) const ALL: [Contender; 13] = [
        Contender::Baseline,
        Contender::Baseline1000,
        Contender::BaselineEmit,
        Contender::BaselineEmitCe,
        Contender::JetrunNoop,
        Contender::JetrunNoop256,
        Contender::Keyed1000,
        Contender::Batch100,
        Contender::JetrunEmit,
        Contender::JetrunPythonWorker,
        Contender::JetrunPythonWorker2,
        Contender::JetrunExecPerEvent,
        Contender::FaststreamNoop,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Contender::Baseline => "baseline",
            Contender::Baseline1000 => "baseline-1000",
            Contender::BaselineEmit => "baseline-emit",
            Contender::BaselineEmitCe => "baseline-emit-ce",
            Contender::JetrunNoop => "jetrun-noop",
            Contender::JetrunNoop256 => "jetrun-noop-256",
            Contender::Keyed1000 => "keyed-1000",
            Contender::Batch100 => "batch-100",
            Contender::JetrunEmit => "jetrun-emit",
            Contender::JetrunPythonWorker => "jetrun-python-worker",
            Contender::JetrunPythonWorker2 => "jetrun-python-worker-2",
            Contender::JetrunExecPerEvent => "jetrun-exec-per-event",
            Contender::FaststreamNoop => "faststream-noop",
        }
    }

    /// Its durable consumer's name.
    pub(crate) fn durable(self) -> &'static str {
        match self {
            Contender::Baseline
            | Contender::Baseline1000
            | Contender::BaselineEmit
            | Contender::BaselineEmitCe => baseline::DURABLE,
            Contender::JetrunNoop
            | Contender::JetrunNoop256
            | Contender::Keyed1000
            | Contender::Batch100 => jetrun::Function::Noop.name(),
            Contender::JetrunEmit => jetrun::Function::Echo.name(),
            Contender::JetrunPythonWorker | Contender::JetrunPythonWorker2 => {
                jetrun::Function::PythonWorker.name()
            }
            Contender::JetrunExecPerEvent => jetrun::Function::ExecPerEvent.name(),
            Contender::FaststreamNoop => faststream::DURABLE,
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Contender::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Its share of `--events`: the slow ones take fewer, so a run stays short.
    pub(crate) fn events(self, events: u64) -> u64 {
        let share = match self {
            Contender::JetrunPythonWorker
            | Contender::JetrunPythonWorker2
            | Contender::FaststreamNoop => events / 10,
            Contender::JetrunExecPerEvent => events / 100,
            _ => events,
        };
        share.max(1)
    }
}

impl Serialize for Contender {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// What the contenders need found or installed once, before the runs:
/// `None` for a contender not selected, `Err` saying why one cannot run.
pub(crate) struct Prepared {
    faststream: Option<Result<faststream::Python, String>>,
    echo: Option<Result<(), String>>,
}

impl Prepared {
    /// Installs FastStream and asks `jetrun check` about `echo`, when selected.
    pub(crate) async fn new(harness: &Harness, contenders: &[Contender]) -> Self {
        let faststream = match contenders.contains(&Contender::FaststreamNoop) {
            true => Some(faststream::Python::find_or_install(&harness.options).await),
            false => None,
        };
        let echo = contenders
            .contains(&Contender::JetrunEmit)
            .then(|| jetrun::echo_available(harness));
        Prepared { faststream, echo }
    }

    /// What was found, and why a contender will be skipped.
    pub(crate) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        match &self.faststream {
            Some(Ok(python)) => {
                notes.push(format!("faststream-noop: FastStream {}", python.version))
            }
            Some(Err(reason)) => notes.push(format!("faststream-noop: skipped: {reason}")),
            None => {}
        }
        if let Some(Err(reason)) = &self.echo {
            notes.push(format!("jetrun-emit: skipped: {reason}"));
        }
        notes
    }
}

/// Runs `contender` once (run number `run`, from 1), counting its pull
/// requests with `--count-pulls`.
pub(crate) async fn run(
    contender: Contender,
    harness: &Harness,
    prepared: &Prepared,
    run: usize,
) -> anyhow::Result<Outcome> {
    if !harness.options.count_pulls {
        return run_once(contender, harness, prepared, run).await;
    }
    let stream = Target::new(contender.name(), run).stream;
    let counter = PullCounter::start(harness, &stream, contender.durable()).await?;
    let mut outcome = run_once(contender, harness, prepared, run).await?;
    if let Outcome::Measured(measured) = &mut outcome {
        measured.pulls = Some(counter.finish());
    }
    Ok(outcome)
}

async fn run_once(
    contender: Contender,
    harness: &Harness,
    prepared: &Prepared,
    run: usize,
) -> anyhow::Result<Outcome> {
    let events = contender.events(harness.options.events);
    let name = contender.name();
    let tuned = jetrun::Tuning {
        concurrency: Some(harness.options.concurrency),
        workers: Some(harness.options.workers),
        ..Default::default()
    };
    let default = jetrun::Tuning::default();
    let measured = match contender {
        Contender::Baseline => {
            baseline::run(harness, name, run, events, baseline::RUNNER_BATCH).await?
        }
        Contender::Baseline1000 => baseline::run(harness, name, run, events, 1000).await?,
        Contender::BaselineEmit => {
            let headers = baseline::EmitHeaders::MsgId;
            baseline::run_emit(harness, name, run, events, headers).await?
        }
        Contender::BaselineEmitCe => {
            let headers = baseline::EmitHeaders::CloudEvents;
            baseline::run_emit(harness, name, run, events, headers).await?
        }
        Contender::JetrunNoop => {
            jetrun::run(harness, name, run, events, jetrun::Function::Noop, default).await?
        }
        Contender::JetrunNoop256 => {
            jetrun::run(harness, name, run, events, jetrun::Function::Noop, tuned).await?
        }
        Contender::Keyed1000 => {
            let keyed = jetrun::Tuning {
                keys: Some(jetrun::KEYS),
                ..Default::default()
            };
            jetrun::run(harness, name, run, events, jetrun::Function::Noop, keyed).await?
        }
        Contender::Batch100 => {
            let batched = jetrun::Tuning {
                batch: Some(jetrun::BATCH),
                ..Default::default()
            };
            jetrun::run(harness, name, run, events, jetrun::Function::Noop, batched).await?
        }
        Contender::JetrunEmit => match &prepared.echo {
            Some(Ok(())) => {
                jetrun::run(harness, name, run, events, jetrun::Function::Echo, default).await?
            }
            Some(Err(reason)) => return Ok(Outcome::Skipped(reason.clone())),
            None => return Ok(Outcome::Skipped(NOT_PREPARED.into())),
        },
        Contender::JetrunPythonWorker => {
            let function = jetrun::Function::PythonWorker;
            jetrun::run(harness, name, run, events, function, default).await?
        }
        Contender::JetrunPythonWorker2 => {
            let function = jetrun::Function::PythonWorker;
            let two = jetrun::Tuning {
                workers: Some(harness.options.workers),
                ..Default::default()
            };
            jetrun::run(harness, name, run, events, function, two).await?
        }
        Contender::JetrunExecPerEvent => {
            let exec = jetrun::Tuning {
                concurrency: Some(harness.options.exec_concurrency),
                ..Default::default()
            };
            jetrun::run(
                harness,
                name,
                run,
                events,
                jetrun::Function::ExecPerEvent,
                exec,
            )
            .await?
        }
        Contender::FaststreamNoop => match &prepared.faststream {
            Some(Ok(python)) => faststream::run(harness, python, name, run, events).await?,
            Some(Err(reason)) => return Ok(Outcome::Skipped(reason.clone())),
            None => return Ok(Outcome::Skipped(NOT_PREPARED.into())),
        },
    };
    Ok(Outcome::Measured(measured))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_slow_contenders_take_fewer_events() {
        for contender in Contender::ALL {
            assert_eq!(Contender::from_name(contender.name()), Some(contender));
        }
        assert_eq!(Contender::JetrunNoop.events(100_000), 100_000);
        assert_eq!(Contender::FaststreamNoop.events(100_000), 10_000);
        assert_eq!(Contender::JetrunExecPerEvent.events(100_000), 1_000);
        assert_eq!(Contender::JetrunExecPerEvent.events(50), 1);
    }
}
