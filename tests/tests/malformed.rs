//! Bad input is dead-lettered with a reason, and the runner keeps serving
//! the events around it: a body that is not JSON for a `json = true`
//! function, a structured CloudEvent missing its `id`, 1 MiB of random bytes
//! (its dead letter, too big for the server's max_payload with jetrun's
//! headers, keeps only what fits, the whole body going to the object store
//! it names), a header value that is not UTF-8 (which the NATS client could
//! not read: it reaches jetrun as a bad event and is dead-lettered with its
//! raw header block, the original left in its stream), an empty body, and a
//! flood of 200 headers.

use std::time::Duration;

use async_nats::HeaderMap;
use jetrun_e2e::{
    header, metric, publish_bare, publish_raw_headers, publish_with_headers, scrape, stream_len,
    stream_messages, wait_for_consumer, wait_until, Runner, TestBed,
};

const MIB: usize = 1024 * 1024;

/// Deterministic noise (xorshift), so a failure can be replayed.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_and_good_input_keeps_flowing() {
    let bed = TestBed::new();
    let config = bed.write_config(&format!(
        "{}\n[functions.strict]\nsubjects = [\"ev.in\"]\nbuiltin = \"noop\"\njson = true\nack_wait = \"2s\"\n",
        bed.base_config()
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "strict").await;

    let mut good = 0;
    let mut publish_good = || {
        good += 1;
        format!(r#"{{"ok":{good}}}"#)
    };
    publish_bare(&client, "ev.in", publish_good()).await;
    publish_bare(&client, "ev.in", "{not json").await;
    publish_bare(&client, "ev.in", publish_good()).await;
    let mut structured = HeaderMap::new();
    structured.insert("content-type", "application/cloudevents+json");
    let no_id = r#"{"specversion":"1.0","type":"ev.in","source":"s","data":{}}"#;
    publish_with_headers(&client, "ev.in", structured, no_id).await;
    publish_bare(&client, "ev.in", publish_good()).await;
    let noise = random_bytes(MIB);
    publish_bare(&client, "ev.in", noise.clone()).await;
    publish_bare(&client, "ev.in", publish_good()).await;
    publish_raw_headers(
        bed.nats.port(),
        "ev.in",
        b"X-Bad: \xff\xfe",
        br#"{"bad":1}"#,
    )
    .await;
    publish_bare(&client, "ev.in", publish_good()).await;
    publish_bare(&client, "ev.in", "").await;
    let mut flood = HeaderMap::new();
    for i in 0..200 {
        flood.insert(format!("X-Flood-{i}").as_str(), "x");
    }
    publish_with_headers(&client, "ev.in", flood, r#"{"flood":1}"#).await;
    publish_bare(&client, "ev.in", publish_good()).await;
    let good = good as f64;

    let metrics = bed.metrics;
    wait_until(
        Duration::from_secs(40),
        "good events handled, bad ones dead-lettered",
        || async move {
            let text = scrape(metrics).await;
            let count = |outcome| {
                metric(
                    &text,
                    "jetrun_events_processed_total",
                    &[("function", "strict"), ("outcome", outcome)],
                )
            };
            count("success") == Some(good) && count("dead_letter") == Some(6.0)
        },
    )
    .await;

    let letters = stream_messages(js, "DLQ").await;
    assert_eq!(letters.len(), 6, "{}", runner.log());
    for letter in &letters {
        assert_eq!(
            header(&letter.headers, "Jetrun-Reason").as_deref(),
            Some("permanent")
        );
    }
    let letter = |needle: &str| {
        letters
            .iter()
            .find(|l| header(&l.headers, "Jetrun-Error").is_some_and(|e| e.contains(needle)))
            .unwrap_or_else(|| panic!("no dead letter says {needle:?}"))
    };
    assert_eq!(&letter("line 1 column 2").payload[..], b"{not json");
    letter("missing required attribute(s): id");
    let cut = letter("expected value at line 1 column 1");
    assert_eq!(
        header(&cut.headers, "Jetrun-Body-Truncated").as_deref(),
        Some(MIB.to_string().as_str()),
        "the 1 MiB dead letter says it was cut"
    );
    assert!(cut.payload.len() < MIB && noise.starts_with(&cut.payload));
    let object = header(&cut.headers, "Jetrun-Body-Object").expect("where the whole body is");
    let (bucket, name) = object.split_once('/').unwrap();
    let mut whole = Vec::new();
    let mut reader = js
        .get_object_store(bucket)
        .await
        .unwrap()
        .get(name)
        .await
        .unwrap();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut whole)
        .await
        .unwrap();
    assert!(whole == noise, "the whole body is kept byte for byte");
    assert!(
        letter("EOF while parsing").payload.is_empty(),
        "the empty body"
    );
    assert_eq!(
        &letter("200 headers, more than the 128").payload[..],
        br#"{"flood":1}"#
    );
    let unreadable = letter("header isn't valid utf-8");
    assert_eq!(&unreadable.payload[..], br#"{"bad":1}"#);
    assert!(header(&unreadable.headers, "Jetrun-Original-Headers-Base64").is_some());

    assert_eq!(
        stream_len(js, TestBed::STREAM).await,
        12,
        "all 12 messages stay in their stream, the unreadable one too, for every other \
         consumer of it"
    );
    assert!(
        !runner.log().contains("Disconnected"),
        "no connection was dropped\n{}",
        runner.log()
    );
    let text = scrape(metrics).await;
    assert_eq!(
        metric(
            &text,
            "jetrun_dead_letters_total",
            &[("function", "strict"), ("reason", "permanent")]
        ),
        Some(6.0)
    );
}
