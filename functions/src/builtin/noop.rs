//! `noop`: succeeds at once and emits nothing. Use it to benchmark a deployment
//! or to check that events reach a subject. With `batch`, it takes a whole
//! batch in one call: the built-in to measure what batching saves.

use async_trait::async_trait;

use crate::{Context, Event, Function, Outcome, Output};

pub(super) struct Noop;

#[async_trait]
impl Function for Noop {
    async fn call(&self, _event: &Event, _ctx: &Context) -> Outcome {
        Ok(Output::default())
    }

    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        vec![Ok(Output::default()); items.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, event};
    use super::*;

    #[tokio::test]
    async fn a_batch_succeeds_item_by_item() {
        let items = vec![(event("1"), ctx("noop")), (event("2"), ctx("noop"))];
        let outcomes = Noop.call_batch(&items).await;
        assert_eq!(outcomes, vec![Ok(Output::default()); 2]);
    }
}
