//! The fault tests' toolkit: replicas of one function sharing its durable
//! consumer, each writing its own ledger; a publisher of uniquely numbered
//! events that keeps trying through outages and remembers every stream
//! sequence JetStream acknowledged; the tally of the ledgers against those
//! events (lost, handled once, duplicated); and the row each scenario
//! writes for `RELIABILITY.md`.
//!
//! Longer runs are opt-in: with `JETRUN_SOAK=1` the scenarios use their
//! soak sizes ([`soak`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use tempfile::TempDir;

use crate::config::{toml_str, write_config};
use crate::jetstream::stream_messages;
use crate::ledger::Ledger;
use crate::metrics::wait_ready;
use crate::ports::free_port;
use crate::repo::repo_root;
use crate::runner::Runner;
use crate::scripts::WORKER_PY;
use crate::wait::wait_until;

/// The stream the fault configs declare, capturing `ev.>`.
pub const STREAM: &str = "EVENTS";
/// The function every replica runs.
pub const FUNCTION: &str = "ledgered";

/// Whether the opt-in soak sizes are on (`JETRUN_SOAK=1`).
pub fn soak() -> bool {
    std::env::var("JETRUN_SOAK").is_ok_and(|v| v == "1")
}

/// `quick` normally, `long` under `JETRUN_SOAK=1`.
pub fn sized<T>(quick: T, long: T) -> T {
    if soak() {
        long
    } else {
        quick
    }
}

/// Replicas of one worker-mode function ([`WORKER_PY`]) on `ev.fault`: the
/// same config but for each replica's ledger and metrics port.
pub struct Replicas {
    dir: TempDir,
    urls: Vec<String>,
    function: String,
    pace_ms: u32,
    pub configs: Vec<PathBuf>,
    pub ledgers: Vec<Ledger>,
    pub metrics: Vec<SocketAddr>,
    pub runners: Vec<Option<Runner>>,
}

impl Replicas {
    /// Writes `count` configs for servers at `urls`; `stream` lines go into
    /// `[streams.EVENTS]` (`replicas = 3`, say) and `function` lines into the
    /// function's table (`concurrency = 16`). Nothing is started yet.
    pub fn new(urls: &[String], count: usize, stream: &str, function: &str) -> Self {
        Self::paced(urls, count, stream, function, 0)
    }

    /// The same with a worker that takes `pace_ms` per event (so its rate
    /// depends on the clock, not on the shared CPU).
    pub fn paced(
        urls: &[String],
        count: usize,
        stream: &str,
        function: &str,
        pace_ms: u32,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetrun-faults-")
            .tempdir()
            .expect("create temp dir");
        let worker = dir.path().join("worker.py");
        std::fs::write(&worker, WORKER_PY).expect("write worker.py");
        let mut replicas = Replicas {
            dir,
            urls: urls.to_vec(),
            function: function.to_string(),
            pace_ms,
            configs: Vec::new(),
            ledgers: Vec::new(),
            metrics: Vec::new(),
            runners: Vec::new(),
        };
        for index in 0..count {
            let ledger = Ledger::new(replicas.dir.path().join(format!("ledger-{index}")));
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let config = replicas.config_text(&ledger, metrics, &worker, stream);
            let folder = replicas.dir.path().join(format!("replica-{index}"));
            std::fs::create_dir_all(&folder).expect("create replica folder");
            replicas.configs.push(write_config(&folder, &config));
            replicas.ledgers.push(ledger);
            replicas.metrics.push(metrics);
            replicas.runners.push(None);
        }
        replicas
    }

    fn config_text(
        &self,
        ledger: &Ledger,
        metrics: SocketAddr,
        worker: &Path,
        stream: &str,
    ) -> String {
        let urls: Vec<String> = self.urls.iter().map(toml_str).collect();
        format!(
            r#"shutdown_timeout = "5s"

[nats]
url = [{urls}]

[metrics]
listen = {metrics}

[defaults]
retry = {{ max_attempts = 5, initial_delay = "200ms", multiplier = 2.0, max_delay = "5s", jitter = 0.0 }}

[streams.{STREAM}]
subjects = ["ev.>"]
{stream}

[functions.{FUNCTION}]
subjects = ["ev.fault"]
exec = {{ command = ["python3", {worker}], mode = "worker", workers = 2, env = {{ LEDGER = {ledger}, DOWN = {down}, PACE_MS = "{pace}" }} }}
{function}
"#,
            urls = urls.join(", "),
            metrics = toml_str(metrics.to_string()),
            worker = toml_str(worker.to_string_lossy()),
            ledger = toml_str(ledger.path().to_string_lossy()),
            down = toml_str(self.down_file().to_string_lossy()),
            pace = self.pace_ms,
            function = self.function,
        )
    }

    /// The file whose presence makes every replica's handler fail.
    pub fn down_file(&self) -> PathBuf {
        self.dir.path().join("down")
    }

    /// Starts or ends a downstream outage: while it lasts, every call fails
    /// (retryably).
    pub fn set_down(&self, down: bool) {
        if down {
            std::fs::write(self.down_file(), "").expect("create the down file");
        } else {
            std::fs::remove_file(self.down_file()).expect("remove the down file");
        }
    }

    /// Starts replica `index` (again, after a kill).
    pub fn start(&mut self, index: usize) {
        self.runners[index] = Some(Runner::start(&self.configs[index]));
    }

    pub fn start_all(&mut self) {
        for index in 0..self.configs.len() {
            self.start(index);
        }
    }

    /// Starts every replica and waits until each answers `/readyz` 200.
    pub async fn start_all_ready(&mut self) {
        self.start_all();
        for &metrics in &self.metrics {
            wait_ready(metrics).await;
        }
    }

    /// `kill -9` of replica `index`.
    pub fn kill9(&mut self, index: usize) {
        if let Some(runner) = self.runners[index].as_mut() {
            runner.kill9();
        }
        self.runners[index] = None;
    }

    pub fn runner(&self, index: usize) -> &Runner {
        self.runners[index].as_ref().expect("replica running")
    }

    /// Every ledger's calls, per event number (the event id is the
    /// `Nats-Msg-Id`, `fault-<n>`).
    pub fn calls(&self) -> BTreeMap<u64, u32> {
        let mut calls = BTreeMap::new();
        for ledger in &self.ledgers {
            for entry in ledger.entries() {
                let number = entry
                    .key
                    .strip_prefix("fault-")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("ledger key {:?} is not fault-<n>", entry.key));
                *calls.entry(number).or_insert(0) += 1;
            }
        }
        calls
    }

    /// Waits until every event number in `acked` is in some ledger.
    pub async fn wait_all_handled(&self, acked: &BTreeSet<u64>, within: Duration) {
        wait_until(within, "every acknowledged event handled", || async move {
            let calls = self.calls();
            acked.iter().all(|s| calls.contains_key(s))
        })
        .await;
    }
}

/// What a publisher got JetStream to acknowledge.
pub struct Published {
    /// The numbers of the acknowledged events.
    pub numbers: BTreeSet<u64>,
    /// The highest stream sequence acknowledged.
    pub last_sequence: u64,
    /// Publish attempts that failed and were tried again (an outage).
    pub retries: u64,
}

/// Publishes `{"n": n}` for every `n` in `numbers` to `subject`, at most
/// `rate` per second, each with `Nats-Msg-Id: fault-<n>` so that trying a
/// publish again after an unanswered attempt stores it once. Keeps trying
/// each event for up to a minute (an outage, a leader election).
pub async fn publish_numbered(
    js: &Context,
    subject: &str,
    numbers: std::ops::Range<u64>,
    rate: u32,
    body: impl Fn(u64) -> String,
) -> Published {
    let mut published = Published {
        numbers: BTreeSet::new(),
        last_sequence: 0,
        retries: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for n in numbers {
        tick.tick().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("fault-{n}").as_str());
            let sent = js
                .publish_with_headers(subject.to_string(), headers, body(n).into())
                .await;
            let acked = match sent {
                Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                Err(err) => Err(err.to_string()),
            };
            match acked {
                Ok(ack) => {
                    published.numbers.insert(n);
                    published.last_sequence = published.last_sequence.max(ack.sequence);
                    break;
                }
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "event {n} not stored within a minute: {err}"
                    );
                    published.retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    published
}

/// The ledgers against the acknowledged events.
#[derive(Debug)]
pub struct Tally {
    pub published: usize,
    /// Acknowledged events (their numbers) no ledger holds.
    pub lost: Vec<u64>,
    /// Events handled more than once.
    pub duplicated: usize,
    /// Calls beyond one per event.
    pub extra_calls: u64,
    /// Messages in `DLQ`.
    pub dead_lettered: usize,
}

impl Tally {
    pub async fn of(replicas: &Replicas, published: &Published, js: &Context) -> Tally {
        let calls = replicas.calls();
        let lost = published
            .numbers
            .iter()
            .filter(|s| !calls.contains_key(s))
            .copied()
            .collect();
        let (duplicated, extra_calls) = published
            .numbers
            .iter()
            .filter_map(|s| calls.get(s))
            .filter(|&&c| c > 1)
            .fold((0, 0), |(d, e), &c| (d + 1, e + u64::from(c - 1)));
        Tally {
            published: published.numbers.len(),
            lost,
            duplicated,
            extra_calls,
            dead_lettered: stream_messages(js, "DLQ").await.len(),
        }
    }

    /// Fails the test on any lost event, naming the first few.
    pub fn assert_none_lost(&self) {
        assert!(
            self.lost.is_empty(),
            "{} of {} acknowledged events were never handled, e.g. numbers {:?}",
            self.lost.len(),
            self.published,
            &self.lost[..self.lost.len().min(20)]
        );
    }
}

/// One scenario's result: printed, and written as a table row to
/// `target/reliability/<scenario>.md` for `RELIABILITY.md`
/// (`tests/reliability-table.sh` prints the table).
pub struct Report<'a> {
    pub scenario: &'a str,
    pub tally: &'a Tally,
    /// The duplicate bound the scenario promises, in words.
    pub bound: String,
    /// From the fault to the first event handled after it, when it applies.
    pub recovery: Option<Duration>,
    pub notes: String,
}

impl Report<'_> {
    pub fn record(&self) {
        Row {
            scenario: self.scenario,
            acknowledged: self.tally.published.to_string(),
            lost: self.tally.lost.len().to_string(),
            more_than_once: format!(
                "{} events ({} extra calls); bound: {}",
                self.tally.duplicated, self.tally.extra_calls, self.bound
            ),
            dead_lettered: self.tally.dead_lettered.to_string(),
            recovery: self.recovery,
            notes: self.notes.clone(),
        }
        .record();
    }
}

/// One row of the scenario table, each cell in words: what a scenario that
/// does not count through ledgers (sagas, aggregates) reports.
pub struct Row<'a> {
    pub scenario: &'a str,
    /// Events (or commands) acknowledged to their publisher.
    pub acknowledged: String,
    pub lost: String,
    pub more_than_once: String,
    pub dead_lettered: String,
    pub recovery: Option<Duration>,
    pub notes: String,
}

impl Row<'_> {
    /// Prints the row and writes it to `target/reliability/<scenario>.md`.
    pub fn record(&self) {
        let recovery = self
            .recovery
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "-".to_string());
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            self.scenario,
            self.acknowledged,
            self.lost,
            self.more_than_once,
            self.dead_lettered,
            recovery,
            self.notes,
        );
        eprint!("reliability: {row}");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        let dir = target.join("reliability");
        let slug: String = self
            .scenario
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(format!("{slug}.md")), row);
        }
    }
}

/// How long after `from` (seconds since the Unix epoch) the first call came.
pub fn first_call_after(replicas: &Replicas, from: f64) -> Option<Duration> {
    replicas
        .ledgers
        .iter()
        .flat_map(|l| l.entries())
        .map(|e| e.at)
        .filter(|&at| at >= from)
        .min_by(f64::total_cmp)
        .map(|at| Duration::from_secs_f64(at - from))
}

/// The longest pause between consecutive calls in the ledgers after `from`
/// (seconds since the Unix epoch): how long handling stalled.
pub fn longest_stall_after(replicas: &Replicas, from: f64) -> Duration {
    let mut times: Vec<f64> = replicas
        .ledgers
        .iter()
        .flat_map(|l| l.entries())
        .map(|e| e.at)
        .filter(|&at| at >= from)
        .collect();
    times.sort_by(f64::total_cmp);
    let mut longest = 0.0f64;
    let mut previous = from;
    for at in times {
        longest = longest.max(at - previous);
        previous = at;
    }
    Duration::from_secs_f64(longest)
}
