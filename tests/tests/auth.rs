//! Authentication to NATS: user and password (read from the environment
//! with `${VAR}`), an nkey seed file (a path relative to the config file),
//! and a token; and a wrong password keeps `/readyz` at 503 with a log line
//! that says why, instead of running half-connected.

use std::time::Duration;

use async_nats::ConnectOptions;
use jetrun_e2e::{
    consumer_info, holds_for, http_status, toml_str, wait_ready, wait_until, NatsServer, Runner,
    TestBed,
};

/// `base_config` with `auth` lines added to its `[nats]` table, and a
/// no-op function on `ev.ok`.
fn config_with_auth(bed: &TestBed, auth: &str) -> std::path::PathBuf {
    let url_line = format!("url = {}\n", toml_str(bed.nats.url()));
    let base = bed
        .base_config()
        .replace(&url_line, &format!("{url_line}{auth}\n"));
    bed.write_config(&format!(
        "{base}\n[functions.hello]\nsubjects = [\"ev.ok\"]\nbuiltin = \"noop\"\n"
    ))
}

/// Publishes one event with `client` and waits until `hello` acked it.
async fn an_event_is_handled(bed: &TestBed, runner: &Runner, client: async_nats::Client) {
    let metrics = bed.metrics;
    wait_ready(metrics).await;
    let js = &async_nats::jetstream::new(client);
    js.publish("ev.ok", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    wait_until(
        Duration::from_secs(20),
        "the event is acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "hello")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 1)
        },
    )
    .await;
    assert!(
        runner.log().contains("Connected to NATS"),
        "{}",
        runner.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_nkey_authenticate() {
    let user = nkeys::KeyPair::new_user();
    let bed = TestBed::with_nats(NatsServer::start_with_config(&format!(
        r#"authorization {{ users = [ {{ user: "app", password: "s3cret" }}, {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    )));
    let client = ConnectOptions::with_user_and_password("app".into(), "s3cret".into())
        .connect(bed.nats.url())
        .await
        .expect("test client connects");

    let config = config_with_auth(&bed, "user = \"app\"\npassword = \"${APP_PASSWORD}\"");
    let runner = Runner::start_with_env(&config, &[("APP_PASSWORD", "s3cret")]);
    an_event_is_handled(&bed, &runner, client.clone()).await;
    drop(runner);

    std::fs::write(bed.path("app.nk"), user.seed().expect("seed")).expect("write seed");
    let config = config_with_auth(&bed, "nkey = \"app.nk\"");
    let runner = Runner::start(&config);
    let metrics = bed.metrics;
    wait_ready(metrics).await;
    assert!(
        runner.log().contains("Connected to NATS"),
        "{}",
        runner.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_authenticates() {
    let bed = TestBed::with_nats(NatsServer::start_with_config(
        r#"authorization { token: "t0ken" }"#,
    ));
    let client = ConnectOptions::with_token("t0ken".into())
        .connect(bed.nats.url())
        .await
        .expect("test client connects");
    let config = config_with_auth(&bed, "token = \"t0ken\"");
    let runner = Runner::start(&config);
    an_event_is_handled(&bed, &runner, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_keeps_the_runner_unready() {
    let bed = TestBed::with_nats(NatsServer::start_with_config(
        r#"authorization { users = [ { user: "app", password: "s3cret" } ] }"#,
    ));
    let config = config_with_auth(&bed, "user = \"app\"\npassword = \"wrong\"");
    let runner = Runner::start(&config);
    let metrics = bed.metrics;
    wait_until(Duration::from_secs(20), "/healthz answers", || async move {
        http_status(metrics, "/healthz").await == Some(200)
    })
    .await;
    holds_for(Duration::from_secs(3), "/readyz stays 503", || async move {
        http_status(metrics, "/readyz").await == Some(503)
    })
    .await;
    let log = runner.log().to_lowercase();
    assert!(log.contains("authorization"), "{log}");
}
