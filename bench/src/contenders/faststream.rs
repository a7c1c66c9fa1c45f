//! `faststream-noop`: the peer a Python team would pick, FastStream 0.7 with
//! a no-op JetStream pull subscriber (batch 200, logging off), run as a
//! Python process from a venv the bench makes when it can.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::backlog::Target;
use crate::harness::Harness;
use crate::measure::{self, ConsumerCpu, Start, Throughput};
use crate::options::Options;
use crate::programs;
use crate::runner::tail;

/// What pip installs.
const REQUIREMENT: &str = "faststream[nats]==0.7.*";
/// The subscriber's durable consumer.
pub(crate) const DURABLE: &str = "faststream";
/// How long the app gets to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The app: settings from the environment, the stream made by the bench.
const APP: &str = r#"import asyncio
import os

from faststream import FastStream
from faststream.nats import JStream, NatsBroker, PullSub

broker = NatsBroker(os.environ["BENCH_NATS_URL"], logger=None)


@broker.subscriber(
    os.environ["BENCH_SUBJECT"],
    stream=JStream(os.environ["BENCH_STREAM"], declare=False),
    durable=os.environ["BENCH_DURABLE"],
    pull_sub=PullSub(batch_size=200),
)
async def handle(body):
    pass


app = FastStream(broker, logger=None)
asyncio.run(app.run())
"#;

/// A Python that can import FastStream.
pub(crate) struct Python {
    bin: PathBuf,
    pub(crate) version: String,
}

impl Python {
    /// The venv's Python when FastStream imports there; else, unless told not
    /// to install, a new venv with FastStream from PyPI. `Err` says why not.
    pub(crate) async fn find_or_install(options: &Options) -> Result<Self, String> {
        let venv = options.venv.clone();
        let install = !options.no_install;
        tokio::task::spawn_blocking(move || find_or_install(&venv, install))
            .await
            .map_err(|err| err.to_string())?
    }
}

fn find_or_install(venv: &Path, install: bool) -> Result<Python, String> {
    let bin = venv.join("bin/python");
    if let Ok(version) = faststream_version(&bin) {
        return Ok(Python { bin, version });
    }
    if !install {
        return Err(format!(
            "no FastStream in {} and installing is off (--smoke or --no-install)",
            venv.display()
        ));
    }
    let python3 = programs::on_path("python3").ok_or("python3 is not on PATH")?;
    eprintln!(
        "Installing {REQUIREMENT} into {} (once; later runs reuse it)...",
        venv.display()
    );
    quiet(Command::new(&python3).args(["-m", "venv"]).arg(venv))?;
    quiet(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(REQUIREMENT),
    )?;
    let version = faststream_version(&bin)?;
    Ok(Python { bin, version })
}

/// Runs a command, its output kept for the error.
fn quiet(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run {command:?}: {err}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last: Vec<&str> = stderr.lines().rev().take(3).collect();
    Err(format!(
        "{command:?} failed ({}): {}",
        output.status,
        last.into_iter().rev().collect::<Vec<_>>().join(" / ")
    ))
}

fn faststream_version(python: &Path) -> Result<String, String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import faststream.nats; from importlib.metadata import version; \
             print(version('faststream'))",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run {}: {err}", python.display()))?;
    if !output.status.success() {
        return Err(format!("{} cannot import faststream", python.display()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Fills a fresh stream, starts the app on it, and times its durable consumer.
pub(crate) async fn run(
    harness: &Harness,
    python: &Python,
    name: &str,
    run: usize,
    events: u64,
) -> anyhow::Result<Throughput> {
    let target = Target::new(name, run);
    let stream = target.fill(&harness.js, events).await?;
    let mut app = App::start(harness, python, &target, &format!("{name}-{run}"))?;
    let cpu = harness.cpu_probe(ConsumerCpu::Tree(app.pid()));
    let measured = measure::throughput(&stream, DURABLE, events, Start::Polled, &cpu, &mut || {
        app.check_alive()
    })
    .await;
    app.stop();
    measured
}

/// The FastStream app process.
struct App {
    child: Child,
    log: PathBuf,
}

impl App {
    fn start(
        harness: &Harness,
        python: &Python,
        target: &Target,
        name: &str,
    ) -> anyhow::Result<Self> {
        let script = harness.path("faststream_app.py");
        std::fs::write(&script, APP).with_context(|| format!("write {}", script.display()))?;
        let log = harness.path(&format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&python.bin)
            .arg(&script)
            .env("BENCH_NATS_URL", harness.server.url())
            .env("BENCH_STREAM", &target.stream)
            .env("BENCH_SUBJECT", &target.subject)
            .env("BENCH_DURABLE", DURABLE)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", python.bin.display()))?;
        Ok(App { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "the FastStream app exited with {status}; the end of {}:\n{}",
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL when it does not exit in time.
    fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
