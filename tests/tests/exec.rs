//! Exec functions, per event and in worker mode: what the child gets (the
//! event on stdin, a clean environment, no descriptor but its stdio, the
//! config's folder as cwd), what it can emit, the shipped example
//! `functions/examples/ship_order.py` in both modes, and a worker that dies
//! mid-event.

use std::collections::BTreeMap;
use std::time::Duration;

use jetrun_e2e::{
    header, parse_rfc3339, publish_bare, record_then, repo_root, stream_messages, toml_str,
    wait_acked, wait_for_consumer, wait_until, Runner, TestBed,
};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_event_exec_gets_the_event_a_clean_env_and_can_emit() {
    let bed = TestBed::new();
    let (event_file, env_file, cwd_file, fds_file) = (
        bed.path("event.json"),
        bed.path("env"),
        bed.path("cwd"),
        bed.path("fds"),
    );
    let script = bed.write_script(
        "probe.sh",
        &record_then(&format!(
            r#"cat > "{event}"
env > "{env}"
ls -l /proc/self/fd > "{fds}"
pwd > "{cwd}"
printf '{{"emit": [{{"type": "ev.out", "data": {{"seen": %s}}}}]}}\n' "$JETRUN_SEQUENCE""#,
            event = event_file.display(),
            env = env_file.display(),
            cwd = cwd_file.display(),
            fds = fds_file.display(),
        )),
    );
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("probe", &["ev.in"], &script, "")
    ));
    let _runner = Runner::start_with_env(&config, &[("JETRUN_TEST_SECRET", "hunter2")]);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "probe").await;

    publish_bare(&client, "ev.in", r#"{"order_id":42}"#).await;

    wait_acked(js, TestBed::STREAM, "probe", 1).await;
    let emitted = stream_messages(js, TestBed::STREAM).await;
    assert_eq!(
        emitted.len(),
        2,
        "the input and one emitted event: {emitted:?}"
    );

    // The event on stdin: CloudEvents structured JSON, filled in for a bare message.
    let event: Value =
        serde_json::from_str(&std::fs::read_to_string(&event_file).expect("event.json"))
            .expect("stdin is JSON");
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert_eq!(event["id"], "EVENTS:1", "{event}");
    assert_eq!(event["type"], "ev.in", "{event}");
    assert_eq!(event["source"], "nats://EVENTS", "{event}");
    assert_eq!(event["datacontenttype"], "application/json", "{event}");
    assert_eq!(event["data"], json!({"order_id": 42}), "{event}");
    assert!(
        event["time"].as_str().and_then(parse_rfc3339).is_some(),
        "time is the stream's timestamp, RFC 3339: {event}"
    );
    let correlation = event["correlationid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !correlation.is_empty(),
        "the runner made a correlation id: {event}"
    );

    // The environment: the JETRUN_* variables, the env table, and nothing
    // else of the runner's but PATH, HOME, LANG and TZ (plus what sh adds).
    let env: BTreeMap<String, String> = std::fs::read_to_string(&env_file)
        .expect("env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let var = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(var("JETRUN_FUNCTION"), Some("probe"), "{env:?}");
    assert_eq!(var("JETRUN_ATTEMPT"), Some("1"), "{env:?}");
    assert_eq!(var("JETRUN_SUBJECT"), Some("ev.in"), "{env:?}");
    assert_eq!(var("JETRUN_STREAM"), Some("EVENTS"), "{env:?}");
    assert_eq!(var("JETRUN_SEQUENCE"), Some("1"), "{env:?}");
    assert_eq!(
        var("LEDGER"),
        bed.ledger.path().to_str(),
        "the env table: {env:?}"
    );
    assert!(var("PATH").is_some(), "PATH is passed on: {env:?}");
    let allowed = [
        "PATH", "HOME", "LANG", "TZ", "LEDGER", "PWD", "OLDPWD", "SHLVL", "_",
    ];
    let leaked: Vec<&String> = env
        .keys()
        .filter(|k| !k.starts_with("JETRUN_") && !allowed.contains(&k.as_str()))
        .collect();
    assert!(
        leaked.is_empty(),
        "runner environment leaked into the child: {leaked:?}"
    );
    assert!(
        !env.contains_key("JETRUN_TEST_SECRET"),
        "a secret leaked: {env:?}"
    );

    // Descriptors: `ls` inherits stdin, stdout and stderr through the shell
    // and nothing else (the one it opens to list them aside), even of those
    // the runner itself inherited without close-on-exec.
    let listing = std::fs::read_to_string(&fds_file).expect("fds");
    let fds: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(_, target)| !(target.starts_with("/proc/") && target.ends_with("/fd")))
        .filter_map(|(left, _)| left.split_whitespace().last())
        .collect();
    assert_eq!(fds, ["0", "1", "2"], "open in the child:\n{listing}");

    // The working directory: the config file's folder.
    let cwd = std::fs::read_to_string(&cwd_file).expect("cwd");
    assert_eq!(
        std::fs::canonicalize(cwd.trim()).expect("cwd exists"),
        std::fs::canonicalize(bed.dir()).expect("dir exists"),
    );

    // The emitted event: binary mode on the subject named by its type.
    let out = &emitted[1];
    let h = |name: &str| header(&out.headers, name);
    let all = format!("{:?}", out.headers);
    assert_eq!(out.subject.as_str(), "ev.out");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.payload).expect("JSON body"),
        json!({"seen": 1})
    );
    assert_eq!(h("ce-specversion").as_deref(), Some("1.0"), "{all}");
    assert_eq!(h("ce-type").as_deref(), Some("ev.out"), "{all}");
    assert_eq!(h("ce-source").as_deref(), Some("jetrun/probe"), "{all}");
    assert_eq!(h("ce-causationid").as_deref(), Some("EVENTS:1"), "{all}");
    assert_eq!(
        h("ce-correlationid"),
        Some(correlation),
        "carried over: {all}"
    );
    let id = h("ce-id").unwrap_or_default();
    assert!(!id.is_empty() && id != "EVENTS:1", "a new id: {all}");
}

/// Runs `functions/examples/ship_order.py` with `exec` (a TOML value) on an
/// order with an `order_id` and one without.
async fn ship_order_example(exec: &str) {
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        r#"{base}
[streams.ORDERS]
subjects = ["order.>", "inventory.>"]

[functions.ship-order]
subjects = ["inventory.reserved"]
exec = {exec}
"#,
        base = bed.base_config(),
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, "ORDERS", "ship-order").await;

    publish_bare(&client, "inventory.reserved", r#"{"order_id":7}"#).await;
    publish_bare(&client, "inventory.reserved", r#"{"sku":"book"}"#).await;

    wait_until(
        Duration::from_secs(20),
        "an order shipped and a dead letter",
        || async move {
            stream_messages(js, "ORDERS").await.len() == 3
                && stream_messages(js, "DLQ").await.len() == 1
        },
    )
    .await;
    let orders = stream_messages(js, "ORDERS").await;
    let shipped = orders
        .iter()
        .find(|m| m.subject.as_str() == "order.shipped")
        .unwrap_or_else(|| panic!("no order.shipped in ORDERS: {orders:?}"));
    let data: Value = serde_json::from_slice(&shipped.payload).expect("JSON body");
    assert_eq!(data["order_id"], 7, "{data}");
    assert!(
        data["tracking"]
            .as_str()
            .is_some_and(|t| t.starts_with("TRK")),
        "{data}"
    );
    assert_eq!(
        header(&shipped.headers, "ce-source").as_deref(),
        Some("jetrun/ship-order")
    );

    let dead = &stream_messages(js, "DLQ").await[0];
    assert_eq!(dead.subject.as_str(), "dlq.ship-order");
    assert_eq!(dead.payload.as_ref(), br#"{"sku":"book"}"#);
    assert_eq!(
        header(&dead.headers, "Jetrun-Reason").as_deref(),
        Some("permanent")
    );
    assert_eq!(
        header(&dead.headers, "Jetrun-Attempts").as_deref(),
        Some("1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_order_example_per_event() {
    let script = repo_root().join("functions/examples/ship_order.py");
    ship_order_example(&format!(
        r#"["python3", {}]"#,
        toml_str(script.to_string_lossy())
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_order_example_in_worker_mode() {
    let script = repo_root().join("functions/examples/ship_order.py");
    ship_order_example(&format!(
        r#"{{ command = ["python3", {}, "--worker"], mode = "worker", workers = 2 }}"#,
        toml_str(script.to_string_lossy())
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_dying_mid_event_is_restarted_and_only_that_event_retried() {
    let bed = TestBed::new();
    // One worker, so the retry must run in a new process.
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.worker_function("work", &["ev.work"], 1, "")
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "work").await;

    for n in 1..=5 {
        let body = if n == 3 {
            json!({"n": n, "die_on_attempt": 1})
        } else {
            json!({"n": n})
        };
        publish_bare(&client, "ev.work", body.to_string()).await;
    }

    wait_acked(js, TestBed::STREAM, "work", 5).await;
    let entries = bed.ledger.entries();
    for n in 1..=5 {
        let attempts = bed.ledger.attempts_of(&format!("EVENTS:{n}"));
        let expected: &[u32] = if n == 3 { &[1, 2] } else { &[1] };
        assert_eq!(attempts, expected, "attempts of event {n}: {entries:?}");
    }
    let pid_of = |key: &str, attempt: u32| {
        entries
            .iter()
            .find(|e| e.key == key && e.attempt == attempt)
            .map(|e| e.extra[0].clone())
            .expect("ledger entry")
    };
    assert_ne!(
        pid_of("EVENTS:3", 1),
        pid_of("EVENTS:3", 2),
        "the dead worker was replaced by a new process: {entries:?}"
    );
    assert!(
        stream_messages(js, "DLQ").await.is_empty(),
        "a dying worker is a retryable failure, not a dead letter"
    );
}
