//! `jetrun invoke FUNCTION [DATA|-]`: one call of a function of the config,
//! without NATS: its result, its emits and how it ended, with the exit
//! status saying which (0, 1 retryable, 65 permanent, 2 usage).

use std::io::Write;
use std::process::{Command, Stdio};

use jetrun_e2e::{jetrun_bin, run_command, toml_str, without_outside_settings};

/// A config with an `echo` built-in, exec functions that fail (permanently,
/// or to be retried) and a projection; no NATS is running anywhere.
fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let permanent = dir.join("permanent.sh");
    std::fs::write(&permanent, "echo 'no such sku' >&2\nexit 65\n").unwrap();
    let retry = dir.join("retry.sh");
    std::fs::write(&retry, "exit 1\n").unwrap();
    let remind = dir.join("remind.sh");
    std::fs::write(
        &remind,
        r#"echo '{"emit": [{"type": "payment.reminder", "data": {"order_id": 1}, "delay": "24h"}, {"type": "sale.started", "data": {}, "at": "2026-12-24T19:00:00+01:00"}]}'"#,
    )
    .unwrap();
    let text = format!(
        r#"
[nats]
url = "nats://127.0.0.1:1"

[streams.ORDERS]
subjects = ["order.>"]

[functions.echo]
subjects = ["order.*.placed"]
builtin = "echo"

[functions.refuse]
subjects = ["order.refused"]
exec = ["sh", {permanent}]

[functions.flaky]
subjects = ["order.flaky"]
exec = ["sh", {retry}]

[functions.remind]
subjects = ["order.reminded"]
exec = ["sh", {remind}]

[functions.count]
subjects = ["order.counted"]
builtin = "noop"
projection = {{ bucket = "counts", key = "id" }}
"#,
        permanent = toml_str(permanent.display().to_string()),
        retry = toml_str(retry.display().to_string()),
        remind = toml_str(remind.display().to_string()),
    );
    let path = dir.join("jetrun.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn invoke_runs_one_call_and_says_how_it_ended() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let config = config.to_str().unwrap();

    let (code, out, err) = run_command(&["invoke", "echo", r#"{"order_id":1}"#, "-c", config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("outcome: success"), "{out}");
    assert!(
        out.contains(r#"emit:    order.1.placed.echoed order.1.placed.echoed {"order_id":1}"#),
        "{out}"
    );

    let (code, out, err) = run_command(&[
        "invoke",
        "echo",
        "--json",
        "--subject",
        "order.7.placed",
        r#"{"n":2}"#,
        "-c",
        config,
    ]);
    assert_eq!(code, 0, "{err}");
    let called: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(called["outcome"], "success");
    assert_eq!(
        called["emits"][0]["type"], "order.7.placed.echoed",
        "{called}"
    );
    assert_eq!(called["emits"][0]["data"]["n"], 2, "{called}");

    let (code, out, _) = run_command(&["invoke", "refuse", "{}", "-c", config]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("outcome: permanent failure") && out.contains("no such sku"),
        "{out}"
    );

    let (code, out, _) = run_command(&["invoke", "flaky", "{}", "--json", "-c", config]);
    assert_eq!(code, 1, "{out}");
    let failed: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(failed["outcome"], "retryable", "{failed}");

    let (code, _, err) = run_command(&["invoke", "count", "{}", "-c", config]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("its state is in NATS"), "{err}");

    // The payload from stdin.
    let mut child = without_outside_settings(&mut Command::new(jetrun_bin()))
        .args(["invoke", "echo", "-", "-c", config])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run jetrun invoke");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"from":"stdin"}"#)
        .expect("write stdin");
    let output = child.wait_with_output().expect("wait");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains(r#"{"from":"stdin"}"#), "{out}");
}

#[test]
fn invoke_says_when_a_delayed_emit_is_due() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(dir.path());
    let config = config.to_str().unwrap();
    let (code, out, err) = run_command(&["invoke", "remind", "{}", "-c", config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(r#"emit:    payment.reminder payment.reminder {"order_id":1} (delay 1day)"#),
        "{out}"
    );
    assert!(
        out.contains("emit:    sale.started sale.started {} (at 2026-12-24T18:00:00.000Z)"),
        "{out}"
    );
    let (code, out, err) = run_command(&["invoke", "remind", "{}", "--json", "-c", config]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(answer["emits"][0]["delay"], "1day");
    assert_eq!(answer["emits"][1]["at"], "2026-12-24T18:00:00.000Z");
}
