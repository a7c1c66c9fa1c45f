//! Errors a person can act on: NATS unreachable (which URL), a stream that
//! exists with settings JetStream will not change, and a consumer of the
//! function's name that jetrun did not make.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use jetrun_e2e::{free_port, wait_until, write_config, Runner, TestBed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nats_is_named_in_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            "[nats]\nurl = \"nats://127.0.0.1:{port}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n\
             [streams.EVENTS]\nsubjects = [\"ev.>\"]\n[functions.f]\nsubjects = [\"ev.x\"]\nbuiltin = \"noop\"\n",
            free_port()
        ),
    );
    let runner = Runner::start(&config);
    let runner = &runner;
    let url = format!("nats://127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), "the log names the URL", || {
        let url = url.clone();
        async move {
            let log = runner.log();
            log.contains("Cannot reach NATS") && log.contains(&url)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_conflicting_settings_stops_the_runner_with_a_clear_error() {
    let bed = TestBed::new();
    let js = bed.jetstream().await;
    js.create_stream(StreamConfig {
        name: "EVENTS".into(),
        subjects: vec!["ev.>".into()],
        storage: StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("create EVENTS in memory");
    // base_config declares EVENTS with file storage, which JetStream cannot
    // switch to; manage = true asks jetrun to update a stream it did not
    // create (without it, jetrun leaves the stream alone: stream_manage.rs).
    let base = bed.base_config().replace(
        "subjects = [\"ev.>\"]\n",
        "subjects = [\"ev.>\"]\nmanage = true\n",
    );
    let config = bed.write_config(&format!(
        "{base}\n[functions.f]\nsubjects = [\"ev.x\"]\nbuiltin = \"noop\"\n"
    ));
    let mut runner = Runner::start(&config);
    let status = runner.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", runner.log());
    let log = runner.log();
    assert!(
        log.contains("stream EVENTS exists with settings JetStream will not change")
            && log.contains("[streams.EVENTS]"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_jetrun_did_not_make_is_not_taken_over() {
    let bed = TestBed::new();
    let js = bed.jetstream().await;
    let stream = js
        .create_stream(StreamConfig {
            name: "EVENTS".into(),
            subjects: vec!["ev.>".into()],
            ..Default::default()
        })
        .await
        .expect("create EVENTS");
    stream
        .create_consumer(pull::Config {
            durable_name: Some("billing".into()),
            filter_subject: "ev.invoice".into(),
            ..Default::default()
        })
        .await
        .expect("someone else's consumer");
    let config = bed.write_config(&format!(
        "{}\n[functions.billing]\nsubjects = [\"ev.x\"]\nbuiltin = \"noop\"\n",
        bed.base_config()
    ));
    let runner = Runner::start(&config);
    let runner = &runner;
    wait_until(
        Duration::from_secs(20),
        "the refusal is logged",
        || async move {
            runner
                .log()
                .contains("consumer billing on stream EVENTS exists and was not made by jetrun")
        },
    )
    .await;
    let info = stream.get_consumer::<pull::Config>("billing").await;
    let filter = info
        .expect("still there")
        .cached_info()
        .config
        .filter_subject
        .clone();
    assert_eq!(filter, "ev.invoice", "the other consumer is left as it was");
}
