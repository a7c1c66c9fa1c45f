//! The real `jetrun` binary: built once per test process, run as a child
//! whose output goes to a log file the test can read (and which is printed
//! when the test panics), signalled and killed like an operator would.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::repo::repo_root;

/// Lines of a runner's log printed when a test panics: the start and the end.
const LOG_HEAD: usize = 30;
const LOG_TAIL: usize = 200;

/// The jetrun binary: env `JETRUN_BIN`, else `target/debug/jetrun`, built
/// once per test process with `cargo build -p jetrun --bin jetrun` so that a
/// plain `cargo test --workspace` tests the current source.
pub fn jetrun_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("JETRUN_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let status = Command::new(&cargo)
            .args(["build", "--quiet", "-p", "jetrun", "--bin", "jetrun"])
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
        assert!(status.success(), "cargo build -p jetrun failed: {status}");
        target_dir().join("debug").join("jetrun")
    })
    .clone()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// Runs `jetrun check -c CONFIG`; returns its exit code (-1 when killed by a
/// signal) and its stderr.
pub fn run_check(config: &Path) -> (i32, String) {
    let output = Command::new(jetrun_bin())
        .arg("check")
        .arg("-c")
        .arg(config)
        .env_remove("JETRUN_CONFIG")
        .env_remove("JETRUN_NATS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run jetrun check");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a one-shot `jetrun ARGS...` (`dlq list f -c FILE`, say) to its end;
/// returns its exit code (-1 when killed by a signal), stdout and stderr.
/// The test's own `JETRUN_CONFIG` and `JETRUN_NATS_URL` are not passed on.
pub fn run_command(args: &[&str]) -> (i32, String, String) {
    run_command_with_env(args, &[])
}

/// [`run_command`] with extra environment variables (`JETRUN_NATS_URL`, say).
pub fn run_command_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_command_in(None, args, env)
}

/// [`run_command_with_env`] in folder `dir` (one with no `jetrun.toml`,
/// say) instead of the test's.
pub fn run_command_in(
    dir: Option<&std::path::Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut command = Command::new(jetrun_bin());
    without_outside_settings(&mut command)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run jetrun {args:?}: {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The environment that would make jetrun read a config file or a NATS
/// connection from outside the test: `JETRUN_CONFIG`, `JETRUN_NATS_URL`,
/// the `nats` CLI's `NATS_*` variables, and a `nats` context selected on
/// this machine (`XDG_CONFIG_HOME` points nowhere).
pub fn without_outside_settings(command: &mut Command) -> &mut Command {
    for name in [
        "JETRUN_CONFIG",
        "JETRUN_NATS_URL",
        "NATS_URL",
        "NATS_CONTEXT",
        "NATS_CREDS",
        "NATS_NKEY",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_CERT",
        "NATS_KEY",
        "NATS_CA",
    ] {
        command.env_remove(name);
    }
    command.env("XDG_CONFIG_HOME", "/nonexistent/jetrun-tests")
}

/// A `jetrun run -c CONFIG` process owned by a test; killed on drop.
pub struct Runner {
    child: Option<Child>,
    pid: u32,
    log_dir: TempDir,
}

impl Runner {
    /// Starts `jetrun run -c config`.
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// Starts `jetrun run -c config` with extra environment variables. The
    /// test's own connection settings are not passed on
    /// ([`without_outside_settings`]), so the config file says where NATS is.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(config, &[], env)
    }

    /// Starts `jetrun run -c config ARGS...` (`--log-format json`, say) with
    /// extra environment variables.
    pub fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log_dir = tempfile::Builder::new()
            .prefix("jetrun-runner-")
            .tempdir()
            .expect("create temp dir for the runner log");
        let log = File::create(log_dir.path().join("jetrun.log")).expect("create runner log");
        let mut command = Command::new(jetrun_bin());
        without_outside_settings(&mut command)
            .arg("run")
            .arg("-c")
            .arg(config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start jetrun run");
        Runner {
            pid: child.id(),
            child: Some(child),
            log_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the runner wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("jetrun.log")).unwrap_or_default()
    }

    /// Sends SIGTERM (the drain), as systemd or Kubernetes would.
    pub fn sigterm(&self) {
        if self.child.is_some() {
            kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).expect("send SIGTERM to jetrun");
        }
    }

    /// Sends SIGHUP: the runner reloads its config.
    pub fn sighup(&self) {
        if self.child.is_some() {
            kill(Pid::from_raw(self.pid as i32), Signal::SIGHUP).expect("send SIGHUP to jetrun");
        }
    }

    /// Kills the runner with SIGKILL (no drain) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the runner to exit; `None` if it is still
    /// running then. After an exit, the runner counts as gone.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for jetrun") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- jetrun log (pid {}) ----\n{}",
                self.pid,
                excerpt(&self.log())
            );
        }
    }
}

/// The first and last lines of a long log, with a marker for what is left out.
fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() <= LOG_HEAD + LOG_TAIL {
        return log.to_string();
    }
    let skipped = lines.len() - LOG_HEAD - LOG_TAIL;
    format!(
        "{}\n[... {skipped} lines ...]\n{}",
        lines[..LOG_HEAD].join("\n"),
        lines[lines.len() - LOG_TAIL..].join("\n")
    )
}
