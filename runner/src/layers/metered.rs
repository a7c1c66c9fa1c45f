//! `jetrun_events_in_flight` and `jetrun_handler_duration_seconds` around
//! every call, however it ends (a dropped call counts too). A batch call
//! counts each of its events in flight and its duration once.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use jetrun_functions::{Context, Event, Function, Outcome};
use prometheus::{Histogram, IntGauge};

use crate::metrics::FunctionMetrics;

pub(crate) struct Metered {
    inner: Arc<dyn Function>,
    in_flight: IntGauge,
    duration: Histogram,
}

impl Metered {
    pub(crate) fn wrap(inner: Arc<dyn Function>, handles: &FunctionMetrics) -> Arc<dyn Function> {
        Arc::new(Metered {
            inner,
            in_flight: handles.in_flight.clone(),
            duration: handles.duration.clone(),
        })
    }
}

/// Counts a call's events in flight until dropped, however the call ends.
struct InFlight<'a> {
    gauge: &'a IntGauge,
    events: i64,
    duration: &'a Histogram,
    start: Instant,
}

impl<'a> InFlight<'a> {
    fn start(metered: &'a Metered, events: usize) -> Self {
        let events = i64::try_from(events).unwrap_or(i64::MAX);
        metered.in_flight.add(events);
        InFlight {
            gauge: &metered.in_flight,
            events,
            duration: &metered.duration,
            start: Instant::now(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.gauge.sub(self.events);
        self.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Function for Metered {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        let _counted = InFlight::start(self, 1);
        self.inner.call(event, ctx).await
    }

    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        let _counted = InFlight::start(self, items.len());
        self.inner.call_batch(items).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;

    struct Sleepy;

    #[async_trait]
    impl Function for Sleepy {
        async fn call(&self, _: &Event, _: &Context) -> Outcome {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(jetrun_functions::Output::default())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_counts_a_running_call_and_drops_with_it() {
        let handles = Metrics::new().for_function("f");
        let f = Metered::wrap(Arc::new(Sleepy), &handles);
        let (event, ctx) = (Event::default(), Context::default());
        let mut call = Box::pin(f.call(&event, &ctx));
        assert!(futures::FutureExt::now_or_never(&mut call).is_none());
        assert_eq!(handles.in_flight.get(), 1);
        drop(call);
        assert_eq!(handles.in_flight.get(), 0);
        assert_eq!(handles.duration.get_sample_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_counts_each_event_in_flight_and_its_duration_once() {
        let handles = Metrics::new().for_function("f");
        let f = Metered::wrap(Arc::new(Sleepy), &handles);
        let items = vec![(Event::default(), Context::default()); 3];
        let mut call = Box::pin(f.call_batch(&items));
        assert!(futures::FutureExt::now_or_never(&mut call).is_none());
        assert_eq!(handles.in_flight.get(), 3);
        drop(call);
        assert_eq!(handles.in_flight.get(), 0);
        assert_eq!(handles.duration.get_sample_count(), 1);
    }
}
