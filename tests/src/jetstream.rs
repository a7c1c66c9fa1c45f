//! Talking to the test's nats-server as a user or operator would: bare
//! publishes (what `nats pub` sends), the messages a stream holds (the dead
//! letters in `DLQ`, events a function emitted), and consumer state.

use std::time::Duration;

use async_nats::jetstream::consumer;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::Context;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::wait::wait_until;

/// Connects to `url`.
pub async fn connect(url: &str) -> Client {
    async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A core-NATS publish with no headers, flushed: what `nats pub SUBJECT BODY`
/// sends. Nothing acknowledges it; a test that needs it stored waits for the
/// stream to hold it ([`stream_len`]).
pub async fn publish_bare(client: &Client, subject: &str, body: impl Into<Bytes>) {
    client
        .publish(subject.to_string(), body.into())
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"));
    client.flush().await.expect("flush");
}

/// `count` bare publishes of `{"n": i}` (i from 1) on `subject`, flushed
/// once at the end: a burst, as a busy producer sends it.
pub async fn publish_bare_burst(client: &Client, subject: &str, count: u64) {
    for n in 1..=count {
        client
            .publish(subject.to_string(), format!(r#"{{"n":{n}}}"#).into())
            .await
            .unwrap_or_else(|e| panic!("publish to {subject}: {e}"));
    }
    client.flush().await.expect("flush");
}

/// A core-NATS publish with the publisher's own headers, flushed.
pub async fn publish_with_headers(
    client: &Client,
    subject: &str,
    headers: HeaderMap,
    body: impl Into<Bytes>,
) {
    client
        .publish_with_headers(subject.to_string(), headers, body.into())
        .await
        .unwrap_or_else(|e| panic!("publish to {subject}: {e}"));
    client.flush().await.expect("flush");
}

/// How many messages stream `stream` holds; 0 when it does not exist.
pub async fn stream_len(js: &Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message stream `stream` holds, oldest first, read one by one by
/// sequence; empty when the stream does not exist.
pub async fn stream_messages(js: &Context, stream: &str) -> Vec<StreamMessage> {
    let Ok(mut handle) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let state = handle.info().await.expect("stream info").state.clone();
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // A gap (a deleted message) is skipped.
        if let Ok(message) = handle.get_raw_message(sequence).await {
            messages.push(message);
        }
    }
    messages
}

/// The state of durable consumer `consumer` on `stream`; `None` when either
/// does not exist (yet).
pub async fn consumer_info(js: &Context, stream: &str, consumer: &str) -> Option<consumer::Info> {
    let handle = js.get_stream_no_info(stream).await.ok()?;
    handle.consumer_info(consumer).await.ok()
}

/// Waits (up to 20 s) until the runner has bound the function's durable
/// consumer on `stream`, which also means the stream exists: a bare publish
/// after this is captured.
pub async fn wait_for_consumer(js: &Context, stream: &str, consumer: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("consumer {consumer} exists on stream {stream}"),
        || async move { consumer_info(js, stream, consumer).await.is_some() },
    )
    .await;
}

/// Waits (up to 20 s) until the KV bucket `name` exists (made by the
/// runner), and opens it.
pub async fn wait_for_bucket(js: &Context, name: &str) -> async_nats::jetstream::kv::Store {
    wait_until(
        Duration::from_secs(20),
        &format!("KV bucket {name} exists"),
        || async move { js.get_key_value(name).await.is_ok() },
    )
    .await;
    js.get_key_value(name).await.expect("the bucket just seen")
}

/// Waits (up to 20 s) until `consumer` on `stream` has acked everything up
/// to stream sequence `last`, with nothing left pending or unacked.
pub async fn wait_acked(js: &Context, stream: &str, consumer: &str, last: u64) {
    wait_until(
        Duration::from_secs(20),
        &format!("{consumer} acked everything up to sequence {last}"),
        || async move {
            consumer_info(js, stream, consumer).await.is_some_and(|i| {
                i.ack_floor.stream_sequence == last && i.num_ack_pending == 0 && i.num_pending == 0
            })
        },
    )
    .await;
}

/// The first value of header `name` (exact spelling) as text.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|value| value.as_str().to_string())
}

/// Publishes `body` on `subject` with a header block of raw bytes, as a
/// publisher that does not check them would (async-nats refuses to): a
/// header value that is not UTF-8, say.
pub async fn publish_raw_headers(port: u16, subject: &str, header_line: &[u8], body: &[u8]) {
    let mut headers = b"NATS/1.0\r\n".to_vec();
    headers.extend_from_slice(header_line);
    headers.extend_from_slice(b"\r\n\r\n");
    publish_raw_block(port, subject, None, &headers, body).await;
}

/// Publishes `body` on `subject` (with `reply`, as a request) with `headers`
/// as its whole header block, byte for byte (`NATS/1.0 404\r\n\r\n`, a
/// forged status line, say).
pub async fn publish_raw_block(
    port: u16,
    subject: &str,
    reply: Option<&str>,
    headers: &[u8],
    body: &[u8],
) {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    lines.next_line().await.expect("INFO").expect("INFO line");
    let mut frame = b"CONNECT {\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n".to_vec();
    frame.extend_from_slice(
        format!(
            "HPUB {subject} {}{} {}\r\n",
            reply.map_or(String::new(), |r| format!("{r} ")),
            headers.len(),
            headers.len() + body.len()
        )
        .as_bytes(),
    );
    frame.extend_from_slice(headers);
    frame.extend_from_slice(body);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.expect("write");
    loop {
        let line = lines
            .next_line()
            .await
            .expect("read")
            .expect("PONG before EOF");
        assert!(
            !line.starts_with("-ERR"),
            "server refused the publish: {line}"
        );
        if line == "PONG" {
            break;
        }
    }
}
