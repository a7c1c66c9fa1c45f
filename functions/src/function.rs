//! The handler trait and the delivery context every call receives.

use async_trait::async_trait;

use crate::{Event, Outcome};

/// Where and how often an event has been delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The function's name (also its durable consumer's name).
    pub function: String,
    /// The delivery count, from 1; it survives runner restarts.
    pub attempt: u64,
    /// The NATS subject the event was stored on.
    pub subject: String,
    /// The JetStream stream holding it.
    pub stream: String,
    /// When that stream was created (Unix nanoseconds; 0 when not known).
    /// A stream deleted and made again starts its sequences over: this tells
    /// its events from the old one's.
    pub stream_created: u64,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// The W3C trace context of the runner's span around this call, when
    /// it exports traces: what the call's own publishes and requests carry,
    /// so the next hop is a child of this call. `None` without traces (they
    /// carry the event's own trace context then).
    pub trace: Option<TraceContext>,
}

/// A W3C trace context: `traceparent`, and `tracestate` when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// A function: called once per delivery of an event. Every handler kind
/// (built-in, exec, HTTP) implements it; the runner wraps it in its
/// middleware (tracing, metrics, timeout) and turns the outcome into an ack.
///
/// A call may be cancelled (dropped) when it outlives its timeout, so a
/// function must not leave work behind when its future is dropped.
#[async_trait]
pub trait Function: Send + Sync + 'static {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome;
}
