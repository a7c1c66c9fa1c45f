//! `noop`: succeeds at once and emits nothing. Use it to benchmark a deployment
//! or to check that events reach a subject.

use async_trait::async_trait;

use crate::{Context, Event, Function, Outcome, Output};

pub(super) struct Noop;

#[async_trait]
impl Function for Noop {
    async fn call(&self, _event: &Event, _ctx: &Context) -> Outcome {
        Ok(Output::default())
    }
}
