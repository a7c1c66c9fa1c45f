//! `/metrics`, `/healthz` and `/readyz` as Prometheus and Kubernetes see
//! them: counters moving by exactly the right amounts after a known mix of
//! successes, retries and dead letters, and readiness following NATS.

use std::net::SocketAddr;
use std::time::Duration;

use jetrun_e2e::{
    consumer_info, free_port, http_status, metric, publish_bare, record_then, scrape, toml_str,
    wait_for_consumer, wait_ready, wait_until, write_config, NatsServer, Runner, TestBed,
};

/// Succeeds on `ev.mix.ok` (emitting one event), fails once then succeeds on
/// `ev.mix.flaky`, fails permanently on `ev.mix.bad`, always fails otherwise.
const MIX: &str = r#"case "$JETRUN_SUBJECT" in
  ev.mix.ok) printf '{"emit": [{"type": "ev.done", "data": {}}]}\n' ;;
  ev.mix.flaky) [ "$JETRUN_ATTEMPT" -ge 2 ] || exit 1 ;;
  ev.mix.bad) exit 65 ;;
  *) exit 1 ;;
esac"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_right_amounts() {
    let bed = TestBed::new();
    let addr = bed.metrics;
    let script = bed.write_script("mix.sh", &record_then(MIX));
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function(
            "mix",
            &["ev.mix.>"],
            &script,
            r#"retry = { max_attempts = 2, initial_delay = "200ms", multiplier = 2.0, jitter = 0.0 }"#
        )
    ));
    let _runner = Runner::start(&config);
    wait_ready(addr).await;
    let f = [("function", "mix")];
    let before = scrape(addr).await;
    assert_eq!(
        metric(&before, "jetrun_events_received_total", &f).unwrap_or(0.0),
        0.0,
        "nothing received yet:\n{before}"
    );

    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "mix").await;
    let mix = [
        ("ev.mix.ok", 5),
        ("ev.mix.flaky", 2),
        ("ev.mix.bad", 1),
        ("ev.mix.fail", 1),
    ];
    for (subject, count) in mix {
        for _ in 0..count {
            publish_bare(&client, subject, "{}").await;
        }
    }

    // 5 ok + 2 flaky x 2 + 1 bad + 1 fail x 2 (max_attempts) = 12 deliveries.
    wait_until(
        Duration::from_secs(20),
        "12 attempts counted",
        || async move {
            let text = scrape(addr).await;
            metric(
                &text,
                "jetrun_events_processed_total",
                &[("function", "mix")],
            ) == Some(12.0)
                && metric(&text, "jetrun_events_in_flight", &[("function", "mix")]) == Some(0.0)
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "every event settled",
        || async move {
            consumer_info(js, TestBed::STREAM, "mix")
                .await
                // Not a sequence: the events ok emits (ev.done) share the
                // stream and interleave with the mix as fast as it runs.
                .is_some_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        },
    )
    .await;

    let text = scrape(addr).await;
    let m = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("function", "mix")];
        labels.extend_from_slice(extra);
        metric(&text, name, &labels)
    };
    let processed = "jetrun_events_processed_total";
    let dead = "jetrun_dead_letters_total";
    let expected = [
        ("jetrun_events_received_total", vec![], 12.0),
        (processed, vec![("outcome", "success")], 7.0),
        (processed, vec![("outcome", "retry")], 3.0),
        (processed, vec![("outcome", "dead_letter")], 2.0),
        (dead, vec![("reason", "permanent")], 1.0),
        (dead, vec![("reason", "exhausted")], 1.0),
        ("jetrun_handler_duration_seconds_count", vec![], 12.0),
        ("jetrun_events_in_flight", vec![], 0.0),
        ("jetrun_events_emitted_total", vec![], 5.0),
    ];
    for (name, labels, value) in expected {
        assert_eq!(
            m(name, &labels),
            Some(value),
            "{name}{labels:?}; /metrics:\n{text}"
        );
    }
    assert_eq!(
        metric(&text, "jetrun_nats_connected", &[]),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "jetrun_build_info", &[]).is_some_and(|v| v == 1.0)
            && text.contains("jetrun_build_info{version=\""),
        "jetrun_build_info{{version}} 1:\n{text}"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0),
        "process_* metrics:\n{text}"
    );
    assert!(
        !text.contains("subject=\"") && !text.contains("id=\""),
        "labels are bounded: no subject or event id:\n{text}"
    );
    wait_until(
        Duration::from_secs(15),
        "consumer gauges reach 0",
        || async move {
            let text = scrape(addr).await;
            metric(&text, "jetrun_consumer_pending", &[("function", "mix")]) == Some(0.0)
                && metric(&text, "jetrun_consumer_ack_pending", &[("function", "mix")]) == Some(0.0)
        },
    )
    .await;
    assert_eq!(http_status(addr, "/healthz").await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_goes_from_503_to_200_when_nats_comes_up() {
    let nats_port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            r#"[nats]
url = "nats://127.0.0.1:{nats_port}"

[metrics]
listen = {listen}

[streams.EVENTS]
subjects = ["ev.>"]

[functions.idle]
subjects = ["ev.idle"]
builtin = "noop"
"#,
            listen = toml_str(addr.to_string())
        ),
    );
    let _runner = Runner::start(&config);

    wait_until(
        Duration::from_secs(20),
        "/healthz answers 200",
        || async move { http_status(addr, "/healthz").await == Some(200) },
    )
    .await;
    assert_eq!(
        http_status(addr, "/readyz").await,
        Some(503),
        "not ready while NATS is unreachable"
    );
    let text = scrape(addr).await;
    assert_eq!(
        metric(&text, "jetrun_nats_connected", &[]),
        Some(0.0),
        "{text}"
    );

    let nats = NatsServer::start_on(nats_port);
    wait_ready(addr).await;
    let text = scrape(addr).await;
    assert_eq!(
        metric(&text, "jetrun_nats_connected", &[]),
        Some(1.0),
        "{text}"
    );
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&nats.url()).await);
    assert!(
        consumer_info(&js, "EVENTS", "idle").await.is_some(),
        "ready means every consumer is bound"
    );
}
