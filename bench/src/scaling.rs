//! How cost grows (`--only scaling`): the no-op built-in at its default
//! config against the bare client (`baseline`) as one thing grows at a
//! time, from the same backlog on a fresh stream per point and run:
//!
//! - the number of functions sharing the load (1, 10, 100): each function,
//!   and each of as many bare consumers, has its own subject of one stream,
//!   and the events are spread evenly over the subjects;
//! - the payload (256 B, 4 KiB, 64 KiB), one function;
//! - the function's `concurrency` (1, 4, 16, 64, 256) against one baseline
//!   per run.
//!
//! The clock runs, as for the contenders, from the first delivery to the
//! last ack. The CPU counts from before the consumers start, their binding
//! included (the bare consumers bind all at once, as the runner does): with
//! a hundred consumers, much is handled while the last ones bind.
//!
//! `bench/plot.py` draws the JSON of this section as a PNG.

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use serde::Serialize;

use crate::backlog;
use crate::contenders::baseline::{BareConsumer, RUNNER_BATCH};
use crate::contenders::jetrun::toml_string;
use crate::harness::Harness;
use crate::measure::{self, ConsumerCpu, Throughput};
use crate::report::median;
use crate::runner::Runner;

/// The function counts measured.
const FUNCTIONS: [u64; 3] = [1, 10, 100];
/// The payload sizes measured, in bytes.
const PAYLOADS: [u64; 3] = [256, 4096, 65_536];
/// The `concurrency` values measured.
const CONCURRENCY: [u64; 5] = [1, 4, 16, 64, 256];

/// What grows along one axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Axis {
    Functions,
    PayloadBytes,
    Concurrency,
}

impl Axis {
    fn label(self) -> &'static str {
        match self {
            Axis::Functions => "functions",
            Axis::PayloadBytes => "payload bytes",
            Axis::Concurrency => "concurrency",
        }
    }
}

/// One point of one axis: jetrun and the baseline over the runs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Point {
    pub(crate) axis: Axis,
    pub(crate) value: u64,
    /// Events per run (shared by the functions).
    pub(crate) events: u64,
    pub(crate) baseline: Series,
    pub(crate) jetrun: Series,
    /// Median over runs of jetrun's events/s ÷ the baseline's in that run.
    pub(crate) ratio: Option<f64>,
}

/// One contender at one point, over the runs.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Series {
    pub(crate) median_events_per_second: Option<f64>,
    pub(crate) min_events_per_second: Option<f64>,
    pub(crate) max_events_per_second: Option<f64>,
    pub(crate) median_consumer_cpu_us: Option<f64>,
    pub(crate) median_server_cpu_us: Option<f64>,
    pub(crate) runs: Vec<Throughput>,
}

impl Series {
    fn of(runs: Vec<Throughput>) -> Series {
        let rates: Vec<f64> = runs.iter().map(|t| t.events_per_second).collect();
        let cpu = |of: fn(&Throughput) -> Option<f64>| {
            median(&runs.iter().filter_map(of).collect::<Vec<_>>())
        };
        Series {
            median_events_per_second: median(&rates),
            min_events_per_second: rates.iter().copied().reduce(f64::min),
            max_events_per_second: rates.iter().copied().reduce(f64::max),
            median_consumer_cpu_us: cpu(|t| t.consumer_cpu_us),
            median_server_cpu_us: cpu(|t| t.server_cpu_us),
            runs,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ScalingReport {
    pub(crate) runs: usize,
    pub(crate) points: Vec<Point>,
}

/// One measurement to make: the shape of its backlog and of the function.
#[derive(Clone, Copy, Debug)]
struct Shape {
    functions: u64,
    payload: usize,
    /// `None`: jetrun's default.
    concurrency: Option<u64>,
}

impl Shape {
    const DEFAULT: Shape = Shape {
        functions: 1,
        payload: backlog::BODY_LEN,
        concurrency: None,
    };

    /// The events of one run: `--events`, less for large payloads so a
    /// point's stream stays under a few hundred MB.
    fn events(self, events: u64) -> u64 {
        let share = match self.payload {
            0..=1024 => events,
            1025..=8192 => events / 2,
            _ => events / 10,
        };
        share.max(self.functions)
    }
}

/// Measures every point, `--runs` times, interleaving the points within a
/// run so that a slow minute of the machine hits all of them.
pub(crate) async fn run(harness: &Harness) -> anyhow::Result<ScalingReport> {
    let events = harness.options.events;
    let runs = harness.options.runs;
    let mut points: Vec<(Axis, u64, Shape)> = Vec::new();
    for functions in FUNCTIONS {
        let shape = Shape {
            functions,
            ..Shape::DEFAULT
        };
        points.push((Axis::Functions, functions, shape));
    }
    for payload in PAYLOADS {
        let shape = Shape {
            payload: payload as usize,
            ..Shape::DEFAULT
        };
        points.push((Axis::PayloadBytes, payload, shape));
    }
    for concurrency in CONCURRENCY {
        let shape = Shape {
            concurrency: Some(concurrency),
            ..Shape::DEFAULT
        };
        points.push((Axis::Concurrency, concurrency, shape));
    }
    let mut measured: Vec<(Vec<Throughput>, Vec<Throughput>)> =
        vec![Default::default(); points.len()];
    // The baseline of a default shape is measured once per run and shared by
    // the concurrency points (the bare client has no concurrency).
    for run in 1..=runs {
        let mut default_baseline = None;
        for (n, (axis, value, shape)) in points.iter().enumerate() {
            let name = format!("scale-{}-{value}", axis_slug(*axis));
            let baseline = match (axis, default_baseline.clone()) {
                (Axis::Concurrency, Some(shared)) => shared,
                _ => {
                    eprint!("scaling run {run}/{runs}: {name} baseline ...");
                    let t = baseline(harness, &name, run, *shape, shape.events(events)).await?;
                    eprintln!(" {:.0} events/s", t.events_per_second);
                    if *axis == Axis::Concurrency {
                        default_baseline = Some(t.clone());
                    }
                    t
                }
            };
            eprint!("scaling run {run}/{runs}: {name} jetrun ...");
            let t = jetrun(harness, &name, run, *shape, shape.events(events)).await?;
            eprintln!(" {:.0} events/s", t.events_per_second);
            measured[n].0.push(baseline);
            measured[n].1.push(t);
        }
    }
    let points = points
        .into_iter()
        .zip(measured)
        .map(|((axis, value, shape), (baseline, jetrun))| {
            let ratios: Vec<f64> = baseline
                .iter()
                .zip(&jetrun)
                .map(|(b, j)| j.events_per_second / b.events_per_second)
                .collect();
            Point {
                axis,
                value,
                events: shape.events(events),
                ratio: median(&ratios),
                baseline: Series::of(baseline),
                jetrun: Series::of(jetrun),
            }
        })
        .collect();
    Ok(ScalingReport { runs, points })
}

fn axis_slug(axis: Axis) -> &'static str {
    match axis {
        Axis::Functions => "functions",
        Axis::PayloadBytes => "payload",
        Axis::Concurrency => "concurrency",
    }
}

/// A fresh stream on `bench.<name>.<run>.>`, filled with `events` events of
/// the shape's payload spread over one subject per function.
async fn fill(
    harness: &Harness,
    name: &str,
    run: usize,
    shape: Shape,
    events: u64,
) -> anyhow::Result<(stream::Stream, Vec<String>)> {
    let stream_name = format!("BENCH_{name}_{run}");
    let stream = harness
        .js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("bench.{name}.{run}.>")],
            ..Default::default()
        })
        .await
        .with_context(|| format!("create stream {stream_name}"))?;
    let subjects: Vec<String> = (0..shape.functions)
        .map(|f| format!("bench.{name}.{run}.f{f}"))
        .collect();
    backlog::publish_spread(&harness.js, &subjects, events, shape.payload).await?;
    backlog::wait_held(&stream, events).await?;
    Ok((stream, subjects))
}

/// The stream is deleted once measured: a 64 KiB backlog is large.
async fn delete(harness: &Harness, stream: &stream::Stream) {
    let name = &stream.cached_info().config.name;
    if let Err(err) = harness.js.delete_stream(name).await {
        eprintln!("jetrun-bench: could not delete stream {name}: {err}");
    }
}

/// One bare consumer per subject, on one connection, in the bench process.
async fn baseline(
    harness: &Harness,
    name: &str,
    run: usize,
    shape: Shape,
    events: u64,
) -> anyhow::Result<Throughput> {
    let (stream, subjects) = fill(harness, &format!("{name}-baseline"), run, shape, events).await?;
    let js = jetstream::new(harness.connect().await?);
    let durables: Vec<String> = (0..subjects.len()).map(|f| format!("f{f}")).collect();
    let cpu = harness.cpu_probe(ConsumerCpu::Process(std::process::id()));
    let cpu_before = cpu.read();
    // All at once, as the runner binds its functions.
    let consumers =
        futures::future::try_join_all(subjects.iter().zip(&durables).map(|(subject, durable)| {
            BareConsumer::start_on(&js, &stream, durable, Some(subject), RUNNER_BATCH, |_| {})
        }))
        .await?;
    let measured =
        measure::throughput_of_all(&stream, &durables, events, &cpu, cpu_before, &mut || {
            consumers.iter().try_for_each(BareConsumer::check)
        })
        .await;
    for consumer in consumers {
        consumer.stop();
    }
    delete(harness, &stream).await;
    measured
}

/// One `jetrun run` with a no-op function per subject.
async fn jetrun(
    harness: &Harness,
    name: &str,
    run: usize,
    shape: Shape,
    events: u64,
) -> anyhow::Result<Throughput> {
    let (stream, subjects) = fill(harness, &format!("{name}-jetrun"), run, shape, events).await?;
    let stream_name = stream.cached_info().config.name.clone();
    let mut config = String::new();
    let mut durables = Vec::new();
    for (f, subject) in subjects.iter().enumerate() {
        let durable = format!("f{f}");
        config.push_str(&format!(
            "[functions.{durable}]\nstream = {}\nsubjects = [{}]\nbuiltin = \"noop\"\n",
            toml_string(&stream_name),
            toml_string(subject),
        ));
        if let Some(concurrency) = shape.concurrency {
            config.push_str(&format!("concurrency = {concurrency}\n"));
        }
        config.push('\n');
        durables.push(durable);
    }
    let mut runner = Runner::start(harness, &format!("{name}-{run}"), &config)?;
    let cpu = harness.cpu_probe(ConsumerCpu::Tree(runner.pid()));
    let cpu_before = cpu.read();
    let measured =
        measure::throughput_of_all(&stream, &durables, events, &cpu, cpu_before, &mut || {
            runner.check_alive()
        })
        .await;
    let peak = runner.memory_kib("VmHWM");
    runner.stop().await?;
    delete(harness, &stream).await;
    let mut measured = measured?;
    measured.peak_rss_kib = peak;
    Ok(measured)
}

/// The section of the report: one table per axis.
pub(crate) fn render(report: &ScalingReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "\nhow cost grows (noop built-in, default config unless the axis says otherwise; \
         medians of {} run(s); µs/ev is CPU per event):\n",
        report.runs
    );
    for axis in [Axis::Functions, Axis::PayloadBytes, Axis::Concurrency] {
        let _ = writeln!(
            out,
            "  {:<14} {:>9} {:>12} {:>12} {:>7} {:>13} {:>13}",
            axis.label(),
            "events",
            "baseline/s",
            "jetrun/s",
            "ratio",
            "baseline µs/ev",
            "jetrun µs/ev"
        );
        for p in report.points.iter().filter(|p| p.axis == axis) {
            let rate = |s: &Series| {
                s.median_events_per_second
                    .map_or("-".into(), |v| format!("{v:.0}"))
            };
            let cpu = |s: &Series| {
                s.median_consumer_cpu_us
                    .map_or("-".into(), |v| format!("{v:.1}"))
            };
            let _ = writeln!(
                out,
                "  {:<14} {:>9} {:>12} {:>12} {:>7} {:>13} {:>13}",
                p.value,
                p.events,
                rate(&p.baseline),
                rate(&p.jetrun),
                p.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                cpu(&p.baseline),
                cpu(&p.jetrun)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_take_fewer_events_and_every_function_gets_one() {
        let shape = |functions, payload| Shape {
            functions,
            payload,
            concurrency: None,
        };
        assert_eq!(shape(1, 256).events(100_000), 100_000);
        assert_eq!(shape(1, 4096).events(100_000), 50_000);
        assert_eq!(shape(1, 65_536).events(100_000), 10_000);
        assert_eq!(shape(100, 256).events(10), 100);
    }
}
