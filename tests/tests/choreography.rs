//! The order choreography of `config/examples/ecommerce.toml`, run as
//! shipped: the built-in `take_payment`, the per-event Python
//! `reserve_inventory.py`, the worker-mode `shipping.py` with its SQLite
//! state, and the HTTP `notify_server.py`. One bare `order.placed` (what
//! `nats pub` sends) must produce the whole chain, every event carrying the
//! same correlation id and the causation ids forming the expected tree.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use jetrun_e2e::{
    consumer_info, free_port, header, http_status, publish_bare, repo_root, stream_messages,
    toml_str, wait_until, Runner, TestBed,
};
use serde_json::{json, Value};

/// `(stream, function)` of every function in the example, upstream first:
/// once one is idle, what it emitted is stored for the next to see.
const FUNCTIONS: [(&str, &str); 4] = [
    ("ORDERS", "payment"),
    ("ORDERS", "inventory"),
    ("FULFILLMENT", "shipping"),
    ("ORDERS", "notify"),
];
const STREAMS: [&str; 3] = ["ORDERS", "FULFILLMENT", "NOTIFICATIONS"];

/// `functions/examples/notify_server.py` on a port of the test's own,
/// killed on drop; its output is printed when the test panics.
struct NotifyServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl NotifyServer {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let log = dir.join("notify_server.log");
        let out = File::create(&log).expect("create notify_server.log");
        let child = Command::new("python3")
            .arg(repo_root().join("functions/examples/notify_server.py"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log handle"))
            .stderr(out)
            .spawn()
            .expect("start python3 functions/examples/notify_server.py");
        NotifyServer { child, port, log }
    }

    async fn wait_listening(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until(
            Duration::from_secs(10),
            "notify_server.py listens",
            || async move { TcpStream::connect(addr).is_ok() },
        )
        .await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NotifyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- notify_server.py log ----\n{}", self.log());
        }
    }
}

/// The example running against the test's own nats-server.
/// Fields drop in order: jetrun stops before its endpoint and its server.
struct Shop {
    _runner: Runner,
    notify: NotifyServer,
    js: Context,
    bed: TestBed,
}

impl Shop {
    /// Writes the example with the test's NATS URL, metrics port, notify
    /// port and SQLite file (and absolute script paths, since the config
    /// now lives in a temp folder), starts notify_server.py and jetrun, and
    /// waits until jetrun is ready.
    async fn start() -> Self {
        let bed = TestBed::new();
        let notify = NotifyServer::start(bed.dir());
        let example = std::fs::read_to_string(repo_root().join("config/examples/ecommerce.toml"))
            .expect("read config/examples/ecommerce.toml");
        let examples_dir = repo_root().join("functions/examples");
        let mut text = format!("[nats]\nurl = {}\n\n{example}", toml_str(bed.nats.url()));
        for (from, to) in [
            (
                r#"listen = "127.0.0.1:9600""#.to_string(),
                format!("listen = {}", toml_str(bed.metrics.to_string())),
            ),
            (
                r#""http://127.0.0.1:8099/notify""#.to_string(),
                toml_str(format!("http://127.0.0.1:{}/notify", notify.port)),
            ),
            (
                r#"SHIPPING_DB = "../../.jetrun/ecommerce/shipping.db""#.to_string(),
                format!(
                    "SHIPPING_DB = {}",
                    toml_str(bed.path("shipping.db").to_string_lossy())
                ),
            ),
            (
                r#""../../functions/examples/"#.to_string(),
                format!("\"{}/", examples_dir.to_string_lossy()),
            ),
        ] {
            assert!(
                text.contains(&from),
                "config/examples/ecommerce.toml no longer has {from}; update this test"
            );
            text = text.replace(&from, &to);
        }
        let config = bed.write_config(&text);
        notify.wait_listening().await;
        let mut runner = Runner::start(&config);
        wait_ready(&mut runner, bed.metrics).await;
        let js = bed.jetstream().await;
        Shop {
            _runner: runner,
            notify,
            js,
            bed,
        }
    }

    async fn place_order(&self, order: Value) {
        publish_bare(&self.bed.client().await, "order.placed", order.to_string()).await;
    }

    /// Waits for `notification.sent`, then until every function has acked
    /// everything it was given, so nothing more is on its way.
    async fn wait_until_settled(&self) {
        let js = &self.js;
        wait_until(
            Duration::from_secs(60),
            "notification.sent is stored",
            || async move { !stream_messages(js, "NOTIFICATIONS").await.is_empty() },
        )
        .await;
        wait_until(
            Duration::from_secs(30),
            "every function acked every event",
            || async move {
                for (stream, function) in FUNCTIONS {
                    let idle = consumer_info(js, stream, function)
                        .await
                        .is_some_and(|i| i.num_pending == 0 && i.num_ack_pending == 0);
                    if !idle {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// Every event in the example's streams, checking there are no dead letters.
    async fn chain(&self) -> Chain {
        let dead = stream_messages(&self.js, "DLQ").await;
        assert!(dead.is_empty(), "no dead letters: {dead:?}");
        let mut events = Vec::new();
        for stream in STREAMS {
            for message in stream_messages(&self.js, stream).await {
                let h = |name: &str| header(&message.headers, name);
                events.push(Stored {
                    stream,
                    subject: message.subject.to_string(),
                    // A bare message's id is <STREAM>:<sequence> (DESIGN.md, "The event").
                    id: h("ce-id").unwrap_or_else(|| format!("{stream}:{}", message.sequence)),
                    bare: message.headers.iter().next().is_none(),
                    ce_type: h("ce-type"),
                    source: h("ce-source"),
                    correlation: h("ce-correlationid"),
                    causation: h("ce-causationid"),
                    data: serde_json::from_slice(&message.payload).unwrap_or(Value::Null),
                });
            }
        }
        Chain(events)
    }
}

/// Waits for `/readyz` to answer 200 (every consumer bound), failing at
/// once with the runner's log if it exits first (an HTTP function it
/// refuses, say).
async fn wait_ready(runner: &mut Runner, metrics: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = runner.wait_exit(Duration::ZERO).await {
            panic!(
                "jetrun exited ({status}) before it was ready; its log:\n{}",
                runner.log()
            );
        }
        if http_status(metrics, "/readyz").await == Some(200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "jetrun not ready within 30s; its log:\n{}",
            runner.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One stored event, as read back from its stream.
#[derive(Debug)]
struct Stored {
    stream: &'static str,
    subject: String,
    id: String,
    /// Published with no headers at all.
    bare: bool,
    ce_type: Option<String>,
    source: Option<String>,
    correlation: Option<String>,
    causation: Option<String>,
    data: Value,
}

#[derive(Debug)]
struct Chain(Vec<Stored>);

impl Chain {
    /// The one event on `subject`.
    fn one(&self, subject: &str) -> &Stored {
        let found: Vec<&Stored> = self.0.iter().filter(|e| e.subject == subject).collect();
        assert_eq!(found.len(), 1, "one {subject}: {self:#?}");
        found[0]
    }

    /// The subjects, sorted, with the stream each is in.
    fn subjects(&self) -> BTreeSet<(&str, &str)> {
        self.0
            .iter()
            .map(|e| (e.stream, e.subject.as_str()))
            .collect()
    }

    /// The causation tree as `(cause's subject, effect's subject)` edges,
    /// each effect's `ce-causationid` resolved to the event with that id.
    fn edges(&self) -> BTreeSet<(&str, &str)> {
        self.0
            .iter()
            .filter_map(|effect| {
                let cause_id = effect.causation.as_ref()?;
                let cause = self
                    .0
                    .iter()
                    .find(|e| &e.id == cause_id)
                    .unwrap_or_else(|| {
                        panic!(
                            "{} has causation {cause_id}, no event of the chain: {self:#?}",
                            effect.subject
                        )
                    });
                Some((cause.subject.as_str(), effect.subject.as_str()))
            })
            .collect()
    }

    /// Checks what every emitted event shares, and returns the correlation id.
    fn check_envelopes(&self) -> String {
        let input = self.one("order.placed");
        assert!(input.bare, "order.placed went in bare: {input:?}");
        let emitted: Vec<&Stored> = self.0.iter().filter(|e| !e.bare).collect();
        assert_eq!(emitted.len(), self.0.len() - 1, "{self:#?}");
        let correlation = emitted[0].correlation.clone().unwrap_or_default();
        assert!(
            !correlation.is_empty(),
            "the runner made a correlation id: {self:#?}"
        );
        let ids: BTreeSet<&str> = self.0.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), self.0.len(), "ids are unique: {self:#?}");
        for event in emitted {
            assert_eq!(
                event.correlation.as_deref(),
                Some(correlation.as_str()),
                "every event of the chain shares the correlation id: {self:#?}"
            );
            assert_eq!(
                event.ce_type.as_deref(),
                Some(event.subject.as_str()),
                "{event:?}"
            );
            let function = match event.subject.split('.').next() {
                Some("payment") => "payment",
                Some("inventory") => "inventory",
                Some("order") => "shipping",
                _ => "notify",
            };
            assert_eq!(
                event.source.as_deref(),
                Some(format!("jetrun/{function}").as_str()),
                "{event:?}"
            );
        }
        correlation
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_placed_runs_the_whole_chain_with_one_correlation_id() {
    let shop = Shop::start().await;

    shop.place_order(json!({
        "order_id": 1001,
        "user_id": 7,
        "total": 42.5,
        "items": [{"sku": "book", "qty": 2}, {"sku": "mug", "qty": 1}],
    }))
    .await;
    shop.wait_until_settled().await;

    let chain = shop.chain().await;
    assert_eq!(
        chain.subjects(),
        BTreeSet::from([
            ("ORDERS", "order.placed"),
            ("FULFILLMENT", "payment.completed"),
            ("FULFILLMENT", "inventory.reserved"),
            ("ORDERS", "order.shipped"),
            ("NOTIFICATIONS", "notification.sent"),
        ]),
        "{chain:#?}"
    );
    assert_eq!(chain.0.len(), 5, "each event once: {chain:#?}");
    let correlation = chain.check_envelopes();

    // The tree. The bare input's id is <STREAM>:<sequence>; order.shipped
    // answers whichever outcome shipping handled last.
    let placed = chain.one("order.placed");
    assert_eq!(placed.id, "ORDERS:1");
    let paid = chain.one("payment.completed");
    let reserved = chain.one("inventory.reserved");
    let shipped = chain.one("order.shipped");
    let sent = chain.one("notification.sent");
    assert_eq!(paid.causation.as_deref(), Some("ORDERS:1"), "{paid:?}");
    assert_eq!(
        reserved.causation.as_deref(),
        Some("ORDERS:1"),
        "{reserved:?}"
    );
    let last = [paid, reserved]
        .into_iter()
        .find(|e| shipped.causation.as_ref() == Some(&e.id))
        .unwrap_or_else(|| panic!("order.shipped is caused by neither outcome: {chain:#?}"));
    assert_eq!(
        sent.causation.as_deref(),
        Some(shipped.id.as_str()),
        "{sent:?}"
    );
    assert_eq!(
        chain.edges(),
        BTreeSet::from([
            ("order.placed", "payment.completed"),
            ("order.placed", "inventory.reserved"),
            (last.subject.as_str(), "order.shipped"),
            ("order.shipped", "notification.sent"),
        ]),
    );

    // What each function said.
    assert_eq!(paid.data["order_id"], 1001, "{paid:?}");
    assert_eq!(paid.data["amount"], 42.5, "{paid:?}");
    assert!(paid.data["payment_id"].is_string(), "{paid:?}");
    assert_eq!(
        reserved.data,
        json!({"order_id": 1001, "items": [{"sku": "book", "qty": 2}, {"sku": "mug", "qty": 1}]})
    );
    assert_eq!(shipped.data["order_id"], 1001, "{shipped:?}");
    assert!(
        shipped.data["tracking"]
            .as_str()
            .is_some_and(|t| t.starts_with("TRK")),
        "{shipped:?}"
    );
    assert_eq!(sent.data["order_id"], 1001, "{sent:?}");
    assert_eq!(sent.data["template"], "order-shipped", "{sent:?}");

    // The HTTP function got the attributes as ce-* headers.
    let log = shop.notify.log();
    assert!(
        log.contains(&format!(
            "(event {}, correlation {correlation})",
            shipped.id
        )),
        "notify_server.py saw ce-id and ce-correlationid: {log}"
    );
    assert!(
        shop.bed.path("shipping.db").is_file(),
        "SHIPPING_DB is used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_notifies() {
    let shop = Shop::start().await;

    shop.place_order(json!({
        "order_id": 2002,
        "user_id": 7,
        "total": 1500,
        "items": [{"sku": "laptop", "qty": 1}],
    }))
    .await;
    shop.wait_until_settled().await;

    let chain = shop.chain().await;
    assert_eq!(
        chain.subjects(),
        BTreeSet::from([
            ("ORDERS", "order.placed"),
            ("FULFILLMENT", "payment.failed"),
            ("FULFILLMENT", "inventory.reserved"),
            ("ORDERS", "order.cancelled"),
            ("NOTIFICATIONS", "notification.sent"),
        ]),
        "nothing shipped: {chain:#?}"
    );
    assert_eq!(chain.0.len(), 5, "each event once: {chain:#?}");
    chain.check_envelopes();
    assert_eq!(
        chain.edges(),
        BTreeSet::from([
            ("order.placed", "payment.failed"),
            ("order.placed", "inventory.reserved"),
            ("payment.failed", "order.cancelled"),
            ("order.cancelled", "notification.sent"),
        ]),
    );
    let failed = chain.one("payment.failed");
    assert_eq!(
        failed.data,
        json!({"order_id": 2002, "reason": "amount 1500 is over the card's limit of 1000"})
    );
    let cancelled = chain.one("order.cancelled");
    assert_eq!(
        cancelled.data,
        json!({"order_id": 2002, "reason": "payment failed: amount 1500 is over the card's limit of 1000"})
    );
    let sent = chain.one("notification.sent");
    assert_eq!(sent.data["template"], "order-cancelled", "{sent:?}");
}
