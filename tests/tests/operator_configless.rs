//! The operator verbs without the runner's config: given a connection and a
//! function name, `status`, `dlq` and `events` find the function's consumer
//! and dead letters where the documented defaults put them (a consumer
//! named after the function, `dlq.FUNCTION` in `DLQ`).

use std::path::Path;
use std::time::Duration;

use jetrun_e2e::{
    publish_bare, run_command_in, wait_acked, wait_for_consumer, wait_until, Runner, TestBed,
};

/// `jetrun ARGS...` in `dir` (no config file there): exit code, stdout, stderr.
fn jetrun_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run_command_in(Some(dir), args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_dlq_and_events_need_only_a_connection_and_a_name() {
    let bed = TestBed::new();
    let script = bed.write_script("fail.sh", "exit 65\n");
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function("refuse", &["ev.refuse"], &script, "")
    ));
    let _runner = Runner::start(&config);
    let client = bed.client().await;
    let js = bed.jetstream().await;
    wait_for_consumer(&js, TestBed::STREAM, "refuse").await;
    publish_bare(&client, "ev.refuse", r#"{"n":1}"#).await;
    wait_acked(&js, TestBed::STREAM, "refuse", 1).await;

    let elsewhere = tempfile::tempdir().expect("temp dir");
    let dir = elsewhere.path();
    let url = bed.nats.url();
    let server = ["-s", url.as_str()];

    let (code, out, err) = jetrun_in(
        dir,
        &[&["status", "refuse", "--json"][..], &server].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(rows[0]["function"], "refuse", "{rows}");
    assert_eq!(rows[0]["stream"], "EVENTS", "{rows}");
    assert_eq!(rows[0]["dead_letter_subject"], "dlq.refuse", "{rows}");
    wait_until(
        Duration::from_secs(10),
        "the dead letter is counted",
        || async move {
            let (_, out, _) = jetrun_in(
                dir,
                &[&["status", "refuse", "--json"][..], &server].concat(),
            );
            serde_json::from_str::<serde_json::Value>(&out)
                .is_ok_and(|rows| rows[0]["dead_letters"] == 1)
        },
    )
    .await;

    let (code, out, err) = jetrun_in(dir, &[&["status", "ghost"][..], &server].concat());
    assert_eq!(code, 3, "no consumer named ghost: {out}{err}");
    assert!(err.contains("function ghost has no consumer"), "{err}");
    let (code, _, err) = jetrun_in(dir, &[&["status"][..], &server].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("name the functions to look for"), "{err}");

    let (code, out, err) = jetrun_in(
        dir,
        &[&["dlq", "ls", "refuse", "--json"][..], &server].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let letters: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");

    let (code, out, err) = jetrun_in(dir, &[&["events", "ev.refuse"][..], &server].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(r#"{"n":1}"#), "{out}");
}
