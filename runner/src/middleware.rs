//! What wraps every handler call, as layers in one order, outermost first:
//!
//! 1. **tracing**: the delivery runs inside a span carrying function, event
//!    id, type, correlation and causation ids and attempt (made in
//!    `delivery`, so the ack and dead-letter logs are in it too);
//! 2. [`Metered`]: `jetrun_events_in_flight` and `jetrun_handler_duration_seconds`;
//! 3. [`TimeLimited`]: a call past the timeout is dropped (which kills an
//!    exec child's process group) and becomes a retryable failure;
//! 4. the handler itself, which never counts its own metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jetrun_functions::{Context, Event, Failure, Function, Outcome};
use prometheus::{Histogram, IntGauge};

/// Wraps `handler` in the layers above (but the span, which needs the event).
pub(crate) fn layered(
    handler: Arc<dyn Function>,
    timeout: Duration,
    in_flight: IntGauge,
    duration: Histogram,
) -> Arc<dyn Function> {
    Arc::new(Metered {
        inner: TimeLimited {
            inner: handler,
            timeout,
        },
        in_flight,
        duration,
    })
}

pub(crate) struct Metered<F> {
    inner: F,
    in_flight: IntGauge,
    duration: Histogram,
}

/// Counts one call in flight until dropped, however the call ends.
struct InFlight<'a> {
    gauge: &'a IntGauge,
    duration: &'a Histogram,
    start: Instant,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
        self.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl<F: Function> Function for Metered<F> {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        self.in_flight.inc();
        let _counted = InFlight {
            gauge: &self.in_flight,
            duration: &self.duration,
            start: Instant::now(),
        };
        self.inner.call(event, ctx).await
    }
}

pub(crate) struct TimeLimited {
    inner: Arc<dyn Function>,
    timeout: Duration,
}

#[async_trait]
impl Function for TimeLimited {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        match tokio::time::timeout(self.timeout, self.inner.call(event, ctx)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::retryable(format!(
                "handler timed out after {}",
                humantime::format_duration(self.timeout)
            ))
            .with_status(504)),
        }
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

    fn ctx() -> Context {
        Context {
            function: "f".into(),
            attempt: 1,
            subject: "s".into(),
            stream: "S".into(),
            sequence: 1,
        }
    }

    fn layers(sleep: Duration, timeout: Duration) -> (Arc<dyn Function>, IntGauge, Histogram) {
        let gauge = IntGauge::new("g", "g").unwrap();
        let hist = Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
        let f = layered(
            Arc::new(Sleepy(sleep)),
            timeout,
            gauge.clone(),
            hist.clone(),
        );
        (f, gauge, hist)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_its_timeout_is_a_retryable_failure() {
        let (f, gauge, hist) = layers(Duration::from_secs(10), Duration::from_secs(1));
        let err = f.call(&Event::default(), &ctx()).await.unwrap_err();
        assert!(!err.is_permanent());
        assert_eq!(err.message, "handler timed out after 1s");
        assert_eq!(gauge.get(), 0);
        assert_eq!(hist.get_sample_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_counts_a_running_call_and_drops_with_it() {
        let (f, gauge, _) = layers(Duration::from_secs(10), Duration::from_secs(60));
        let event = Event::default();
        let ctx = ctx();
        let call = f.call(&event, &ctx);
        let mut call = Box::pin(call);
        assert!(futures::FutureExt::now_or_never(&mut call).is_none());
        assert_eq!(gauge.get(), 1);
        drop(call);
        assert_eq!(gauge.get(), 0);
    }
}
