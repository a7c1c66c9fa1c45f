//! The worked example `config/examples/orders-cqrs.toml`, run as shipped
//! (only NATS's URL comes from the environment): the README's walk-through
//! of commands, a rejected command, projections and queries.

use std::time::Duration;

use jetrun_e2e::{repo_root, run_command_with_env, wait_ready, wait_until, Runner, TestBed};
use serde_json::{json, Value};

async fn ask(client: &async_nats::Client, subject: &str, body: Value) -> Result<Value, String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .expect("an answer within 20 s")
    .expect("a reply");
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
    {
        let message = reply.headers.as_ref().unwrap().get("Nats-Service-Error");
        return Err(format!(
            "{code}: {}",
            message.map(|m| m.to_string()).unwrap_or_default()
        ));
    }
    Ok(serde_json::from_slice(&reply.payload).expect("a JSON reply"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_cqrs_example_walks_through() {
    let bed = TestBed::new();
    let config = repo_root().join("config/examples/orders-cqrs.toml");
    let url = bed.nats.url();
    let runner = Runner::start_with_env(&config, &[("JETRUN_NATS_URL", url.as_str())]);
    wait_ready("127.0.0.1:9601".parse().unwrap()).await;
    let client = bed.client().await;

    let placed = ask(
        &client,
        "cmd.order.place",
        json!({"order_id": "o-1", "user_id": "u-7", "items": [{"sku": "book", "qty": 1}]}),
    )
    .await;
    assert_eq!(
        placed,
        Ok(json!({"order_id": "o-1", "version": 1, "status": "placed"})),
        "{}",
        runner.log()
    );
    let added = ask(
        &client,
        "cmd.order.add_item",
        json!({"order_id": "o-1", "sku": "pen", "qty": 3}),
    )
    .await;
    assert_eq!(added.unwrap()["version"], 2);
    let rejected = ask(
        &client,
        "cmd.order.add_item",
        json!({"order_id": "o-1", "sku": "pen", "qty": 0}),
    )
    .await;
    assert_eq!(rejected, Err("400: qty must be a positive integer".into()));
    let unknown = ask(&client, "cmd.order.confirm", json!({"order_id": "o-9"})).await;
    assert_eq!(unknown, Err("400: order o-9 does not exist".into()));
    let confirmed = ask(&client, "cmd.order.confirm", json!({"order_id": "o-1"})).await;
    assert_eq!(confirmed.unwrap()["status"], "confirmed");

    // The projections catch up; then the queries answer from them.
    let client = &client;
    wait_until(
        Duration::from_secs(20),
        "the read models caught up",
        || async move {
            let order = ask(client, "query.order.get", json!({"order_id": "o-1"})).await;
            let mine = ask(client, "query.user.orders", json!({"user_id": "u-7"})).await;
            order.is_ok_and(|o| o["status"] == "confirmed")
                && mine.is_ok_and(|m| m["orders"] == json!({"o-1": "confirmed"}))
        },
    )
    .await;
    let order = ask(client, "query.order.get", json!({"order_id": "o-1"}))
        .await
        .unwrap();
    assert_eq!(order["quantity"], 4);
    assert_eq!(
        order["items"],
        json!([{"sku": "book", "qty": 1}, {"sku": "pen", "qty": 3}])
    );
    let missing = ask(client, "query.order.get", json!({"order_id": "o-404"}))
        .await
        .unwrap();
    assert_eq!(missing["found"], false);

    let config = config.to_string_lossy();
    let (code, stdout, stderr) = run_command_with_env(
        &["events", "-c", &config, "order.o-1.>"],
        &[("JETRUN_NATS_URL", url.as_str())],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let types: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        types,
        ["order_placed", "item_added", "order_confirmed"],
        "{stdout}"
    );
}
