//! `jetrun events SUBJECT`: the history stored on a subject, oldest first,
//! one line per event (sequence, stored time, type, id, data), or one
//! structured CloudEvent per line with `--json`; only what the subject
//! filter matches; the stream found through JetStream (or named with
//! `--stream` when several match); and a message the NATS client cannot
//! read named on stderr, with the rest still printed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use async_nats::jetstream::stream::Config as StreamConfig;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use jetrun_e2e::{parse_rfc3339, publish_raw_headers, run_command, unix_now, TestBed};
use serde_json::Value;

/// `jetrun events ARGS... -c CONFIG`: exit code, stdout, stderr.
fn events(config: &Path, args: &[&str]) -> (i32, String, String) {
    let config = config.to_str().expect("UTF-8 temp path");
    let mut argv = vec!["events"];
    argv.extend(args);
    argv.extend(["-c", config]);
    run_command(&argv)
}

/// A bed whose config points at its server, with stream `EVENTS` (`ev.>`)
/// made directly (no runner needed to read a history).
async fn bed() -> (TestBed, PathBuf, Context) {
    let bed = TestBed::new();
    // A config needs a function; this one never runs.
    let config = bed.write_config(&format!(
        "{}\n[functions.idle]\nsubjects = [\"ev.idle\"]\nbuiltin = \"noop\"\n",
        bed.base_config()
    ));
    let js = bed.jetstream().await;
    js.create_stream(StreamConfig {
        name: TestBed::STREAM.into(),
        subjects: vec!["ev.>".into()],
        ..Default::default()
    })
    .await
    .expect("create EVENTS");
    (bed, config, js)
}

async fn publish(js: &Context, subject: &str, headers: &[(&str, &str)], body: &str) -> u64 {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    js.publish_with_headers(subject.to_string(), map, body.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

/// An aggregate instance's history, with another instance's event and a
/// text event in between: bare JSON, binary mode, structured mode.
async fn order_history(js: &Context) {
    publish(
        js,
        "ev.order.42.placed",
        &[],
        r#"{ "order_id": 42, "items": [1, 2] }"#,
    )
    .await;
    let paid = [
        ("ce-specversion", "1.0"),
        ("ce-id", "pay-1"),
        ("ce-type", "order.paid"),
        ("ce-source", "shop"),
        ("ce-datacontenttype", "application/json"),
    ];
    publish(js, "ev.order.42.paid", &paid, r#"{"amount":5}"#).await;
    publish(js, "ev.order.7.placed", &[], r#"{"order_id":7}"#).await;
    publish(js, "ev.order.42.note", &[], "call before\ndelivery").await;
    let shipped = r#"{"specversion":"1.0","id":"ship-1","type":"order.shipped",
        "source":"warehouse","data":{"carrier":"ups"}}"#;
    let structured = [("content-type", "application/cloudevents+json")];
    publish(js, "ev.order.42.shipped", &structured, shipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_prints_a_subjects_history_in_order() {
    let (_bed, config, js) = bed().await;
    order_history(&js).await;

    let started = Instant::now();
    let (code, stdout, stderr) = events(&config, &["ev.order.42.>"]);
    eprintln!("jetrun events took {:?}", started.elapsed());
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.splitn(5, "  ").collect())
        .collect();
    let expected = [
        [
            "1",
            "ev.order.42.placed",
            "EVENTS:1",
            r#"{"order_id":42,"items":[1,2]}"#,
        ],
        ["2", "order.paid", "pay-1", r#"{"amount":5}"#],
        [
            "4",
            "ev.order.42.note",
            "EVENTS:4",
            r"call before\ndelivery",
        ],
        ["5", "order.shipped", "ship-1", r#"{"carrier":"ups"}"#],
    ];
    assert_eq!(rows.len(), expected.len(), "{stdout}");
    for (row, want) in rows.iter().zip(expected) {
        assert_eq!([row[0], row[2], row[3], row[4]], want, "{stdout}");
        let stored = parse_rfc3339(row[1]).unwrap_or_else(|| panic!("RFC 3339: {stdout}"));
        assert!((unix_now() - stored).abs() < 60.0, "{stdout}");
    }

    // --json: one structured CloudEvent per line.
    let (code, stdout, stderr) = events(&config, &["ev.order.42.>", "--json"]);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?} is not JSON"))
        })
        .collect();
    let ids: Vec<&str> = lines.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let types: Vec<&str> = lines.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(ids, ["EVENTS:1", "pay-1", "EVENTS:4", "ship-1"]);
    assert_eq!(
        types,
        [
            "ev.order.42.placed",
            "order.paid",
            "ev.order.42.note",
            "order.shipped"
        ]
    );
    for event in &lines {
        assert_eq!(event["specversion"], "1.0", "{event}");
        assert!(event["source"].is_string(), "{event}");
    }
    assert_eq!(lines[0]["data"]["items"][1], 2);
    assert_eq!(lines[1]["source"], "shop");
    assert_eq!(lines[2]["data_base64"], "Y2FsbCBiZWZvcmUKZGVsaXZlcnk=");
    assert_eq!(lines[3]["data"]["carrier"], "ups");

    // One subject, no wildcard; and a subject with nothing stored yet.
    let (code, stdout, _) = events(&config, &["ev.order.7.placed"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("3  "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(
        events(&config, &["ev.order.99.>"]),
        (0, String::new(), String::new())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_is_found_or_named() {
    let (_bed, config, js) = bed().await;
    publish(&js, "ev.a", &[], "1").await;
    js.create_stream(StreamConfig {
        name: "OTHER".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .expect("create OTHER");
    publish(&js, "other.b", &[], "2").await;

    let (code, stdout, stderr) = events(&config, &["nowhere.x"]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        "jetrun: no stream stores subject nowhere.x; `nats stream ls` lists them\n"
    );
    let (code, stdout, stderr) = events(&config, &[">"]);
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert_eq!(
        stderr,
        "jetrun: streams EVENTS, OTHER all store subject >; pass --stream NAME\n"
    );
    let (code, stdout, stderr) = events(&config, &[">", "--stream", "OTHER"]);
    assert_eq!((code, stderr.as_str()), (0, ""));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("  other.b  OTHER:1  2"), "{stdout}");

    let (code, _, stderr) = events(&config, &["ev..x"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("\"ev..x\" is not a subject: a token is empty"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_client_cannot_read_is_named_and_passed() {
    let (bed, config, js) = bed().await;
    publish(&js, "ev.x", &[], r#"{"n":1}"#).await;
    publish_raw_headers(bed.nats.port(), "ev.x", b"X-Bad: \xff\xfe", br#"{"n":2}"#).await;
    publish(&js, "ev.x", &[], r#"{"n":3}"#).await;

    let started = Instant::now();
    let (code, stdout, stderr) = events(&config, &["ev.x"]);
    eprintln!(
        "jetrun events past an unreadable message took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let data: Vec<&str> = stdout
        .lines()
        .map(|l| l.rsplit("  ").next().unwrap())
        .collect();
    assert_eq!(data, [r#"{"n":1}"#, r#"{"n":3}"#], "{stdout}");
    assert_eq!(
        stderr,
        "jetrun: sequence 2 (ev.x) has a header block the NATS client cannot read (header \
         isn't valid utf-8); skipped (`nats stream get` shows it)\n"
    );
}
