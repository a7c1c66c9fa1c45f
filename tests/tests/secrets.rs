//! Secrets in URLs stay secret: a password in a NATS URL and a token in an
//! HTTP function's URL appear in no log line, no error, no dead letter and no
//! reply; each URL is shown with `***` in their place.

use std::time::Duration;

use jetrun_e2e::{
    free_port, header, publish_bare, run_command, stream_messages, wait_ready, wait_until, Runner,
    TestBed,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_password_is_never_printed() {
    let bed = TestBed::new();
    let closed = free_port();
    let url = format!("nats://alice:s3cr3t@127.0.0.1:{closed}");
    let text = bed
        .base_config()
        .replace(&format!("{:?}", bed.nats.url()), &format!("{url:?}"));
    let config = bed.write_config(&format!(
        "{text}\n[functions.f]\nsubjects = [\"ev.in\"]\nbuiltin = \"noop\"\n"
    ));
    let runner = Runner::start(&config);
    let runner = &runner;
    wait_until(
        Duration::from_secs(20),
        "the runner says it cannot reach NATS",
        || async move { runner.log().contains("Cannot reach NATS") },
    )
    .await;
    let log = runner.log();
    assert!(!log.contains("s3cr3t"), "{log}");
    assert!(log.contains("nats://alice:***@127.0.0.1"), "{log}");

    let (code, _, stderr) = run_command(&["publish", "--server", &url, "ev.in", "{}"]);
    assert_ne!(code, 0);
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
    assert!(stderr.contains("alice:***@"), "{stderr}");

    let (code, _, stderr) = run_command(&["status", "-c", config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_token_is_never_printed_dead_lettered_or_answered() {
    let bed = TestBed::new();
    let closed = free_port();
    let url = format!("http://127.0.0.1:{closed}/hook?token=sekret&x=1");
    let config = bed.write_config(&format!(
        r#"{base}
[functions.hook]
subjects = ["ev.in"]
http = {{ url = {url:?} }}
retry = {{ max_attempts = 2, initial_delay = "100ms", jitter = 0.0 }}

[functions.ask]
request = "q.ask"
http = {{ url = {url:?} }}
"#,
        base = bed.base_config()
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let client = bed.client().await;
    publish_bare(&client, "ev.in", "{}").await;
    let js = bed.jetstream().await;
    let js = &js;
    wait_until(Duration::from_secs(20), "a dead letter", || async move {
        !stream_messages(js, "DLQ").await.is_empty()
    })
    .await;
    let letter = &stream_messages(js, "DLQ").await[0];
    let error = header(&letter.headers, "Jetrun-Error").unwrap();
    assert!(!error.contains("sekret"), "{error}");
    assert!(error.contains("token=***"), "{error}");

    let answer = client.request("q.ask", "{}".into()).await.unwrap();
    let reply = header(answer.headers.as_ref().unwrap(), "Nats-Service-Error").unwrap();
    assert!(!reply.contains("sekret"), "{reply}");
    assert!(reply.contains("token=***"), "{reply}");

    let log = runner.log();
    assert!(!log.contains("sekret"), "{log}");
}
