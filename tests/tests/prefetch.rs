//! Messages pulled ahead of a free handler slot (the prefetch): a quick
//! function with a backlog pulls ahead, and when its handler then blocks,
//! what waits in the buffer is kept alive with in-progress acks, so none is
//! redelivered behind the runner's back, however long the block. At
//! `concurrency = 1` the events are still handled in stream order.

use std::time::Duration;

use jetrun_e2e::{
    consumer_info, holds_for, publish_bare, toml_str, wait_ready, wait_until, Runner, TestBed,
    WORKER_PY,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_handler_lets_no_buffered_message_outlive_its_ack_wait() {
    const EVENTS: u64 = 300;
    const BLOCKING: u64 = 100;
    let bed = TestBed::new();
    let block = bed.path("blocked");
    std::fs::write(&block, "").expect("the block file");
    let script = bed.write_script("worker.py", WORKER_PY);
    let config = bed.write_config(&format!(
        r#"{base}
[functions.quick]
subjects = ["ev.quick"]
exec = {{ command = ["python3", {script}], mode = "worker", workers = 1, env = {{ LEDGER = {ledger}, BLOCK = {block} }} }}
concurrency = 1
ack_wait = "2s"
timeout = "60s"
"#,
        base = bed.base_config(),
        script = toml_str(script.to_string_lossy()),
        ledger = toml_str(bed.ledger.path().to_string_lossy()),
        block = toml_str(block.to_string_lossy()),
    ));
    // A backlog first: the runner learns that the handler is quick and that
    // events are waiting, so it pulls ahead of its one slot.
    let client = bed.client().await;
    let js = bed.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: TestBed::STREAM.into(),
        subjects: vec!["ev.>".into()],
        ..Default::default()
    })
    .await
    .expect("create the stream");
    for n in 1..=EVENTS {
        let body = if n == BLOCKING {
            format!(r#"{{"n":{n},"block":true}}"#)
        } else {
            format!(r#"{{"n":{n}}}"#)
        };
        publish_bare(&client, "ev.quick", body).await;
    }
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let (js, ledger) = (&js, &bed.ledger);
    wait_until(
        Duration::from_secs(30),
        "the blocking event reached the handler",
        || async move { ledger.len() as u64 >= BLOCKING },
    )
    .await;
    // One event in the handler, more held in the buffer.
    wait_until(
        Duration::from_secs(5),
        "events pulled ahead while the handler blocks",
        || async move {
            consumer_info(js, TestBed::STREAM, "quick")
                .await
                .is_some_and(|i| i.num_ack_pending > 1)
        },
    )
    .await;
    let held = consumer_info(js, TestBed::STREAM, "quick")
        .await
        .map_or(0, |i| i.num_ack_pending);
    // Three ack waits blocked: nothing may come back.
    holds_for(
        Duration::from_secs(6),
        "no redelivery while the handler blocks",
        || async move {
            consumer_info(js, TestBed::STREAM, "quick")
                .await
                .is_some_and(|i| i.num_redelivered == 0)
        },
    )
    .await;
    assert_eq!(
        ledger.len() as u64,
        BLOCKING,
        "nothing else ran meanwhile (one slot)"
    );
    std::fs::remove_file(&block).expect("release the handler");
    wait_until(
        Duration::from_secs(30),
        "every event acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "quick")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == EVENTS && i.num_ack_pending == 0)
        },
    )
    .await;
    let entries = ledger.entries();
    assert_eq!(entries.len() as u64, EVENTS, "{}", runner.log());
    let order: Vec<u64> = entries.iter().map(|e| e.sequence()).collect();
    assert_eq!(
        order,
        (1..=EVENTS).collect::<Vec<_>>(),
        "one slot: handled in stream order"
    );
    assert!(
        entries.iter().all(|e| e.attempt == 1),
        "each event handled once, at its first attempt: {entries:?}"
    );
    let info = consumer_info(js, TestBed::STREAM, "quick").await.unwrap();
    assert_eq!(info.num_redelivered, 0);
    eprintln!("{held} events held (1 running, the rest buffered) through a 6 s block");
}
