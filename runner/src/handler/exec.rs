//! Exec functions, one process per event: the event as CloudEvents structured
//! JSON on stdin; exit 0 is success (stdout may name events to emit), 65
//! (`EX_DATAERR`) a permanent failure, anything else (or a signal) retryable.
//! A process writing more than [`STDOUT_LIMIT`] on stdout is killed at once:
//! a retryable failure. A function that answers gets its input document
//! (the event's data) on stdin instead, and its stdout is its result.
//! A batch is one process too: a JSON array of the events on stdin, per-item
//! results on stdout (`protocol`).

use async_trait::async_trait;
use jetrun_config::ExecConfig;
use jetrun_functions::{Context, Event, Failure, Function, Outcome, Output};
use tokio::io::AsyncWriteExt;

use super::account::RunAs;
use super::process::{self, GroupGuard, STDERR_LIMIT, STDOUT_LIMIT, STDOUT_LIMIT_TEXT};
use super::protocol;

/// `EX_DATAERR` from sysexits.h: the input was bad; do not retry.
const EXIT_PERMANENT: i32 = 65;

pub(super) struct Exec {
    function: String,
    config: ExecConfig,
    run_as: Option<RunAs>,
    answers: bool,
}

impl Exec {
    /// `answers`: the function answers (document in, result out).
    pub(super) fn new(
        function: &str,
        config: ExecConfig,
        run_as: Option<RunAs>,
        answers: bool,
    ) -> Self {
        Exec {
            function: function.to_string(),
            config,
            run_as,
            answers,
        }
    }
}

impl Exec {
    /// Runs the program once on `input` with `vars` set: its stdout when it
    /// exits 0, else the failure its exit says.
    async fn run(&self, vars: &[(&str, String)], input: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let program = &self.config.command[0];
        let mut child = process::command(&self.config, self.run_as.as_ref(), vars)
            .spawn()
            .map_err(|err| Failure::retryable(format!("cannot start {program:?}: {err}")))?;
        let mut guard = GroupGuard::new(&child);
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let write = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A child that does not read its input closes the pipe early: fine.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let guard_ref = &guard;
        let read_out = async move {
            let out = match stdout {
                Some(out) => process::read_all(out, STDOUT_LIMIT).await,
                None => Ok(Vec::new()),
            };
            if out.is_err() {
                // Killed, not drained: its output could go on for ever.
                guard_ref.kill();
            }
            out
        };
        let read_err = async move {
            match stderr {
                Some(err) => process::read_capped(err, STDERR_LIMIT).await,
                None => Vec::new(),
            }
        };
        let ((), out, err) = tokio::join!(write, read_out, read_err);
        let status = child
            .wait()
            .await
            .map_err(|e| Failure::retryable(format!("cannot wait for {program:?}: {e}")))?;
        guard.disarm();
        if !err.is_empty() {
            tracing::info!(
                function = %self.function,
                stderr = %String::from_utf8_lossy(&err).trim_end(),
                "Exec function wrote to stderr."
            );
        }
        let detail = process::last_line(&err)
            .map(|line| format!(": {line}"))
            .unwrap_or_default();
        let Ok(out) = out else {
            return Err(Failure::retryable(format!(
                "{program} wrote more than {STDOUT_LIMIT_TEXT} to stdout, the limit, and was \
                 killed{detail}"
            )));
        };
        match status.code() {
            Some(0) => Ok(out),
            Some(EXIT_PERMANENT) => Err(Failure::permanent(format!(
                "{program} exited with status 65 (bad input){detail}"
            ))),
            Some(code) => Err(Failure::retryable(format!(
                "{program} exited with status {code}{detail}"
            ))),
            None => Err(Failure::retryable(format!(
                "{program} was killed by a signal{detail}"
            ))),
        }
    }
}

#[async_trait]
impl Function for Exec {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        let vars = [
            ("JETRUN_FUNCTION", ctx.function.clone()),
            ("JETRUN_ATTEMPT", ctx.attempt.to_string()),
            ("JETRUN_SUBJECT", ctx.subject.clone()),
            ("JETRUN_STREAM", ctx.stream.clone()),
            ("JETRUN_SEQUENCE", ctx.sequence.to_string()),
        ];
        let input = if self.answers {
            event.data.to_vec()
        } else {
            serde_json::to_vec(&event.to_structured_json()).unwrap_or_default()
        };
        let out = self.run(&vars, input).await?;
        if self.answers {
            Ok(Output::result(out))
        } else {
            protocol::parse_stdout(&out).map(Output::from)
        }
    }

    /// The batch as a JSON array of structured CloudEvents on stdin; exit 0
    /// with per-item results on stdout (or nothing: all succeeded), or a
    /// status that fails every item. `JETRUN_ATTEMPT` is the highest
    /// attempt among the items, `JETRUN_BATCH` their number.
    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        let Some((_, first)) = items.first() else {
            return Vec::new();
        };
        if self.answers {
            // A function that answers never gets a batch (config forbids it).
            return jetrun_functions::each_alone(self, items).await;
        }
        let attempt = items.iter().map(|(_, ctx)| ctx.attempt).max().unwrap_or(1);
        let vars = [
            ("JETRUN_FUNCTION", first.function.clone()),
            ("JETRUN_ATTEMPT", attempt.to_string()),
            ("JETRUN_BATCH", items.len().to_string()),
            ("JETRUN_STREAM", first.stream.clone()),
        ];
        let events: Vec<serde_json::Value> = items
            .iter()
            .map(|(event, _)| event.to_structured_json())
            .collect();
        let input = serde_json::to_vec(&events).unwrap_or_default();
        let out = match self.run(&vars, input).await {
            Ok(out) => out,
            Err(failure) => return protocol::every_item(failure, items.len()),
        };
        let ids: Vec<protocol::ItemId<'_>> = items
            .iter()
            .map(|(event, _)| protocol::ItemId {
                event: &event.id,
                request: None,
            })
            .collect();
        protocol::parse_batch_answer(&self.function, &out, &ids).unwrap_or_else(|why| {
            // The same input would give the same output: permanent, as for
            // one event.
            protocol::every_item(
                Failure::permanent(format!(
                    "stdout is not {{\"results\": [{{\"id\": ..., \"ok\": true}}, ...]}}: {why}"
                )),
                items.len(),
            )
        })
    }
}
