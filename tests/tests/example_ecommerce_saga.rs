//! The worked example `config/examples/ecommerce-saga.toml`, run as shipped
//! (only NATS's URL comes from the environment): the README's orders, one
//! fulfilled and three cancelled at different steps, each undone as far as
//! it got.

use std::time::Duration;

use jetrun_e2e::{publish_bare, repo_root, wait_ready, wait_until, Runner, TestBed};
use serde_json::{json, Value};

async fn instance(kv: &async_nats::jetstream::kv::Store, key: &str) -> Option<Value> {
    let bytes = kv.get(key).await.ok()??;
    Some(serde_json::from_slice::<Value>(&bytes).ok()?["instance"].clone())
}

fn compensated(instance: &Value) -> Vec<String> {
    instance["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "compensate")
        .map(|t| t["step"].as_str().unwrap_or("-").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecommerce_saga_example_fulfils_and_cancels_orders() {
    let bed = TestBed::new();
    let config = repo_root().join("config/examples/ecommerce-saga.toml");
    let url = bed.nats.url();
    let runner = Runner::start_with_env(&config, &[("JETRUN_NATS_URL", url.as_str())]);
    wait_ready("127.0.0.1:9602".parse().unwrap()).await;
    let client = bed.client().await;

    let orders = [
        (
            "o-1",
            json!({"total": 25.5, "items": [{"sku": "book", "qty": 1}]}),
            "completed",
            vec![],
        ),
        (
            "o-2",
            json!({"total": 10, "items": [{"sku": "laptop", "qty": 5}]}),
            "failed",
            vec![],
        ),
        (
            "o-3",
            json!({"total": 5000, "items": [{"sku": "mug", "qty": 1}]}),
            "failed",
            vec!["reserve"],
        ),
        (
            "o-4",
            json!({"total": 20, "country": "XX", "items": [{"sku": "pen", "qty": 2}]}),
            "failed",
            vec!["payment", "reserve"],
        ),
    ];
    for (id, data, _, _) in &orders {
        let mut data = data.clone();
        data["order_id"] = json!(id);
        publish_bare(&client, "order.placed", data.to_string()).await;
    }
    let js = bed.jetstream().await;
    let js = &js;
    wait_until(
        Duration::from_secs(20),
        "the saga bucket exists",
        || async move { js.get_key_value("jetrun_saga_fulfil-order").await.is_ok() },
    )
    .await;
    let kv = js.get_key_value("jetrun_saga_fulfil-order").await.unwrap();
    for (id, _, state, undone) in orders {
        let kv = &kv;
        let settled = tokio::time::timeout(Duration::from_secs(30), async {
            while !instance(kv, id).await.is_some_and(|i| i["state"] == state) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "{id} is not {state}: {:?}\n{}",
            instance(kv, id).await,
            runner.log()
        );
        let got = instance(kv, id).await.unwrap();
        assert_eq!(compensated(&got), undone, "{id}: {got}\n{}", runner.log());
    }
}
