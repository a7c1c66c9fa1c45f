//! A call past the function's timeout is dropped, which kills an exec
//! child's process group, and becomes a retryable failure (504 for a
//! request). A batch is timed as one call: past it, every item fails.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jetrun_functions::{Context, Event, Failure, Function, Outcome};

pub(super) struct TimeLimited {
    inner: Arc<dyn Function>,
    timeout: Duration,
}

impl TimeLimited {
    pub(super) fn wrap(inner: Arc<dyn Function>, timeout: Duration) -> Arc<dyn Function> {
        Arc::new(TimeLimited { inner, timeout })
    }
}

#[async_trait]
impl Function for TimeLimited {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        match tokio::time::timeout(self.timeout, self.inner.call(event, ctx)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The whole batch call within the timeout; past it, every item fails alike.
    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        match tokio::time::timeout(self.timeout, self.inner.call_batch(items)).await {
            Ok(outcomes) => outcomes,
            Err(_) => vec![Err(self.timed_out()); items.len()],
        }
    }
}

impl TimeLimited {
    fn timed_out(&self) -> Failure {
        Failure::retryable(format!(
            "handler timed out after {}",
            humantime::format_duration(self.timeout)
        ))
        .with_status(504)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleepy(Duration);

    #[async_trait]
    impl Function for Sleepy {
        async fn call(&self, _: &Event, _: &Context) -> Outcome {
            tokio::time::sleep(self.0).await;
            Ok(jetrun_functions::Output::default())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_timeout_is_a_retryable_failure() {
        let f = TimeLimited::wrap(
            Arc::new(Sleepy(Duration::from_secs(10))),
            Duration::from_secs(1),
        );
        let err = f
            .call(&Event::default(), &Context::default())
            .await
            .unwrap_err();
        assert!(!err.is_permanent());
        assert_eq!(err.message, "handler timed out after 1s");
        assert_eq!(err.service_code(), 504);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_past_its_timeout_fails_every_item() {
        let f = TimeLimited::wrap(
            Arc::new(Sleepy(Duration::from_secs(10))),
            Duration::from_secs(15),
        );
        let items = vec![(Event::default(), Context::default()); 2];
        let outcomes = f.call_batch(&items).await;
        assert_eq!(outcomes.len(), 2);
        assert!(
            outcomes.iter().all(|o| o
                .as_ref()
                .is_err_and(|e| e.message == "handler timed out after 15s")),
            "the whole batch (two 10 s calls) is timed, not each item: {outcomes:?}"
        );
    }
}
