//! Failing handlers under load: poison events (always failing, retried with
//! backoff, then dead-lettered) do not slow healthy events down or pin the
//! consumer's ack pending at its limit; and a downstream outage (every call
//! failing for a while) is ridden out by the backoff, with nothing
//! dead-lettered inside the retry budget and the backlog drained after.

use std::time::{Duration, Instant};

use jetrun_e2e::faults::{publish_numbered, sized, Replicas, Report, Tally, FUNCTION, STREAM};
use jetrun_e2e::{consumer_info, wait_acked, NatsServer};

/// The consumer's `max_ack_pending` in the poison test.
const MAX_ACK_PENDING: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_do_not_slow_healthy_ones_or_pin_ack_pending() {
    let nats = NatsServer::start();
    // Two workers at 4 ms per event: a rate set mostly by the clock, not by
    // the shared CPU (other tests run alongside), so the halves compare.
    let mut replicas = Replicas::paced(
        &[nats.url()],
        1,
        "",
        &format!("concurrency = 16\nmax_ack_pending = {MAX_ACK_PENDING}"),
        4,
    );
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    // The runner creates the stream; start it, then stop it to publish the
    // whole backlog first: healthy events, then as many with one poison
    // event per 1,000.
    replicas.start_all_ready().await;
    replicas.kill9(0);
    let half: u64 = sized(3_000, 30_000);
    let is_poison = move |n: u64| n > half && n % 1000 == 500;
    let published = publish_numbered(&js, "ev.fault", 1..2 * half + 1, 100_000, |n| {
        format!(r#"{{"n":{n},"poison":{}}}"#, is_poison(n))
    })
    .await;
    let poison = (1..=2 * half).filter(|&n| is_poison(n)).count();

    replicas.start_all();
    let mut most_ack_pending = 0;
    let healthy: std::collections::BTreeSet<u64> = published
        .numbers
        .iter()
        .copied()
        .filter(|&n| !is_poison(n))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(info) = consumer_info(&js, STREAM, FUNCTION).await {
            most_ack_pending = most_ack_pending.max(info.num_ack_pending as u64);
            if info.ack_floor.stream_sequence == published.last_sequence {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // First calls of healthy events, per half.
    let entries: Vec<_> = replicas.ledgers[0]
        .entries()
        .into_iter()
        .filter(|e| e.attempt == 1)
        .collect();
    let number = |key: &str| key.strip_prefix("fault-").unwrap().parse::<u64>().unwrap();
    let rate = |range: std::ops::RangeInclusive<u64>| {
        let times: Vec<f64> = entries
            .iter()
            .filter(|e| range.contains(&number(&e.key)) && healthy.contains(&number(&e.key)))
            .map(|e| e.at)
            .collect();
        let first = times.iter().copied().fold(f64::MAX, f64::min);
        let last = times.iter().copied().fold(f64::MIN, f64::max);
        times.len() as f64 / (last - first)
    };
    let clean = rate(1..=half);
    let with_poison = rate(half + 1..=2 * half);
    let tally = Tally::of(&replicas, &published, &js).await;
    let ratio = with_poison / clean;
    Report {
        scenario: "1 poison event per 1,000",
        tally: &tally,
        bound: "retries of the poison events only".into(),
        recovery: None,
        notes: format!(
            "healthy events/s: {clean:.0} without poison, {with_poison:.0} with ({ratio:.2}x); \
             ack pending at most {most_ack_pending} of {MAX_ACK_PENDING}; {poison} poison events dead-lettered"
        ),
    }
    .record();
    tally.assert_none_lost();
    assert_eq!(
        tally.dead_lettered, poison,
        "each poison event dead-lettered once"
    );
    assert!(
        ratio >= 0.9,
        "healthy events slowed to {ratio:.2}x by poison ({clean:.0}/s -> {with_poison:.0}/s)"
    );
    assert!(
        most_ack_pending < MAX_ACK_PENDING,
        "ack pending reached its limit ({most_ack_pending})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_outage_is_ridden_out_by_the_backoff() {
    let nats = NatsServer::start();
    let outage = sized(Duration::from_secs(8), Duration::from_secs(60));
    // Backoff 200 ms, 400 ms, ... up to `max_delay`; enough attempts that
    // the budget outlasts the outage.
    let (max_delay, attempts) = sized(("2s", 10), ("10s", 14));
    let mut replicas = Replicas::new(
        &[nats.url()],
        1,
        "",
        &format!(
            "concurrency = 16\nretry = {{ max_attempts = {attempts}, initial_delay = \"200ms\", \
             multiplier = 2.0, max_delay = \"{max_delay}\", jitter = 0.0 }}"
        ),
    );
    replicas.start_all_ready().await;
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);

    replicas.set_down(true);
    let events = sized(200, 2_000);
    let published = publish_numbered(&js, "ev.fault", 1..events + 1, 1_000, |n| {
        format!(r#"{{"n":{n}}}"#)
    })
    .await;
    tokio::time::sleep(outage).await;
    replicas.set_down(false);
    let recovered = Instant::now();
    wait_acked(&js, STREAM, FUNCTION, published.last_sequence).await;
    let drained = recovered.elapsed();

    let tally = Tally::of(&replicas, &published, &js).await;
    // The gaps between one event's attempts double up to `max_delay`.
    let times: Vec<f64> = replicas.ledgers[0]
        .entries()
        .into_iter()
        .filter(|e| e.key == "fault-1")
        .map(|e| e.at)
        .collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    Report {
        scenario: &format!("downstream outage of {} s", outage.as_secs()),
        tally: &tally,
        bound: "retries during the outage only".into(),
        recovery: Some(drained),
        notes: format!(
            "recovery = end of the outage to the backlog drained; gaps between attempts of \
             one event (s): {}",
            gaps.iter()
                .map(|g| format!("{g:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    .record();
    tally.assert_none_lost();
    assert_eq!(
        tally.dead_lettered, 0,
        "nothing dead-lettered inside the budget"
    );
    let max_delay_s: f64 = max_delay.trim_end_matches('s').parse().unwrap();
    for (i, gap) in gaps.iter().take(4).enumerate() {
        let expected = (0.2 * 2f64.powi(i as i32)).min(max_delay_s);
        assert!(
            *gap >= expected * 0.9 && *gap < expected + 1.5,
            "attempt gap {i} was {gap:.2}s, expected about {expected:.1}s: {gaps:?}"
        );
    }
    assert!(
        drained < Duration::from_secs(30),
        "the backlog took {drained:?} to drain after the outage"
    );
}
