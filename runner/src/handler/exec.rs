//! Exec functions, one process per event: the event as CloudEvents structured
//! JSON on stdin; exit 0 is success (stdout may name events to emit), 65
//! (`EX_DATAERR`) a permanent failure, anything else (or a signal) retryable.
//! A process writing more than [`STDOUT_LIMIT`] on stdout is killed at once:
//! a retryable failure. A function that answers gets its input document
//! (the event's data) on stdin instead, and its stdout is its result.

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
        let program = &self.config.command[0];
        let mut child = process::command(&self.config, self.run_as.as_ref(), &vars)
            .spawn()
            .map_err(|err| Failure::retryable(format!("cannot start {program:?}: {err}")))?;
        let mut guard = GroupGuard::new(&child);
        let input = if self.answers {
            event.data.to_vec()
        } else {
            serde_json::to_vec(&event.to_structured_json()).unwrap_or_default()
        };
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
            Some(0) if self.answers => Ok(Output::result(out)),
            Some(0) => protocol::parse_stdout(&out).map(Output::from),
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
