//! `take_payment`: on `order.placed` (`{"order_id", "total", "card"?, ...}`)
//! charges the order's total to a pretend card and emits `payment.completed`
//! (`{order_id, amount, payment_id}`), or `payment.failed` (`{order_id,
//! reason}`) when the card is declined: a total over the limit, or
//! `"card": "declined"`. An order without a total that is a positive number
//! is bad data: a permanent failure, straight to the dead letters. A
//! redelivered order is answered as before, without charging twice.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Context, Emit, Event, Failure, Function, Outcome};

/// The most the pretend card accepts in one payment.
const LIMIT: f64 = 1000.0;

#[derive(Default)]
pub(super) struct TakePayment {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Payments taken so far, for the next payment id.
    taken: u64,
    /// Orders already answered, by order id, with the event they got.
    answered: HashMap<String, Emit>,
}

#[derive(Deserialize)]
struct OrderPlaced {
    order_id: Value,
    total: Option<Value>,
    card: Option<String>,
}

#[async_trait]
impl Function for TakePayment {
    async fn call(&self, event: &Event, _ctx: &Context) -> Outcome {
        let order: OrderPlaced = event.json()?;
        let amount = match &order.total {
            Some(Value::Number(n)) => n.as_f64().filter(|t| t.is_finite() && *t > 0.0),
            _ => None,
        };
        let Some(amount) = amount else {
            let got = order
                .total
                .as_ref()
                .map_or_else(|| "none".to_string(), Value::to_string);
            return Err(Failure::permanent(format!(
                "order {} has no total to charge: total must be a number above 0, got {got}",
                order.order_id
            )));
        };
        let key = order.order_id.to_string();
        let mut state = self
            .state
            .lock()
            .map_err(|_| Failure::retryable("payment state is poisoned"))?;
        if let Some(answer) = state.answered.get(&key) {
            return Ok(vec![answer.clone()].into());
        }
        let declined = if order.card.as_deref() == Some("declined") {
            Some("card declined".to_string())
        } else if amount > LIMIT {
            Some(format!(
                "amount {amount} is over the card's limit of {LIMIT}"
            ))
        } else {
            None
        };
        let answer = match declined {
            Some(reason) => {
                tracing::info!(order_id = %order.order_id, %reason, "Payment declined.");
                Emit::new(
                    "payment.failed",
                    json!({"order_id": order.order_id, "reason": reason}),
                )
            }
            None => {
                state.taken += 1;
                let payment_id = format!("pay-{:06}", state.taken);
                tracing::info!(order_id = %order.order_id, %payment_id, amount, "Payment taken.");
                Emit::new(
                    "payment.completed",
                    json!({"order_id": order.order_id, "amount": order.total, "payment_id": payment_id}),
                )
            }
        };
        state.answered.insert(key, answer.clone());
        Ok(vec![answer].into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ctx, event};
    use super::*;

    #[tokio::test]
    async fn a_payment_within_the_limit_completes() {
        let f = TakePayment::default();
        let first = f
            .call(
                &event(r#"{"order_id":1,"user_id":9,"total":99.5}"#),
                &ctx("payment"),
            )
            .await
            .unwrap()
            .emits;
        assert_eq!(
            first,
            vec![Emit::new(
                "payment.completed",
                json!({"order_id": 1, "amount": 99.5, "payment_id": "pay-000001"})
            )]
        );
        let second = f
            .call(&event(r#"{"order_id":2,"total":1000}"#), &ctx("payment"))
            .await
            .unwrap()
            .emits;
        assert_eq!(second[0].event_type, "payment.completed");
        assert_eq!(second[0].data["payment_id"], "pay-000002");
        assert_eq!(second[0].data["amount"], 1000);
    }

    #[tokio::test]
    async fn over_the_limit_or_a_declined_card_fails() {
        let f = TakePayment::default();
        let over = f
            .call(&event(r#"{"order_id":3,"total":1200}"#), &ctx("payment"))
            .await
            .unwrap()
            .emits;
        assert_eq!(
            over,
            vec![Emit::new(
                "payment.failed",
                json!({"order_id": 3, "reason": "amount 1200 is over the card's limit of 1000"})
            )]
        );
        let declined = f
            .call(
                &event(r#"{"order_id":4,"total":5,"card":"declined"}"#),
                &ctx("payment"),
            )
            .await
            .unwrap()
            .emits;
        assert_eq!(
            declined,
            vec![Emit::new(
                "payment.failed",
                json!({"order_id": 4, "reason": "card declined"})
            )]
        );
    }

    #[tokio::test]
    async fn a_redelivered_order_is_not_charged_twice() {
        let f = TakePayment::default();
        let order = event(r#"{"order_id":7,"total":10}"#);
        let first = f.call(&order, &ctx("payment")).await.unwrap().emits;
        let again = f.call(&order, &ctx("payment")).await.unwrap().emits;
        assert_eq!(first, again);
        let next = f
            .call(&event(r#"{"order_id":8,"total":10}"#), &ctx("payment"))
            .await
            .unwrap()
            .emits;
        assert_eq!(
            next[0].data["payment_id"], "pay-000002",
            "the retry took no payment"
        );
    }

    #[tokio::test]
    async fn an_order_without_a_valid_total_is_permanent() {
        let f = TakePayment::default();
        for (data, got) in [
            (r#"{"order_id":1}"#, "got none"),
            (r#"{"order_id":1,"total":"12"}"#, r#"got "12""#),
            (r#"{"order_id":1,"total":-5}"#, "got -5"),
            (r#"{"order_id":1,"total":0}"#, "got 0"),
            (r#"{"order_id":1,"total":null}"#, "got none"),
        ] {
            let err = f.call(&event(data), &ctx("payment")).await.unwrap_err();
            assert!(err.is_permanent(), "{data}: {err}");
            assert!(err.message.contains(got), "{data}: {err}");
        }
        for data in ["not json", r#"{"total":5}"#] {
            let err = f.call(&event(data), &ctx("payment")).await.unwrap_err();
            assert!(err.is_permanent(), "{data}: {err}");
        }
    }
}
