//! Event sourcing and CQRS around a function's handler: an aggregate's
//! command handler loads the instance and appends what the function
//! decides; a projection reads the state at the event's key and stores what
//! the function returns (a query only reads it). Each is a [`Function`]
//! wrapping the handler, so stream deliveries, requests and `jetrun replay`
//! run them the same way.

mod aggregate;
pub(crate) mod projection;

use std::sync::Arc;

use async_nats::jetstream;
use jetrun_config::{FunctionConfig, Role};
use jetrun_functions::Function;

use crate::metrics::Metrics;

/// A NATS resource the role needs (a stream, a KV bucket) could not be used:
/// retryable, and answered 503 to a requester, whose reply does not carry
/// jetrun's internals (they are in the log).
pub(crate) fn unavailable(message: impl Into<String>) -> jetrun_functions::Failure {
    jetrun_functions::Failure::retryable(message).with_status(503)
}

/// `handler` with what `config`'s role does around it.
pub(crate) fn wrap(
    config: &FunctionConfig,
    handler: Arc<dyn Function>,
    js: &jetstream::Context,
    metrics: &Metrics,
) -> Arc<dyn Function> {
    match &config.role {
        Role::Plain => handler,
        Role::Aggregate(aggregate) => Arc::new(aggregate::CommandHandler::new(
            &config.name,
            aggregate.clone(),
            handler,
            js.clone(),
            metrics.for_aggregate(&aggregate.name),
        )),
        Role::Projection(projection) if config.request_subject().is_some() => Arc::new(
            projection::Query::new(&config.name, projection.clone(), handler, js.clone()),
        ),
        Role::Projection(projection) => Arc::new(projection::Projector::new(
            &config.name,
            projection.clone(),
            handler,
            js.clone(),
            metrics.for_projection(&config.name),
        )),
    }
}
