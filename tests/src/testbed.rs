//! One test's world: a nats-server of its own, a temp directory for the
//! config, scripts and ledger, and the config fragments most tests share.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::Client;
use tempfile::TempDir;

use crate::config::{toml_str, write_config};
use crate::jetstream::{connect, stream_messages, wait_acked};
use crate::ledger::Ledger;
use crate::nats_server::NatsServer;
use crate::ports::free_port;
use crate::scripts::WORKER_PY;
use crate::wait::wait_until;

/// A nats-server, a temp directory, a ledger in it and a free port for the
/// runner's metrics server.
pub struct TestBed {
    pub nats: NatsServer,
    pub ledger: Ledger,
    /// `[metrics] listen` of [`base_config`](Self::base_config): a port of
    /// this test's own, since tests run side by side.
    pub metrics: SocketAddr,
    dir: TempDir,
}

impl TestBed {
    /// The stream [`base_config`](Self::base_config) declares.
    pub const STREAM: &'static str = "EVENTS";

    /// Starts a nats-server and makes the temp directory.
    pub fn new() -> Self {
        Self::with_nats(NatsServer::start())
    }

    /// The same, around a server the test started itself (with an
    /// authorization block, say).
    pub fn with_nats(nats: NatsServer) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetrun-e2e-")
            .tempdir()
            .expect("create temp dir");
        let ledger = Ledger::new(dir.path().join("ledger"));
        TestBed {
            nats,
            ledger,
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the temp directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a script into the temp directory; returns its absolute path.
    pub fn write_script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Writes `jetrun.toml` into the temp directory; returns its path.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        write_config(self.dir.path(), toml)
    }

    pub async fn client(&self) -> Client {
        connect(&self.nats.url()).await
    }

    pub async fn jetstream(&self) -> Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// `[nats]` pointing at this bed's server, `[metrics]` on
    /// [`metrics`](Self::metrics), `[defaults]` with fast, jitter-free
    /// retries (200ms, 400ms, 800ms, ...; 5 attempts), and stream `EVENTS`
    /// capturing `ev.>`. Top-level keys must come before it.
    pub fn base_config(&self) -> String {
        format!(
            r#"
[nats]
url = {url}

[metrics]
listen = {metrics}

[defaults]
retry = {{ max_attempts = 5, initial_delay = "200ms", multiplier = 2.0, max_delay = "5s", jitter = 0.0 }}

[streams.{stream}]
subjects = ["ev.>"]
"#,
            url = toml_str(self.nats.url()),
            metrics = toml_str(self.metrics.to_string()),
            stream = Self::STREAM,
        )
    }

    /// A `[functions.NAME]` table for an exec function running `sh SCRIPT`
    /// with `LEDGER` set, plus `extra` lines (`timeout = "1s"`, ...).
    pub fn sh_function(&self, name: &str, subjects: &[&str], script: &Path, extra: &str) -> String {
        format!(
            r#"
[functions.{name}]
subjects = {subjects}
exec = {{ command = ["sh", {script}], env = {{ LEDGER = {ledger} }} }}
{extra}
"#,
            subjects = toml_list(subjects),
            script = toml_str(script.to_string_lossy()),
            ledger = toml_str(self.ledger.path().to_string_lossy()),
        )
    }

    /// A `[functions.NAME]` table for an exec worker-mode function running
    /// [`WORKER_PY`] in `workers` processes, plus `extra` lines.
    pub fn worker_function(
        &self,
        name: &str,
        subjects: &[&str],
        workers: u32,
        extra: &str,
    ) -> String {
        let script = self.write_script("worker.py", WORKER_PY);
        format!(
            r#"
[functions.{name}]
subjects = {subjects}
exec = {{ command = ["python3", {script}], mode = "worker", workers = {workers}, env = {{ LEDGER = {ledger} }} }}
{extra}
"#,
            subjects = toml_list(subjects),
            script = toml_str(script.to_string_lossy()),
            ledger = toml_str(self.ledger.path().to_string_lossy()),
        )
    }

    /// Waits until the ledger holds every sequence from 1 to `events` and
    /// `function`'s consumer has acked them all, then checks that nothing
    /// was dead-lettered: the "no event lost" check of the burst tests.
    pub async fn expect_every_event_handled(&self, function: &str, events: u64, within: Duration) {
        let ledger = &self.ledger;
        wait_until(within, "every event handled", || async move {
            ledger.sequences().len() as u64 == events
        })
        .await;
        let js = &self.jetstream().await;
        wait_acked(js, Self::STREAM, function, events).await;
        let expected: BTreeSet<u64> = (1..=events).collect();
        assert_eq!(self.ledger.sequences(), expected);
        assert!(
            stream_messages(js, "DLQ").await.is_empty(),
            "no dead letters"
        );
    }
}

impl Default for TestBed {
    fn default() -> Self {
        Self::new()
    }
}

fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(toml_str).collect();
    format!("[{}]", quoted.join(", "))
}
