//! Time limits: a handler past its timeout is cancelled (an exec child and
//! everything it started are really gone, per event and in worker mode) and
//! retried; a handler that is
//! merely slow, longer than the ack wait but within its timeout, is kept
//! alive with in-progress acks and succeeds once, with no redelivery.

use std::path::Path;
use std::time::Duration;

use jetrun_e2e::{
    consumer_info, holds_for, publish_bare, record_then, stream_messages, toml_str,
    wait_for_consumer, wait_until, Runner, TestBed,
};

/// True while process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "<pid> (<comm>) <state> ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_past_its_timeout_is_killed_and_retried() {
    let bed = TestBed::new();
    let (shell_pid, sleep_pid) = (bed.path("shell.pid"), bed.path("sleep.pid"));
    // Attempt 1 hangs in a `sleep 30` it started itself, so the kill must
    // reach the whole process group, not only the direct child.
    let script = bed.write_script(
        "hang.sh",
        &record_then(&format!(
            r#"if [ "$JETRUN_ATTEMPT" = 1 ]; then
  echo $$ > "{shell}"
  sleep 30 &
  echo $! > "{sleep}"
  wait
fi
exit 0"#,
            shell = shell_pid.display(),
            sleep = sleep_pid.display(),
        )),
    );
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function(
            "hang",
            &["ev.hang"],
            &script,
            r#"timeout = "1s"
retry = { max_attempts = 3, initial_delay = "200ms", multiplier = 2.0, jitter = 0.0 }"#
        )
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "hang").await;

    publish_bare(&client, "ev.hang", "{}").await;

    let ledger = &bed.ledger;
    wait_until(Duration::from_secs(15), "attempt 2 ran", || async move {
        ledger.entries().iter().any(|e| e.attempt == 2)
    })
    .await;
    let shell = read_pid(&shell_pid).expect("attempt 1 wrote its pid");
    let sleeper = read_pid(&sleep_pid).expect("attempt 1 wrote its child's pid");
    wait_until(
        Duration::from_secs(5),
        "the timed-out handler and its child are gone",
        || async move { !alive(shell) && !alive(sleeper) },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the event is acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "hang")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0)
        },
    )
    .await;

    let entries = bed.ledger.entries();
    let attempts: Vec<u32> = entries.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2], "one timeout, then a success: {entries:?}");
    let gap = entries[1].at - entries[0].at;
    assert!(
        gap >= 1.0,
        "attempt 2 started {gap:.3}s after attempt 1, before the 1s timeout could fire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_past_its_timeout_is_killed_with_its_process_group_and_replaced() {
    let bed = TestBed::new();
    let (worker_pid, sleep_pid) = (bed.path("worker.pid"), bed.path("sleep.pid"));
    // On attempt 1 the worker hangs waiting for a `sleep 30` it started;
    // the retry must run in a new worker, and neither may survive.
    let script = format!(
        r#"while read -r request; do
  attempt=$(printf '%s' "$request" | sed 's/.*"attempt":\([0-9]*\).*/\1/')
  printf 'EVENTS:1 %s %s %s\n' "$attempt" "$(date +%s.%N)" "$$" >> "$LEDGER"
  if [ "$attempt" = 1 ]; then
    echo $$ > "{worker}"
    sleep 30 &
    echo $! > "{sleep}"
    wait
  fi
  id=$(printf '%s' "$request" | sed 's/^{{"id":\([0-9]*\).*/\1/'); echo "{{\"id\": $id, \"ok\": true}}"
done"#,
        worker = worker_pid.display(),
        sleep = sleep_pid.display(),
    );
    let config = bed.write_config(&format!(
        r#"{base}
[functions.hang]
subjects = ["ev.hang"]
exec = {{ command = ["sh", "-c", {script}], mode = "worker", env = {{ LEDGER = {ledger} }} }}
timeout = "1s"
"#,
        base = bed.base_config(),
        script = toml_str(script),
        ledger = toml_str(bed.ledger.path().to_string_lossy()),
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "hang").await;

    publish_bare(&client, "ev.hang", "{}").await;

    wait_until(
        Duration::from_secs(15),
        "the event is acked after a retry",
        || async move {
            consumer_info(js, TestBed::STREAM, "hang")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0)
        },
    )
    .await;
    let worker = read_pid(&worker_pid).expect("attempt 1 wrote the worker's pid");
    let sleeper = read_pid(&sleep_pid).expect("attempt 1 wrote its child's pid");
    wait_until(
        Duration::from_secs(5),
        "the timed-out worker and its child are gone",
        || async move { !alive(worker) && !alive(sleeper) },
    )
    .await;
    let entries = bed.ledger.entries();
    let attempts: Vec<u32> = entries.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2], "one timeout, then a success: {entries:?}");
    assert_ne!(
        entries[0].extra, entries[1].extra,
        "attempt 2 ran in a new worker: {entries:?}"
    );
    assert!(
        stream_messages(js, "DLQ").await.is_empty(),
        "a timeout is a retryable failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_running_three_times_the_ack_wait_succeeds_once() {
    let bed = TestBed::new();
    let script = bed.write_script("slow.sh", &record_then("sleep 6"));
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function(
            "slow",
            &["ev.slow"],
            &script,
            r#"ack_wait = "2s"
timeout = "20s""#
        )
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "slow").await;

    publish_bare(&client, "ev.slow", "{}").await;

    wait_until(
        Duration::from_secs(20),
        "the slow handler is acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "slow")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0)
        },
    )
    .await;
    // One more ack wait: a redelivery that slipped through would show now.
    let ledger = &bed.ledger;
    holds_for(
        Duration::from_millis(2500),
        "exactly one call",
        || async move { ledger.len() == 1 },
    )
    .await;

    let info = consumer_info(js, TestBed::STREAM, "slow")
        .await
        .expect("consumer");
    assert_eq!(info.num_redelivered, 0, "no redelivery: {info:?}");
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "one delivery in all: {info:?}"
    );
    assert_eq!(bed.ledger.entries()[0].attempt, 1);
}
