//! Request functions: `request = "subject"` answers NATS requests through the
//! `jetrun` micro service. The reply is the function's result; failures are
//! answered with the micro error headers (400 permanent, 500 other, 504
//! timeout), never a silent timeout; `$SRV.PING` and `$SRV.INFO` answer.

use std::time::Duration;

use jetrun_e2e::{wait_ready, Runner, TestBed};
use serde_json::Value;

/// An exec function per request: `$1` says what to do with the input
/// document (the request as a CloudEvent) on stdin.
const REPLY_SH: &str = r#"case "$1" in
  echo) cat ;;
  reject) echo "order_id is required" >&2; exit 65 ;;
  crash) echo "database unreachable" >&2; exit 1 ;;
  slow) sleep 5 ;;
esac
"#;

fn config(bed: &TestBed) -> std::path::PathBuf {
    let script = bed.write_script("reply.sh", REPLY_SH);
    let function = |name: &str, how: &str| {
        format!(
            r#"
[functions.{name}]
request = "svc.{name}"
exec = ["sh", {script:?}, "{how}"]
timeout = "1s"
"#,
            script = script.to_string_lossy()
        )
    };
    bed.write_config(&format!(
        "{}{}{}{}{}",
        bed.base_config(),
        function("echo", "echo"),
        function("reject", "reject"),
        function("crash", "crash"),
        function("slow", "slow"),
    ))
}

async fn request(client: &async_nats::Client, subject: &str, body: &str) -> async_nats::Message {
    tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap_or_else(|e| panic!("request to {subject}: {e}"))
}

fn error_of(message: &async_nats::Message) -> Option<(String, String)> {
    let headers = message.headers.as_ref()?;
    Some((
        headers.get("Nats-Service-Error-Code")?.to_string(),
        headers.get("Nats-Service-Error")?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_with_results_or_micro_errors() {
    let bed = TestBed::new();
    let runner = Runner::start(&config(&bed));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;

    let reply = request(&client, "svc.echo", r#"{"order_id": 7}"#).await;
    assert_eq!(error_of(&reply), None, "{}", runner.log());
    let event: Value = serde_json::from_slice(&reply.payload).expect("the input document");
    assert_eq!(event["type"], "svc.echo");
    assert_eq!(event["data"]["order_id"], 7);
    assert!(event["id"].as_str().is_some_and(|id| !id.is_empty()));

    for (subject, code, words) in [
        ("svc.reject", "400", "order_id is required"),
        ("svc.crash", "500", "database unreachable"),
        ("svc.slow", "504", "timed out after 1s"),
    ] {
        let reply = request(&client, subject, "{}").await;
        let (got, message) = error_of(&reply).unwrap_or_else(|| panic!("{subject}: no error"));
        assert_eq!(got, code, "{subject}: {message}");
        assert!(message.contains(words), "{subject}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetrun_micro_service_answers_ping_and_info() {
    let bed = TestBed::new();
    let _runner = Runner::start(&config(&bed));
    wait_ready(bed.metrics).await;
    let client = bed.client().await;

    let ping: Value =
        serde_json::from_slice(&request(&client, "$SRV.PING.jetrun", "").await.payload)
            .expect("PING answers JSON");
    assert_eq!(ping["name"], "jetrun");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));

    let info: Value =
        serde_json::from_slice(&request(&client, "$SRV.INFO.jetrun", "").await.payload)
            .expect("INFO answers JSON");
    let mut endpoints: Vec<(String, String, String)> = info["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["subject"].as_str().unwrap_or_default().to_string(),
                e["queue_group"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        ["crash", "echo", "reject", "slow"]
            .iter()
            .map(|n| (n.to_string(), format!("svc.{n}"), "jetrun".to_string()))
            .collect::<Vec<_>>()
    );
}
