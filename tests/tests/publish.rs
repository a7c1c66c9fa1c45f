//! `jetrun publish SUBJECT [DATA|-]`: what each flag puts on the stored
//! event, the line it prints, `-` for stdin, a repeated `--id` stored once,
//! and the failures a user meets (no stream for the subject, a bad
//! `--header`).

use std::process::{Output, Stdio};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{stream, Context};
use jetrun_e2e::{header, jetrun_bin, parse_rfc3339, stream_messages, NatsServer};
use tokio::io::AsyncWriteExt;

/// A nats-server with stream ORDERS capturing `order.>`, made as an operator
/// would (jetrun is not running).
async fn server_with_orders() -> (NatsServer, Context) {
    let server = NatsServer::start();
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&server.url()).await);
    js.create_stream(stream::Config {
        name: "ORDERS".to_string(),
        subjects: vec!["order.>".to_string()],
        ..Default::default()
    })
    .await
    .expect("create stream ORDERS");
    (server, js)
}

/// Runs `jetrun publish --server URL ARGS...`, feeding `stdin` when given.
async fn jetrun_publish(server: &NatsServer, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = tokio::process::Command::new(jetrun_bin())
        .arg("publish")
        .arg("--server")
        .arg(server.url())
        .args(args)
        .env_remove("JETRUN_NATS_URL")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jetrun publish");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(bytes).await.expect("write stdin");
        drop(pipe);
    }
    child
        .wait_with_output()
        .await
        .expect("wait for jetrun publish")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "jetrun publish failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

fn headers_of(message: &StreamMessage) -> String {
    format!("{:?}", message.headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flag_is_stored_on_the_event() {
    let (server, js) = server_with_orders().await;
    let body = r#"{"order_id":1,"total":25.5}"#;

    let output = jetrun_publish(
        &server,
        &[
            "order.placed",
            body,
            "--type",
            "shop.order.placed",
            "--source",
            "shop/web",
            "--id",
            "order-1",
            "--correlation-id",
            "checkout-42",
            "--header",
            "X-Tenant=acme",
            "--header",
            "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ],
        None,
    )
    .await;

    assert_success(&output);
    assert_eq!(
        stdout(&output),
        "published order-1 to stream ORDERS at sequence 1\n"
    );
    let stored = stream_messages(&js, "ORDERS").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let message = &stored[0];
    let h = |name: &str| header(&message.headers, name);
    let all = headers_of(message);
    assert_eq!(message.subject.as_str(), "order.placed");
    assert_eq!(
        message.payload.as_ref(),
        body.as_bytes(),
        "the body as given"
    );
    assert_eq!(h("ce-specversion").as_deref(), Some("1.0"), "{all}");
    assert_eq!(h("ce-id").as_deref(), Some("order-1"), "{all}");
    assert_eq!(h("Nats-Msg-Id").as_deref(), Some("order-1"), "{all}");
    assert_eq!(h("ce-type").as_deref(), Some("shop.order.placed"), "{all}");
    assert_eq!(h("ce-source").as_deref(), Some("shop/web"), "{all}");
    assert_eq!(
        h("ce-correlationid").as_deref(),
        Some("checkout-42"),
        "{all}"
    );
    assert_eq!(
        h("ce-datacontenttype").as_deref(),
        Some("application/json"),
        "{all}"
    );
    assert!(
        h("ce-time").as_deref().and_then(parse_rfc3339).is_some(),
        "ce-time is RFC 3339: {all}"
    );
    assert_eq!(h("X-Tenant").as_deref(), Some("acme"), "{all}");
    assert_eq!(
        h("traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_id_is_a_new_uuid_and_the_type_is_the_subject() {
    let (server, js) = server_with_orders().await;

    let first = jetrun_publish(&server, &["order.placed", "plain text"], None).await;
    let second = jetrun_publish(&server, &["order.placed"], None).await;

    assert_success(&first);
    assert_success(&second);
    let stored = stream_messages(&js, "ORDERS").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    for (n, (output, message)) in [&first, &second].into_iter().zip(&stored).enumerate() {
        let all = headers_of(message);
        let id = header(&message.headers, "ce-id").unwrap_or_default();
        assert!(is_uuid(&id), "ce-id is a UUID: {all}");
        assert_eq!(
            header(&message.headers, "Nats-Msg-Id"),
            Some(id.clone()),
            "{all}"
        );
        assert_eq!(
            stdout(output),
            format!("published {id} to stream ORDERS at sequence {}\n", n + 1)
        );
        let h = |name: &str| header(&message.headers, name);
        assert_eq!(h("ce-type").as_deref(), Some("order.placed"), "{all}");
        assert_eq!(h("ce-source").as_deref(), Some("jetrun/cli"), "{all}");
        assert_eq!(h("ce-correlationid"), None, "{all}");
        assert_eq!(h("ce-datacontenttype"), None, "not JSON: {all}");
    }
    assert_ne!(
        header(&stored[0].headers, "ce-id"),
        header(&stored[1].headers, "ce-id")
    );
    assert_eq!(stored[0].payload.as_ref(), b"plain text");
    assert!(stored[1].payload.is_empty(), "no DATA, an empty body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_reads_the_data_from_stdin() {
    let (server, js) = server_with_orders().await;
    let body = b"{\"order_id\": 2,\n \"items\": [{\"sku\": \"mug\", \"qty\": 1}]}\n";

    let output = jetrun_publish(&server, &["order.placed", "-", "--id", "o-2"], Some(body)).await;

    assert_success(&output);
    assert_eq!(
        stdout(&output),
        "published o-2 to stream ORDERS at sequence 1\n"
    );
    let stored = stream_messages(&js, "ORDERS").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload.as_ref(), body, "stdin, byte for byte");
    assert_eq!(
        header(&stored[0].headers, "ce-datacontenttype").as_deref(),
        Some("application/json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_is_stored_once() {
    let (server, js) = server_with_orders().await;

    let first = jetrun_publish(&server, &["order.placed", "{}", "--id", "same"], None).await;
    let again = jetrun_publish(&server, &["order.placed", "{}", "--id", "same"], None).await;

    assert_success(&first);
    assert_success(&again);
    for output in [&first, &again] {
        assert_eq!(
            stdout(output),
            "published same to stream ORDERS at sequence 1\n"
        );
    }
    assert!(
        stderr(&again).contains("already held an event with id same"),
        "{}",
        stderr(&again)
    );
    assert_eq!(stream_messages(&js, "ORDERS").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_captures_fails_with_status_1() {
    let (server, js) = server_with_orders().await;

    let output = jetrun_publish(&server, &["user.registered", "{}"], None).await;

    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "jetrun: no stream captures subject user.registered; declare one in [streams.*] and \
         run jetrun once\n"
    );
    assert!(stream_messages(&js, "ORDERS").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_without_equals_is_a_usage_error_naming_it() {
    let (server, js) = server_with_orders().await;

    let output = jetrun_publish(
        &server,
        &["order.placed", "{}", "--header", "X-Tenant"],
        None,
    )
    .await;

    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("invalid value 'X-Tenant' for '--header <KEY=VALUE>'")
            && err.contains("\"X-Tenant\" must be KEY=VALUE"),
        "{err}"
    );
    assert!(
        stream_messages(&js, "ORDERS").await.is_empty(),
        "nothing published"
    );
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}
