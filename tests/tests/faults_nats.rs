//! NATS itself failing under load: the single nats-server killed and
//! started again on its port and store (the runner reconnects, `/readyz`
//! is 503 while NATS is gone and 200 after), and the leader of a 3-node
//! cluster's stream and consumer killed (a new leader takes over within
//! seconds). Nothing acknowledged is lost either way.

use std::time::{Duration, Instant};

use jetrun_e2e::faults::{
    first_call_after, longest_stall_after, publish_numbered, sized, Replicas, Report, Tally,
    FUNCTION, STREAM,
};
use jetrun_e2e::{
    http_status, unix_now, wait_acked, wait_for_consumer, wait_ready, wait_until, NatsCluster,
    NatsServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_under_load_loses_nothing() {
    let mut nats = NatsServer::start();
    let mut replicas = Replicas::new(&[nats.url()], 1, "", "concurrency = 16\nack_wait = \"5s\"");
    replicas.start_all_ready().await;
    let metrics = replicas.metrics[0];
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);

    let events: u64 = sized(3_000, 30_000);
    let rate: u32 = 500;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_numbered(&js, "ev.fault", 1..events + 1, rate, |n| {
                format!(r#"{{"n":{n}}}"#)
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.kill();
    let down = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "/readyz is 503 while NATS is down",
        || async move { http_status(metrics, "/readyz").await == Some(503) },
    )
    .await;
    let noticed = down.elapsed();
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(noticed)).await;
    nats.restart();
    let restarted_at = unix_now();
    let back = Instant::now();
    wait_ready(metrics).await;
    let ready_after = back.elapsed();

    let published = publisher.await.expect("publisher");
    replicas
        .wait_all_handled(&published.numbers, Duration::from_secs(60))
        .await;
    wait_acked(&js, STREAM, FUNCTION, published.last_sequence).await;
    let tally = Tally::of(&replicas, &published, &js).await;
    Report {
        scenario: "nats-server killed and restarted under load",
        tally: &tally,
        bound: format!("in flight at the kill (16) + acks of the last second ({rate})"),
        recovery: first_call_after(&replicas, restarted_at),
        notes: format!(
            "/readyz 503 {:.1} s after the kill, 200 {:.1} s after the restart; {} publishes retried",
            noticed.as_secs_f64(),
            ready_after.as_secs_f64(),
            published.retries
        ),
    }
    .record();
    tally.assert_none_lost();
    assert_eq!(tally.dead_lettered, 0);
    // Acks the killed server had received but not yet written to its
    // consumer store are lost with it: those events come again too.
    assert!(tally.extra_calls <= 16 + u64::from(rate), "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_cluster_leader_under_load_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await;
    let mut replicas = Replicas::new(
        &cluster.urls(),
        2,
        "replicas = 3",
        "concurrency = 16\nack_wait = \"5s\"",
    );
    replicas.start_all_ready().await;
    let js = cluster.jetstream().await;
    wait_for_consumer(&js, STREAM, FUNCTION).await;

    let events: u64 = sized(3_000, 30_000);
    let rate = 300;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_numbered(&js, "ev.fault", 1..events + 1, rate, |n| {
                format!(r#"{{"n":{n}}}"#)
            })
            .await
        })
    };
    // First the stream's leader, then (once that node is back) whichever
    // node leads the consumer then: one node at a time, so the other two
    // keep their quorum.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stalls = Vec::new();
    let mut leaders = Vec::new();
    for role in ["stream", "consumer"] {
        let leader = match role {
            "stream" => cluster.stream_leader(&js, STREAM).await,
            _ => cluster.consumer_leader(&js, STREAM, FUNCTION).await,
        };
        let victim = cluster.index_of(&leader);
        let killed_at = unix_now();
        cluster.kill(victim);
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.restart(victim);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stalls.push(longest_stall_after(&replicas, killed_at));
        leaders.push(format!("{role} leader {leader}"));
    }
    let published = publisher.await.expect("publisher");
    replicas
        .wait_all_handled(&published.numbers, Duration::from_secs(90))
        .await;
    wait_acked(&js, STREAM, FUNCTION, published.last_sequence).await;
    let tally = Tally::of(&replicas, &published, &js).await;
    let stall = stalls.iter().copied().max().unwrap_or_default();
    Report {
        scenario: "3-node cluster, R3 stream: its leader killed, then the consumer's",
        tally: &tally,
        bound: "events in flight at the kills (2 kills x 2 replicas x concurrency 16)".into(),
        recovery: Some(stall),
        notes: format!(
            "killed: {}; recovery = longest pause between calls after a kill; {} publishes retried",
            leaders.join(", then "),
            published.retries
        ),
    }
    .record();
    tally.assert_none_lost();
    assert_eq!(tally.dead_lettered, 0);
    assert!(tally.extra_calls <= 64, "{tally:?}");
    assert!(
        stall < Duration::from_secs(30),
        "handling stalled {stall:?} after the leader was killed"
    );
}
