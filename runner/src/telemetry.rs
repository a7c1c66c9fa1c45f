//! OpenTelemetry traces, exported over OTLP/HTTP (protobuf) when the config
//! has `[telemetry]`: the exporter, the `tracing` layer that turns jetrun's
//! spans into OpenTelemetry spans, and those spans, named and attributed
//! after the messaging semantic conventions.
//!
//! One delivery is one `process FUNCTION` span (kind consumer), continuing
//! the input's W3C `traceparent` when it has one, with children for the
//! handler call (`call FUNCTION`), each emit (`send TYPE`, kind producer,
//! whose context the emitted event carries on) and the dead-letter write
//! (`send SUBJECT`). The call's own context reaches the handler as
//! `Context::trace`, so what the call sends itself (an HTTP request, an
//! aggregate's appends, a saga's commands) continues the `call` span. Without `[telemetry]` no layer is installed and none of
//! these spans is made: [`enabled`] is one atomic load.
//!
//! The spans are made with explicit parents and never entered, so a
//! delivery's log span (`logging::event_span`) is unchanged, and the log
//! lines do not show them.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use jetrun_config::TelemetryConfig;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::{Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::envelope::TraceContext;

/// The target of every span exported: the only one the OpenTelemetry layer
/// sees, and one the log layer leaves out.
pub(crate) const SPAN_TARGET: &str = "jetrun::telemetry::span";

/// How long an export may take, and the final flush on shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The provider, once [`layer`] has built it: telemetry is on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why telemetry cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP exporter for {url}: {reason}")]
pub(crate) struct CannotExport {
    url: String,
    reason: String,
}

/// Whether spans are exported (`[telemetry]` is in the config).
pub(crate) fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// The layer exporting jetrun's spans to `config.traces_url`, seeing only
/// [`SPAN_TARGET`]. Spans are sent in batches from a thread of the
/// exporter's own, and flushed by [`shutdown`].
pub(crate) fn layer<S>(config: &TelemetryConfig) -> Result<impl Layer<S>, CannotExport>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let failed = |reason: String| CannotExport {
        url: config.traces_url.clone(),
        reason,
    };
    let headers: HashMap<String, String> = config.headers.clone().into_iter().collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(headers)
        .build()
        .map_err(|err| failed(err.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("jetrun");
    PROVIDER
        .set(provider)
        .map_err(|_| failed("telemetry is already started".into()))?;
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(Targets::new().with_target(SPAN_TARGET, Level::INFO)))
}

/// Sends the spans not yet exported and stops the exporter; a no-op
/// without telemetry.
pub(crate) async fn shutdown() {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    // The exporter's thread is waited for: not on the async runtime's.
    let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(EXPORT_TIMEOUT));
    match tokio::time::timeout(EXPORT_TIMEOUT * 2, done).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!(%err, "Cannot flush the last spans."),
        Ok(Err(_)) | Err(_) => tracing::warn!("Cannot flush the last spans in time."),
    }
}

/// A delivery's input as the process span needs it.
pub(crate) struct Input<'a> {
    pub(crate) function: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) stream: &'a str,
    pub(crate) sequence: u64,
    pub(crate) attempt: u64,
    pub(crate) event_id: Option<&'a str>,
    pub(crate) event_type: Option<&'a str>,
    pub(crate) correlation_id: Option<&'a str>,
    /// The W3C trace context it came with.
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) tracestate: Option<&'a str>,
}

/// The span of one delivery, child of the input's `traceparent`; `None`
/// without telemetry.
pub(crate) fn process(input: &Input<'_>) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "process",
        otel.name = %format_args!("process {}", input.function),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = input.subject,
        messaging.destination.subscription.name = input.function,
        messaging.consumer.group.name = input.function,
        messaging.message.id = input.event_id,
        messaging.message.conversation_id = input.correlation_id,
        cloudevents.event_type = input.event_type,
        jetrun.function = input.function,
        jetrun.attempt = int(input.attempt),
        jetrun.stream = input.stream,
        jetrun.stream.sequence = int(input.sequence),
    );
    if let Some(traceparent) = input.traceparent {
        let carrier = Carrier {
            traceparent: Some(traceparent),
            tracestate: input.tracestate,
        };
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
    Some(span)
}

/// `n` as OpenTelemetry's integer (an `i64`): the layer records a `u64` as
/// text.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The span of the handler call, within `parent`'s.
pub(crate) fn call(parent: &Span, function: &str) -> Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        parent: parent,
        "call",
        otel.name = %format_args!("call {function}"),
        jetrun.function = function,
    )
}

/// The span of one emit's publish, within `parent`'s, and the trace context
/// the emitted event carries: this span's, so the next hop's span is its
/// child.
pub(crate) fn send(
    parent: &Span,
    subject: &str,
    event_type: &str,
    id: &str,
) -> (Span, TraceContext) {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        parent: parent,
        "send",
        otel.name = %format_args!("send {event_type}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = subject,
        messaging.message.id = id,
        cloudevents.event_type = event_type,
    );
    let context = trace_context(&span);
    (span, context)
}

/// The span of a dead letter's publish, within `parent`'s.
pub(crate) fn dead_letter(parent: &Span, subject: &str, reason: &str) -> Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        parent: parent,
        "send",
        otel.name = %format_args!("send {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = subject,
        jetrun.dead_letter.reason = reason,
    )
}

/// Records how the delivery ended (`handled`, `retried`, `dead_lettered`,
/// ...) on its span.
pub(crate) fn outcome(span: &Span, outcome: &'static str) {
    span.set_attribute("jetrun.outcome", outcome);
}

/// Marks `span` failed, with `error` (already redacted) as its status.
pub(crate) fn failed(span: &Span, error: &str) {
    span.set_status(Status::error(error.to_owned()));
}

/// `span`'s context as W3C headers.
pub(crate) fn trace_context(span: &Span) -> TraceContext {
    let mut carrier = Injected::default();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    TraceContext {
        traceparent: carrier.traceparent.unwrap_or_default(),
        tracestate: carrier.tracestate.filter(|s| !s.is_empty()),
    }
}

/// An input's trace context, for the propagator to read.
struct Carrier<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// What the propagator writes for an outgoing event.
#[derive(Default)]
struct Injected {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Injected {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" => self.tracestate = Some(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_telemetry_no_span_is_made() {
        let input = Input {
            function: "f",
            subject: "ev.a",
            stream: "EVENTS",
            sequence: 1,
            attempt: 1,
            event_id: None,
            event_type: None,
            correlation_id: None,
            traceparent: None,
            tracestate: None,
        };
        assert!(process(&input).is_none());
    }

    #[test]
    fn an_input_context_is_read_and_a_span_context_written_in_w3c_form() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let carrier = Carrier {
            traceparent: Some(parent),
            tracestate: Some("congo=t61rcWkgMzE"),
        };
        let propagator = TraceContextPropagator::new();
        let context = propagator.extract(&carrier);
        let mut injected = Injected::default();
        propagator.inject_context(&context, &mut injected);
        assert_eq!(injected.traceparent.as_deref(), Some(parent));
        assert_eq!(injected.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
    }
}
