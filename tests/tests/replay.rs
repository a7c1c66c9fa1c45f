//! `jetrun replay`: an exec function run again over a range of its stream's
//! history, in the CLI process, while its runner keeps running. It handles
//! exactly the range (and only the function's subjects), leaves the live
//! consumer's ack floor and delivered counts as they were, publishes its
//! emits with the live run's ids (the target stream keeps one of each),
//! starts from a time with `--since`, reports a failed event by sequence
//! with exit 1 (and dead-letters nothing), and refuses what it cannot do
//! with exit 2.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy};
use async_nats::jetstream::Context;
use jetrun_e2e::{
    consumer_info, header, holds_for, jetrun_bin, record_then, run_command, stream_len,
    stream_messages, wait_acked, wait_for_consumer, wait_until, Runner, TestBed,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// `jetrun replay ARGS... -c CONFIG`: exit code, stdout, stderr.
fn replay(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_str().expect("UTF-8 temp path");
    let mut argv = vec!["replay"];
    argv.extend(args);
    argv.extend(["-c", config]);
    run_command(&argv)
}

/// The subjects and bodies published, in stream order (sequences 1 to 7):
/// the function's `ev.in` events, with `ev.other` ones it does not take in
/// between, and a bad order last.
const HISTORY: &[(&str, &str)] = &[
    ("ev.in", r#"{"n":1}"#),
    ("ev.other", r#"{"n":2}"#),
    ("ev.in", r#"{"n":3}"#),
    ("ev.in", r#"{"n":4}"#),
    ("ev.other", r#"{"n":5}"#),
    ("ev.in", r#"{"n":6}"#),
    ("ev.in", r#"{"order":"bad"}"#),
];

/// A runner with function `emitter` on `ev.in`: it writes its ledger line,
/// fails permanently on an event saying "bad", and otherwise waits while
/// the file `hold` exists, creates `done.<its sequence>` and emits
/// `out.done` `{"seq": <its sequence>}` into stream `OUT`. [`HISTORY`] is
/// published and handled by the time `start` returns: sequences 1, 3, 4 and
/// 6 emitted, 7 dead-lettered.
struct World {
    bed: TestBed,
    config: PathBuf,
    _runner: Runner,
    js: Context,
    /// When the stream stored each message, by sequence - 1.
    stored: Vec<async_nats::jetstream::message::StreamMessage>,
}

impl World {
    async fn start() -> World {
        let bed = TestBed::new();
        let dir = bed.dir().to_string_lossy().into_owned();
        let script = bed.write_script(
            "emitter.sh",
            &record_then(&format!(
                r#"if grep -q '"bad"'; then echo "bad order at $JETRUN_SEQUENCE" >&2; exit 65; fi
while [ -f "{dir}/hold" ]; do sleep 0.05; done
: > "{dir}/done.$JETRUN_SEQUENCE"
echo "{{\"emit\": [{{\"type\": \"out.done\", \"data\": {{\"seq\": $JETRUN_SEQUENCE}}}}]}}""#
            )),
        );
        let config = bed.write_config(&format!(
            "{}\n[streams.OUT]\nsubjects = [\"out.>\"]\n{}",
            bed.base_config(),
            bed.sh_function("emitter", &["ev.in"], &script, "concurrency = 1")
        ));
        let runner = Runner::start(&config);
        let js = bed.jetstream().await;
        wait_for_consumer(&js, TestBed::STREAM, "emitter").await;
        for (n, (subject, body)) in HISTORY.iter().enumerate() {
            let ack = js
                .publish(*subject, body.to_string().into())
                .await
                .expect("publish")
                .await
                .expect("ack");
            assert_eq!(ack.sequence, n as u64 + 1);
        }
        wait_acked(&js, TestBed::STREAM, "emitter", 7).await;
        let js_ref = &js;
        wait_until(
            Duration::from_secs(20),
            "4 events in OUT and 1 dead letter",
            || async move {
                stream_len(js_ref, "OUT").await == 4 && stream_len(js_ref, "DLQ").await == 1
            },
        )
        .await;
        let stored = stream_messages(&js, TestBed::STREAM).await;
        assert_eq!(stored.len(), 7);
        World {
            bed,
            config,
            _runner: runner,
            js,
            stored,
        }
    }

    /// The sequences in the ledger from entry `from` on, in order.
    fn calls_since(&self, from: usize) -> Vec<u64> {
        let entries = self.bed.ledger.entries();
        entries[from..].iter().map(|e| e.sequence()).collect()
    }

    /// The live consumer's counts: delivered and ack floor (consumer and
    /// stream sequences), pending, ack pending, redelivered.
    async fn live_consumer(&self) -> (u64, u64, u64, u64, u64, usize, usize) {
        let info: consumer::Info = consumer_info(&self.js, TestBed::STREAM, "emitter")
            .await
            .expect("the live consumer");
        (
            info.delivered.consumer_sequence,
            info.delivered.stream_sequence,
            info.ack_floor.consumer_sequence,
            info.ack_floor.stream_sequence,
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered,
        )
    }

    /// The `seq` of each event in `OUT`, and how many distinct ids they have.
    async fn out(&self) -> (Vec<u64>, usize) {
        let messages = stream_messages(&self.js, "OUT").await;
        let ids: BTreeSet<String> = messages
            .iter()
            .map(|m| header(&m.headers, "Nats-Msg-Id").expect("an emitted event has an id"))
            .collect();
        let seqs = messages
            .iter()
            .map(|m| {
                let data: Value = serde_json::from_slice(&m.payload).expect("JSON data");
                data["seq"].as_u64().expect("seq")
            })
            .collect();
        (seqs, ids.len())
    }

    /// When the stream stored sequence `seq`, in RFC 3339 with nanoseconds.
    fn stored_at(&self, seq: u64) -> String {
        let t = self.stored[seq as usize - 1]
            .time
            .to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_runs_exactly_its_range_and_publishes_nothing_twice() {
    let world = World::start().await;
    let consumer_before = world.live_consumer().await;
    let calls = world.bed.ledger.len();
    assert_eq!(world.out().await, (vec![1, 3, 4, 6], 4));

    let started = Instant::now();
    let (code, stdout, stderr) = replay(
        &world.config,
        &["emitter", "--from-seq", "3", "--until-seq", "6"],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout,
        "replay of emitter (stream EVENTS, sequences 3 to 6): 3 events, 3 succeeded, 0 failed, \
         3 emitted (3 already stored, dropped as duplicates)\n"
    );
    eprintln!("replay of 3 events took {:?}", started.elapsed());

    // Sequences 3, 4 and 6 only: not 5 (ev.other), not 7 (after the range).
    assert_eq!(world.calls_since(calls), [3, 4, 6]);
    let replayed = &world.bed.ledger.entries()[calls..];
    assert!(replayed.iter().all(|e| e.attempt == 1), "{replayed:?}");
    // The live consumer saw nothing of it.
    assert_eq!(world.live_consumer().await, consumer_before);
    // The emits were the live run's, by id: OUT holds each once.
    assert_eq!(world.out().await, (vec![1, 3, 4, 6], 4));
    assert_eq!(stream_len(&world.js, "DLQ").await, 1);

    // Without --until-seq: to the stream's end, the bad event included.
    let calls = world.bed.ledger.len();
    let (code, stdout, stderr) = replay(&world.config, &["emitter", "--from-seq", "6"]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(world.calls_since(calls), [6, 7]);
    assert_eq!(world.live_consumer().await, consumer_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_starts_at_a_time_or_a_duration_ago() {
    let world = World::start().await;
    let consumer_before = world.live_consumer().await;

    // The time sequence 4 was stored: 4 and 6 (7 is past --until-seq).
    let calls = world.bed.ledger.len();
    let since = world.stored_at(4);
    let (code, stdout, stderr) = replay(
        &world.config,
        &["emitter", "--since", &since, "--until-seq", "6"],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(
        stdout,
        format!(
            "replay of emitter (stream EVENTS, since {since}, up to sequence 6): 2 events, \
             2 succeeded, 0 failed, 2 emitted (2 already stored, dropped as duplicates)\n"
        )
    );
    assert_eq!(world.calls_since(calls), [4, 6]);

    // An hour ago: the whole history of ev.in up to 6.
    let calls = world.bed.ledger.len();
    let (code, stdout, stderr) = replay(
        &world.config,
        &["emitter", "--since", "1h", "--until-seq", "6"],
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout
            .starts_with("replay of emitter (stream EVENTS, since 1h, up to sequence 6): 4 events"),
        "{stdout}"
    );
    assert_eq!(world.calls_since(calls), [1, 3, 4, 6]);

    // After the last event: nothing to do, and that is a success.
    let calls = world.bed.ledger.len();
    let (code, stdout, stderr) = replay(&world.config, &["emitter", "--since", "0s"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(": 0 events, 0 succeeded"), "{stdout}");
    assert_eq!(world.calls_since(calls), Vec::<u64>::new());

    assert_eq!(world.live_consumer().await, consumer_before);
    assert_eq!(world.out().await, (vec![1, 3, 4, 6], 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_reported_by_sequence_and_not_dead_lettered() {
    let world = World::start().await;
    let dead_letters = stream_len(&world.js, "DLQ").await;

    let (code, stdout, stderr) = replay(&world.config, &["emitter", "--from-seq", "4"]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Besides the handler's own stderr, as a live run logs it: one line.
    let reported: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("jetrun: "))
        .collect();
    assert_eq!(
        reported,
        ["jetrun: sequence 7 (ev.in) failed: sh exited with status 65 (bad input): bad order at 7"],
        "{stderr}"
    );
    assert_eq!(
        stdout,
        "replay of emitter (stream EVENTS, sequences 4 to 7): 3 events, 2 succeeded, 1 failed, \
         2 emitted (2 already stored, dropped as duplicates)\n"
    );
    assert_eq!(stream_len(&world.js, "DLQ").await, dead_letters);
    assert_eq!(world.out().await, (vec![1, 3, 4, 6], 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_replayed_is_a_usage_error() {
    let bed = TestBed::new();
    let script = bed.write_script("ok.sh", &record_then(""));
    let config = bed.write_config(&format!(
        "{}\n[streams.JOBS]\nsubjects = [\"job.>\"]\nretention = \"workqueue\"\n{}{}{}",
        bed.base_config(),
        bed.sh_function("emitter", &["ev.in"], &script, ""),
        bed.sh_function("worker", &["job.run"], &script, ""),
        "\n[functions.ask]\nrequest = \"cmd.ask\"\nbuiltin = \"reserve_stock\"\n",
    ));
    let path = config.to_str().expect("UTF-8 temp path");
    let usage = |args: &[&str]| {
        let (code, stdout, stderr) = replay(&config, args);
        assert_eq!((code, stdout.as_str()), (2, ""), "{args:?}: {stderr}");
        stderr
    };
    assert_eq!(
        usage(&["nope", "--from-seq", "1"]),
        format!(
            "jetrun: {path} declares no function \"nope\"; its functions: ask, emitter, worker\n"
        )
    );
    assert_eq!(
        usage(&["ask", "--from-seq", "1"]),
        "jetrun: function ask answers requests on cmd.ask: it has no stream, so there is no \
         history to replay\n"
    );
    assert_eq!(
        usage(&["emitter", "--from-seq", "5", "--until-seq", "4"]),
        "jetrun: --until-seq 4 is before --from-seq 5: nothing to replay\n"
    );
    let both = usage(&["emitter", "--from-seq", "1", "--since", "1h"]);
    assert!(both.contains("cannot be used with"), "{both}");
    let neither = usage(&["emitter"]);
    assert!(
        neither.contains("the following required arguments"),
        "{neither}"
    );
    let bad_time = usage(&["emitter", "--since", "tomorrow"]);
    assert!(
        bad_time.contains("\"tomorrow\" is neither a time (RFC 3339"),
        "{bad_time}"
    );

    // No runner ever made the stream: an error, not a usage error.
    let (code, _, stderr) = replay(&config, &["emitter", "--from-seq", "1"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        "jetrun: stream EVENTS of function emitter does not exist; has `jetrun run` run with \
         this config?\n"
    );

    // A work queue keeps no history.
    let js = bed.jetstream().await;
    js.create_stream(StreamConfig {
        name: "JOBS".into(),
        subjects: vec!["job.>".into()],
        retention: RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .expect("create JOBS");
    assert!(usage(&["worker", "--from-seq", "1"]).starts_with(
        "jetrun: stream JOBS has retention workqueue: it keeps no history once an event is \
             acknowledged"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_replay_stops_its_handler_and_says_where_to_resume() {
    let world = World::start().await;
    std::fs::write(world.bed.path("hold"), "").expect("create hold");
    std::fs::remove_file(world.bed.path("done.3")).expect("the live run made done.3");
    let calls = world.bed.ledger.len();
    let mut replay = Command::new(jetrun_bin())
        .args(["replay", "emitter", "--from-seq", "3", "-c"])
        .arg(&world.config)
        .env_remove("JETRUN_CONFIG")
        .env_remove("JETRUN_NATS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jetrun replay");
    let ledger = &world.bed.ledger;
    wait_until(
        Duration::from_secs(20),
        "the replay is handling sequence 3",
        || async move { ledger.len() == calls + 1 },
    )
    .await;
    kill(Pid::from_raw(replay.id() as i32), Signal::SIGINT).expect("send SIGINT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while replay.try_wait().expect("wait for jetrun").is_none() {
        assert!(
            Instant::now() < deadline,
            "jetrun replay still running after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = replay.wait_with_output().expect("jetrun replay output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.ends_with("jetrun: interrupted; resume with --from-seq 3\n"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "replay of emitter (stream EVENTS, sequences 3 to 7): 0 events, 0 succeeded, 0 failed, \
         0 emitted\n"
    );
    // The handler's process went with it: released, it does not go on.
    std::fs::remove_file(world.bed.path("hold")).expect("remove hold");
    let done = world.bed.path("done.3");
    let done = &done;
    holds_for(
        Duration::from_secs(1),
        "the interrupted handler stays stopped",
        || async move { !done.exists() },
    )
    .await;
    assert_eq!(world.calls_since(calls), [3]);
}
