//! What wraps every handler call, as layers in one documented order, built
//! in one place ([`stack`]) for live deliveries, requests, `jetrun replay`
//! and projection rebuilds alike. From the handler outwards:
//!
//! 1. **role** ([`role`]): what the function's role does around its call (an
//!    aggregate loads the instance and appends; a projection reads and
//!    stores the state at the event's key; a plain request function gets the
//!    request as a CloudEvent document);
//! 2. **json** ([`json`]): `json = true` refuses, as a permanent failure, an
//!    event whose data is not JSON, before anything runs;
//! 3. **timeout** ([`timeout`]): a call past the function's timeout is dropped
//!    (which kills an exec child's process group) and is a retryable failure;
//! 4. **metered** ([`metered`]): `jetrun_events_in_flight` and
//!    `jetrun_handler_duration_seconds`;
//! 5. **ticked** ([`ticked`]), for a scheduled function: its ticks and how
//!    late each is handled.
//!
//! Around them all, the delivery's tracing span (made in `dispatch`, so the
//! ack and dead-letter logs are in it too). A handler never counts its own
//! metrics.

mod json;
mod metered;
mod role;
mod ticked;
mod timeout;

use std::sync::Arc;

use async_nats::jetstream;
use jetrun_config::FunctionConfig;
use jetrun_functions::Function;

use crate::metrics::{FunctionMetrics, Metrics};

pub(crate) use metered::Metered;

/// `handler` with every layer of `function` around it.
pub(crate) fn stack(
    function: &FunctionConfig,
    handler: Arc<dyn Function>,
    js: &jetstream::Context,
    metrics: &Metrics,
    handles: &FunctionMetrics,
) -> Arc<dyn Function> {
    let handler = role::wrap(function, handler, js, metrics);
    let handler = json::Checked::wrap(function, handler);
    let handler = timeout::TimeLimited::wrap(handler, function.timeout);
    let handler = Metered::wrap(handler, handles);
    match &function.schedule {
        Some(_) => ticked::Ticked::wrap(handler, &metrics.for_schedule(&function.name)),
        None => handler,
    }
}
