//! One bad message costs one event, never a function, whoever published it
//! and whatever consumes it: a newline in an id (for a built-in, an exec
//! function, an HTTP function, a saga's start event and an aggregate
//! command), a handler that panics, and header blocks the NATS client cannot
//! read (a space or non-ASCII in a name, a line without `:`, a value that is
//! not UTF-8, a lone CR) on a function's, a saga's and a projection's
//! subjects, and as a flood of requests. Each bad one is dead-lettered once (or answered
//! 400), every good one around it handled once, the runner stays up and
//! ready, and no connection drops.

use std::time::Duration;

use jetrun_e2e::{
    header, http_status, metric, publish_bare, publish_raw_block, publish_raw_headers, scrape,
    stream_len, stream_messages, wait_ready, wait_until, HttpServer, Reply, Runner, TestBed,
};
use serde_json::json;

/// The hand-written envelope with a correlation id holding a newline, as a
/// bare `nats pub` of the JSON escape sends it.
fn newline_envelope(event_type: &str, data: serde_json::Value) -> String {
    json!({
        "event_type": event_type,
        "event_id": "e-bad",
        "correlation_id": "a\nb",
        "data": data,
    })
    .to_string()
}

/// `function`'s processed count for `outcome`, 0 when absent.
fn processed(text: &str, function: &str, outcome: &str) -> f64 {
    metric(
        text,
        "jetrun_events_processed_total",
        &[("function", function), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// A projection handler counting events per key; a saga's participant that
/// never answers is not needed (the saga's inputs are what is tested).
const COUNT_PY: &str = r#"import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    state = request["input"]["state"] or {"count": 0}
    state["count"] += 1
    sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "result": {"state": state}}) + "\n")
    sys.stdout.flush()
"#;

/// An aggregate command handler that appends one `added` event.
const CART_PY: &str = r#"import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    version = request["input"]["aggregate"]["version"]
    result = {"append": [{"type": "added", "data": {}}], "reply": {"version": version + 1}}
    sys.stdout.write(json.dumps({"id": request["id"], "ok": True, "result": result}) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newline_in_an_id_costs_one_event_for_every_kind_of_handler() {
    let bed = TestBed::new();
    let hook = HttpServer::always(Reply::status(200)).await;
    let record = bed.write_script("record.sh", &jetrun_e2e::record_then("exit 0"));
    let cart = bed.write_script("cart.py", CART_PY);
    let config = bed.write_config(&format!(
        r#"{base}
[streams.USERS]
subjects = ["user.>", "email.>"]

[streams.ORDERS]
subjects = ["order.>", "inventory.>"]

[streams.CARTS]
subjects = ["cart.>"]

[functions.welcome-email]
subjects = ["user.registered"]
builtin = "welcome_email"

[functions.hook]
subjects = ["ev.http"]
http = {{ url = {url:?} }}

[aggregates.cart]
stream = "CARTS"
subject = "cart.{{id}}"
id = "cart_id"

[functions.add-to-cart]
request = "cmd.cart.add"
aggregate = "cart"
exec = {{ command = ["python3", {cart:?}], mode = "worker" }}

[sagas.fulfil]
start = "order.placed"
key = "order_id"
completed = "order.fulfilled"
failed = "order.cancelled"

[[sagas.fulfil.steps]]
name = "reserve"
command = "inventory.reserve"
success = "inventory.reserved"
{exec}"#,
        base = bed.base_config(),
        url = hook.url(),
        cart = cart.to_string_lossy(),
        exec = bed.sh_function("exec-fn", &["ev.exec"], &record, ""),
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;

    let kinds: [(&str, &str, serde_json::Value); 4] = [
        (
            "welcome-email",
            "user.registered",
            json!({"user_id": 1, "email": "x@example.com"}),
        ),
        ("exec-fn", "ev.exec", json!({"n": 1})),
        ("hook", "ev.http", json!({"n": 1})),
        (
            "saga-fulfil@ORDERS",
            "order.placed",
            json!({"order_id": "o-bad"}),
        ),
    ];
    for (_, subject, data) in &kinds {
        publish_bare(&client, subject, newline_envelope(subject, data.clone())).await;
        for n in 0..3 {
            let mut good = data.clone();
            if let Some(key) = good.get_mut("order_id") {
                *key = json!(format!("o-{n}"));
            }
            publish_bare(&client, subject, good.to_string()).await;
        }
    }
    let bad_command = newline_envelope("cmd.cart.add", json!({"cart_id": "c1"}));
    let answer = client
        .request("cmd.cart.add", bad_command.into())
        .await
        .expect("an answer to the bad command");
    assert_eq!(
        header(answer.headers.as_ref().unwrap(), "Nats-Service-Error-Code").as_deref(),
        Some("400")
    );
    assert!(
        header(answer.headers.as_ref().unwrap(), "Nats-Service-Error")
            .unwrap()
            .contains("correlationid holds a control character"),
        "{answer:?}"
    );
    for _ in 0..3 {
        let answer = client
            .request("cmd.cart.add", json!({"cart_id": "c1"}).to_string().into())
            .await
            .expect("an answer to a good command");
        assert!(answer.headers.is_none(), "{answer:?}");
    }

    let metrics = bed.metrics;
    let kinds = &kinds;
    wait_until(
        Duration::from_secs(40),
        "3 good events handled and the bad one dead-lettered, for every kind",
        || async move {
            let text = scrape(metrics).await;
            kinds.iter().all(|(function, _, _)| {
                processed(&text, function, "success") == 3.0
                    && processed(&text, function, "dead_letter") == 1.0
            })
        },
    )
    .await;
    let js = bed.jetstream().await;
    let letters = stream_messages(&js, "DLQ").await;
    assert_eq!(letters.len(), 4, "one dead letter per kind: {letters:?}");
    for letter in &letters {
        let error = header(&letter.headers, "Jetrun-Error").unwrap();
        assert!(
            error.contains("the event's correlationid holds a control character (U+000A)"),
            "{error}"
        );
        assert_eq!(
            header(&letter.headers, "Jetrun-Reason").as_deref(),
            Some("permanent")
        );
    }
    assert_eq!(
        hook.calls(),
        3,
        "the HTTP function got the good events only"
    );
    let saga = js.get_key_value("jetrun_saga_fulfil").await.unwrap();
    for n in 0..3 {
        assert!(saga.get(format!("o-{n}")).await.unwrap().is_some());
    }
    assert_eq!(http_status(metrics, "/readyz").await, Some(200));
    let log = runner.log();
    assert!(!log.contains("panic"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_costs_its_event_only() {
    const GOOD: u64 = 1000;
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        "{}\n[functions.fragile]\nsubjects = [\"ev.in\"]\nbuiltin = \"panic_on_marker\"\n\
         retry = {{ max_attempts = 3, initial_delay = \"100ms\", jitter = 0.0 }}\n",
        bed.base_config()
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    for n in 0..GOOD {
        if n == GOOD / 2 {
            publish_bare(&client, "ev.in", r#"{"panic":true}"#).await;
        }
        publish_bare(&client, "ev.in", format!(r#"{{"n":{n}}}"#)).await;
    }
    let metrics = bed.metrics;
    wait_until(
        Duration::from_secs(60),
        "the good events handled and the marker dead-lettered",
        || async move {
            let text = scrape(metrics).await;
            processed(&text, "fragile", "success") == GOOD as f64
                && processed(&text, "fragile", "dead_letter") == 1.0
        },
    )
    .await;
    let text = scrape(metrics).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_dead_letters_total",
            &[("function", "fragile"), ("reason", "panic")]
        ),
        Some(1.0)
    );
    assert_eq!(
        processed(&text, "fragile", "retry"),
        2.0,
        "the marker was tried 3 times"
    );
    assert_eq!(
        metric(
            &text,
            "jetrun_events_received_total",
            &[("function", "fragile")]
        ),
        Some(GOOD as f64 + 3.0),
        "each good event handled once, the marker 3 times"
    );
    assert!(
        !text.contains("jetrun_task_restarts_total{"),
        "nothing had to be restarted: the panic was the event's\n{text}"
    );
    let letters = stream_messages(&bed.jetstream().await, "DLQ").await;
    let error = header(&letters[0].headers, "Jetrun-Error").unwrap();
    assert!(
        error.contains("the handler panicked: panic_on_marker: the event asked for a panic"),
        "{error}"
    );
    assert_eq!(http_status(metrics, "/readyz").await, Some(200));
    drop(runner);
}

/// Header blocks async-nats cannot read, each with what made it unreadable.
const UNREADABLE: [(&[u8], &str); 5] = [
    (b"NATS/1.0\r\nBad Name: x\r\n\r\n", "a space in a name"),
    (b"NATS/1.0\r\nN\xc3\xa4me: x\r\n\r\n", "non-ASCII in a name"),
    (
        b"NATS/1.0\r\nno colon here\r\n\r\n",
        "a line without a colon",
    ),
    (
        b"NATS/1.0\r\nX-Bad: \xff\xfe\r\n\r\n",
        "a value that is not UTF-8",
    ),
    (b"NATS/1.0\r\nX-Bad: a\rb\r\n\r\n", "a lone CR in a value"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_header_blocks_cost_one_event_on_functions_sagas_and_projections() {
    let bed = TestBed::new();
    let count = bed.write_script("count.py", COUNT_PY);
    let config = bed.write_config(&format!(
        r#"{base}
[streams.ORDERS]
subjects = ["order.>", "inventory.>"]

[functions.plain]
subjects = ["ev.plain"]
builtin = "noop"

[functions.count]
subjects = ["ev.count"]
projection = {{ bucket = "counts", key = "/k" }}
exec = {{ command = ["python3", {count:?}], mode = "worker" }}

[sagas.fulfil]
start = "order.placed"
key = "order_id"
completed = "order.fulfilled"
failed = "order.cancelled"

[[sagas.fulfil.steps]]
name = "reserve"
command = "inventory.reserve"
success = "inventory.reserved"
"#,
        base = bed.base_config(),
        count = count.to_string_lossy(),
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let port = bed.nats.port();
    let targets = [
        ("plain", "ev.plain", "k"),
        ("count", "ev.count", "k"),
        ("saga-fulfil@ORDERS", "order.placed", "order_id"),
    ];
    for (_, subject, key) in targets {
        for (n, (block, _)) in UNREADABLE.iter().enumerate() {
            publish_raw_block(port, subject, None, block, br#"{"bad":1}"#).await;
            let good = json!({ key: format!("g{n}") }).to_string();
            publish_bare(&client, subject, good).await;
        }
    }
    let metrics = bed.metrics;
    let bad = UNREADABLE.len() as f64;
    wait_until(
        Duration::from_secs(40),
        "every good event handled and every unreadable one dead-lettered",
        || async move {
            let text = scrape(metrics).await;
            targets.iter().all(|(function, _, _)| {
                processed(&text, function, "success") == bad
                    && processed(&text, function, "dead_letter") == bad
            })
        },
    )
    .await;
    let js = bed.jetstream().await;
    let letters = stream_messages(&js, "DLQ").await;
    assert_eq!(letters.len(), 3 * UNREADABLE.len());
    for letter in &letters {
        assert!(header(&letter.headers, "Jetrun-Original-Headers-Base64").is_some());
        assert!(header(&letter.headers, "Jetrun-Error")
            .unwrap()
            .contains("header block cannot be read"));
        assert_eq!(&letter.payload[..], br#"{"bad":1}"#);
    }
    // Each bad message stays in its stream, for every other consumer of it.
    assert_eq!(
        stream_len(&js, TestBed::STREAM).await,
        4 * UNREADABLE.len() as u64
    );
    let text = scrape(metrics).await;
    assert_eq!(
        metric(&text, "jetrun_nats_connected", &[]),
        Some(1.0),
        "still connected"
    );
    let log = runner.log();
    assert!(
        !log.contains("Disconnected"),
        "no unreadable message dropped the connection\n{log}"
    );
    assert_eq!(http_status(metrics, "/readyz").await, Some(200));
}

/// Malformed requests, 5 a second for 10 s, on a request function's subject
/// and on `$SRV.PING`, while a function handles a steady stream: the
/// runner's connection never drops, and no event is handled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_requests_disturbs_no_consumer() {
    const STEADY: u64 = 500;
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        "{}\n[functions.steady]\nsubjects = [\"ev.steady\"]\nbuiltin = \"noop\"\n\
         [functions.ask]\nrequest = \"q.ask\"\nbuiltin = \"echo\"\n",
        bed.base_config()
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    let port = bed.nats.port();
    let metrics = bed.metrics;
    let flood = async {
        for tick in 0..50u32 {
            let (block, _) = UNREADABLE[tick as usize % UNREADABLE.len()];
            let subject = if tick % 2 == 0 { "q.ask" } else { "$SRV.PING" };
            publish_raw_block(port, subject, Some("_INBOX.flood"), block, b"{}").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let steady = async {
        for n in 0..STEADY {
            publish_bare(&client, "ev.steady", format!(r#"{{"n":{n}}}"#)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let watch = async {
        let mut lowest = 1.0f64;
        for _ in 0..60 {
            let text = scrape(metrics).await;
            lowest = lowest.min(metric(&text, "jetrun_nats_connected", &[]).unwrap_or(0.0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lowest
    };
    let ((), (), lowest) = tokio::join!(flood, steady, watch);
    assert_eq!(
        lowest,
        1.0,
        "jetrun_nats_connected stayed 1\n{}",
        runner.log()
    );
    wait_until(
        Duration::from_secs(20),
        "the steady stream handled",
        || async move { processed(&scrape(metrics).await, "steady", "success") == STEADY as f64 },
    )
    .await;
    let text = scrape(metrics).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_events_received_total",
            &[("function", "steady")]
        ),
        Some(STEADY as f64),
        "no event handled twice"
    );
    assert!(!runner.log().contains("Disconnected"), "{}", runner.log());
    let answer = client
        .request("q.ask", "{}".into())
        .await
        .expect("the endpoint still answers");
    assert!(answer.headers.is_none(), "{answer:?}");
}

/// The runner keeps flowing past raw messages with random header blocks:
/// each is handled or dead-lettered once, and the consumer never stalls.
/// Deterministic (a fixed seed), bounded to 60 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_header_blocks_never_stall_a_consumer() {
    const MESSAGES: u64 = 60;
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        "{}\n[functions.echo]\nsubjects = [\"ev.in\"]\nbuiltin = \"echo\"\n",
        bed.base_config()
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let alphabet: &[u8] = b"ab:- \r\n\t\xff\xc3\xa4\x00\x7fce-idtraceparentNATS/1.0 409";
    for _ in 0..MESSAGES {
        let mut block = b"NATS/1.0\r\n".to_vec();
        for _ in 0..(next() % 40) {
            block.push(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        block.extend_from_slice(b"\r\n\r\n");
        publish_raw_block(bed.nats.port(), "ev.in", None, &block, b"{}").await;
    }
    publish_raw_headers(bed.nats.port(), "ev.in", b"X-Last: yes", br#"{"last":1}"#).await;
    let metrics = bed.metrics;
    wait_until(
        Duration::from_secs(40),
        "every message handled or dead-lettered",
        || async move {
            let text = scrape(metrics).await;
            processed(&text, "echo", "success") + processed(&text, "echo", "dead_letter")
                == MESSAGES as f64 + 1.0
        },
    )
    .await;
    assert!(!runner.log().contains("Disconnected"), "{}", runner.log());
    assert!(!runner.log().contains("panic"), "{}", runner.log());
}

/// A request endpoint keeps `concurrency` running and 1,024 waiting: one
/// more is answered 503 at once, never queued without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_beyond_the_queue_is_answered_503_at_once() {
    const REQUESTS: usize = 1_200;
    let bed = TestBed::new();
    let slow = bed.write_script("slow.sh", "sleep 0.2\necho '{}'\n");
    let config = bed.write_config(&format!(
        "{}\n[functions.slow]\nrequest = \"q.slow\"\nexec = [\"sh\", {:?}]\nconcurrency = 1\n",
        bed.base_config(),
        slow.to_string_lossy()
    ));
    let _runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(bed.nats.url())
        .await
        .unwrap();
    // A queued request takes its turn behind the others (0.2 s each), so
    // within the 10 s a requester waits only about 50 are answered; every
    // 503 seen was a refusal at the door.
    let answers = futures::future::join_all((0..REQUESTS).map(|_| {
        let client = client.clone();
        async move {
            let answer = client.request("q.slow", "{}".into()).await.ok()?;
            header(answer.headers.as_ref()?, "Nats-Service-Error-Code")
        }
    }))
    .await;
    let busy = answers
        .iter()
        .flatten()
        .filter(|code| *code == "503")
        .count();
    assert!(
        busy >= REQUESTS - 1_025 - 20,
        "{busy} of {REQUESTS} answered 503"
    );
}

/// `/metrics` drops a connection that sends nothing (a slow or stuck client
/// cannot hold it open for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_metrics_client_is_dropped() {
    use tokio::io::AsyncReadExt;
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        "{}\n[functions.f]\nsubjects = [\"ev.in\"]\nbuiltin = \"noop\"\n",
        bed.base_config()
    ));
    let _runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let mut stream = tokio::net::TcpStream::connect(bed.metrics).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the server closed the idle connection: {read:?}"
    );
}
