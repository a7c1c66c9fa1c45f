//! jetrun-bench: one run against one nats-server it starts. Throughput of a
//! bare async-nats consumer (the baseline), of the real `jetrun` binary with
//! several kinds of function and of FastStream, each from the same backlog;
//! latency at a fixed rate; the runner's memory. Prints one table with the
//! ratio of each contender to the baseline measured in the same run.
//! BENCHMARKS.md tells how to run it and how to read it.

mod backlog;
mod contenders;
mod harness;
mod latency;
mod measure;
mod nats_server;
mod options;
mod process_stats;
mod programs;
mod pulls;
mod report;
mod rss;
mod runner;
mod scaling;

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;

use contenders::{Outcome, Prepared};
use harness::Harness;
use options::{Options, Selection};
use report::{Results, Setup};

fn main() -> ExitCode {
    let options = Options::parse().resolved();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("jetrun-bench: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jetrun-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the selection in a fresh work folder, kept when asked or when
/// something fails.
async fn bench(options: Options) -> anyhow::Result<()> {
    let selection = options.selection()?;
    let dir = tempfile::Builder::new()
        .prefix("jetrun-bench-")
        .tempdir()
        .context("create the work folder")?;
    let keep = options.keep;
    let json = options.json.clone();
    let outcome = measure_all(options, &selection, dir.path()).await;
    if keep || outcome.is_err() {
        let path = dir.keep();
        eprintln!(
            "jetrun-bench: work folder kept (configs, logs): {}",
            path.display()
        );
    }
    let results = outcome?;
    let summaries = results.summaries();
    let targets = results.targets(&summaries);
    println!("\n{}", results.render(&summaries, &targets));
    if let Some(path) = json {
        let text = results.json(&summaries, &targets);
        if path == Path::new("-") {
            println!("{text}");
        } else {
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
    }
    Ok(())
}

async fn measure_all(
    options: Options,
    selection: &Selection,
    dir: &Path,
) -> anyhow::Result<Results> {
    let harness = Harness::start(options, dir).await?;
    let options = &harness.options;
    let prepared = Prepared::new(&harness, &selection.contenders).await;
    let mut results = Results {
        setup: Setup {
            events: options.events,
            runs: options.runs,
            concurrency: options.concurrency,
            exec_concurrency: options.exec_concurrency,
            workers: options.workers,
            nats_server: harness.js.client().server_info().version,
            jetrun: harness.jetrun.display().to_string(),
            smoke: options.smoke,
        },
        contenders: selection
            .contenders
            .iter()
            .map(|c| (*c, Vec::new()))
            .collect(),
        latency: None,
        rss: None,
        scaling: None,
        notes: prepared.notes(),
    };
    for note in &results.notes {
        eprintln!("{note}");
    }
    // Runs interleave the contenders, so a slow minute of the machine hits
    // all of them rather than one.
    for run in 1..=options.runs {
        for (contender, outcomes) in &mut results.contenders {
            progress(format_args!(
                "run {run}/{}: {} ...",
                options.runs,
                contender.name()
            ));
            let started = Instant::now();
            let outcome = contenders::run(*contender, &harness, &prepared, run)
                .await
                .with_context(|| format!("{} (run {run})", contender.name()))?;
            match &outcome {
                Outcome::Measured(t) => eprintln!(
                    " {:.0} events/s ({} events in {:.2} s; {:.1} s with setup)",
                    t.events_per_second,
                    t.events,
                    t.seconds,
                    started.elapsed().as_secs_f64()
                ),
                Outcome::Skipped(_) => eprintln!(" skipped"),
            }
            outcomes.push(outcome);
        }
    }
    if selection.latency {
        progress(format_args!(
            "latency: {}/s for 1 + {} s, {} sample(s) of the baseline, jetrun-noop and the \
             Python worker ...",
            options.rate, options.seconds, options.latency_samples
        ));
        let started = Instant::now();
        let report = latency::run(&harness).await.context("latency")?;
        latency::check(&report)?;
        eprintln!(" done in {:.1} s", started.elapsed().as_secs_f64());
        results.latency = Some(report);
    }
    if selection.rss {
        progress(format_args!(
            "rss: idle with 10 and 100 functions, then backlogs up to {} ...",
            options.backlog
        ));
        let started = Instant::now();
        results.rss = Some(rss::run(&harness).await.context("rss")?);
        eprintln!(" done in {:.1} s", started.elapsed().as_secs_f64());
    }
    if selection.scaling {
        let started = Instant::now();
        results.scaling = Some(scaling::run(&harness).await.context("scaling")?);
        eprintln!("scaling: done in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(results)
}

/// A progress line on stderr, finished by the caller.
fn progress(line: std::fmt::Arguments<'_>) {
    eprint!("{line}");
    let _ = std::io::stderr().flush();
}
