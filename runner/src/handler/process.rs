//! Starting exec children the same way in both modes: argv (never a shell
//! line), the config file's folder as working directory, a scrubbed
//! environment, the account of `user` / `group` if set, their own process
//! group, no descriptor but stdin, stdout and stderr, and a guard that kills
//! the whole group when the call is dropped (a timeout) or the child is
//! abandoned. Also reading their output with a bound, so a child writing
//! without end costs neither memory nor a hang.

use std::process::Stdio;
use std::sync::Once;

use jetrun_config::ExecConfig;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::account::RunAs;

/// Variables of the runner's own environment a child inherits; nothing else
/// (the runner's secrets included) is passed on.
const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// At most this much of a child's stderr is kept for the log (per event: of
/// the whole stderr; in worker mode: of each line).
pub(super) const STDERR_LIMIT: usize = 4 * 1024;

/// The most a child may write on stdout: a per-event process in all, a worker
/// in one reply line. Past it the child is killed and the call is a
/// retryable failure.
pub(super) const STDOUT_LIMIT: usize = 16 * 1024 * 1024;

/// [`STDOUT_LIMIT`] as error messages name it.
pub(super) const STDOUT_LIMIT_TEXT: &str = "16 MiB";

/// A command for `exec` with `vars` added to its environment, run as
/// `run_as` when set (`HOME` is then that user's home directory).
pub(super) fn command(
    exec: &ExecConfig,
    run_as: Option<&RunAs>,
    vars: &[(&str, String)],
) -> Command {
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
    if let Some(run_as) = run_as {
        // Setting a uid also drops the runner's supplementary groups: std
        // calls setgroups(0) before setuid when it has the privilege to.
        cmd.uid(run_as.uid).gid(run_as.gid);
        match &run_as.home {
            Some(home) => cmd.env("HOME", home),
            None => cmd.env_remove("HOME"),
        };
    }
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd.envs(&exec.env);
    cmd
}

/// Closes, once, every descriptor the runner inherited without
/// close-on-exec (a parent's leak: a shell's, a CI job's), which every exec
/// child would otherwise inherit in turn. Each descriptor the runner opens
/// itself is close-on-exec (std and tokio make them so), so at the first
/// exec function built the ones without the flag, past stdin, stdout and
/// stderr, are exactly those leaks, and nothing in the runner uses them.
/// Where `/proc/self/fdinfo` is missing this does nothing.
pub(super) fn close_inherited_descriptors() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
            return;
        };
        let fds: Vec<i32> = dir
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        let cloexec = OFlag::O_CLOEXEC.bits();
        for fd in fds {
            // Gone by now: the directory listing's own descriptor.
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
                continue;
            };
            let flags = info
                .lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|flags| i32::from_str_radix(flags.trim(), 8).ok());
            if flags.is_some_and(|flags| flags & cloexec == 0) {
                tracing::debug!(fd, "Closing a descriptor inherited without close-on-exec.");
                let _ = nix::unistd::close(fd);
            }
        }
    });
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

    /// Kills the group now; the guard stays armed, so it is killed again
    /// (harmlessly) on drop.
    pub(super) fn kill(&self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // ESRCH (already gone) is fine.
        self.kill();
    }
}

/// Reads all of `reader`, keeping at most `limit` bytes (the rest is drained
/// so the child never blocks on a full pipe). For a log, where too much is
/// no failure.
pub(super) async fn read_capped(mut reader: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
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

/// More output than the limit allows.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct OverLimit;

/// Reads all of `reader` if it holds at most `limit` bytes; stops reading
/// as soon as it holds more. A read error ends the input.
pub(super) async fn read_all(
    reader: impl AsyncRead + Unpin,
    limit: usize,
) -> Result<Vec<u8>, OverLimit> {
    let mut out = Vec::new();
    let _ = reader.take(limit as u64 + 1).read_to_end(&mut out).await;
    if out.len() > limit {
        Err(OverLimit)
    } else {
        Ok(out)
    }
}

/// One line of a child's output.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A whole line, without its `\n`.
    Complete(Vec<u8>),
    /// The first `limit` bytes of a longer line; the rest is left unread.
    TooLong(Vec<u8>),
    /// The end of the output (a last line without its `\n` is dropped: a
    /// reply is a whole line).
    End,
}

/// The next line of `reader`, holding at most `limit` bytes however long the
/// line is.
pub(super) async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    limit: usize,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::End);
        }
        let newline = available.iter().position(|b| *b == b'\n');
        let content = newline.unwrap_or(available.len());
        let room = limit - line.len();
        if content > room {
            line.extend_from_slice(&available[..room]);
            reader.consume(room);
            return Ok(Line::TooLong(line));
        }
        line.extend_from_slice(&available[..content]);
        match newline {
            Some(_) => {
                reader.consume(content + 1);
                return Ok(Line::Complete(line));
            }
            None => reader.consume(content),
        }
    }
}

/// Reads past the end of the current line, keeping nothing.
pub(super) async fn skip_line(reader: &mut (impl AsyncBufRead + Unpin)) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = available.len();
                reader.consume(n);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_all_refuses_one_byte_over_the_limit() {
        assert_eq!(read_all(&b"12345"[..], 5).await, Ok(b"12345".to_vec()));
        assert_eq!(read_all(&b"123456"[..], 5).await, Err(OverLimit));
        assert_eq!(read_all(&b""[..], 5).await, Ok(Vec::new()));
    }

    #[tokio::test]
    async fn lines_are_cut_at_the_limit_and_the_rest_can_be_skipped() {
        // A 3-byte buffer makes lines span several reads.
        let mut reader = tokio::io::BufReader::with_capacity(3, &b"abcd\nabcdefgh\nxy\ntail"[..]);
        let line = |bytes: &[u8]| Line::Complete(bytes.to_vec());
        assert_eq!(read_line(&mut reader, 4).await.unwrap(), line(b"abcd"));
        assert_eq!(
            read_line(&mut reader, 4).await.unwrap(),
            Line::TooLong(b"abcd".to_vec())
        );
        skip_line(&mut reader).await.unwrap();
        assert_eq!(read_line(&mut reader, 4).await.unwrap(), line(b"xy"));
        assert_eq!(read_line(&mut reader, 4).await.unwrap(), Line::End);
    }
}
