//! Two teams' runners on one NATS account keep apart what jetrun shares:
//! each dead-letters into its own stream (`[dead_letters] stream` and
//! `prefix`), and each registers its request functions in its own micro
//! service (`[service] name`).

use std::time::Duration;

use jetrun_e2e::{
    free_port, publish_bare, run_command, stream_len, toml_str, wait_ready, wait_until, Runner,
    TestBed,
};

/// Team `team`'s config: stream `TEAM` on `team.>`, dead letters in
/// `TEAM_DLQ` on `dlq_team.>`, micro service `team-svc`, a function that
/// always fails permanently, and a request function.
fn team(bed: &TestBed, team: &str, metrics: u16) -> std::path::PathBuf {
    let upper = team.to_uppercase();
    let fail = bed.write_script(&format!("{team}-fail.sh"), "exit 65\n");
    let text = format!(
        r#"
[nats]
url = {url}

[metrics]
listen = "127.0.0.1:{metrics}"

[dead_letters]
stream = "{upper}_DLQ"
prefix = "dlq_{team}"

[service]
name = "{team}-svc"

[streams.{upper}]
subjects = ["{team}.>"]

[functions.fail-{team}]
subjects = ["{team}.fail"]
exec = ["sh", {fail}]

[functions.ask-{team}]
request = "{team}.ask"
builtin = "noop"
"#,
        url = toml_str(bed.nats.url()),
        fail = toml_str(fail.display().to_string()),
    );
    let path = bed.path(&format!("{team}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_teams_keep_their_dead_letters_and_micro_services_apart() {
    let bed = TestBed::new();
    let (ma, mb) = (free_port(), free_port());
    let a = team(&bed, "a", ma);
    let b = team(&bed, "b", mb);
    let _runner_a = Runner::start(&a);
    let _runner_b = Runner::start(&b);
    wait_ready(([127, 0, 0, 1], ma).into()).await;
    wait_ready(([127, 0, 0, 1], mb).into()).await;

    let client = bed.client().await;
    let js = bed.jetstream().await;
    publish_bare(&client, "a.fail", "{}").await;
    publish_bare(&client, "b.fail", "{}").await;
    publish_bare(&client, "b.fail", "{}").await;
    let js = &js;
    wait_until(
        Duration::from_secs(20),
        "each team's dead letters",
        || async move { stream_len(js, "A_DLQ").await == 1 && stream_len(js, "B_DLQ").await == 2 },
    )
    .await;
    assert!(
        js.get_stream("DLQ").await.is_err(),
        "the default DLQ stream was made"
    );

    let (code, out, err) =
        run_command(&["dlq", "ls", "fail-b", "--json", "-c", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let letters: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(letters.as_array().map(Vec::len), Some(2), "{letters}");

    // Each team's request function is an endpoint of its own service.
    for (service, endpoint) in [("a-svc", "ask-a"), ("b-svc", "ask-b")] {
        let client = &client;
        wait_until(
            Duration::from_secs(20),
            "the service answers",
            || async move {
                let Ok(reply) = client
                    .request(format!("$SRV.INFO.{service}"), "".into())
                    .await
                else {
                    return false;
                };
                let info: serde_json::Value =
                    serde_json::from_slice(&reply.payload).unwrap_or_default();
                info["name"] == service
                    && info["endpoints"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["name"] == endpoint))
            },
        )
        .await;
    }
}
