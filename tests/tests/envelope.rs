//! The four input shapes of DESIGN.md ("The event") give a handler the same
//! event: CloudEvents binary mode (`ce-*` headers), structured mode
//! (`application/cloudevents+json`), the hand-written `{"event_type", ...}`
//! envelope, and a bare message as `nats pub` sends it (whose attributes the
//! runner fills in from the stream). And `--log-format json` gives one JSON
//! object per line, with the event's correlation id on the lines of its
//! handling.

use std::time::Duration;

use async_nats::HeaderMap;
use jetrun_e2e::{
    publish_bare, publish_with_headers, record_then, wait_for_consumer, wait_until, Runner, TestBed,
};
use serde_json::{json, Value};

/// A function on `ev.shape` that keeps each event it gets (structured JSON
/// on stdin) as `event-<sequence>.json` beside the ledger, and says so on
/// stderr (which the runner logs inside the event's span).
fn keep_events(bed: &TestBed) -> std::path::PathBuf {
    let script = bed.write_script(
        "keep.sh",
        &record_then(
            r#"cat > "$(dirname "$LEDGER")/event-$JETRUN_SEQUENCE.json"
echo "kept event $JETRUN_SEQUENCE" >&2"#,
        ),
    );
    bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("keep", &["ev.shape"], &script, "")
    ))
}

fn kept(bed: &TestBed, sequence: u64) -> Value {
    let path = bed.path(&format!("event-{sequence}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

const TIME: &str = "2024-01-01T12:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_shape_gives_the_same_event() {
    let bed = TestBed::new();
    let config = keep_events(&bed);
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = async_nats::jetstream::new(client.clone());
    wait_for_consumer(&js, TestBed::STREAM, "keep").await;

    // 1. binary mode
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "order-1"),
        ("ce-type", "ev.shape"),
        ("ce-source", "order_service"),
        ("ce-time", TIME),
        ("ce-datacontenttype", "application/json"),
        ("ce-correlationid", "corr-1"),
        ("ce-causationid", "cart-9"),
    ] {
        headers.insert(k, v);
    }
    publish_with_headers(&client, "ev.shape", headers, r#"{"order_id":1}"#).await;
    // 2. structured mode
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/cloudevents+json");
    let structured = json!({
        "specversion": "1.0", "id": "order-1", "type": "ev.shape", "source": "order_service",
        "time": TIME, "datacontenttype": "application/json", "correlationid": "corr-1",
        "causationid": "cart-9", "data": {"order_id": 1}
    });
    publish_with_headers(&client, "ev.shape", headers, structured.to_string()).await;
    // 3. the hand-written envelope
    let envelope = json!({
        "event_type": "ev.shape", "data": {"order_id": 1}, "timestamp": TIME,
        "source": "order_service", "event_id": "order-1", "version": "1.0",
        "correlation_id": "corr-1", "causation_id": "cart-9"
    });
    publish_bare(&client, "ev.shape", envelope.to_string()).await;
    // 4. bare, as `nats pub ev.shape '{"order_id":1}'` sends it
    publish_bare(&client, "ev.shape", r#"{"order_id":1}"#).await;

    let ledger = &bed.ledger;
    wait_until(Duration::from_secs(20), "4 events handled", || async move {
        ledger.len() == 4
    })
    .await;

    let attributes = [
        "specversion",
        "id",
        "type",
        "source",
        "time",
        "datacontenttype",
        "correlationid",
        "causationid",
        "data",
    ];
    let pick =
        |event: &Value| -> Vec<Value> { attributes.iter().map(|a| event[a].clone()).collect() };
    let expected = vec![
        json!("1.0"),
        json!("order-1"),
        json!("ev.shape"),
        json!("order_service"),
        json!(TIME),
        json!("application/json"),
        json!("corr-1"),
        json!("cart-9"),
        json!({"order_id": 1}),
    ];
    for sequence in 1..=3 {
        assert_eq!(
            pick(&kept(&bed, sequence)),
            expected,
            "shape {sequence}\n{}",
            runner.log()
        );
    }
    assert_eq!(
        kept(&bed, 3)["version"],
        "1.0",
        "the envelope's version is kept"
    );

    let bare = kept(&bed, 4);
    assert_eq!(bare["id"], "EVENTS:4");
    assert_eq!(bare["type"], "ev.shape");
    assert_eq!(bare["source"], "nats://EVENTS");
    assert_eq!(bare["datacontenttype"], "application/json");
    assert_eq!(bare["data"], json!({"order_id": 1}));
    assert!(
        bare["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{bare}"
    );
    assert_eq!(
        bare["correlationid"], "EVENTS:4",
        "a correlation starts at its first event's id"
    );
    assert!(bare.get("causationid").is_none(), "{bare}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_events_correlation_id() {
    let bed = TestBed::new();
    let config = keep_events(&bed);
    let runner = Runner::start_with(&config, &["--log-format", "json"], &[]);
    let client = bed.client().await;
    let js = async_nats::jetstream::new(client.clone());
    wait_for_consumer(&js, TestBed::STREAM, "keep").await;

    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "user-7"),
        ("ce-type", "ev.shape"),
        ("ce-source", "user_service"),
        ("ce-correlationid", "corr-json-logs"),
    ] {
        headers.insert(k, v);
    }
    publish_with_headers(&client, "ev.shape", headers, r#"{"user_id":7}"#).await;
    let ledger = &bed.ledger;
    wait_until(
        Duration::from_secs(20),
        "the event handled",
        || async move { ledger.len() == 1 },
    )
    .await;
    let log = runner.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_event: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["event_id"] == "user-7")
        .collect();
    assert!(
        of_event.iter().any(|l| l["stderr"] == "kept event 1"),
        "the function's stderr is logged in the event's span:\n{log}"
    );
    for line in of_event {
        let span = &line["span"];
        assert_eq!(span["correlation_id"], "corr-json-logs", "{line}");
        assert_eq!(span["function"], "keep", "{line}");
        assert_eq!(span["event_type"], "ev.shape", "{line}");
        assert_eq!(span["attempt"], 1, "{line}");
    }
}
