//! Config validation as a user meets it: `jetrun check` reports every error
//! of a file at once, each naming its key path and line, and exits 2; a
//! good file exits 0; `jetrun run` refuses a bad file before touching NATS.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::time::Duration;

use jetrun_e2e::{line_of, repo_root, run_check, toml_str, write_config, Runner};

/// One file with five different errors. The line an error names is the line
/// of the bad key, or the function's table header when a key is missing.
const BAD: &str = r#"[nats]
url = "nats://127.0.0.1:1"

[streams.EVENTS]
subjects = ["ev.>"]

[functions.thumbnail]
subjects = ["ev.image"]
builtin = "noop"
retyr = { max_attempts = 3 }

[functions.slow]
subjects = ["ev.slow"]
builtin = "noop"
timeout = "five seconds"

[functions.idle]
subjects = ["ev.idle"]

[functions.both]
subjects = ["ev.both"]
builtin = "noop"
exec = ["true"]

[functions.stray]
subjects = ["foo.bar"]
builtin = "noop"
"#;

#[test]
fn check_reports_every_error_with_key_path_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), BAD);

    let (code, stderr) = run_check(&config);

    assert_eq!(code, 2, "a bad config exits 2; stderr:\n{stderr}");
    let expected = [
        (
            "timeout = ",
            r#"functions.slow.timeout must be a duration like 250ms, 30s, 5m or 7d, got "five seconds""#
                .to_string(),
        ),
        (
            "[functions.idle]",
            "functions.idle must have exactly one of builtin, exec, http; it has none".to_string(),
        ),
        (
            "[functions.both]",
            "functions.both must have exactly one of builtin, exec, http; it has builtin and exec"
                .to_string(),
        ),
        (
            r#"subjects = ["foo.bar"]"#,
            r#"functions.stray.subjects "foo.bar" is not captured by any [streams.*] entry; add it to a stream's subjects or name an existing stream with stream = "...""#
                .to_string(),
        ),
    ];
    for (marker, message) in &expected {
        let line = line_of(BAD, marker);
        let want = format!("{message} (line {line})");
        assert!(
            stderr.contains(&want),
            "stderr lacks {want:?}; stderr:\n{stderr}"
        );
    }
    // The unknown key's message lists the known keys; pin its start and end.
    let retyr_line = line_of(BAD, "retyr");
    let unknown = stderr
        .lines()
        .find(|l| l.contains("functions.thumbnail.retyr is not a known key; expected one of: "))
        .unwrap_or_else(|| panic!("no unknown-key error for retyr; stderr:\n{stderr}"));
    assert!(
        unknown.ends_with(&format!("(line {retyr_line})")) && unknown.contains("retry"),
        "the unknown-key error names its line and the known keys (retry among them): {unknown:?}"
    );
}

#[test]
fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        r#"shutdown_timeout = "20s"

[nats]
url = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]

[metrics]
listen = "127.0.0.1:9600"

[defaults]
concurrency = 4
timeout = "10s"
ack_wait = "30s"
retry = { max_attempts = 4, initial_delay = "250ms", multiplier = 2.0, max_delay = "1m", jitter = 0.1 }

[streams.EVENTS]
subjects = ["ev.>"]
max_age = "7d"

[functions.plain]
subjects = ["ev.plain"]
builtin = "noop"

[functions.script]
subjects = ["ev.script"]
exec = ["sh", "-c", "exit 0"]
retry = { max_attempts = 2 }
dead_letter = "dlq.custom"

[functions.worker]
subjects = ["ev.worker"]
exec = { command = ["python3", "worker.py"], env = { MODE = "test" }, mode = "worker", workers = 2 }
json = true

[functions.hook]
subjects = ["ev.hook"]
http = { url = "http://127.0.0.1:9/events", headers = { Authorization = "Bearer x" } }
"#,
    );

    let (code, stderr) = run_check(&config);

    assert_eq!(code, 0, "a good config exits 0; stderr:\n{stderr}");
}

#[test]
fn check_reports_what_only_the_runner_can_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        r#"[streams.EVENTS]
subjects = ["ev.>"]

[functions.hook]
subjects = ["ev.hook"]
http = { url = "http://127.0.0.1:9/events", headers = { "X Api" = "x" } }
"#,
    );

    let (code, stderr) = run_check(&config);

    assert_eq!(code, 2, "stderr:\n{stderr}");
    assert!(
        stderr.contains(r#"functions.hook.http.headers: "X Api" is not a valid HTTP header name"#),
        "{stderr}"
    );
}

#[test]
fn shipped_configs_pass_check() {
    let config_dir = repo_root().join("config");
    let mut files = vec![config_dir.join("jetrun.toml")];
    if let Ok(examples) = std::fs::read_dir(config_dir.join("examples")) {
        let mut examples: Vec<_> = examples
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        examples.sort();
        files.extend(examples);
    }
    for file in files {
        assert!(file.is_file(), "{} is missing", file.display());
        let (code, stderr) = run_check(&file);
        assert_eq!(
            code,
            0,
            "jetrun check -c {} exited {code}:\n{stderr}",
            file.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_bad_config_without_connecting() {
    // A listener where the config says NATS is: a runner that connects
    // before validating would show up in its accept queue.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("nats://{}", listener.local_addr().expect("addr"));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            r#"[nats]
url = {url}

[streams.EVENTS]
subjects = ["ev.>"]

[functions.f]
subjects = ["ev.f"]
builtin = "noop"
timeout = "soon"
"#,
            url = toml_str(&url)
        ),
    );

    let mut runner = Runner::start(&config);
    let status = runner.wait_exit(Duration::from_secs(10)).await;

    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "jetrun run with a bad config exits 2; log:\n{}",
        runner.log()
    );
    assert!(
        runner.log().contains("functions.f.timeout"),
        "the error names the key path; log:\n{}",
        runner.log()
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("jetrun connected to NATS ({peer}) with a bad config"),
        Err(e) => panic!("accept: {e}"),
    }
}
