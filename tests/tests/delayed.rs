//! Delayed events: a handler's emit with `"delay": "3s"` is stored on its
//! subject 3 to 4.5 s after its input was handled, exactly once: with the
//! input handled twice (a failure after the delayed emit was held), with
//! the runner that handled it killed (`kill -9`) right after its ack, and
//! with nats-server (file store) killed and started again during the delay.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::Context;
use jetrun_e2e::{
    free_port, header, metric, scrape, stream_messages, toml_str, unix_now, wait_acked,
    wait_for_consumer, wait_ready, wait_until, write_config, NatsServer, Runner,
};

/// Per event: appends `<n> <attempt> <time> <pid>` to $LEDGER, then emits
/// `ev.out` `{"n"}` 3 s later. Input `{"n": 2, "fail_first": true}` also
/// emits, on its first attempt, an event no stream captures: that attempt
/// fails after its delayed emit was held, and the second holds it again.
const HANDLER: &str = r#"import json, os, sys, time
event = json.load(sys.stdin)
data = event["data"]
attempt = int(os.environ["JETRUN_ATTEMPT"])
with open(os.environ["LEDGER"], "a") as f:
    f.write(f"{data['n']} {attempt} {time.time():.6f} {os.getpid()}\n")
emit = [{"type": "ev.out", "data": {"n": data["n"]}, "delay": "3s"}]
if data.get("fail_first") and attempt == 1:
    emit.append({"type": "nowhere.stored", "data": {}})
print(json.dumps({"emit": emit}))
"#;

/// One handling of an input, from the ledger.
#[derive(Debug, Clone, Copy)]
struct Call {
    n: u64,
    attempt: u32,
    /// When the handler ran, seconds since the epoch.
    at: f64,
}

struct Replicas {
    _dir: tempfile::TempDir,
    ledgers: Vec<PathBuf>,
    metrics: Vec<SocketAddr>,
    configs: Vec<PathBuf>,
    runners: Vec<Option<Runner>>,
}

impl Replicas {
    fn new(nats: &NatsServer, count: usize) -> Replicas {
        let dir = tempfile::Builder::new()
            .prefix("jetrun-delayed-")
            .tempdir()
            .expect("temp dir");
        let handler = dir.path().join("later.py");
        std::fs::write(&handler, HANDLER).expect("write handler");
        let (mut ledgers, mut metrics, mut configs) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..count {
            let folder = dir.path().join(format!("replica-{index}"));
            std::fs::create_dir_all(&folder).expect("folder");
            let ledger = folder.join("ledger");
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let toml = format!(
                "shutdown_timeout = \"3s\"\n\n[nats]\nurl = {}\n\n[metrics]\nlisten = {}\n\n\
                 [streams.EV]\nsubjects = [\"ev.>\"]\nstorage = \"file\"\n\n\
                 [functions.later]\nsubjects = [\"ev.in\"]\nexec = {{ command = [\"python3\", \
                 {}], env = {{ LEDGER = {} }} }}\nretry = {{ initial_delay = \"500ms\" }}\n",
                toml_str(nats.url()),
                toml_str(listen.to_string()),
                toml_str(handler.to_string_lossy()),
                toml_str(ledger.to_string_lossy()),
            );
            configs.push(write_config(&folder, &toml));
            ledgers.push(ledger);
            metrics.push(listen);
        }
        Replicas {
            _dir: dir,
            ledgers,
            metrics,
            configs,
            runners: (0..count).map(|_| None).collect(),
        }
    }

    async fn start_all(&mut self) {
        for index in 0..self.configs.len() {
            self.runners[index] = Some(Runner::start(&self.configs[index]));
        }
        for addr in &self.metrics {
            wait_ready(*addr).await;
        }
    }

    /// Every handling, with the index of the replica that did it.
    fn calls(&self) -> Vec<(usize, Call)> {
        let mut calls = Vec::new();
        for (index, ledger) in self.ledgers.iter().enumerate() {
            for line in std::fs::read_to_string(ledger).unwrap_or_default().lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if let [n, attempt, at, _pid] = fields[..] {
                    calls.push((
                        index,
                        Call {
                            n: n.parse().expect("n"),
                            attempt: attempt.parse().expect("attempt"),
                            at: at.parse().expect("time"),
                        },
                    ));
                }
            }
        }
        calls
    }

    /// The first handling of input `n`: the one that held its delayed
    /// event (a second one holds it again, which the stream drops).
    fn first_call(&self, n: u64) -> Option<(usize, Call)> {
        self.calls()
            .into_iter()
            .filter(|(_, c)| c.n == n)
            .min_by(|a, b| a.1.at.total_cmp(&b.1.at))
    }
}

/// A delayed event as stored on `ev.out`.
#[derive(Debug, Clone)]
struct Stored {
    n: u64,
    /// Its stream timestamp, seconds since the epoch.
    at: f64,
    id: String,
    causation: Option<String>,
    correlation: Option<String>,
}

async fn stored_out(js: &Context) -> Vec<Stored> {
    stream_messages(js, "EV")
        .await
        .into_iter()
        .filter(|m| m.subject.as_str() == "ev.out")
        .map(|m| {
            let data: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON data");
            Stored {
                n: data["n"].as_u64().expect("n"),
                at: m.time.unix_timestamp_nanos() as f64 / 1e9,
                id: header(&m.headers, "ce-id").expect("ce-id"),
                causation: header(&m.headers, "ce-causationid"),
                correlation: header(&m.headers, "ce-correlationid"),
            }
        })
        .collect()
}

/// Publishes input `{"n": n, ...}` on `ev.in` as a CloudEvent with id
/// `input-<n>` and correlation id `order-<n>`; its stream sequence.
async fn publish_input(js: &Context, n: u64, fail_first: bool) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0".to_string()),
        ("ce-id", format!("input-{n}")),
        ("ce-type", "ev.in".to_string()),
        ("ce-source", "test".to_string()),
        ("ce-correlationid", format!("order-{n}")),
    ] {
        headers.insert(name, value.as_str());
    }
    let body = serde_json::json!({"n": n, "fail_first": fail_first}).to_string();
    js.publish_with_headers("ev.in", headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

/// Waits until `ev.out` holds the delayed events of `inputs`, then one
/// second more for a repeat that would come; checks each is stored once,
/// 3 to 4.5 s after the first handling of its input, with the input's
/// correlation id and the input as its cause.
async fn assert_each_stored_once_on_time(js: &Context, replicas: &Replicas, inputs: &[u64]) {
    wait_until(
        Duration::from_secs(30),
        "the delayed events stored",
        || async {
            let stored = stored_out(js).await;
            inputs.iter().all(|n| stored.iter().any(|s| s.n == *n))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = stored_out(js).await;
    let mut by_input: BTreeMap<u64, Vec<&Stored>> = BTreeMap::new();
    for event in &stored {
        by_input.entry(event.n).or_default().push(event);
    }
    for n in inputs {
        let events = &by_input[n];
        assert_eq!(
            events.len(),
            1,
            "input {n}'s delayed event stored {events:?}"
        );
        let event = events[0];
        let (_, handled) = replicas.first_call(*n).expect("handled");
        let after = event.at - handled.at;
        eprintln!("delayed event of input {n}: stored {after:.3} s after its input was handled");
        assert!(
            (3.0..=4.5).contains(&after),
            "input {n}'s delayed event stored {after:.3} s after it was handled"
        );
        assert_eq!(
            event.causation.as_deref(),
            Some(format!("input-{n}").as_str())
        );
        assert_eq!(
            event.correlation.as_deref(),
            Some(format!("order-{n}").as_str())
        );
        assert!(!event.id.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_emit_is_stored_once_3_s_after_its_input_was_handled() {
    let nats = NatsServer::start();
    let mut replicas = Replicas::new(&nats, 1);
    replicas.start_all().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    wait_for_consumer(&js, "JETRUN_SCHEDULES", "jetrun-delayed").await;
    // Input 2 fails after its delayed emit is held, and is handled again.
    let mut last = 0;
    for n in 1..=3 {
        last = publish_input(&js, n, n == 2).await;
    }
    wait_acked(&js, "EV", "later", last).await;
    let attempts: Vec<u32> = (replicas.calls().iter())
        .filter(|(_, c)| c.n == 2)
        .map(|(_, c)| c.attempt)
        .collect();
    assert_eq!(attempts, [1, 2], "input 2 is handled twice");
    assert_each_stored_once_on_time(&js, &replicas, &[1, 2, 3]).await;
    // The id is the emit's, the same however often its input was handled.
    let text = scrape(replicas.metrics[0]).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_delayed_events_scheduled_total",
            &[("function", "later")]
        ),
        Some(3.0),
        "input 2's second hold is a repeat, not counted: {text}"
    );
    let relayed = metric(
        &text,
        "jetrun_events_processed_total",
        &[("function", "jetrun-delayed"), ("outcome", "success")],
    );
    assert_eq!(relayed, Some(3.0), "{text}");
    // Nothing is left held or due.
    let schedules = stream_messages(&js, "JETRUN_SCHEDULES").await;
    assert!(
        schedules
            .iter()
            .all(|m| !m.subject.starts_with("jetrun.delayed.")),
        "{:?}",
        schedules
            .iter()
            .map(|m| m.subject.to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_right_after_its_ack_loses_no_delayed_event() {
    let nats = NatsServer::start();
    let mut replicas = Replicas::new(&nats, 2);
    replicas.start_all().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    wait_for_consumer(&js, "JETRUN_SCHEDULES", "jetrun-delayed").await;
    let sequence = publish_input(&js, 1, false).await;
    wait_acked(&js, "EV", "later", sequence).await;
    let (handler, _) = replicas.first_call(1).expect("handled");
    if let Some(mut runner) = replicas.runners[handler].take() {
        runner.kill9();
    }
    assert_each_stored_once_on_time(&js, &replicas, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarted_during_the_delay_loses_no_delayed_event() {
    let mut nats = NatsServer::start();
    let mut replicas = Replicas::new(&nats, 1);
    replicas.start_all().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    wait_for_consumer(&js, "JETRUN_SCHEDULES", "jetrun-delayed").await;
    let sequence = publish_input(&js, 1, false).await;
    wait_acked(&js, "EV", "later", sequence).await;
    let (_, handled) = replicas.first_call(1).expect("handled");
    // A second into the delay, the server is killed and started again on
    // its file store.
    let wait = 1.0 - (unix_now() - handled.at);
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
    nats.restart();
    let restarted = unix_now() - handled.at;
    assert!(
        restarted < 3.0,
        "the restart ended {restarted:.3} s into the delay"
    );
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    assert_each_stored_once_on_time(&js, &replicas, &[1]).await;
}
