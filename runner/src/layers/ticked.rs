//! `jetrun_schedule_ticks_total` and `jetrun_schedule_lag_seconds` around
//! a scheduled function: the outermost layer, so the lag is measured to the
//! moment the stack is called.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use jetrun_functions::{Context, Event, Function, Outcome};
use prometheus::{Histogram, IntCounter};

use crate::schedule::TICK_TYPE;

/// Counts each tick a scheduled function is handed
/// (`jetrun_schedule_ticks_total`) and how late its handling starts after
/// the time it was scheduled for (`jetrun_schedule_lag_seconds`).
pub(super) struct Ticked {
    inner: Arc<dyn Function>,
    ticks: IntCounter,
    lag: Histogram,
}

impl Ticked {
    pub(super) fn wrap(
        inner: Arc<dyn Function>,
        metrics: &crate::metrics::ScheduleMetrics,
    ) -> Arc<dyn Function> {
        Arc::new(Ticked {
            inner,
            ticks: metrics.ticks.clone(),
            lag: metrics.lag.clone(),
        })
    }

    fn count(&self, event: &Event) {
        if event.event_type != TICK_TYPE {
            return;
        }
        self.ticks.inc();
        if let Some(lag) = event.time.as_deref().and_then(lag_since) {
            self.lag.observe(lag);
        }
    }
}

/// Seconds from `scheduled_at` (RFC 3339) to now; 0 when it is ahead.
fn lag_since(scheduled_at: &str) -> Option<f64> {
    let at = chrono::DateTime::parse_from_rfc3339(scheduled_at).ok()?;
    let at = SystemTime::from(at);
    Some(
        SystemTime::now()
            .duration_since(at)
            .map_or(0.0, |d| d.as_secs_f64()),
    )
}

#[async_trait]
impl Function for Ticked {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        self.count(event);
        self.inner.call(event, ctx).await
    }

    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        for (event, _) in items {
            self.count(event);
        }
        self.inner.call_batch(items).await
    }
}
