//! `echo`: emits the event's data back as `<type>.echoed`. One publish per
//! input: the built-in to benchmark what emitting costs, or to check that a
//! function's emitted events reach their stream.

use async_trait::async_trait;
use serde_json::Value;

use crate::{Context, Emit, Event, Function, Outcome};

pub(super) struct Echo;

#[async_trait]
impl Function for Echo {
    async fn call(&self, event: &Event, _ctx: &Context) -> Outcome {
        let data = serde_json::from_slice(&event.data)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&event.data).into_owned()));
        Ok(vec![Emit::new(format!("{}.echoed", event.event_type), data)].into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_the_data_under_a_derived_type() {
        let event = Event {
            event_type: "order.placed".into(),
            data: bytes::Bytes::from_static(br#"{"order_id":1}"#),
            ..Event::default()
        };
        let ctx = Context {
            function: "echo".into(),
            attempt: 1,
            subject: "order.placed".into(),
            stream: "ORDERS".into(),
            stream_created: 1,
            sequence: 1,
            trace: None,
        };
        let out = Echo.call(&event, &ctx).await.unwrap().emits;
        assert_eq!(
            out,
            vec![Emit::new(
                "order.placed.echoed",
                serde_json::json!({"order_id": 1})
            )]
        );
    }
}
