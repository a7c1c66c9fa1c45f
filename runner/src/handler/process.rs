//! Starting exec children the same way in both modes: argv (never a shell
//! line), the config file's folder as working directory, a scrubbed
//! environment, their own process group, and a guard that kills the whole
//! group when the call is dropped (a timeout) or the child is abandoned.

use std::process::Stdio;

use jetrun_config::ExecConfig;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// Variables of the runner's own environment a child inherits; nothing else
/// (the runner's secrets included) is passed on.
const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// At most this much of a child's stderr is kept for the log.
pub(super) const STDERR_LIMIT: usize = 4 * 1024;

/// A command for `exec` with `vars` added to its environment.
pub(super) fn command(exec: &ExecConfig, vars: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(&exec.command[0]);
    cmd.args(&exec.command[1..])
        .current_dir(&exec.dir)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in INHERITED {
        if let Ok(value) = std::env::var(name) {
            cmd.env(name, value);
        }
    }
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd.envs(&exec.env);
    cmd
}

/// Kills a child's whole process group when dropped, unless disarmed after
/// the child exited on its own.
pub(super) struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    pub(super) fn new(child: &Child) -> Self {
        GroupGuard {
            pgid: child.id().and_then(|id| i32::try_from(id).ok()),
        }
    }

    pub(super) fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (already gone) is fine.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Reads all of `reader`, keeping at most `limit` bytes (the rest is drained
/// so the child never blocks on a full pipe).
pub(super) async fn read_bounded(mut reader: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The last non-empty line of a child's stderr, for an error message.
pub(super) fn last_line(stderr: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}
