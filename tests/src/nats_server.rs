//! A real `nats-server` for one test: JetStream on, loopback only, a free
//! port, a temporary store directory; killed on drop.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::free_port;
use crate::repo::repo_root;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// What nats-server logs once it listens for clients.
const READY_LINE: &str = "Server is ready";

/// The nats-server binary: env `NATS_SERVER_BIN`, else the repo-local
/// `.jetrun/tools/bin/nats-server` that `deploy/install-nats-server.sh`
/// installs, else `nats-server` on `PATH`.
///
/// # Panics
/// When none is found, saying how to get one.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NATS_SERVER_BIN={} is not a file: run deploy/install-nats-server.sh",
            bin.display()
        );
        return bin;
    }
    let local = repo_root().join(".jetrun/tools/bin/nats-server");
    if local.is_file() {
        return local;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!("nats-server not found: run deploy/install-nats-server.sh (or set NATS_SERVER_BIN)")
    })
}

/// A running nats-server with JetStream, owned by one test.
pub struct NatsServer {
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    /// A config file passed with `-c` (authorization blocks and the like).
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a server on `port` (one a runner was already told about, say)
    /// and waits until it accepts connections.
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// Starts a server on a free port with `config` (nats-server's config
    /// syntax, e.g. an `authorization { ... }` block) besides the usual flags.
    pub fn start_with_config(config: &str) -> Self {
        Self::start_with(free_port(), Some(config))
    }

    /// Starts `bin` (another nats-server version) on a free port.
    pub fn start_binary(bin: &Path) -> Self {
        let mut server = Self::start_unspawned(free_port(), None);
        server.bin = bin.to_path_buf();
        server.spawn();
        server
    }

    fn start_with(port: u16, config: Option<&str>) -> Self {
        let mut server = Self::start_unspawned(port, config);
        server.spawn();
        server
    }

    fn start_unspawned(port: u16, config: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetrun-nats-")
            .tempdir()
            .expect("create temp dir for nats-server");
        let config = config.map(|text| {
            let path = dir.path().join("nats-server.conf");
            std::fs::write(&path, text).expect("write nats-server config");
            path
        });
        NatsServer {
            bin: nats_server_bin(),
            port,
            dir,
            config,
            child: None,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory; it survives [`kill`](Self::kill) and
    /// [`restart`](Self::restart).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// What the server printed, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same
    /// store directory, waiting until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn spawn(&mut self) {
        let ready_before = self.log().matches(READY_LINE).count();
        let log = open_append(&self.log_path());
        let mut command = Command::new(&self.bin);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("--store_dir")
            .arg(self.store_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready(ready_before);
    }

    /// Waits until this server says it is ready (its log has one more
    /// [`READY_LINE`] than before it started: the log is kept across
    /// restarts) and accepts connections. The log, not the port alone: a
    /// port can be answered by another process.
    fn wait_ready(&mut self, ready_before: usize) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nats-server on port {} exited with {status} before accepting connections:\n{}",
                    self.port,
                    self.log()
                );
            }
            if self.log().matches(READY_LINE).count() > ready_before
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not accept connections within {READY_TIMEOUT:?}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "---- nats-server log (port {}, last {} lines) ----\n{}",
                self.port,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}
