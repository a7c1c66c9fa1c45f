//! The command line, and what `--smoke` makes of it.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;

use crate::contenders::Contender;
use crate::programs::repo_root;

/// What `--only` accepts besides the throughput contenders' names.
const LATENCY: &str = "latency";
const RSS: &str = "rss";
const SCALING: &str = "scaling";

#[derive(Parser, Debug)]
#[command(
    name = "jetrun-bench",
    about = "Benchmark jetrun against a bare async-nats consumer (and FastStream) on one \
             nats-server it starts.",
    after_help = EXAMPLES
)]
pub(crate) struct Options {
    /// Events per throughput contender (jetrun-python-worker and faststream-noop take a tenth,
    /// jetrun-exec-per-event a hundredth).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) events: u64,
    /// Runs of every throughput contender, interleaved; the table gives medians and min-max.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Only these, comma-separated: baseline, baseline-1000, baseline-emit, baseline-emit-ce,
    /// jetrun-noop, jetrun-noop-256, keyed-1000, batch-100 (both compared with jetrun-noop),
    /// jetrun-emit, jetrun-python-worker, jetrun-python-worker-2, jetrun-exec-per-event,
    /// faststream-noop, latency, rss, scaling (how cost grows with functions, payload and
    /// concurrency; not part of the default run).
    /// The baseline runs whenever a contender does: ratios need it.
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// For CI: 2,000 events, 1 run, 2 s of latency at 500/s, a 5,000-event backlog, no
    /// FastStream install. Exit status 0 whatever the numbers; non-zero on errors (lost
    /// events, a process that died).
    #[arg(long)]
    pub(crate) smoke: bool,
    /// The jetrun binary (a release build).
    #[arg(long, default_value_os_t = repo_root().join("target/release/jetrun"))]
    pub(crate) jetrun: PathBuf,
    /// nats-server binary [default: .jetrun/tools/bin/nats-server, else PATH].
    #[arg(long, env = "NATS_SERVER_BIN")]
    pub(crate) nats_server: Option<PathBuf>,
    /// Also write every measurement as JSON to this file (`-` for stdout, after the table).
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
    /// `concurrency` of jetrun-noop-256 (the other jetrun contenders keep the default, 16).
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,
    /// `concurrency` of the per-event exec function (one process per event in flight).
    #[arg(long, default_value_t = 16)]
    pub(crate) exec_concurrency: usize,
    /// `workers` of jetrun-python-worker-2 (jetrun-python-worker keeps the default, 1).
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Latency: events per second.
    #[arg(long, default_value_t = 2000)]
    pub(crate) rate: u64,
    /// Latency: seconds measured per consumer (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Latency: samples, each of the baseline, jetrun-noop and the Python worker; the
    /// targets take the median ratio (and every sample, for the Python worker's tail).
    #[arg(long, default_value_t = 5)]
    pub(crate) latency_samples: usize,
    /// RSS: events waiting behind a blocked function.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) backlog: u64,
    /// The Python venv holding FastStream; made (python3 -m venv, pip install
    /// 'faststream[nats]==0.7.*') when missing, except with --smoke or --no-install.
    #[arg(long, default_value_os_t = repo_root().join(".jetrun/bench-venv"))]
    pub(crate) venv: PathBuf,
    /// Never create the FastStream venv; skip faststream-noop when it is missing.
    #[arg(long)]
    pub(crate) no_install: bool,
    /// Also count the pull requests each consumer sends (a subscription sees each one, which
    /// costs the server a little): the table gains an events-per-pull column.
    #[arg(long)]
    pub(crate) count_pulls: bool,
    /// Keep the work folder (configs, logs, nats-server store) and print its path. It is
    /// always kept when something fails.
    #[arg(long)]
    pub(crate) keep: bool,
}

const EXAMPLES: &str = "\
Examples:
  cargo build --release -p jetrun -p jetrun-bench
  target/release/jetrun-bench                          # everything, 100,000 events, 3 runs
  target/release/jetrun-bench --only jetrun-noop --runs 5
  target/release/jetrun-bench --smoke                  # what CI runs
  target/release/jetrun-bench --only scaling --runs 5 --json bench/scaling.json
  .jetrun/bench-venv/bin/python bench/plot.py bench/scaling.json bench/scaling.png
  target/release/jetrun-bench --json bench.json";

/// What to run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Selection {
    pub(crate) contenders: Vec<Contender>,
    pub(crate) latency: bool,
    pub(crate) rss: bool,
    pub(crate) scaling: bool,
}

impl Options {
    /// Applies `--smoke`'s small sizes.
    pub(crate) fn resolved(mut self) -> Self {
        if self.smoke {
            self.events = 2_000;
            self.runs = 1;
            self.rate = 500;
            self.seconds = 2;
            self.latency_samples = 1;
            self.backlog = 5_000;
            self.no_install = true;
        }
        self.runs = self.runs.max(1);
        self
    }

    pub(crate) fn selection(&self) -> anyhow::Result<Selection> {
        let mut selection = Selection {
            contenders: Vec::new(),
            latency: self.only.is_empty(),
            rss: self.only.is_empty(),
            scaling: false,
        };
        if self.only.is_empty() {
            selection.contenders = Contender::ALL.to_vec();
            return Ok(selection);
        }
        for name in &self.only {
            match name.as_str() {
                LATENCY => selection.latency = true,
                RSS => selection.rss = true,
                SCALING => selection.scaling = true,
                other => match Contender::from_name(other) {
                    Some(contender) => selection.contenders.push(contender),
                    None => bail!(
                        "--only {other:?} is not a contender; expected some of {}, {LATENCY}, \
                         {RSS}, {SCALING}",
                        Contender::ALL.map(Contender::name).join(", ")
                    ),
                },
            }
        }
        if !selection.contenders.is_empty() && !selection.contenders.contains(&Contender::Baseline)
        {
            selection.contenders.insert(0, Contender::Baseline);
        }
        selection.contenders.sort();
        selection.contenders.dedup();
        Ok(selection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        Options::parse_from(std::iter::once("jetrun-bench").chain(args.iter().copied())).resolved()
    }

    #[test]
    fn everything_runs_by_default() {
        let selection = parse(&[]).selection().unwrap();
        assert_eq!(selection.contenders, Contender::ALL.to_vec());
        assert!(selection.latency && selection.rss && !selection.scaling);
    }

    #[test]
    fn only_adds_the_baseline_and_keeps_the_table_order() {
        let selection = parse(&["--only", "latency,jetrun-noop"])
            .selection()
            .unwrap();
        assert_eq!(
            selection,
            Selection {
                contenders: vec![Contender::Baseline, Contender::JetrunNoop],
                latency: true,
                rss: false,
                scaling: false,
            }
        );
        let alone = parse(&["--only", "scaling"]).selection().unwrap();
        assert!(alone.scaling && alone.contenders.is_empty(), "{alone:?}");
        let err = parse(&["--only", "nope"]).selection().unwrap_err();
        assert!(err
            .to_string()
            .starts_with("--only \"nope\" is not a contender"));
    }

    #[test]
    fn smoke_is_small() {
        let options = parse(&["--smoke", "--events", "100000"]);
        assert_eq!((options.events, options.runs), (2_000, 1));
        assert!(options.no_install);
    }
}
