//! Every metric jetrun exports, registered once at start. Handles are cloned
//! out per function before the hot loop (see [`FunctionMetrics`]), so a
//! delivery never looks a metric up by name.

mod server;

pub(crate) use server::serve;

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    Counter, CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::readiness::Readiness;

/// The registry and every metric family in it.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    received: IntCounterVec,
    processed: IntCounterVec,
    duration: HistogramVec,
    batch_size: HistogramVec,
    key_wait: HistogramVec,
    in_flight: IntGaugeVec,
    dead_letters: IntCounterVec,
    emitted: IntCounterVec,
    pending: IntGaugeVec,
    ack_pending: IntGaugeVec,
    parked_keys: IntGaugeVec,
    pub(crate) nats_connected: IntGauge,
    ready: IntGauge,
    function_bound: IntGaugeVec,
    /// Held while the readiness gauges are set and the registry rendered,
    /// so two scrapes at once never read each other's half-set gauges.
    scraping: Arc<Mutex<()>>,
    config_reloads: IntCounterVec,
    requests: IntCounterVec,
    aggregate_conflicts: IntCounterVec,
    aggregate_appended: IntCounterVec,
    aggregate_unreadable: IntCounterVec,
    projection_updates: IntCounterVec,
    saga_instances: IntGaugeVec,
    saga_transitions: IntCounterVec,
    saga_ignored: IntCounterVec,
    saga_too_big: IntCounterVec,
    task_restarts: IntCounterVec,
    rate_limited: CounterVec,
    schedule_ticks: IntCounterVec,
    schedule_lag: HistogramVec,
    delayed_scheduled: IntCounterVec,
    pub(crate) delayed_late: Histogram,
}

/// Batch sizes: from a lone event to the largest batch worth sending.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Schedule lag buckets, in seconds: from a tick handled at once to one
/// that waited out a long outage.
const LAG_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// Handler latency buckets, in seconds: from a no-op built-in to a slow HTTP call.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let received = counter(
            "jetrun_events_received_total",
            "Deliveries received from JetStream, redeliveries included.",
            &["function"],
        );
        let processed = counter(
            "jetrun_events_processed_total",
            "Attempts finished, by what became of the event: success, retry or dead_letter.",
            &["function", "outcome"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "jetrun_handler_duration_seconds",
                "Time spent in the handler per attempt.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["function"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        let key_wait = HistogramVec::new(
            HistogramOpts::new(
                "jetrun_key_wait_seconds",
                "How long a keyed function's events waited behind an earlier event of their key \
                 (0 for one whose key was free).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["function"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(key_wait.clone()))
            .expect("registered once");
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "jetrun_batch_size",
                "Events per handler call of a function with batch.",
            )
            .buckets(BATCH_SIZE_BUCKETS.to_vec()),
            &["function"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(batch_size.clone()))
            .expect("registered once");
        let in_flight = gauge(
            "jetrun_events_in_flight",
            "Events being handled now.",
            &["function"],
        );
        let dead_letters = counter(
            "jetrun_dead_letters_total",
            "Events sent to the dead-letter subject, by reason: exhausted, permanent, panic \
             (the last attempt panicked) or parked (behind an earlier dead letter of its key, \
             on_dead_letter = \"park\").",
            &["function", "reason"],
        );
        let emitted = counter(
            "jetrun_events_emitted_total",
            "Events published by functions.",
            &["function"],
        );
        let pending = gauge(
            "jetrun_consumer_pending",
            "Messages in the stream not yet delivered to the function's consumer (num_pending).",
            &["function"],
        );
        let ack_pending = gauge(
            "jetrun_consumer_ack_pending",
            "Messages delivered to the function's consumer and not yet acknowledged.",
            &["function"],
        );
        let parked_keys = gauge(
            "jetrun_parked_keys",
            "Keys parked behind a dead letter (on_dead_letter = \"park\") until it is replayed, \
             as this runner sees them.",
            &["function"],
        );
        let requests = counter(
            "jetrun_requests_total",
            "Requests a request function answered, by code: 200, or the NATS micro error code \
             (400 permanent failure, 409 conflict, 503 busy or unavailable, 504 timeout, 500 \
             other).",
            &["function", "code"],
        );
        let aggregate_conflicts = counter(
            "jetrun_aggregate_conflicts_total",
            "Appends refused because another command appended to the instance first; each \
             reloads the instance and runs the command again.",
            &["aggregate"],
        );
        let aggregate_appended = counter(
            "jetrun_aggregate_events_appended_total",
            "Events appended to aggregate instances.",
            &["aggregate"],
        );
        let aggregate_unreadable = counter(
            "jetrun_aggregate_unreadable_events_total",
            "Commands failed (500) because an event of their instance could not be read.",
            &["aggregate"],
        );
        let projection_updates = counter(
            "jetrun_projection_updates_total",
            "Events a projection handled, by outcome: stored, deleted, skipped (already \
             applied) or conflict (another writer stored first; run again).",
            &["function", "outcome"],
        );
        let saga_instances = gauge(
            "jetrun_saga_instances",
            "Saga instances stored, by state: running, compensating, completed, failed, stuck.",
            &["saga", "state"],
        );
        let saga_transitions = counter(
            "jetrun_saga_transitions_total",
            "Saga transitions, by step (empty for the saga's own) and outcome: command, reply, \
             timeout, compensate, compensated, completed, failed.",
            &["saga", "step", "outcome"],
        );
        let saga_ignored = counter(
            "jetrun_saga_replies_ignored_total",
            "Saga inputs that changed nothing, by reason: duplicate, late, unexpected, unknown.",
            &["saga", "reason"],
        );
        let saga_too_big = counter(
            "jetrun_saga_instances_too_big_total",
            "Saga inputs dead-lettered because their instance would grow past what a message \
             may hold.",
            &["saga"],
        );
        let task_restarts = counter(
            "jetrun_task_restarts_total",
            "Long-lived tasks started again after they panicked or ended before their drain, by \
             task (consumer:FUNCTION, endpoint:FUNCTION, saga-watch:SAGA, saga-clock:SAGA).",
            &["task"],
        );
        let rate_limited = CounterVec::new(
            Opts::new(
                "jetrun_rate_limited_seconds_total",
                "Time events waited for their turn under the function's rate, in seconds.",
            ),
            &["function"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(rate_limited.clone()))
            .expect("registered once");
        let schedule_ticks = counter(
            "jetrun_schedule_ticks_total",
            "Ticks of a scheduled function handed to its handler, retries included.",
            &["function"],
        );
        let schedule_lag = HistogramVec::new(
            HistogramOpts::new(
                "jetrun_schedule_lag_seconds",
                "From the time a tick was scheduled for to the start of its handling.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &["function"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(schedule_lag.clone()))
            .expect("registered once");
        let delayed_scheduled = counter(
            "jetrun_delayed_events_scheduled_total",
            "Delayed events durably scheduled (stored to be published later), by the function \
             or saga that emitted them; a repeat the schedules stream dropped is not counted.",
            &["function"],
        );
        let delayed_late = Histogram::with_opts(
            HistogramOpts::new(
                "jetrun_delayed_events_late_seconds",
                "From the time a delayed event was due to its store on its subject.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(delayed_late.clone()))
            .expect("registered once");
        let config_reloads = counter(
            "jetrun_config_reloads_total",
            "Config reloads (SIGHUP or --watch), by result: success or failure.",
            &["result"],
        );
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        let nats_connected = IntGauge::new(
            "jetrun_nats_connected",
            "1 while the connection to NATS is up.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(nats_connected.clone()))
            .expect("registered once");
        let ready = IntGauge::new(
            "jetrun_ready",
            "1 while /readyz answers 200: connected to NATS, every consumer and endpoint bound, \
             every saga's instances loaded, no supervised task restarting.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(ready.clone()))
            .expect("registered once");
        let function_bound = gauge(
            "jetrun_function_bound",
            "1 while the function's durable consumer (a request function's endpoint) is bound, \
             0 while jetrun binds it again; saga consumers as CONSUMER@STREAM.",
            &["function"],
        );
        let build_info = Gauge::with_opts(
            Opts::new("jetrun_build_info", "jetrun's version; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build_info.set(1.0);
        registry
            .register(Box::new(build_info))
            .expect("registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once");
        Metrics {
            registry,
            received,
            processed,
            duration,
            batch_size,
            key_wait,
            in_flight,
            dead_letters,
            emitted,
            pending,
            ack_pending,
            parked_keys,
            nats_connected,
            ready,
            function_bound,
            scraping: Arc::default(),
            config_reloads,
            requests,
            aggregate_conflicts,
            aggregate_appended,
            aggregate_unreadable,
            projection_updates,
            saga_instances,
            saga_transitions,
            saga_ignored,
            saga_too_big,
            task_restarts,
            rate_limited,
            schedule_ticks,
            schedule_lag,
            delayed_scheduled,
            delayed_late,
        }
    }

    /// The tick handles of scheduled function `function`, visible at 0
    /// from the start.
    pub(crate) fn for_schedule(&self, function: &str) -> ScheduleMetrics {
        ScheduleMetrics {
            ticks: self.schedule_ticks.with_label_values(&[function]),
            lag: self.schedule_lag.with_label_values(&[function]),
        }
    }

    /// The handles of saga `name`. Its instance gauges, ignored replies and
    /// saga-level endings (`completed`, `failed`) exist at 0 from the start;
    /// a step's transitions from its first.
    pub(crate) fn for_saga(&self, name: &str) -> SagaMetrics {
        for state in SAGA_STATES {
            self.saga_instances.with_label_values(&[name, state]);
        }
        for reason in SAGA_IGNORED_REASONS {
            self.saga_ignored.with_label_values(&[name, reason]);
        }
        for outcome in ["completed", "failed"] {
            self.saga_transitions
                .with_label_values(&[name, "", outcome]);
        }
        SagaMetrics {
            saga: name.to_string(),
            instances: self.saga_instances.clone(),
            transitions: self.saga_transitions.clone(),
            ignored: self.saga_ignored.clone(),
            too_big: self.saga_too_big.clone(),
            delayed: self
                .delayed_scheduled
                .with_label_values(&[&jetrun_config::name::saga_consumer(name)]),
        }
    }

    /// The handles of request function `function`: one counter per code it
    /// answers with, each visible at 0 from the start.
    pub(crate) fn for_requests(&self, function: &str) -> RequestMetrics {
        let codes = REQUEST_CODES.map(|code| {
            (
                code,
                self.requests
                    .with_label_values(&[function, &code.to_string()]),
            )
        });
        RequestMetrics {
            function: function.into(),
            codes: Arc::new(codes),
            requests: self.requests.clone(),
        }
    }

    /// The handles of aggregate `name`: conflicts, events appended.
    pub(crate) fn for_aggregate(&self, name: &str) -> AggregateMetrics {
        AggregateMetrics {
            conflicts: self.aggregate_conflicts.with_label_values(&[name]),
            appended: self.aggregate_appended.with_label_values(&[name]),
            unreadable: self.aggregate_unreadable.with_label_values(&[name]),
        }
    }

    /// The update counters of projection function `function`, by outcome.
    pub(crate) fn for_projection(&self, function: &str) -> ProjectionMetrics {
        let outcome = |o: &str| self.projection_updates.with_label_values(&[function, o]);
        ProjectionMetrics {
            stored: outcome("stored"),
            deleted: outcome("deleted"),
            skipped: outcome("skipped"),
            conflict: outcome("conflict"),
        }
    }

    /// Counts one restart of a supervised task.
    pub(crate) fn task_restarted(&self, task: &str) {
        self.task_restarts.with_label_values(&[task]).inc();
    }

    /// Counts one config reload.
    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// The handles one function's deliveries use, with their labels bound.
    /// Creating them also makes every series of the function visible at 0.
    pub(crate) fn for_function(&self, function: &str) -> FunctionMetrics {
        let f = &[function];
        FunctionMetrics {
            received: self.received.with_label_values(f),
            success: self.processed.with_label_values(&[function, "success"]),
            retry: self.processed.with_label_values(&[function, "retry"]),
            dead_letter: self.processed.with_label_values(&[function, "dead_letter"]),
            duration: self.duration.with_label_values(f),
            batch_size: self.batch_size.with_label_values(f),
            key_wait: self.key_wait.with_label_values(f),
            in_flight: self.in_flight.with_label_values(f),
            exhausted: self
                .dead_letters
                .with_label_values(&[function, "exhausted"]),
            permanent: self
                .dead_letters
                .with_label_values(&[function, "permanent"]),
            panicked: self.dead_letters.with_label_values(&[function, "panic"]),
            parked: self.dead_letters.with_label_values(&[function, "parked"]),
            parked_keys: self.parked_keys.with_label_values(f),
            emitted: self.emitted.with_label_values(f),
            delayed: self.delayed_scheduled.with_label_values(f),
            pending: self.pending.with_label_values(f),
            ack_pending: self.ack_pending.with_label_values(f),
            rate_limited: self.rate_limited.with_label_values(f),
        }
    }

    /// Everything in Prometheus text format, with `jetrun_ready` and
    /// `jetrun_function_bound` set from `readiness` first: what `/readyz`
    /// knows at the moment of the scrape.
    pub(crate) fn scrape(&self, readiness: &Readiness) -> String {
        let _turn = self.scraping.lock().unwrap_or_else(PoisonError::into_inner);
        self.ready
            .set(i64::from(readiness.not_ready_reason().is_none()));
        self.function_bound.reset();
        for (function, bound) in readiness.bound() {
            self.function_bound
                .with_label_values(&[&function])
                .set(i64::from(bound));
        }
        self.render()
    }

    /// Everything in Prometheus text format, the readiness gauges as the
    /// last [`scrape`](Self::scrape) set them.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(%err, "Could not encode metrics.");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The states `jetrun_saga_instances` reports, as the machine names them.
pub(crate) const SAGA_STATES: [&str; 5] =
    ["running", "compensating", "completed", "failed", "stuck"];

/// Why `jetrun_saga_replies_ignored_total` says an input changed nothing.
const SAGA_IGNORED_REASONS: [&str; 4] = ["duplicate", "late", "unexpected", "unknown"];

/// One saga's metric handles.
#[derive(Clone)]
pub(crate) struct SagaMetrics {
    saga: String,
    instances: IntGaugeVec,
    transitions: IntCounterVec,
    ignored: IntCounterVec,
    too_big: IntCounterVec,
    /// `jetrun_delayed_events_scheduled_total{function="saga-NAME"}`: the
    /// delayed steps' commands held.
    pub(crate) delayed: IntCounter,
}

impl SagaMetrics {
    /// Counts an input that changed nothing, by `reason` (one of
    /// `SAGA_IGNORED_REASONS`).
    pub(crate) fn ignored(&self, reason: &'static str) {
        self.ignored
            .with_label_values(&[self.saga.as_str(), reason])
            .inc();
    }

    /// Counts one transition of `step` (empty for the saga's own events).
    pub(crate) fn transition(&self, step: &str, outcome: &'static str) {
        self.transitions
            .with_label_values(&[self.saga.as_str(), step, outcome])
            .inc();
    }

    /// Sets the instance gauges: `counts` in the order of [`SAGA_STATES`].
    pub(crate) fn set_states(&self, counts: &[i64; SAGA_STATES.len()]) {
        for (state, count) in SAGA_STATES.iter().zip(counts) {
            self.instances
                .with_label_values(&[self.saga.as_str(), state])
                .set(*count);
        }
    }

    /// Counts an instance that grew too big to be stored.
    pub(crate) fn too_big(&self) {
        self.too_big.with_label_values(&[self.saga.as_str()]).inc();
    }
}

/// One scheduled function's tick handles, bound at start.
#[derive(Clone)]
pub(crate) struct ScheduleMetrics {
    pub(crate) ticks: IntCounter,
    pub(crate) lag: Histogram,
}

/// One aggregate's counters, bound at start.
#[derive(Clone)]
pub(crate) struct AggregateMetrics {
    pub(crate) conflicts: IntCounter,
    pub(crate) appended: IntCounter,
    pub(crate) unreadable: IntCounter,
}

/// One projection's update counters, bound at start.
#[derive(Clone)]
pub(crate) struct ProjectionMetrics {
    pub(crate) stored: IntCounter,
    pub(crate) deleted: IntCounter,
    pub(crate) skipped: IntCounter,
    pub(crate) conflict: IntCounter,
}

/// The codes a request function answers with: 200, 400 (a permanent
/// failure), 409 (a conflict), 500 (any other failure), 503 (busy, shutting
/// down, or a resource jetrun needs is unavailable), 504 (a timeout).
const REQUEST_CODES: [u16; 6] = [200, 400, 409, 500, 503, 504];

/// One request function's answer counters, bound at start.
#[derive(Clone)]
pub(crate) struct RequestMetrics {
    function: Arc<str>,
    codes: Arc<[(u16, IntCounter); REQUEST_CODES.len()]>,
    requests: IntCounterVec,
}

impl RequestMetrics {
    /// Counts a request answered with `code` (200 for success).
    pub(crate) fn answered(&self, code: u16) {
        match self.codes.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => self
                .requests
                .with_label_values(&[&*self.function, &code.to_string()])
                .inc(),
        }
    }
}

/// One function's metric handles.
#[derive(Clone)]
pub(crate) struct FunctionMetrics {
    pub(crate) received: IntCounter,
    pub(crate) success: IntCounter,
    pub(crate) retry: IntCounter,
    pub(crate) dead_letter: IntCounter,
    pub(crate) duration: Histogram,
    /// `jetrun_batch_size`: observed once per batch call.
    pub(crate) batch_size: Histogram,
    pub(crate) key_wait: Histogram,
    pub(crate) in_flight: IntGauge,
    pub(crate) exhausted: IntCounter,
    pub(crate) permanent: IntCounter,
    pub(crate) panicked: IntCounter,
    /// Dead letters of events parked behind an earlier one of their key.
    pub(crate) parked: IntCounter,
    /// `jetrun_parked_keys`: set by the watch of the function's parks.
    pub(crate) parked_keys: IntGauge,
    pub(crate) emitted: IntCounter,
    /// `jetrun_delayed_events_scheduled_total`.
    pub(crate) delayed: IntCounter,
    pub(crate) pending: IntGauge,
    pub(crate) ack_pending: IntGauge,
    /// `jetrun_rate_limited_seconds_total`.
    pub(crate) rate_limited: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_exports_what_readyz_knows() {
        let metrics = Metrics::new();
        let readiness = Readiness::new(&["resize".to_string(), "quote".to_string()]);
        let text = metrics.scrape(&readiness);
        for series in [
            "jetrun_ready 0",
            r#"jetrun_function_bound{function="resize"} 0"#,
            r#"jetrun_function_bound{function="quote"} 0"#,
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }

        readiness.set_connected(true);
        readiness.set_bound("resize", true);
        let text = metrics.scrape(&readiness);
        for series in [
            "jetrun_ready 0",
            r#"jetrun_function_bound{function="resize"} 1"#,
            r#"jetrun_function_bound{function="quote"} 0"#,
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }

        readiness.set_bound("quote", true);
        assert!(metrics.scrape(&readiness).contains("jetrun_ready 1"));
        readiness.set_down("consumer:resize", true);
        assert!(metrics.scrape(&readiness).contains("jetrun_ready 0"));
        readiness.set_down("consumer:resize", false);

        // A function no longer run leaves no series behind.
        readiness.remove("quote");
        let text = metrics.scrape(&readiness);
        assert!(text.contains("jetrun_ready 1"), "{text}");
        assert!(!text.contains(r#"function="quote""#), "{text}");
    }

    #[test]
    fn a_sagas_series_exist_at_zero_and_count_what_the_runtime_reports() {
        let metrics = Metrics::new();
        let saga = metrics.for_saga("fulfil");
        let text = metrics.render();
        for series in [
            r#"jetrun_saga_instances{saga="fulfil",state="stuck"} 0"#,
            r#"jetrun_saga_replies_ignored_total{reason="late",saga="fulfil"} 0"#,
            r#"jetrun_saga_transitions_total{outcome="failed",saga="fulfil",step=""} 0"#,
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }

        saga.set_states(&[2, 0, 0, 0, 1]);
        saga.transition("reserve", "compensate");
        saga.ignored("duplicate");
        let text = metrics.render();
        for series in [
            r#"jetrun_saga_instances{saga="fulfil",state="running"} 2"#,
            r#"jetrun_saga_instances{saga="fulfil",state="stuck"} 1"#,
            r#"jetrun_saga_instances{saga="fulfil",state="failed"} 0"#,
            r#"jetrun_saga_transitions_total{outcome="compensate",saga="fulfil",step="reserve"} 1"#,
            r#"jetrun_saga_replies_ignored_total{reason="duplicate",saga="fulfil"} 1"#,
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }
    }
}
