//! Scheduled functions on nats-server's message schedules: `@every 1s` on
//! two replicas fires each tick once (also through a `kill -9` of one); a
//! 6-field cron fires on its seconds, in its `time_zone`; a reload replaces
//! a changed schedule and deletes a removed function's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use jetrun_e2e::{
    free_port, metric, parse_rfc3339, scrape, toml_str, unix_now, wait_ready, wait_until,
    write_config, NatsServer, Runner,
};

const STREAM: &str = "JETRUN_SCHEDULES";

/// A worker writing one line per call: `<scheduled_at> <attempt> <start> <pid>`.
const WORKER: &str = r#"import json, os, sys, time
ledger = os.environ["LEDGER"]
for line in sys.stdin:
    request = json.loads(line)
    event = request["event"]
    data = event["data"]
    with open(ledger, "a") as f:
        f.write(f"{data['scheduled_at']} {request['attempt']} {time.time():.6f} {os.getpid()} {event['type']} {event['id']} {data['function']}\n")
    sys.stdout.write(json.dumps({"id": request["id"], "ok": True}) + "\n")
    sys.stdout.flush()
"#;

/// One handling of a tick, from a ledger line.
#[derive(Debug, Clone)]
struct Call {
    scheduled_at: String,
    /// `scheduled_at` in seconds since the epoch.
    at: f64,
    start: f64,
    event_type: String,
    id: String,
    function: String,
}

/// Replicas of one config, each with its own ledger and metrics port.
struct Replicas {
    dir: tempfile::TempDir,
    url: String,
    worker: PathBuf,
    ledgers: Vec<PathBuf>,
    metrics: Vec<SocketAddr>,
    configs: Vec<PathBuf>,
    runners: Vec<Option<Runner>>,
}

impl Replicas {
    fn new(nats: &NatsServer, count: usize) -> Replicas {
        let dir = tempfile::Builder::new()
            .prefix("jetrun-schedule-")
            .tempdir()
            .expect("temp dir");
        let worker = dir.path().join("worker.py");
        std::fs::write(&worker, WORKER).expect("write worker");
        let mut replicas = Replicas {
            url: nats.url(),
            worker,
            ledgers: Vec::new(),
            metrics: Vec::new(),
            configs: Vec::new(),
            runners: Vec::new(),
            dir,
        };
        for index in 0..count {
            let folder = replicas.dir.path().join(format!("replica-{index}"));
            std::fs::create_dir_all(&folder).expect("folder");
            replicas.ledgers.push(folder.join("ledger"));
            replicas
                .metrics
                .push(SocketAddr::from(([127, 0, 0, 1], free_port())));
            replicas.configs.push(folder.join("jetrun.toml"));
            replicas.runners.push(None);
        }
        replicas
    }

    /// Writes every replica's config: `functions` is a list of
    /// (name, schedule, time zone).
    fn configure(&self, functions: &[(&str, &str, Option<&str>)]) {
        for index in 0..self.configs.len() {
            let mut toml = format!(
                "shutdown_timeout = \"3s\"\n\n[nats]\nurl = {}\n\n[metrics]\nlisten = {}\n\n\
                 [streams.EV]\nsubjects = [\"ev.>\"]\n\n[functions.idle]\nsubjects = \
                 [\"ev.idle\"]\nbuiltin = \"noop\"\n",
                toml_str(&self.url),
                toml_str(self.metrics[index].to_string()),
            );
            for (name, schedule, zone) in functions {
                toml.push_str(&format!(
                    "\n[functions.{name}]\nschedule = {}\n{}exec = {{ command = [\"python3\", {}], \
                     mode = \"worker\", workers = 2, env = {{ LEDGER = {} }} }}\nack_wait = \"2s\"\n",
                    toml_str(schedule),
                    zone.map_or(String::new(), |z| format!("time_zone = {}\n", toml_str(z))),
                    toml_str(self.worker.to_string_lossy()),
                    toml_str(self.ledgers[index].to_string_lossy()),
                ));
            }
            let folder = self.configs[index].parent().expect("folder");
            write_config(folder, &toml);
        }
    }

    async fn start(&mut self, index: usize) {
        self.runners[index] = Some(Runner::start(&self.configs[index]));
        wait_ready(self.metrics[index]).await;
    }

    fn runner(&self, index: usize) -> &Runner {
        self.runners[index].as_ref().expect("running")
    }

    fn kill9(&mut self, index: usize) {
        if let Some(mut runner) = self.runners[index].take() {
            runner.kill9();
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.ledgers
            .iter()
            .flat_map(|path| {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let [scheduled_at, _attempt, start, _pid, event_type, id, function] = fields[..]
                else {
                    return None;
                };
                Some(Call {
                    scheduled_at: scheduled_at.to_string(),
                    at: parse_rfc3339(scheduled_at)
                        .unwrap_or_else(|| panic!("scheduled_at {scheduled_at:?} is RFC 3339")),
                    start: start.parse().expect("start"),
                    event_type: event_type.to_string(),
                    id: id.to_string(),
                    function: function.to_string(),
                })
            })
            .collect()
    }

    /// Handlings per `scheduled_at`, of ticks scheduled in `[from, to)`.
    fn handled_between(&self, function: &str, from: f64, to: f64) -> BTreeMap<String, usize> {
        let mut handled = BTreeMap::new();
        for call in self.calls() {
            if call.function == function && call.at >= from && call.at < to {
                *handled.entry(call.scheduled_at).or_default() += 1;
            }
        }
        handled
    }
}

fn log_of(replicas: &Replicas, index: usize) -> String {
    replicas.runner(index).log()
}

/// Ticks of `@every 1s` scheduled in a 12 s window, handled by two
/// replicas (one of them killed half way when `kill` says): 11 to 13
/// ticks, one second apart, each handled once (the one tick the killed
/// runner had in flight may be handled twice).
async fn every_second_on_two_replicas(kill: bool) {
    let nats = NatsServer::start();
    let mut replicas = Replicas::new(&nats, 2);
    replicas.configure(&[("tick", "@every 1s", None)]);
    replicas.start(0).await;
    replicas.start(1).await;
    let from = unix_now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    if kill {
        replicas.kill9(0);
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let to = unix_now();
    // The last ticks of the window handled, the killed runner's in-flight
    // one redelivered after its ack wait.
    wait_until(
        Duration::from_secs(20),
        "the window's ticks handled",
        || {
            let replicas = &replicas;
            async move {
                let handled = replicas.handled_between("tick", from, to);
                handled.len() >= 11
                    && replicas
                        .calls()
                        .iter()
                        .any(|c| c.function == "tick" && c.at >= to + 1.0)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let handled = replicas.handled_between("tick", from, to);
    assert!(
        (11..=13).contains(&handled.len()),
        "{} ticks in 12 s: {handled:?}",
        handled.len()
    );
    let times: Vec<f64> = handled
        .keys()
        .map(|at| parse_rfc3339(at).unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    for pair in sorted.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (gap - 1.0).abs() < 0.01,
            "ticks {} and {} are {gap} s apart, not 1 s: {handled:?}",
            pair[0],
            pair[1]
        );
    }
    let twice: Vec<_> = handled.iter().filter(|(_, &n)| n > 1).collect();
    if kill {
        assert!(
            twice.len() <= 1 && twice.iter().all(|(_, &n)| n == 2),
            "more than the in-flight tick handled twice: {twice:?}"
        );
    } else {
        assert!(twice.is_empty(), "ticks handled more than once: {twice:?}");
    }
    // Each handled as the tick event the issue describes.
    let calls = replicas.calls();
    for call in calls.iter().filter(|c| c.function == "tick") {
        assert_eq!(call.event_type, "jetrun.schedule.tick");
        assert_eq!(call.id, format!("tick@{}", call.scheduled_at));
        assert!(
            call.scheduled_at.ends_with('Z'),
            "{} is not in UTC",
            call.scheduled_at
        );
    }
    let alive = if kill { 1 } else { 0 };
    let text = scrape(replicas.metrics[alive]).await;
    let ticks = metric(
        &text,
        "jetrun_schedule_ticks_total",
        &[("function", "tick")],
    );
    assert!(ticks.is_some_and(|n| n >= 1.0), "{text}");
    let lags = metric(
        &text,
        "jetrun_schedule_lag_seconds_count",
        &[("function", "tick")],
    );
    assert_eq!(lags, ticks, "one lag per tick handled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_on_two_replicas_fires_each_tick_once() {
    every_second_on_two_replicas(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_survives_a_replica_killed() {
    every_second_on_two_replicas(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_on_even_seconds_in_its_time_zone() {
    let nats = NatsServer::start();
    let mut replicas = Replicas::new(&nats, 1);
    replicas.configure(&[
        ("even", "*/2 * * * * *", None),
        ("kolkata", "*/2 * * * * *", Some("Asia/Kolkata")),
    ]);
    replicas.start(0).await;
    wait_until(Duration::from_secs(30), "4 ticks of each", || {
        let replicas = &replicas;
        async move {
            let calls = replicas.calls();
            ["even", "kolkata"]
                .iter()
                .all(|f| calls.iter().filter(|c| &c.function == f).count() >= 4)
        }
    })
    .await;
    for call in replicas.calls() {
        let second: u32 = call.scheduled_at[17..19].parse().expect("seconds");
        assert_eq!(second % 2, 0, "{call:?} is not on an even second");
        assert_eq!(call.at.fract(), 0.0, "{call:?} is not on a whole second");
        let offset = if call.function == "kolkata" {
            "+05:30"
        } else {
            "Z"
        };
        assert!(
            call.scheduled_at.ends_with(offset),
            "{call:?} does not end in {offset}"
        );
        // Handled soon after its time, never before.
        let lag = call.start - call.at;
        assert!(
            (0.0..10.0).contains(&lag),
            "{call:?} handled {lag} s after its time"
        );
    }
    // One holder per function, under the service's name.
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    let stream = js.get_stream(STREAM).await.expect("schedules stream");
    for function in ["even", "kolkata"] {
        let holder = stream
            .get_last_raw_message_by_subject(&format!("jetrun.schedules.jetrun.{function}"))
            .await
            .expect("holder stored");
        let header = |name: &str| holder.headers.get(name).map(|v| v.as_str().to_string());
        assert_eq!(header("Nats-Schedule").as_deref(), Some("*/2 * * * * *"));
        assert_eq!(
            header("Nats-Schedule-Target"),
            Some(format!("jetrun.schedule.{function}"))
        );
    }
}

/// The time the runner's log first says `what` after `skip` bytes.
async fn wait_logged(replicas: &Replicas, index: usize, skip: usize, what: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("the log says {what}"),
        || {
            let log = log_of(replicas, index);
            let found = log.get(skip..).is_some_and(|rest| rest.contains(what));
            async move { found }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_replaces_a_changed_schedule_and_deletes_a_removed_one() {
    let nats = NatsServer::start();
    let mut replicas = Replicas::new(&nats, 1);
    replicas.configure(&[("tick", "@every 1s", None)]);
    replicas.start(0).await;
    wait_until(Duration::from_secs(20), "3 ticks at 1 s", || {
        let replicas = &replicas;
        async move { replicas.calls().len() >= 3 }
    })
    .await;

    // From every second to every 3 s.
    replicas.configure(&[("tick", "@every 3s", None)]);
    let skip = log_of(&replicas, 0).len();
    replicas.runner(0).sighup();
    wait_logged(&replicas, 0, skip, "Schedule replaced.").await;
    let replaced = unix_now();
    wait_until(Duration::from_secs(30), "3 ticks after the reload", || {
        let replicas = &replicas;
        async move { replicas.calls().iter().filter(|c| c.at > replaced).count() >= 3 }
    })
    .await;
    let mut after: Vec<f64> = (replicas.calls().iter())
        .filter(|c| c.at > replaced)
        .map(|c| c.at)
        .collect();
    after.sort_by(f64::total_cmp);
    for pair in after.windows(2) {
        assert!(
            pair[1] - pair[0] > 2.5,
            "ticks at {} and {} after the reload: the old cadence",
            pair[0],
            pair[1]
        );
    }

    // The function removed: its schedule goes, no tick is fired after.
    replicas.configure(&[]);
    let skip = log_of(&replicas, 0).len();
    replicas.runner(0).sighup();
    wait_logged(&replicas, 0, skip, "Schedule deleted").await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    let stream = js.get_stream(STREAM).await.expect("schedules stream");
    let holder = stream
        .get_last_raw_message_by_subject("jetrun.schedules.jetrun.tick")
        .await;
    assert!(
        matches!(&holder, Err(err) if matches!(err.kind(), LastRawMessageErrorKind::NoMessageFound)),
        "the holder is still there: {holder:?}"
    );
    let last_tick = |stream: async_nats::jetstream::stream::Stream| async move {
        stream
            .get_last_raw_message_by_subject("jetrun.schedule.tick")
            .await
            .expect("the ticks fired before the removal are stored")
            .sequence
    };
    let before = last_tick(stream.clone()).await;
    assert!(before > 0, "ticks were fired before the removal");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        last_tick(stream).await,
        before,
        "a tick was fired after the function was removed"
    );
}
