//! The one table (medians, spread, ratios to the baseline of the same run),
//! the latency and RSS lines, the performance targets next to what was reached,
//! and the same as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::contenders::{Contender, Outcome};
use crate::latency::{LatencyReport, Percentiles};
use crate::measure::Throughput;
use crate::rss::RssReport;
use crate::scaling::{self, ScalingReport};

/// Everything one bench run measured.
pub(crate) struct Results {
    /// What the run was: sizes, versions, settings.
    pub(crate) setup: Setup,
    /// Per contender, its outcome in each run (run 1 first).
    pub(crate) contenders: Vec<(Contender, Vec<Outcome>)>,
    pub(crate) latency: Option<LatencyReport>,
    pub(crate) rss: Option<RssReport>,
    pub(crate) scaling: Option<ScalingReport>,
    pub(crate) notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Setup {
    pub(crate) events: u64,
    pub(crate) runs: usize,
    pub(crate) concurrency: usize,
    pub(crate) exec_concurrency: usize,
    pub(crate) workers: usize,
    pub(crate) nats_server: String,
    pub(crate) jetrun: String,
    pub(crate) smoke: bool,
}

/// One contender over its runs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) contender: Contender,
    pub(crate) skipped: Option<String>,
    pub(crate) events: u64,
    pub(crate) median_events_per_second: f64,
    pub(crate) min_events_per_second: f64,
    pub(crate) max_events_per_second: f64,
    /// Median over runs of (this run's events/s ÷ the baseline's in the same run).
    pub(crate) ratio_to_baseline: Option<f64>,
    /// The same against faststream-noop (the Python workers only).
    pub(crate) ratio_to_faststream: Option<f64>,
    /// The same against baseline-emit (jetrun-emit and baseline-emit-ce).
    pub(crate) ratio_to_baseline_emit: Option<f64>,
    /// The same against baseline-emit-ce (jetrun-emit only): jetrun's own
    /// overhead, the CloudEvents headers written by both.
    pub(crate) ratio_to_baseline_emit_ce: Option<f64>,
    /// The same against jetrun-noop (keyed-1000 and batch-100): the cost of
    /// ordering and of batching.
    pub(crate) ratio_to_jetrun_noop: Option<f64>,
    pub(crate) median_server_cpu_us: Option<f64>,
    pub(crate) median_consumer_cpu_us: Option<f64>,
    pub(crate) max_peak_rss_kib: Option<u64>,
    /// Events per pull request (median over runs), with `--count-pulls`.
    pub(crate) median_events_per_pull: Option<f64>,
    pub(crate) redelivered: u64,
    pub(crate) runs: Vec<Throughput>,
}

/// A performance target next to what this run reached.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetCheck {
    pub(crate) target: String,
    pub(crate) reached: String,
    /// `None` when it was not measured.
    pub(crate) met: Option<bool>,
}

#[derive(Serialize)]
struct Json<'a> {
    setup: &'a Setup,
    contenders: &'a [Summary],
    latency: &'a Option<LatencyReport>,
    rss: &'a Option<RssReport>,
    scaling: &'a Option<ScalingReport>,
    targets: &'a [TargetCheck],
    notes: &'a [String],
}

impl Results {
    pub(crate) fn summaries(&self) -> Vec<Summary> {
        let measured = |contender: Contender| -> Vec<Option<&Throughput>> {
            self.contenders
                .iter()
                .find(|(c, _)| *c == contender)
                .map(|(_, outcomes)| outcomes.iter().map(measured_of).collect())
                .unwrap_or_default()
        };
        let baseline = measured(Contender::Baseline);
        let faststream = measured(Contender::FaststreamNoop);
        let baseline_emit = measured(Contender::BaselineEmit);
        let baseline_emit_ce = measured(Contender::BaselineEmitCe);
        let jetrun_noop = measured(Contender::JetrunNoop);
        self.contenders
            .iter()
            .map(|(contender, outcomes)| {
                let runs: Vec<Throughput> =
                    outcomes.iter().filter_map(measured_of).cloned().collect();
                let skipped = outcomes.iter().find_map(|o| match o {
                    Outcome::Skipped(reason) => Some(reason.clone()),
                    Outcome::Measured(_) => None,
                });
                let mine: Vec<Option<&Throughput>> = outcomes.iter().map(measured_of).collect();
                let rates: Vec<f64> = runs.iter().map(|t| t.events_per_second).collect();
                Summary {
                    contender: *contender,
                    skipped,
                    events: runs.first().map_or(0, |t| t.events),
                    median_events_per_second: median(&rates).unwrap_or(f64::NAN),
                    min_events_per_second: rates.iter().copied().fold(f64::NAN, f64::min),
                    max_events_per_second: rates.iter().copied().fold(f64::NAN, f64::max),
                    ratio_to_baseline: paired_ratio(&mine, &baseline),
                    ratio_to_faststream: matches!(
                        contender,
                        Contender::JetrunPythonWorker | Contender::JetrunPythonWorker2
                    )
                    .then(|| paired_ratio(&mine, &faststream))
                    .flatten(),
                    ratio_to_baseline_emit: matches!(
                        contender,
                        Contender::JetrunEmit | Contender::BaselineEmitCe
                    )
                    .then(|| paired_ratio(&mine, &baseline_emit))
                    .flatten(),
                    ratio_to_baseline_emit_ce: (*contender == Contender::JetrunEmit)
                        .then(|| paired_ratio(&mine, &baseline_emit_ce))
                        .flatten(),
                    ratio_to_jetrun_noop: matches!(
                        contender,
                        Contender::Keyed1000 | Contender::Batch100
                    )
                    .then(|| paired_ratio(&mine, &jetrun_noop))
                    .flatten(),
                    median_server_cpu_us: median(
                        &runs
                            .iter()
                            .filter_map(|t| t.server_cpu_us)
                            .collect::<Vec<_>>(),
                    ),
                    median_consumer_cpu_us: median(
                        &runs
                            .iter()
                            .filter_map(|t| t.consumer_cpu_us)
                            .collect::<Vec<_>>(),
                    ),
                    max_peak_rss_kib: runs.iter().filter_map(|t| t.peak_rss_kib).max(),
                    median_events_per_pull: median(
                        &runs
                            .iter()
                            .filter_map(|t| Some(t.events as f64 / t.pulls?.requests as f64))
                            .collect::<Vec<_>>(),
                    ),
                    redelivered: runs.iter().map(|t| t.redelivered).sum(),
                    runs,
                }
            })
            .collect()
    }

    /// The performance targets, with what this run reached.
    pub(crate) fn targets(&self, summaries: &[Summary]) -> Vec<TargetCheck> {
        let find = |contender: Contender| summaries.iter().find(|s| s.contender == contender);
        let at_least = |target: &str, value: Option<f64>, floor: f64| TargetCheck {
            target: target.to_string(),
            reached: value.map_or("not measured".into(), |v| format!("{v:.2}x")),
            met: value.map(|v| v >= floor),
        };
        let at_most = |target: &str, value: Option<f64>, ceiling: f64, unit: &str| TargetCheck {
            target: target.to_string(),
            reached: value.map_or("not measured".into(), |v| format!("{v:.2}{unit}")),
            met: value.map(|v| v <= ceiling),
        };
        let mut checks = vec![
            at_least(
                "jetrun-noop (default config) >= 0.90x baseline",
                find(Contender::JetrunNoop).and_then(|s| s.ratio_to_baseline),
                0.90,
            ),
            at_least(
                "jetrun-noop-256 >= 0.95x baseline",
                find(Contender::JetrunNoop256).and_then(|s| s.ratio_to_baseline),
                0.95,
            ),
            at_least(
                "jetrun-emit >= 0.85x baseline-emit",
                find(Contender::JetrunEmit).and_then(|s| s.ratio_to_baseline_emit),
                0.85,
            ),
            at_least(
                "jetrun-python-worker (1 worker) >= 3x faststream-noop",
                find(Contender::JetrunPythonWorker).and_then(|s| s.ratio_to_faststream),
                3.0,
            ),
            at_least(
                "jetrun-python-worker-2 >= 3x faststream-noop",
                find(Contender::JetrunPythonWorker2).and_then(|s| s.ratio_to_faststream),
                3.0,
            ),
        ];
        let latency = self.latency.as_ref();
        checks.push(at_most(
            "jetrun-noop latency p50 <= 1.2x baseline's (median)",
            latency.and_then(|l| l.median_ratio(|p| p.p50_ms)),
            1.2,
            "x",
        ));
        checks.push(at_most(
            "jetrun-noop latency p99 <= 1.5x baseline's (median)",
            latency.and_then(|l| l.median_ratio(|p| p.p99_ms)),
            1.5,
            "x",
        ));
        let worst = |of: fn(&Percentiles) -> f64| {
            latency.filter(|l| !l.samples.is_empty()).map(|l| {
                l.samples
                    .iter()
                    .map(|s| of(&s.python_ack))
                    .fold(0.0, f64::max)
            })
        };
        checks.push(at_most(
            "python worker latency p99 <= 3 ms (every sample)",
            worst(|p| p.p99_ms),
            3.0,
            " ms (worst)",
        ));
        checks.push(at_most(
            "python worker latency p99.9 <= 10 ms (every sample)",
            worst(|p| p.p999_ms),
            10.0,
            " ms (worst)",
        ));
        let rss = self.rss.as_ref();
        let below = |target: &str, kib: Option<u64>, mib_limit: u64| TargetCheck {
            target: target.to_string(),
            reached: kib.map_or("not measured".into(), mib),
            met: kib.map(|kib| kib < mib_limit * 1024),
        };
        checks.push(below(
            "runner RSS idle with 10 functions < 30 MiB",
            rss.and_then(|r| r.idle_kib),
            30,
        ));
        checks.push(below(
            "runner RSS idle with 100 functions < 40 MiB",
            rss.and_then(|r| r.idle_100_kib),
            40,
        ));
        let backlogs = rss.map(|r| r.backlogs.as_slice()).unwrap_or(&[]);
        let bounded = match backlogs {
            [small, .., large] => match (small.rss_kib, large.rss_kib) {
                // Bounded: the large backlog costs at most 2 MiB and 20 % more.
                (Some(s), Some(l)) => Some((
                    format!(
                        "{} with {} waiting, {} with {}",
                        mib(s),
                        thousands(small.events),
                        mib(l),
                        thousands(large.events)
                    ),
                    l <= s + s / 5 + 2048,
                )),
                _ => None,
            },
            _ => None,
        };
        checks.push(TargetCheck {
            target: "runner RSS bounded with a backlog (1,000,000 waiting)".into(),
            reached: bounded
                .as_ref()
                .map_or("not measured".into(), |b| b.0.clone()),
            met: bounded.map(|b| b.1),
        });
        checks
    }

    /// The table and the lines under it.
    pub(crate) fn render(&self, summaries: &[Summary], targets: &[TargetCheck]) -> String {
        let setup = &self.setup;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "jetrun-bench{}: {} events per contender (the Python workers and faststream a \
             tenth, exec-per-event a hundredth), {} run(s), nats-server {}; jetrun contenders \
             run the default config, but jetrun-noop-256 (concurrency {}), exec-per-event \
             (concurrency {}), python-worker-2 (workers {}), keyed-1000 (key = \"/k\", 1,000 \
             keys, 4 partitions) and batch-100 (batch = {{ size = 100, wait = \"5ms\" }})\n",
            if setup.smoke { " --smoke" } else { "" },
            thousands(setup.events),
            setup.runs,
            setup.nats_server,
            setup.concurrency,
            setup.exec_concurrency,
            setup.workers,
        );
        let mut rows = vec![[
            "contender",
            "events",
            "events/s",
            "spread (min-max)",
            "x baseline",
            "x baseline-emit",
            "x baseline-emit-ce",
            "x faststream",
            "x jetrun-noop",
            "server µs/ev",
            "consumer µs/ev",
            "peak RSS",
            "events/pull",
        ]
        .map(String::from)
        .to_vec()];
        let count_pulls = summaries.iter().any(|s| s.median_events_per_pull.is_some());
        if !count_pulls {
            rows[0].pop();
        }
        for s in summaries {
            if s.skipped.is_some() && s.runs.is_empty() {
                rows.push(vec![
                    s.contender.name().to_string(),
                    "skipped (see the note below)".to_string(),
                ]);
                continue;
            }
            let optional = |v: Option<f64>, f: fn(f64) -> String| v.map_or(String::new(), f);
            rows.push(vec![
                s.contender.name().to_string(),
                thousands(s.events),
                thousands(s.median_events_per_second.round() as u64),
                format!(
                    "{}-{}",
                    thousands(s.min_events_per_second.round() as u64),
                    thousands(s.max_events_per_second.round() as u64)
                ),
                optional(s.ratio_to_baseline, |r| format!("{r:.2}")),
                optional(s.ratio_to_baseline_emit, |r| format!("{r:.2}")),
                optional(s.ratio_to_baseline_emit_ce, |r| format!("{r:.2}")),
                optional(s.ratio_to_faststream, |r| format!("{r:.2}")),
                optional(s.ratio_to_jetrun_noop, |r| format!("{r:.2}")),
                optional(s.median_server_cpu_us, |v| format!("{v:.1}")),
                optional(s.median_consumer_cpu_us, |v| format!("{v:.1}")),
                s.max_peak_rss_kib.map_or(String::new(), mib),
            ]);
            if count_pulls {
                let cell = optional(s.median_events_per_pull, |v| format!("{v:.1}"));
                if let Some(row) = rows.last_mut() {
                    row.push(cell);
                }
            }
        }
        if rows.len() > 1 {
            out.push_str(&table(&rows));
        }
        for s in summaries.iter().filter(|s| s.redelivered > 0) {
            let _ = writeln!(
                out,
                "warning: {} had {} redeliveries",
                s.contender.name(),
                s.redelivered
            );
        }
        if let Some(latency) = &self.latency {
            let _ = writeln!(
                out,
                "\nlatency at {}/s for {} s after 1 s of warm-up, {} sample(s) (ms: p50 / p99 / \
                 p99.9 / max):",
                thousands(latency.rate),
                latency.seconds,
                latency.samples.len()
            );
            for (n, sample) in latency.samples.iter().enumerate() {
                for (name, p) in [
                    ("baseline      publish -> receive", &sample.baseline_receive),
                    ("baseline      publish -> ack", &sample.baseline_ack),
                    ("jetrun-noop   publish -> ack", &sample.jetrun_ack),
                    ("python worker publish -> ack", &sample.python_ack),
                ] {
                    let _ = writeln!(out, "  {}: {name:<33} {}", n + 1, percentile_line(p));
                }
            }
            if let (Some(p50), Some(p99)) = (
                latency.median_ratio(|p| p.p50_ms),
                latency.median_ratio(|p| p.p99_ms),
            ) {
                let _ = writeln!(
                    out,
                    "  jetrun-noop / baseline publish -> ack, median over samples: p50 {p50:.2}x, \
                     p99 {p99:.2}x"
                );
            }
        }
        if let Some(rss) = &self.rss {
            let _ = write!(
                out,
                "\nrunner RSS: idle with 10 noop functions {}, with 100 {}",
                rss.idle_kib.map_or("?".into(), mib),
                rss.idle_100_kib.map_or("?".into(), mib)
            );
            for b in &rss.backlogs {
                let _ = write!(
                    out,
                    "; {} waiting behind a blocked function {} (peak {}, {} held)",
                    thousands(b.events),
                    b.rss_kib.map_or("?".into(), mib),
                    b.peak_kib.map_or("?".into(), mib),
                    b.held
                );
            }
            out.push('\n');
        }
        if let Some(report) = &self.scaling {
            out.push_str(&scaling::render(report));
        }
        let measured = targets.iter().filter(|t| t.met.is_some());
        if measured.clone().next().is_some() {
            let _ = writeln!(out, "\ntargets (medians of this run):");
        }
        for check in measured {
            let verdict = match check.met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None => "-",
            };
            let _ = writeln!(
                out,
                "  {:<56} {:<42} {verdict}",
                check.target, check.reached
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    pub(crate) fn json(&self, summaries: &[Summary], targets: &[TargetCheck]) -> String {
        serde_json::to_string_pretty(&Json {
            setup: &self.setup,
            contenders: summaries,
            latency: &self.latency,
            rss: &self.rss,
            scaling: &self.scaling,
            targets,
            notes: &self.notes,
        })
        .unwrap_or_default()
    }
}

fn measured_of(outcome: &Outcome) -> Option<&Throughput> {
    match outcome {
        Outcome::Measured(t) => Some(t),
        Outcome::Skipped(_) => None,
    }
}

/// Median over the runs where both were measured of mine ÷ theirs.
fn paired_ratio(mine: &[Option<&Throughput>], theirs: &[Option<&Throughput>]) -> Option<f64> {
    let ratios: Vec<f64> = mine
        .iter()
        .zip(theirs)
        .filter_map(|(m, t)| Some(m.as_ref()?.events_per_second / t.as_ref()?.events_per_second))
        .collect();
    median(&ratios)
}

pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(match sorted.len() % 2 {
        0 => (sorted[mid - 1] + sorted[mid]) / 2.0,
        _ => sorted[mid],
    })
}

fn percentile_line(p: &Percentiles) -> String {
    let mut line = format!(
        "{:.2} / {:.2} / {:.2} / {:.2}   ({} samples",
        p.p50_ms,
        p.p99_ms,
        p.p999_ms,
        p.max_ms,
        thousands(p.samples as u64)
    );
    if p.missing > 0 {
        let _ = write!(line, ", {} not observed", p.missing);
    }
    line.push(')');
    line
}

/// Left-aligned first column, right-aligned others; a row shorter than the
/// header (a skipped contender) runs its last cell on.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter(|r| r.len() == columns)
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else if row.len() < columns {
                line.push_str("  ");
                line.push_str(cell);
            } else {
                line.push_str("  ");
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throughput(events_per_second: f64) -> Throughput {
        Throughput {
            events: 100,
            seconds: 100.0 / events_per_second,
            events_per_second,
            server_cpu_us: Some(10.0),
            consumer_cpu_us: None,
            redelivered: 0,
            peak_rss_kib: None,
            pulls: None,
        }
    }

    #[test]
    fn ratios_pair_runs_and_take_the_median() {
        let (a, b, c) = (throughput(100.0), throughput(50.0), throughput(80.0));
        let mine = [Some(&b), Some(&c), None];
        let baseline = [Some(&a), Some(&a), Some(&a)];
        assert_eq!(paired_ratio(&mine, &baseline), Some(0.65));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(mib(30 * 1024), "30.0 MiB");
        let t = table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "1".into()],
            vec!["skipped".into()],
        ]);
        assert_eq!(t, "a    bb\nccc   1\nskipped\n");
    }
}
