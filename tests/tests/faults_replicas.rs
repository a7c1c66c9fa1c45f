//! Several runner replicas sharing one function's durable consumer: they
//! split the work and handle each event once on the happy path, and `kill
//! -9` of a replica at random moments under load loses nothing, at a cost
//! of at most the events in flight at each kill handled twice.

use std::time::Duration;

use jetrun_e2e::faults::{
    first_call_after, publish_numbered, sized, Replicas, Report, Tally, FUNCTION, STREAM,
};
use jetrun_e2e::{unix_now, wait_acked, wait_for_consumer, NatsServer};

const CONCURRENCY: u64 = 16;

fn replicas(nats: &NatsServer, count: usize) -> Replicas {
    Replicas::new(
        &[nats.url()],
        count,
        "",
        &format!("concurrency = {CONCURRENCY}\nack_wait = \"2s\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_work_and_handle_each_event_once() {
    let nats = NatsServer::start();
    let mut replicas = replicas(&nats, 2);
    replicas.start_all_ready().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    let events = sized(2_000, 20_000);
    let published = publish_numbered(&js, "ev.fault", 1..events + 1, 2_000, |n| {
        format!(r#"{{"n":{n}}}"#)
    })
    .await;
    replicas
        .wait_all_handled(&published.numbers, Duration::from_secs(60))
        .await;
    wait_acked(&js, STREAM, FUNCTION, published.last_sequence).await;

    let tally = Tally::of(&replicas, &published, &js).await;
    tally.assert_none_lost();
    let shares: Vec<usize> = replicas.ledgers.iter().map(|l| l.len()).collect();
    Report {
        scenario: "2 replicas share a consumer (happy path)",
        tally: &tally,
        bound: "0".into(),
        recovery: None,
        notes: format!("calls per replica: {shares:?}"),
    }
    .record();
    assert_eq!(tally.duplicated, 0, "no event handled twice: {tally:?}");
    assert_eq!(tally.dead_lettered, 0);
    assert!(
        shares.iter().all(|&n| n > 0),
        "both replicas handle events: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_ten_times_under_load_loses_nothing() {
    let nats = NatsServer::start();
    let mut replicas = replicas(&nats, 2);
    replicas.start_all_ready().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    wait_for_consumer(&js, STREAM, FUNCTION).await;

    let events: u64 = sized(10_000, 100_000);
    let rate = sized(800, 2_000);
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_numbered(&js, "ev.fault", 1..events + 1, rate, |n| {
                format!(r#"{{"n":{n}}}"#)
            })
            .await
        })
    };
    // Ten kills at random moments while the events come in, each replica
    // started again soon after; the other keeps working meanwhile.
    let kills = 10;
    let publishing = Duration::from_secs_f64(events as f64 / f64::from(rate));
    let mut recoveries = Vec::new();
    for _ in 0..kills {
        let pause = publishing.as_secs_f64() / kills as f64 * (0.5 + fastrand::f64() * 0.5);
        tokio::time::sleep(Duration::from_secs_f64(pause)).await;
        let victim = fastrand::usize(..replicas.runners.len());
        let killed_at = unix_now();
        replicas.kill9(victim);
        tokio::time::sleep(Duration::from_millis(200)).await;
        replicas.start(victim);
        recoveries.push(killed_at);
    }
    let published = publisher.await.expect("publisher");
    replicas
        .wait_all_handled(&published.numbers, Duration::from_secs(120))
        .await;
    wait_acked(&js, STREAM, FUNCTION, published.last_sequence).await;

    let tally = Tally::of(&replicas, &published, &js).await;
    let slowest = recoveries
        .iter()
        .filter_map(|&at| first_call_after(&replicas, at))
        .max()
        .unwrap_or_default();
    let bound = kills * CONCURRENCY;
    Report {
        scenario: "kill -9 of one of 2 replicas, 10 times under load",
        tally: &tally,
        bound: format!("{kills} kills x concurrency {CONCURRENCY} = {bound}"),
        recovery: Some(slowest),
        notes: format!(
            "{rate} events/s published; recovery = longest wait from a kill to the next call"
        ),
    }
    .record();
    tally.assert_none_lost();
    assert_eq!(tally.dead_lettered, 0);
    assert!(
        tally.extra_calls <= bound,
        "duplicates beyond the in-flight events at the kills: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_consumer_under_load_loses_nothing() {
    let nats = NatsServer::start();
    let mut replicas = replicas(&nats, 2);
    replicas.start_all_ready().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    wait_for_consumer(&js, STREAM, FUNCTION).await;

    let events: u64 = sized(4_000, 40_000);
    let rate = 500;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_numbered(&js, "ev.fault", 1..events + 1, rate, |n| {
                format!(r#"{{"n":{n}}}"#)
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deleted_at = unix_now();
    js.get_stream(STREAM)
        .await
        .expect("stream")
        .delete_consumer(FUNCTION)
        .await
        .expect("delete the consumer");
    let published = publisher.await.expect("publisher");
    replicas
        .wait_all_handled(&published.numbers, Duration::from_secs(60))
        .await;
    wait_acked(&js, STREAM, FUNCTION, published.last_sequence).await;
    let info = jetrun_e2e::consumer_info(&js, STREAM, FUNCTION)
        .await
        .expect("recreated");

    let tally = Tally::of(&replicas, &published, &js).await;
    // The runner reads the ack floor every 2 s: what was acked since its
    // last reading, plus what was in flight, is handled again.
    let bound = 2 * u64::from(rate) + 2 * CONCURRENCY;
    Report {
        scenario: "the function's consumer deleted out of band under load (2 replicas)",
        tally: &tally,
        bound: format!("2 s of events ({}) + in flight (2 x {CONCURRENCY})", 2 * rate),
        recovery: jetrun_e2e::faults::longest_stall_after(&replicas, deleted_at).into(),
        notes: format!(
            "recreated with deliver policy {:?}; recovery = longest pause between calls after the deletion",
            info.config.deliver_policy
        ),
    }
    .record();
    tally.assert_none_lost();
    assert_eq!(tally.dead_lettered, 0);
    assert!(tally.extra_calls <= bound, "{tally:?}");
}
