//! Projections (in progress).

use std::sync::Arc;

use async_nats::jetstream;
use jetrun_config::ProjectionConfig;
use jetrun_functions::{Context, Event, Failure, Function, Outcome};

use crate::metrics::Metrics;

pub(crate) struct Projector;

impl Projector {
    pub(crate) fn new(
        _function: &str,
        _projection: ProjectionConfig,
        _inner: Arc<dyn Function>,
        _js: jetstream::Context,
        _metrics: Metrics,
    ) -> Self {
        Projector
    }
}

#[async_trait::async_trait]
impl Function for Projector {
    async fn call(&self, _event: &Event, _ctx: &Context) -> Outcome {
        Err(Failure::permanent("projections are not built yet"))
    }
}

pub(crate) struct Query;

impl Query {
    pub(crate) fn new(
        _function: &str,
        _projection: ProjectionConfig,
        _inner: Arc<dyn Function>,
        _js: jetstream::Context,
    ) -> Self {
        Query
    }
}

#[async_trait::async_trait]
impl Function for Query {
    async fn call(&self, _event: &Event, _ctx: &Context) -> Outcome {
        Err(Failure::permanent("queries are not built yet"))
    }
}
