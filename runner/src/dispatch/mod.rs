//! Running one durable consumer, for a stream function or one of a saga's
//! streams alike: binding it (and binding it again when it is deleted behind
//! jetrun's back), pulling its messages within the concurrency limit,
//! calling the handler stack for each, publishing what it emitted, and
//! settling each message: an ack, a NAK delayed by the retry policy, or a
//! dead letter followed by `+TERM`. A drain stops pulling and lets what is
//! in flight finish; an abandoned drain NAKs what is left.
//!
//! - [`consumer`]: binding, the monitor (backlog gauges, ack floor,
//!   deletion) and the loop that binds again;
//! - [`pull`]: pulls as handler slots free up;
//! - [`deliver`]: one message from its envelope to its outcome;
//! - [`settle`]: the outcome to an ack, a NAK or a dead letter;
//! - [`retry`]: which of those (pure);
//! - [`dead_letter`]: a dead letter's headers and its publish.

mod consumer;
mod dead_letter;
mod deliver;
mod pull;
mod retry;
mod settle;

use std::sync::Arc;

use async_nats::jetstream;
use jetrun_config::{RetryPolicy, StreamBinding};
use jetrun_functions::Function;

use crate::emit::Emitter;
use crate::metrics::FunctionMetrics;
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;

/// One durable consumer's work: a stream function's, or a saga's on one of
/// the streams holding its inputs.
pub(crate) struct Unit {
    /// How logs, metrics (`function` label) and `/readyz` name it: the
    /// function's name, or `saga-NAME@STREAM`.
    pub(crate) name: String,
    /// Who the consumer serves, for its description: `function NAME`, `saga NAME`.
    pub(crate) serves: String,
    pub(crate) binding: StreamBinding,
    pub(crate) retry: RetryPolicy,
    /// Messages handled at once in this process.
    pub(crate) concurrency: usize,
}

/// What one unit's deliveries share.
pub(crate) struct Shared {
    pub(crate) unit: Unit,
    /// The handler with its layers around it.
    pub(crate) handler: Arc<dyn Function>,
    /// Publishes what the handler emits; `None` for a handler that emits
    /// nothing (a saga publishes what it decides itself).
    pub(crate) emitter: Option<Emitter>,
    pub(crate) js: jetstream::Context,
    pub(crate) metrics: FunctionMetrics,
}

/// Runs `shared.unit`'s consumer until `shutdown` drains it and every
/// message in flight has been settled (or abandoned and NAKed). Run under
/// `tasks::spawn`, which starts it again should it end early.
pub(crate) async fn run(shared: Arc<Shared>, readiness: Readiness, shutdown: Shutdown) {
    consumer::run(shared, readiness, shutdown).await;
}
