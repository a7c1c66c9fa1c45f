//! How jetrun logs: one subscriber writing text or JSON lines to stderr,
//! filtered by `JETRUN_LOG`, and the span each delivery is handled in.
//!
//! A delivery's span carries the event's fields (`function`, `event_id`,
//! `event_type`, `correlation_id`, `causation_id`, `attempt`, `stream`,
//! `sequence`), but the log formatter would render them into text when the
//! span is made, for every event, logged in or not: about a sixth of the
//! runner's CPU per no-op event. So the span is made with its fields empty
//! and the values are kept aside in it ([`event_span`]); [`LazyFields`]
//! renders them, the way the formatter would have, just before the first
//! line logged inside the span (or a span within it). A delivery that logs
//! nothing never pays for them. The lines read the same either way.
//!
//! With `[telemetry]`, a second layer exports jetrun's spans
//! ([`crate::telemetry`]); the log filter then applies to the log layers
//! alone, and leaves those spans out of the lines. Without it, the
//! subscriber is the one above and nothing else.

use tracing::field::{display, DisplayValue, Empty, Value, ValueSet};
use tracing::span::Record;
use tracing::{Metadata, Span, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, JsonFields};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::{LookupSpan, Registry, SpanData as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use jetrun_config::TelemetryConfig;

use crate::cli::LogFormat;
use crate::telemetry;

/// What is logged unless `JETRUN_LOG` says otherwise.
const DEFAULT_FILTER: &str = "info,async_nats=warn,async_nats::connector=off";

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("JETRUN_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Starts logging, and exporting spans when `telemetry` is given.
pub(crate) fn init_with(
    format: LogFormat,
    telemetry: Option<&TelemetryConfig>,
) -> Result<(), telemetry::CannotExport> {
    let Some(config) = telemetry else {
        init(format);
        return Ok(());
    };
    let spans = telemetry::layer(config)?;
    // The exported spans are not logged; what the filter leaves out never
    // reaches the log layers (nor their fields' rendering).
    let filter = || {
        filter().add_directive(
            format!("{}=off", telemetry::SPAN_TARGET)
                .parse()
                .expect("a valid directive"),
        )
    };
    let registry = tracing_subscriber::registry().with(spans);
    match format {
        LogFormat::Text => registry.with(text_layer().with_filter(filter())).init(),
        LogFormat::Json => registry.with(json_layer().with_filter(filter())).init(),
    }
    Ok(())
}

/// Starts logging to stderr: text (coloured only for a person at a
/// terminal) or one JSON object per line.
pub(crate) fn init(format: LogFormat) {
    let registry = tracing_subscriber::registry().with(filter());
    match format {
        LogFormat::Text => registry.with(text_layer()).init(),
        LogFormat::Json => registry.with(json_layer()).init(),
    }
}

/// Text lines on stderr, coloured only for a person at a terminal, with a
/// delivery's fields rendered lazily.
fn text_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    LazyFields(DefaultFields::new()).and_then(
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr),
    )
}

/// One JSON object per line on stderr, with a delivery's fields rendered
/// lazily.
fn json_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    LazyFields(JsonFields::new()).and_then(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr),
    )
}

/// The fields of a delivery's span, rendered only when something is logged
/// in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventFields {
    pub(crate) function: String,
    pub(crate) event_id: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) causation_id: Option<String>,
    pub(crate) attempt: u64,
    pub(crate) stream: String,
    pub(crate) sequence: u64,
}

/// Kept in a span's extensions until [`LazyFields`] renders it.
struct Pending(EventFields);

/// The span one delivery is handled in, its fields kept aside until a line
/// is logged in it. Without jetrun's subscriber (a unit test) they are
/// recorded at once.
pub(crate) fn event_span(fields: EventFields) -> Span {
    let span = tracing::info_span!(
        "event",
        function = Empty,
        event_id = Empty,
        event_type = Empty,
        correlation_id = Empty,
        causation_id = Empty,
        attempt = Empty,
        stream = Empty,
        sequence = Empty,
    );
    let mut fields = Some(fields);
    span.with_subscriber(|(id, dispatch)| {
        let Some(data) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span_data(id))
        else {
            return;
        };
        if let Some(fields) = fields.take() {
            data.extensions_mut().insert(Pending(fields));
        }
    });
    if let Some(fields) = fields {
        if let Some(metadata) = span.metadata() {
            let fields = &fields;
            with_values(fields, metadata, |values| {
                span.record_all(values);
            });
        }
    }
    span
}

/// An optional string field, as the formatter shows a string.
fn text(value: &Option<String>) -> Option<DisplayValue<&str>> {
    value.as_deref().map(display)
}

/// Hands `fields` as values of `metadata`'s fields to `f`.
fn with_values(
    fields: &EventFields,
    metadata: &'static Metadata<'static>,
    f: impl FnOnce(&ValueSet<'_>),
) {
    let set = metadata.fields();
    let (
        Some(function),
        Some(event_id),
        Some(event_type),
        Some(correlation_id),
        Some(causation_id),
        Some(attempt),
        Some(stream),
        Some(sequence),
    ) = (
        set.field("function"),
        set.field("event_id"),
        set.field("event_type"),
        set.field("correlation_id"),
        set.field("causation_id"),
        set.field("attempt"),
        set.field("stream"),
        set.field("sequence"),
    )
    else {
        return;
    };
    let (event_id_v, event_type_v, correlation_v, causation_v) = (
        text(&fields.event_id),
        text(&fields.event_type),
        text(&fields.correlation_id),
        text(&fields.causation_id),
    );
    let function_v = display(fields.function.as_str());
    let stream_v = display(fields.stream.as_str());
    let values: [(&tracing::field::Field, Option<&dyn Value>); 8] = [
        (&function, Some(&function_v)),
        (&event_id, event_id_v.as_ref().map(|v| v as &dyn Value)),
        (&event_type, event_type_v.as_ref().map(|v| v as &dyn Value)),
        (
            &correlation_id,
            correlation_v.as_ref().map(|v| v as &dyn Value),
        ),
        (&causation_id, causation_v.as_ref().map(|v| v as &dyn Value)),
        (&attempt, Some(&fields.attempt)),
        (&stream, Some(&stream_v)),
        (&sequence, Some(&fields.sequence)),
    ];
    f(&set.value_set(&values));
}

/// Renders a span's kept-aside fields, with the formatter's own field
/// format `N`, just before a line logged in it is written. It must sit
/// between the registry and the formatting layer, which reads what it
/// rendered.
pub(crate) struct LazyFields<N>(N);

impl<S, N> Layer<S> for LazyFields<N>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            let mut extensions = span.extensions_mut();
            let Some(Pending(fields)) = extensions.remove::<Pending>() else {
                continue;
            };
            if let Some(formatted) = extensions.get_mut::<FormattedFields<N>>() {
                with_values(&fields, span.metadata(), |values| {
                    let _ = self.0.add_fields(formatted, &Record::new(values));
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn fields() -> EventFields {
        EventFields {
            function: "reserve".into(),
            event_id: Some("e-1".into()),
            event_type: Some("order.placed".into()),
            correlation_id: Some("checkout-1001".into()),
            causation_id: None,
            attempt: 2,
            stream: "ORDERS".into(),
            sequence: 42,
        }
    }

    #[test]
    fn a_line_logged_in_the_span_carries_its_fields_in_text() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(LazyFields(DefaultFields::new()))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            let quiet = event_span(fields());
            quiet.in_scope(|| {});
            let span = event_span(fields());
            span.in_scope(|| {
                tracing::warn!("Handler failed; retrying.");
                tracing::warn!("Again.");
            });
        });
        let text = lines.text();
        let expected = "event{function=reserve event_id=e-1 event_type=order.placed \
                        correlation_id=checkout-1001 attempt=2 stream=ORDERS sequence=42}";
        assert_eq!(text.matches(expected).count(), 2, "{text}");
    }

    #[test]
    fn a_line_logged_in_the_span_carries_its_fields_in_json() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(LazyFields(JsonFields::new()))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            let span = event_span(fields());
            let inner = span.in_scope(|| tracing::info_span!("call"));
            inner.in_scope(|| tracing::warn!("Inside a span within the event's."));
        });
        let text = lines.text();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let spans = line["spans"].as_array().unwrap();
        assert_eq!(spans[0]["event_id"], "e-1", "{line}");
        assert_eq!(spans[0]["sequence"], 42, "{line}");
        assert_eq!(spans[0]["correlation_id"], "checkout-1001", "{line}");
        assert!(spans[0].get("causation_id").is_none(), "{line}");
    }
}
