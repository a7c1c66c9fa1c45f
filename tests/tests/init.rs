//! `jetrun init`: the starter config it writes is one `jetrun check` accepts
//! and that really runs (a `user.registered` event gets its welcome email);
//! it never overwrites a file without `--force`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use jetrun_e2e::{
    jetrun_bin, publish_bare, run_check, run_command_in, stream_messages, toml_str, wait_until,
    Runner, TestBed,
};

/// Runs `jetrun init ARGS...` in `dir`.
fn init(dir: &Path, args: &[&str]) -> Output {
    Command::new(jetrun_bin())
        .arg("init")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run jetrun init")
}

#[test]
fn init_writes_a_config_check_accepts_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jetrun.toml");

    let first = init(dir.path(), &[]);
    assert!(first.status.success(), "jetrun init: {first:?}");
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("Wrote jetrun.toml"),
        "{first:?}"
    );
    let template = std::fs::read_to_string(&path).expect("jetrun init wrote ./jetrun.toml");
    let (code, stderr) = run_check(&path);
    assert_eq!(
        code, 0,
        "jetrun check rejects the starter config:\n{stderr}"
    );

    std::fs::write(&path, "# mine\n").expect("edit the config");
    let again = init(dir.path(), &[]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("jetrun.toml already exists; pass --force to overwrite it"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");

    let forced = init(dir.path(), &["--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), template);

    let elsewhere = init(dir.path(), &["other.toml"]);
    assert!(elsewhere.status.success(), "{elsewhere:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("other.toml")).unwrap(),
        template
    );
}

/// Runs `jetrun ARGS...` in `dir`: exit code, stdout, stderr.
fn jetrun_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    run_command_in(Some(dir), args, &[])
}

#[test]
fn check_reads_what_init_wrote_from_any_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (code, _, stderr) = jetrun_in(dir.path(), &["check"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read config file jetrun.toml"),
        "{stderr}"
    );

    let written = init(dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&written.stdout);
    assert!(
        stdout.contains("Next: `jetrun check`, then `jetrun dev`."),
        "{stdout}"
    );
    let (code, stdout, stderr) = jetrun_in(dir.path(), &["check"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("jetrun.toml: ok"), "{stdout}");

    // A file given as the argument, like `promtool check config FILE`; it
    // wins over JETRUN_CONFIG.
    std::fs::write(dir.path().join("bad.toml"), "[functions.x]\nbuiltin = 1\n").unwrap();
    let (code, _, stderr) = jetrun_in(dir.path(), &["check", "bad.toml"]);
    assert_eq!(code, 2, "{stderr}");
    let bad = [("JETRUN_CONFIG", "bad.toml")];
    let (code, _, stderr) = run_command_in(Some(dir.path()), &["check", "jetrun.toml"], &bad);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run_command_in(Some(dir.path()), &["check"], &bad);
    assert_eq!(code, 2, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_starter_config_sends_a_welcome_email() {
    let bed = TestBed::new();
    assert!(init(bed.dir(), &[]).status.success());
    let path = bed.path("jetrun.toml");
    let template = std::fs::read_to_string(&path).expect("jetrun init wrote jetrun.toml");
    // Point it at this test's server and metrics port.
    let mut config = template.clone();
    for (from, to) in [
        (
            r#"url = "nats://127.0.0.1:4222""#,
            format!("url = {}", toml_str(bed.nats.url())),
        ),
        (
            r#"listen = "127.0.0.1:9600""#,
            format!("listen = {}", toml_str(bed.metrics.to_string())),
        ),
    ] {
        assert!(config.contains(from), "the starter config has {from}");
        config = config.replace(from, &to);
    }
    std::fs::write(&path, config).expect("write jetrun.toml");
    let _runner = Runner::start(&path);

    let client = bed.client().await;
    let js = &bed.jetstream().await;
    wait_until(
        Duration::from_secs(20),
        "stream USERS exists",
        || async move { js.get_stream("USERS").await.is_ok() },
    )
    .await;
    publish_bare(
        &client,
        "user.registered",
        r#"{"user_id": 1, "email": "ada@shop.test"}"#,
    )
    .await;
    wait_until(
        Duration::from_secs(20),
        "email.sent is in EMAILS",
        || async move {
            stream_messages(js, "EMAILS")
                .await
                .iter()
                .any(|m| m.subject.as_str() == "email.sent")
        },
    )
    .await;
}
