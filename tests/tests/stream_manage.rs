//! Streams someone else made are not reset: jetrun updates a declared
//! stream whose settings differ only when it created the stream (its
//! metadata says so) or the config says `manage = true`; any other is
//! reported with the differences and left alone, and `manage = false`
//! never has jetrun create or change it.

use std::time::Duration;

use async_nats::jetstream::stream::Config as StreamConfig;
use jetrun_e2e::{wait_ready, wait_until, Runner, TestBed};

const HOUR: Duration = Duration::from_secs(3600);

/// The bed's config with `[streams.EVENTS]` holding `extra` lines (after
/// `subjects`) and one no-op function.
fn config(bed: &TestBed, extra: &str) -> std::path::PathBuf {
    let base = bed.base_config().replace(
        "subjects = [\"ev.>\"]\n",
        &format!("subjects = [\"ev.>\"]\n{extra}\n"),
    );
    bed.write_config(&format!(
        "{base}\n[functions.hello]\nsubjects = [\"ev.hello\"]\nbuiltin = \"noop\"\n"
    ))
}

async fn stream(bed: &TestBed) -> StreamConfig {
    let js = bed.jetstream().await;
    let mut stream = js.get_stream(TestBed::STREAM).await.expect("the stream");
    stream.info().await.expect("stream info").config.clone()
}

async fn made_by_hand(bed: &TestBed) {
    bed.jetstream()
        .await
        .create_stream(StreamConfig {
            name: TestBed::STREAM.into(),
            subjects: vec!["ev.>".into()],
            max_age: HOUR,
            ..Default::default()
        })
        .await
        .expect("create the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_jetrun_did_not_create_is_reported_and_left_alone() {
    let bed = TestBed::new();
    made_by_hand(&bed).await;
    let runner = Runner::start(&config(&bed, "max_age = \"2h\""));
    wait_ready(bed.metrics).await;
    assert_eq!(stream(&bed).await.max_age, HOUR, "the stream was changed");
    let log = runner.log();
    assert!(
        log.contains("Stream EVENTS differs from the config, but jetrun did not create it")
            && log.contains("max_age: 1h -> 2h"),
        "{log}"
    );
    drop(runner);

    // manage = true: jetrun updates it, and marks it as its own.
    let runner = Runner::start(&config(&bed, "max_age = \"2h\"\nmanage = true"));
    wait_ready(bed.metrics).await;
    let updated = stream(&bed).await;
    assert_eq!(updated.max_age, 2 * HOUR, "{}", runner.log());
    assert_eq!(
        updated.metadata.get("jetrun.managed").map(String::as_str),
        Some("true")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_jetrun_created_follows_the_config() {
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed, "max_age = \"1h\""));
    wait_ready(bed.metrics).await;
    let created = stream(&bed).await;
    assert_eq!(created.max_age, HOUR);
    assert_eq!(
        created.metadata.get("jetrun.managed").map(String::as_str),
        Some("true")
    );
    drop(runner);
    let runner = Runner::start(&config(&bed, "max_age = \"2h\""));
    wait_ready(bed.metrics).await;
    assert_eq!(stream(&bed).await.max_age, 2 * HOUR, "{}", runner.log());
    drop(runner);

    // manage = false: left as it is, though jetrun made it.
    let runner = Runner::start(&config(&bed, "max_age = \"3h\"\nmanage = false"));
    wait_ready(bed.metrics).await;
    assert_eq!(stream(&bed).await.max_age, 2 * HOUR, "{}", runner.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manage_false_never_creates_the_stream() {
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed, "manage = false"));
    wait_until(
        Duration::from_secs(20),
        "the runner says why it waits",
        || {
            let log = runner.log();
            async move {
                log.contains(
                    "stream EVENTS does not exist, and [streams.EVENTS] says manage = false: \
                     create it (`nats stream add EVENTS`), or let jetrun create it",
                )
            }
        },
    )
    .await;
    let js = bed.jetstream().await;
    assert!(
        js.get_stream(TestBed::STREAM).await.is_err(),
        "jetrun created it"
    );
    // Once someone creates it, the runner goes on.
    made_by_hand(&bed).await;
    wait_ready(bed.metrics).await;
}
