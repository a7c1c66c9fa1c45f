//! A `jetrun run` process under test: its config and log in the work folder,
//! metrics on a free port, ready when `/readyz` answers 200, stopped with
//! SIGTERM.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Harness;
use crate::nats_server::free_port;
use crate::process_stats;

/// How long a runner may take to bind its consumers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The runner's own drain limit (`shutdown_timeout`) in every bench config.
const SHUTDOWN_TIMEOUT: &str = "5s";
/// How long the bench waits for it to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct Runner {
    child: Option<Child>,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Runner {
    /// Writes `<name>.toml` (the NATS and metrics sections, then `functions`)
    /// and starts `jetrun run` on it, logging to `<name>.log`.
    pub(crate) fn start(harness: &Harness, name: &str, functions: &str) -> anyhow::Result<Self> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = harness.path(&format!("{name}.toml"));
        let text = format!(
            "shutdown_timeout = \"{SHUTDOWN_TIMEOUT}\"\n\n[nats]\nurl = \"{}\"\n\n[metrics]\n\
             listen = \"{metrics}\"\n\n{functions}",
            harness.server.url()
        );
        std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
        check(&harness.jetrun, &config).map_err(anyhow::Error::msg)?;
        let log = harness.path(&format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = Command::new(&harness.jetrun)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env_remove("JETRUN_NATS_URL")
            .env_remove("JETRUN_CONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", harness.jetrun.display()))?;
        Ok(Runner {
            child: Some(child),
            metrics,
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// An error, with the end of its log, once the runner has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "jetrun exited with {status}; the end of {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
        }
        Ok(())
    }

    /// Waits until `/readyz` answers 200: NATS connected, every consumer bound.
    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            if http_status(self.metrics, "/readyz").await == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "jetrun was not ready within {READY_TIMEOUT:?}; the end of {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `VmRSS` (now) or `VmHWM` (peak) of the runner process, in KiB.
    pub(crate) fn memory_kib(&self, field: &str) -> Option<u64> {
        process_stats::memory_kib(self.pid(), field)
    }

    /// SIGTERM, then waits for the runner to drain and exit.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "jetrun exited with {status} after SIGTERM; the end of {}:\n{}",
                        self.log.display(),
                        tail(&self.log)
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "jetrun did not exit within {EXIT_TIMEOUT:?} of SIGTERM; killed it. The end \
                     of {}:\n{}",
                    self.log.display(),
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Runner {
    /// A runner left behind by an error: SIGTERM so it stops its workers, and
    /// SIGKILL when it does not exit in time.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `jetrun check -c config`: `Err` carries what it printed.
pub(crate) fn check(jetrun: &Path, config: &Path) -> Result<(), String> {
    let output = Command::new(jetrun)
        .arg("check")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run {} check: {err}", jetrun.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said: Vec<&str> = stderr.split_whitespace().collect();
    Err(format!(
        "jetrun check -c {} refused it: {}",
        config.display(),
        said.join(" ")
    ))
}

/// The status code of `GET path`, or `None` when nothing answers.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The last lines of a log file.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
