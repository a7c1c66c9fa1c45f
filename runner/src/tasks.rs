//! Every long-lived task jetrun runs (a function's consumer, a request
//! endpoint, a saga's consumers, watch and clock) is supervised here: one
//! that ends before its drain, or panics, is logged at error level, counted
//! in `jetrun_task_restarts_total{task}`, reported by `/readyz` (503) while
//! it is down, and started again after a backoff. A panic never takes a
//! function down for good.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;

/// The first pause before a restart; it doubles up to [`MAX_PAUSE`], and
/// starts again from here once a task has run for [`STEADY`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(10);
const STEADY: Duration = Duration::from_secs(60);

/// What a panic said: its message when it is text.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Where a supervised task reports.
#[derive(Clone)]
pub(crate) struct Supervision {
    pub(crate) metrics: Metrics,
    pub(crate) readiness: Readiness,
}

/// Runs `run()` in a task of its own until `shutdown` drains it, starting it
/// again whenever it ends early or panics. `task` names it in the log, in
/// `/readyz` and in the metric's `task` label (`consumer:reserve-stock`).
pub(crate) fn spawn<F, Fut>(
    task: String,
    shutdown: Shutdown,
    supervision: Supervision,
    run: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut pause = FIRST_PAUSE;
        loop {
            let started = tokio::time::Instant::now();
            let ended = tokio::spawn(run()).await;
            if shutdown.is_draining() {
                return;
            }
            let how = match ended {
                Ok(()) => "ended before its drain".to_string(),
                Err(err) if err.is_panic() => {
                    format!("panicked: {}", panic_message(err.into_panic().as_ref()))
                }
                Err(err) => format!("stopped: {err}"),
            };
            supervision.metrics.task_restarted(&task);
            supervision.readiness.set_down(&task, true);
            if started.elapsed() > STEADY {
                pause = FIRST_PAUSE;
            }
            tracing::error!(
                %task,
                restart_in = ?pause,
                "A task {how}; restarting it. This is a bug in jetrun: please report it with this log."
            );
            tokio::select! {
                () = shutdown.draining() => {
                    supervision.readiness.set_down(&task, false);
                    return;
                }
                () = tokio::time::sleep(pause) => {}
            }
            supervision.readiness.set_down(&task, false);
            pause = (pause * 2).min(MAX_PAUSE);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::shutdown::Control;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_is_started_again_and_counted() {
        let metrics = Metrics::new();
        let readiness = Readiness::default();
        let supervision = Supervision {
            metrics: metrics.clone(),
            readiness: readiness.clone(),
        };
        let (control, shutdown) = Control::new();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let task = spawn(
            "consumer:f".into(),
            shutdown.clone(),
            supervision,
            move || {
                let runs = counted.clone();
                let shutdown = shutdown.clone();
                async move {
                    if runs.fetch_add(1, Ordering::Relaxed) < 2 {
                        panic!("boom");
                    }
                    shutdown.draining().await;
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::Relaxed), 3);
        assert!(metrics
            .render()
            .contains(r#"jetrun_task_restarts_total{task="consumer:f"} 2"#));
        assert_eq!(readiness.down(), Vec::<String>::new());
        control.drain();
        task.await.unwrap();
    }
}
