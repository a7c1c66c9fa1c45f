//! Exec functions in worker mode: `workers` long-lived processes, each taking
//! one JSON request per line on stdin (`{"id": n, "event": {...}, "attempt":
//! n}`) and answering one JSON reply per line on stdout, which echoes the
//! request's `id`. A worker that dies, that is cut off by a timeout, whose
//! reply line is longer than [`STDOUT_LIMIT`], or that writes a line that is
//! not the reply to its request (a stray `print`, a reply to another
//! request), is killed with its process group and replaced on the next
//! call; its event counts as a retryable failure. A reply is never paired
//! with another request than its own. A batch is one line too: a JSON array
//! of the requests, answered by one line of per-item results (`protocol`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use jetrun_config::ExecConfig;
use jetrun_functions::{Context, Event, Failure, Function, Outcome};
use serde_json::json;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Semaphore;

use super::account::RunAs;
use super::process::{self, GroupGuard, Line, STDERR_LIMIT, STDOUT_LIMIT, STDOUT_LIMIT_TEXT};
use super::protocol;

pub(super) struct WorkerPool {
    function: String,
    config: ExecConfig,
    run_as: Option<RunAs>,
    /// The function answers: requests carry `input` (the event's data), not
    /// the event, and replies carry `result`.
    answers: bool,
    /// One permit per worker slot.
    slots: Semaphore,
    /// Idle workers; a missing one is started on demand.
    idle: Arc<Mutex<Vec<Worker>>>,
    /// The id of the next request.
    next_id: AtomicU64,
}

struct Worker {
    child: Child,
    guard: GroupGuard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A worker taken from the pool for one call. Returned to the pool only when
/// the call finished cleanly; dropped (killed) otherwise, including when the
/// call itself is dropped by a timeout.
struct Lease {
    worker: Option<Worker>,
    idle: Arc<Mutex<Vec<Worker>>>,
}

impl Lease {
    fn give_back(mut self) {
        if let (Some(worker), Ok(mut idle)) = (self.worker.take(), self.idle.lock()) {
            idle.push(worker);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            let _ = worker.child.start_kill();
            drop(worker.guard);
        }
    }
}

impl WorkerPool {
    pub(super) fn new(
        function: &str,
        config: ExecConfig,
        run_as: Option<RunAs>,
        answers: bool,
    ) -> Self {
        WorkerPool {
            function: function.to_string(),
            slots: Semaphore::new(config.workers.max(1)),
            config,
            run_as,
            answers,
            idle: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    fn start(&self) -> Result<Worker, Failure> {
        let vars = [("JETRUN_FUNCTION", self.function.clone())];
        let program = &self.config.command[0];
        let mut child = process::command(&self.config, self.run_as.as_ref(), &vars)
            .spawn()
            .map_err(|err| Failure::retryable(format!("cannot start worker {program:?}: {err}")))?;
        let guard = GroupGuard::new(&child);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(Failure::retryable("worker pipes were not set up"));
        };
        let function = self.function.clone();
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr);
            loop {
                match process::read_line(&mut stderr, STDERR_LIMIT).await {
                    Ok(Line::Complete(line)) => {
                        let line = String::from_utf8_lossy(&line);
                        tracing::info!(%function, stderr = %line, "Worker wrote to stderr.");
                    }
                    Ok(Line::TooLong(line)) => {
                        let line = String::from_utf8_lossy(&line);
                        tracing::info!(
                            %function,
                            stderr = %line,
                            "Worker wrote to stderr (a longer line, cut at 4 KiB)."
                        );
                        if process::skip_line(&mut stderr).await.is_err() {
                            break;
                        }
                    }
                    Ok(Line::End) | Err(_) => break,
                }
            }
        });
        tracing::info!(function = %self.function, pid = child.id(), "Started exec worker.");
        Ok(Worker {
            child,
            guard,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }
}

impl WorkerPool {
    /// Sends `request` (one line) to an idle worker (started when none is)
    /// and reads its one-line answer, which `parse` checks. A worker that
    /// dies, that cannot be read, or whose line `parse` refuses (why) is
    /// killed: the call is a retryable failure.
    async fn exchange<T>(
        &self,
        request: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, Failure> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Failure::retryable("worker pool closed"))?;
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let worker = match reused {
            Some(worker) => worker,
            None => self.start()?,
        };
        let mut lease = Lease {
            worker: Some(worker),
            idle: self.idle.clone(),
        };
        let Some(worker) = lease.worker.as_mut() else {
            return Err(Failure::retryable("worker lease is empty"));
        };
        let died = |what: &str| {
            Failure::retryable(format!(
                "worker {} {what}; it will be restarted",
                self.config.command[0]
            ))
        };
        if worker.stdin.write_all(request).await.is_err() || worker.stdin.flush().await.is_err() {
            return Err(died("stopped reading its stdin"));
        }
        let line = match process::read_line(&mut worker.stdout, STDOUT_LIMIT).await {
            Ok(Line::Complete(line)) => line,
            Ok(Line::End) => {
                let status = worker.child.wait().await.ok();
                let how = status.map(|s| s.to_string()).unwrap_or_default();
                worker.guard.disarm();
                return Err(died(&format!("exited mid-event ({how})")));
            }
            // Dropping the lease kills the worker: the rest of the line is
            // never read.
            Ok(Line::TooLong(_)) => {
                return Err(died(&format!(
                    "wrote a reply line longer than {STDOUT_LIMIT_TEXT}, the limit, and was killed"
                )))
            }
            Err(err) => return Err(died(&format!("could not be read ({err}) and was killed"))),
        };
        match parse(&line) {
            Ok(answer) => {
                lease.give_back();
                Ok(answer)
            }
            // Dropping the lease kills the worker: what else it wrote is
            // never read as a reply.
            Err(not_the_reply) => Err(died(&format!("{not_the_reply}, and was killed"))),
        }
    }

    /// The request for one event: `{"event", "attempt"}`, or `{"input",
    /// "attempt"}` for a function that answers.
    fn request(&self, event: &Event, ctx: &Context) -> serde_json::Value {
        if self.answers {
            let input: serde_json::Value =
                serde_json::from_slice(&event.data).unwrap_or(serde_json::Value::Null);
            json!({"input": input, "attempt": ctx.attempt})
        } else {
            json!({"event": event.to_structured_json(), "attempt": ctx.attempt})
        }
    }
}

#[async_trait]
impl Function for WorkerPool {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = request_line(id, &self.request(event, ctx));
        self.exchange(&request, |line| {
            protocol::parse_reply(line, id).map_err(|err| err.to_string())
        })
        .await?
    }

    /// One line holding a JSON array of the items' requests (each as for one
    /// event, with its own `id`); the answer is one line of per-item results.
    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        if self.answers {
            // A function that answers never gets a batch (config forbids it).
            return jetrun_functions::each_alone(self, items).await;
        }
        let mut line = Vec::from(&b"["[..]);
        let mut ids = Vec::with_capacity(items.len());
        for (n, (event, ctx)) in items.iter().enumerate() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut request = request_line(id, &self.request(event, ctx));
            request.pop();
            if n > 0 {
                line.push(b',');
            }
            line.extend_from_slice(&request);
            ids.push(protocol::ItemId {
                event: &event.id,
                request: Some(id),
            });
        }
        line.extend_from_slice(b"]\n");
        let function = &self.function;
        let answer = self
            .exchange(&line, |answer| {
                protocol::parse_batch_answer(function, answer, &ids).map_err(|why| {
                    format!(
                        "wrote a line that is not a batch answer ({{\"results\": [...]}}): {why}: \
                         {:?}",
                        String::from_utf8_lossy(&answer[..answer.len().min(200)])
                    )
                })
            })
            .await;
        answer.unwrap_or_else(|failure| protocol::every_item(failure, items.len()))
    }
}

/// One request line: `{"id": n, ...}` with the id first, so even a shell
/// worker can echo it (`sed 's/^{"id":\([0-9]*\).*/\1/'`).
fn request_line(id: u64, request: &serde_json::Value) -> Vec<u8> {
    let body = serde_json::to_vec(request).unwrap_or_default();
    let mut line = format!("{{\"id\":{id},").into_bytes();
    line.extend_from_slice(body.strip_prefix(b"{").unwrap_or(&body));
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_leads_with_its_id() {
        let line = request_line(42, &json!({"attempt": 1, "event": {"id": "e"}}));
        assert_eq!(
            line,
            b"{\"id\":42,\"attempt\":1,\"event\":{\"id\":\"e\"}}\n"
        );
        let parsed: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["id"], 42);
    }
}
