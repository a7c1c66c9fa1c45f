//! The jetrun contenders: the real `jetrun run` binary on a backlog, with a
//! built-in (`noop`, `echo`), a Python worker-mode no-op, or a per-event
//! shell no-op; timed on the function's durable consumer.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};

use crate::backlog::Target;
use crate::harness::Harness;
use crate::measure::{self, ConsumerCpu, Start, Throughput};
use crate::programs;
use crate::runner::{self, Runner};

/// The Python worker: one JSON request per line in, `{"id": <its id>, "ok":
/// true}` out. The id leads the request line (`{"id":7,...`), so it is cut
/// out rather than parsed, as a handler that ignores its input would.
const PYTHON_WORKER: &str = r#"import sys

reply = sys.stdout
for line in sys.stdin:
    reply.write('{"id": %s, "ok": true}\n' % line[6:line.index(",")])
    reply.flush()
"#;

/// The per-event function: reads the event from stdin, succeeds.
const SHELL_NOOP: &str = "#!/bin/sh\ncat >/dev/null\nexit 0\n";

/// Where a keyed contender's function reads each event's key: the `k`
/// field of its data (see [`crate::backlog::keyed_body`]).
const KEY: &str = "/k";
/// The keys of `keyed-1000`'s events.
pub(crate) const KEYS: u64 = 1000;
/// `batch-100`'s `batch` setting.
pub(crate) const BATCH: &str = r#"{ size = 100, wait = "5ms" }"#;
/// A keyed function's partitions when `partitions` is not set: the
/// durable consumers `NAME-p0` to `NAME-p3`.
const DEFAULT_PARTITIONS: usize = 4;

/// What a contender sets beyond the function itself; `None` keeps jetrun's
/// default (`concurrency` 16, one worker, no key, no batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tuning {
    pub(crate) concurrency: Option<usize>,
    pub(crate) workers: Option<usize>,
    /// `key = "/k"` (default `partitions`), the events spread over this
    /// many keys.
    pub(crate) keys: Option<u64>,
    /// `batch = ...`, an inline table.
    pub(crate) batch: Option<&'static str>,
}

/// The function a jetrun contender runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Function {
    Noop,
    Echo,
    PythonWorker,
    ExecPerEvent,
}

impl Function {
    /// The function's name in the config, and so its durable consumer's.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Function::Noop => "noop",
            Function::Echo => "echo",
            Function::PythonWorker => "python-worker",
            Function::ExecPerEvent => "exec-per-event",
        }
    }

    /// Its `[functions.NAME]` section, on `target`, preceded by the stream
    /// its emitted events go to when it emits.
    pub(crate) fn config(
        self,
        harness: &Harness,
        target: &Target,
        tuning: Tuning,
    ) -> anyhow::Result<String> {
        let handler = match self {
            Function::Noop => "builtin = \"noop\"".to_string(),
            Function::Echo => "builtin = \"echo\"".to_string(),
            Function::PythonWorker => {
                let python = programs::on_path("python3")
                    .context("python3 is not on PATH; the Python worker needs it")?;
                let script = write_script(harness, "worker.py", PYTHON_WORKER)?;
                let workers = tuning
                    .workers
                    .map(|n| format!(", workers = {n}"))
                    .unwrap_or_default();
                format!(
                    "exec = {{ command = [{}, {}], mode = \"worker\"{workers} }}",
                    toml_string(&python.display().to_string()),
                    toml_string(&script.display().to_string()),
                )
            }
            Function::ExecPerEvent => {
                let script = write_script(harness, "noop.sh", SHELL_NOOP)?;
                format!("exec = [{}]", toml_string(&script.display().to_string()))
            }
        };
        let mut text = String::new();
        if self == Function::Echo {
            let _ = writeln!(
                text,
                "[streams.{}]\nsubjects = [{}]\n",
                echoed_stream(target),
                toml_string(&echoed_subject(target))
            );
        }
        let _ = writeln!(
            text,
            "[functions.{}]\nstream = {}\nsubjects = [{}]\n{handler}",
            self.name(),
            toml_string(&target.stream),
            toml_string(&target.subject),
        );
        if let Some(concurrency) = tuning.concurrency {
            let _ = writeln!(text, "concurrency = {concurrency}");
        }
        if tuning.keys.is_some() {
            let _ = writeln!(text, "key = {}", toml_string(KEY));
        }
        if let Some(batch) = tuning.batch {
            let _ = writeln!(text, "batch = {batch}");
        }
        Ok(text)
    }
}

/// Fills a fresh stream with `events` events, starts jetrun on it, and times
/// the function's consumer through them; then checks nothing was
/// dead-lettered (and, for `echo`, that every input emitted its event).
pub(crate) async fn run(
    harness: &Harness,
    name: &str,
    run: usize,
    events: u64,
    function: Function,
    tuning: Tuning,
) -> anyhow::Result<Throughput> {
    let target = Target::new(name, run);
    let stream = match tuning.keys {
        Some(keys) => target.fill_keyed(&harness.js, events, keys).await?,
        None => target.fill(&harness.js, events).await?,
    };
    let config = function.config(harness, &target, tuning)?;
    let mut runner = Runner::start(harness, &format!("{name}-{run}"), &config)?;
    let cpu = harness.cpu_probe(ConsumerCpu::Tree(runner.pid()));
    let mut measured = match tuning.keys {
        // Every partition consumer is delivered every event: done when all
        // of them have acked all of them.
        Some(_) => {
            let durables: Vec<String> = (0..DEFAULT_PARTITIONS)
                .map(|p| format!("{}-p{p}", function.name()))
                .collect();
            let cpu_before = cpu.read();
            measure::throughput_of_all(&stream, &durables, events, &cpu, cpu_before, &mut || {
                runner.check_alive()
            })
            .await?
        }
        None => {
            measure::throughput(
                &stream,
                function.name(),
                events,
                Start::Polled,
                &cpu,
                &mut || runner.check_alive(),
            )
            .await?
        }
    };
    measured.peak_rss_kib = runner.memory_kib("VmHWM");
    runner.stop().await?;
    no_dead_letters(harness).await?;
    if function == Function::Echo {
        let echoed = harness
            .js
            .get_stream(echoed_stream(&target))
            .await
            .context("get the echoed stream")?
            .get_info()
            .await
            .context("info of the echoed stream")?
            .state
            .messages;
        if echoed != events {
            bail!("echo handled {events} events but its stream holds {echoed} emitted ones");
        }
    }
    Ok(measured)
}

/// Whether `jetrun check` accepts a function with `builtin = "echo"`.
pub(crate) fn echo_available(harness: &Harness) -> Result<(), String> {
    let target = Target::new("echo-check", 0);
    let config = Function::Echo
        .config(harness, &target, Tuning::default())
        .map_err(|err| err.to_string())?;
    let path = harness.path("echo-check.toml");
    std::fs::write(&path, config).map_err(|err| format!("write {}: {err}", path.display()))?;
    runner::check(&harness.jetrun, &path).map_err(|refused| {
        format!("this jetrun has no built-in `echo` to emit one event per input ({refused})")
    })
}

/// The bench asks for no retries and no failures: a dead letter is an error.
pub(crate) async fn no_dead_letters(harness: &Harness) -> anyhow::Result<()> {
    let Ok(dlq) = harness.js.get_stream("DLQ").await else {
        return Ok(());
    };
    let held = dlq
        .get_info()
        .await
        .context("DLQ stream info")?
        .state
        .messages;
    if held > 0 {
        bail!(
            "{held} events were dead-lettered (stream DLQ): a handler failed; see the jetrun \
             logs in the work folder"
        );
    }
    Ok(())
}

pub(crate) fn echoed_stream(target: &Target) -> String {
    format!("{}_ECHOED", target.stream)
}

/// Where `echo` emits: the input's type (its subject, for a bare message)
/// plus `.echoed`.
pub(crate) fn echoed_subject(target: &Target) -> String {
    format!("{}.echoed", target.subject)
}

fn write_script(harness: &Harness, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = harness.path(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(path)
}

/// A TOML basic string.
pub(crate) fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_quoted_and_escaped() {
        assert_eq!(toml_string("a\"b\\c"), r#""a\"b\\c""#);
    }
}
