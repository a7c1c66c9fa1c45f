//! What a function's role does around its handler: an aggregate's command
//! handler, a projection (or a query on one), or, for a plain request
//! function, the request handed over as a CloudEvent document.

use std::sync::Arc;

use async_nats::jetstream;
use async_trait::async_trait;
use jetrun_config::{FunctionConfig, Role, Trigger};
use jetrun_functions::{Context, Event, Function, Outcome};

use crate::eventsourcing;
use crate::metrics::Metrics;

pub(super) fn wrap(
    function: &FunctionConfig,
    handler: Arc<dyn Function>,
    js: &jetstream::Context,
    metrics: &Metrics,
) -> Arc<dyn Function> {
    match (&function.trigger, &function.role) {
        (Trigger::Request { .. }, Role::Plain) => Arc::new(RequestDocument { inner: handler }),
        _ => eventsourcing::wrap(function, handler, js, metrics),
    }
}

/// A plain request function's input document: the request as a structured
/// CloudEvent.
struct RequestDocument {
    inner: Arc<dyn Function>,
}

#[async_trait]
impl Function for RequestDocument {
    async fn call(&self, request: &Event, ctx: &Context) -> Outcome {
        let document = Event {
            data: serde_json::to_vec(&request.to_structured_json())
                .unwrap_or_default()
                .into(),
            datacontenttype: Some("application/json".into()),
            ..request.clone()
        };
        self.inner.call(&document, ctx).await
    }
}
