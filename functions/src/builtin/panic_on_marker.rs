//! `panic_on_marker`: panics when the event's data holds `"panic": true`,
//! succeeds otherwise. It exists to show (and test) that a panic in a
//! handler costs one event, never a function: the event is retried and then
//! dead-lettered with `Jetrun-Reason: panic`, and the events around it flow.

use async_trait::async_trait;

use crate::{Context, Event, Function, Outcome, Output};

pub(super) struct PanicOnMarker;

#[async_trait]
impl Function for PanicOnMarker {
    async fn call(&self, event: &Event, _ctx: &Context) -> Outcome {
        let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_default();
        if data.get("panic") == Some(&serde_json::Value::Bool(true)) {
            panic!("panic_on_marker: the event asked for a panic (\"panic\": true)");
        }
        Ok(Output::default())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, event};
    use super::*;

    #[tokio::test]
    async fn succeeds_without_the_marker() {
        let f = PanicOnMarker;
        assert!(f.call(&event(r#"{"n":1}"#), &ctx("p")).await.is_ok());
    }

    #[tokio::test]
    #[should_panic(expected = "asked for a panic")]
    async fn panics_with_it() {
        let _ = PanicOnMarker
            .call(&event(r#"{"panic":true}"#), &ctx("p"))
            .await;
    }
}
