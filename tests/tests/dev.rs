//! `jetrun dev` next to something already on its ports: it starts its own
//! nats-server on a free port, moves metrics off a taken address, and its
//! banner suggests a publish command that works for the config it runs.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jetrun_e2e::{
    jetrun_bin, nats_server_bin, run_command, toml_str, wait_ready, without_outside_settings,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_moves_off_a_taken_metrics_port_and_its_banner_publish_works() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Something else holds the metrics address the config asks for.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let wanted = taken.local_addr().expect("address");
    let config = jetrun_e2e::write_config(
        dir.path(),
        &format!(
            "[metrics]\nlisten = {}\n\n[streams.ORDERS]\nsubjects = [\"shop.>\"]\n\n\
             [functions.count]\nsubjects = [\"shop.*.placed\"]\nbuiltin = \"noop\"\n",
            toml_str(wanted.to_string())
        ),
    );
    let mut child = without_outside_settings(&mut Command::new(jetrun_bin()))
        .args(["dev", "-c"])
        .arg(&config)
        .current_dir(dir.path())
        .env("NATS_SERVER_BIN", nats_server_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jetrun dev");
    let stderr = child.stderr.take().expect("stderr");
    let mut child = Dev(child);
    let (lines, banner) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut publish = None;
    let mut metrics = None;
    let mut seen = Vec::new();
    while metrics.is_none() {
        let line = banner
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no banner from jetrun dev:\n{}", seen.join("\n")));
        if let Some(command) = line.trim().strip_prefix("publish:") {
            publish = Some(command.trim().to_string());
        }
        if let Some(url) = line.trim().strip_prefix("metrics:") {
            metrics = Some(url.trim().to_string());
        }
        seen.push(line);
    }
    let metrics = metrics.unwrap();
    let address: SocketAddr = metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|e| panic!("{metrics}: {e}"));
    assert_ne!(address, wanted, "metrics stayed on the taken address");
    wait_ready(address).await;

    let publish = publish.expect("the banner suggests a publish command");
    assert!(
        publish.contains(" shop.1.placed '{}'"),
        "a subject of this config: {publish}"
    );
    // Run it as written (but with this build of jetrun).
    let words = shell_words(&publish);
    assert_eq!(words[0], "jetrun");
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run_command(&args);
    assert_eq!(code, 0, "{publish}: {stdout}{stderr}");
    assert!(stdout.contains("to stream ORDERS"), "{stdout}");

    let status = child.stop();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    drop(taken);
}

/// `jetrun dev`, stopped with SIGINT (so it stops its nats-server too) when
/// the test ends, passed or not; killed if it does not stop within 20 s.
struct Dev(std::process::Child);

impl Dev {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// `a 'b c' d` as three words: the banner quotes the data in single quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (word, after) = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.split_once('\'').expect("closing quote"),
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        words.push(word.to_string());
        rest = after.trim_start();
    }
    words
}
