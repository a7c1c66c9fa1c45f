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
///
/// A function configured with `batch` gets up to `size` events in one
/// [`call_batch`](Function::call_batch); each item still has its own
/// outcome, so one failed item is retried (or dead-lettered) alone.
#[async_trait]
pub trait Function: Send + Sync + 'static {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome;

    /// One call for several events: one outcome per item, in the items'
    /// order. The default calls [`call`](Function::call) for each item, one
    /// after another; a handler that can take a batch at once overrides it.
    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        each_alone(self, items).await
    }
}

/// A batch through [`Function::call`], one item after another: the default
/// [`Function::call_batch`], and what a handler that cannot take a batch
/// at once falls back to.
pub async fn each_alone<F: Function + ?Sized>(
    function: &F,
    items: &[(Event, Context)],
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(items.len());
    for (event, ctx) in items {
        outcomes.push(function.call(event, ctx).await);
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Failure, Output};

    /// Fails the events whose data is `fail`, records the order of calls.
    struct Picky(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl Function for Picky {
        async fn call(&self, event: &Event, _ctx: &Context) -> Outcome {
            let data = String::from_utf8_lossy(&event.data).into_owned();
            self.0.lock().unwrap().push(data.clone());
            if data == "fail" {
                return Err(Failure::retryable("asked to fail"));
            }
            Ok(Output::default())
        }
    }

    #[tokio::test]
    async fn the_default_batch_calls_each_item_in_order() {
        let item = |data: &'static str| {
            let event = Event {
                data: bytes::Bytes::from_static(data.as_bytes()),
                ..Event::default()
            };
            (event, Context::default())
        };
        let f = Picky(Default::default());
        let outcomes = f.call_batch(&[item("a"), item("fail"), item("c")]).await;
        assert_eq!(*f.0.lock().unwrap(), ["a", "fail", "c"]);
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok());
        assert_eq!(outcomes[1], Err(Failure::retryable("asked to fail")));
    }
}
