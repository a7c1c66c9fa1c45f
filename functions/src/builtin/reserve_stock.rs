//! `reserve_stock`: on `order.placed` (`{"order_id", "items": [{"sku", "qty"}]}`)
//! reserves every item from stock kept in memory and emits
//! `inventory.reserved`, or `inventory.insufficient` naming what is short.
//! An order without items is bad data: a permanent failure, straight to the
//! dead letters. A redelivered order is answered as before, without reserving
//! twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Context, Emit, Event, Failure, Function, Outcome};

/// What the shop starts with: enough for a demo, few enough laptops to run out.
const STARTING_STOCK: &[(&str, u64)] = &[("book", 100), ("laptop", 3), ("mug", 50), ("pen", 500)];

pub(super) struct ReserveStock {
    state: Mutex<State>,
}

struct State {
    stock: BTreeMap<String, u64>,
    /// Orders already answered, by order id, with the event they got.
    answered: HashMap<String, Emit>,
}

impl Default for ReserveStock {
    fn default() -> Self {
        let stock = STARTING_STOCK
            .iter()
            .map(|(sku, qty)| (sku.to_string(), *qty))
            .collect();
        ReserveStock {
            state: Mutex::new(State {
                stock,
                answered: HashMap::new(),
            }),
        }
    }
}

#[derive(Deserialize)]
struct OrderPlaced {
    order_id: Value,
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize, serde::Serialize, Clone)]
struct Item {
    sku: String,
    qty: u64,
}

#[async_trait]
impl Function for ReserveStock {
    async fn call(&self, event: &Event, _ctx: &Context) -> Outcome {
        let order: OrderPlaced = event.json()?;
        if order.items.is_empty() {
            return Err(Failure::permanent(format!(
                "order {} has no items; nothing to reserve",
                order.order_id
            )));
        }
        if let Some(item) = order.items.iter().find(|i| i.qty == 0) {
            return Err(Failure::permanent(format!(
                "order {} asks for 0 of {}",
                order.order_id, item.sku
            )));
        }
        let key = order.order_id.to_string();
        let mut state = self
            .state
            .lock()
            .map_err(|_| Failure::retryable("stock state is poisoned"))?;
        if let Some(answer) = state.answered.get(&key) {
            return Ok(vec![answer.clone()].into());
        }
        let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
        for item in &order.items {
            *wanted.entry(&item.sku).or_default() += item.qty;
        }
        let missing: Vec<Value> = wanted
            .iter()
            .filter_map(|(sku, qty)| {
                let have = state.stock.get(*sku).copied().unwrap_or(0);
                (have < *qty).then(|| json!({"sku": sku, "wanted": qty, "available": have}))
            })
            .collect();
        let answer = if missing.is_empty() {
            for (sku, qty) in &wanted {
                if let Some(have) = state.stock.get_mut(*sku) {
                    *have -= qty;
                }
            }
            tracing::info!(order_id = %order.order_id, "Stock reserved.");
            Emit::new(
                "inventory.reserved",
                json!({"order_id": order.order_id, "items": order.items}),
            )
        } else {
            tracing::info!(order_id = %order.order_id, "Stock is short.");
            Emit::new(
                "inventory.insufficient",
                json!({"order_id": order.order_id, "missing": missing}),
            )
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
    async fn reserves_until_stock_runs_out() {
        let f = ReserveStock::default();
        let order = |id: u32| {
            event(&format!(
                r#"{{"order_id":{id},"items":[{{"sku":"laptop","qty":2}}]}}"#
            ))
        };
        let first = f
            .call(&order(1), &ctx("reserve-stock"))
            .await
            .unwrap()
            .emits;
        assert_eq!(first[0].event_type, "inventory.reserved");
        let second = f
            .call(&order(2), &ctx("reserve-stock"))
            .await
            .unwrap()
            .emits;
        assert_eq!(second[0].event_type, "inventory.insufficient");
        assert_eq!(
            second[0].data["missing"],
            json!([{"sku": "laptop", "wanted": 2, "available": 1}])
        );
    }

    #[tokio::test]
    async fn a_redelivered_order_is_not_reserved_twice() {
        let f = ReserveStock::default();
        let order = event(r#"{"order_id":7,"items":[{"sku":"laptop","qty":3}]}"#);
        let first = f.call(&order, &ctx("reserve-stock")).await.unwrap().emits;
        let again = f.call(&order, &ctx("reserve-stock")).await.unwrap().emits;
        assert_eq!(first, again);
        assert_eq!(first[0].event_type, "inventory.reserved");
    }

    #[tokio::test]
    async fn an_order_without_items_is_permanent() {
        let f = ReserveStock::default();
        for data in [
            r#"{"order_id":1}"#,
            r#"{"order_id":1,"items":[]}"#,
            "not json",
        ] {
            let err = f
                .call(&event(data), &ctx("reserve-stock"))
                .await
                .unwrap_err();
            assert!(err.is_permanent(), "{data}: {err}");
        }
    }
}
