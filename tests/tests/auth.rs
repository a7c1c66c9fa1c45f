//! Locked-down NATS: user and password (read from the environment with
//! `${VAR}`), an nkey seed file and a creds file (paths relative to the
//! config file), and a token each authenticate, and none of those secrets
//! shows up in the runner's log, in `/metrics` or in an exec child's
//! environment. Wrong credentials are named as such within seconds, in the
//! runner's log (which stays unready) and by a one-shot command (which
//! exits 1). A NATS user that may not publish to a function's emit subject
//! gets the event retried, with a log line saying permission was denied.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use jetrun_e2e::{
    consumer_info, holds_for, http_status, metric, run_command, scrape, stream_messages, toml_str,
    wait_ready, wait_until, JwtAuth, NatsServer, Runner, TestBed, LEDGER_LINE,
};

/// Secrets distinctive enough that finding one anywhere is a leak.
const PASSWORD: &str = "pw-Qx7vR2-leak-canary";
const TOKEN: &str = "tok-Lm4Jd9-leak-canary";

/// How soon wrong credentials must be reported.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// The runner's log at its most verbose, NATS client's traces included: a
/// secret must not leak there either.
const VERBOSE: (&str, &str) = ("JETRUN_LOG", "trace");

/// `base_config` with `auth` lines added to its `[nats]` table, and an exec
/// function on `ev.ok` that writes its environment to `env` in the temp
/// directory.
fn config_with_auth(bed: &TestBed, auth: &str) -> PathBuf {
    let url_line = format!("url = {}\n", toml_str(bed.nats.url()));
    let base = bed
        .base_config()
        .replace(&url_line, &format!("{url_line}{auth}\n"));
    let script = bed.write_script(
        "dump_env.sh",
        &format!("{LEDGER_LINE}\nenv > {}\n", bed.path("env").display()),
    );
    bed.write_config(&format!(
        "{base}{}",
        bed.sh_function("hello", &["ev.ok"], &script, "")
    ))
}

/// Publishes one event with `client` and waits until `hello` acked it.
async fn an_event_is_handled(bed: &TestBed, runner: &Runner, client: async_nats::Client) {
    wait_ready(bed.metrics).await;
    let js = &async_nats::jetstream::new(client);
    let before = consumer_info(js, TestBed::STREAM, "hello")
        .await
        .map_or(0, |i| i.ack_floor.stream_sequence);
    let sequence = js
        .publish("ev.ok", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence;
    assert!(sequence > before);
    wait_until(
        Duration::from_secs(20),
        "the event is acked",
        || async move {
            consumer_info(js, TestBed::STREAM, "hello")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == sequence)
        },
    )
    .await;
    assert!(
        runner.log().contains("Connected to NATS"),
        "{}",
        runner.log()
    );
}

/// None of `secrets` is in the runner's log, its `/metrics` or the
/// environment the exec function saw.
async fn secrets_stay_secret(bed: &TestBed, runner: &Runner, secrets: &[&str]) {
    assert!(
        runner.log().contains("write operation: CONNECT"),
        "the log has async-nats's traces"
    );
    let env = std::fs::read_to_string(bed.path("env")).expect("the function wrote its env");
    assert!(env.contains("JETRUN_SEQUENCE="), "{env}");
    let places = [
        ("the runner's log", runner.log()),
        ("/metrics", scrape(bed.metrics).await),
        ("the exec child's environment", env),
    ];
    for (place, text) in &places {
        for secret in secrets {
            assert!(!secret.is_empty());
            assert!(!text.contains(secret), "{place} holds a secret:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_nkey_authenticate_and_stay_secret() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("seed");
    let bed = TestBed::with_nats(NatsServer::start_with_config(&format!(
        r#"authorization {{ users = [ {{ user: "app", password: "{PASSWORD}" }}, {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    )));
    let client = ConnectOptions::with_user_and_password("app".into(), PASSWORD.into())
        .connect(bed.nats.url())
        .await
        .expect("test client connects");

    let config = config_with_auth(&bed, "user = \"app\"\npassword = \"${APP_PASSWORD}\"");
    let runner = Runner::start_with_env(&config, &[("APP_PASSWORD", PASSWORD), VERBOSE]);
    an_event_is_handled(&bed, &runner, client.clone()).await;
    secrets_stay_secret(&bed, &runner, &[PASSWORD]).await;
    drop(runner);
    std::fs::remove_file(bed.path("env")).expect("remove the first run's env");

    std::fs::write(bed.path("app.nk"), &seed).expect("write seed");
    let config = config_with_auth(&bed, "nkey = \"app.nk\"");
    let runner = Runner::start_with_env(&config, &[VERBOSE]);
    an_event_is_handled(&bed, &runner, client).await;
    secrets_stay_secret(&bed, &runner, &[&seed]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_authenticates_and_stays_secret() {
    let bed = TestBed::with_nats(NatsServer::start_with_config(&format!(
        r#"authorization {{ token: "{TOKEN}" }}"#
    )));
    let client = ConnectOptions::with_token(TOKEN.into())
        .connect(bed.nats.url())
        .await
        .expect("test client connects");
    let config = config_with_auth(&bed, &format!("token = {}", toml_str(TOKEN)));
    let runner = Runner::start_with_env(&config, &[VERBOSE]);
    an_event_is_handled(&bed, &runner, client).await;
    secrets_stay_secret(&bed, &runner, &[TOKEN]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_authenticates_and_stays_secret() {
    // An operator, an account with JetStream and two users, made here:
    // nats-server trusts the operator and resolves the account from memory.
    let auth = JwtAuth::new();
    let bed = TestBed::with_nats(NatsServer::start_with_config(&auth.server_config()));
    let (test_creds, _) = auth.user_creds("test");
    let client = ConnectOptions::with_credentials(&test_creds)
        .expect("test creds parse")
        .connect(bed.nats.url())
        .await
        .expect("test client connects");

    let (creds, seed) = auth.user_creds("jetrun");
    std::fs::write(bed.path("jetrun.creds"), &creds).expect("write creds");
    let jwt = creds.lines().nth(1).expect("the JWT line").to_string();
    let config = config_with_auth(&bed, "creds = \"jetrun.creds\"");
    let runner = Runner::start_with_env(&config, &[VERBOSE]);
    an_event_is_handled(&bed, &runner, client).await;
    secrets_stay_secret(&bed, &runner, &[&seed, &jwt]).await;

    // `jetrun publish -c` connects with the config's credentials.
    let config = config.to_string_lossy();
    let (status, stdout, stderr) = run_command(&["publish", "-c", &config, "ev.ok", r#"{"n": 2}"#]);
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("to stream EVENTS at sequence 2"),
        "{stdout}"
    );
}

/// Starts a runner with wrong credentials (`auth` lines): within
/// [`FAIL_FAST`] its log names the refusal, the URL and `method`, and it
/// stays unready; `jetrun status` with the same config exits 1 with the
/// same message just as fast. `secret` is in neither.
async fn wrong_credentials_fail_fast(bed: &TestBed, auth: &str, method: &str, secret: &str) {
    let config = config_with_auth(bed, auth);
    let expected = format!("authorization violation at {} ({method}", bed.nats.url());

    let started = Instant::now();
    let runner = Runner::start(&config);
    let log = || runner.log();
    wait_until(FAIL_FAST, "the runner logs the refusal", || async {
        log().contains(&expected)
    })
    .await;
    eprintln!("refusal logged after {:?}", started.elapsed());
    let metrics = bed.metrics;
    wait_until(FAIL_FAST, "/healthz answers", || async move {
        http_status(metrics, "/healthz").await == Some(200)
    })
    .await;
    holds_for(Duration::from_secs(2), "/readyz stays 503", || async move {
        http_status(metrics, "/readyz").await == Some(503)
    })
    .await;
    let log = runner.log();
    assert!(log.contains("NATS refused jetrun's credentials"), "{log}");
    assert!(
        !log.contains("Cannot reach NATS"),
        "not a network error: {log}"
    );
    assert!(!log.contains(secret), "the log holds the secret:\n{log}");

    let started = Instant::now();
    let (code, stdout, stderr) = run_command(&["status", "-c", &config.to_string_lossy()]);
    let took = started.elapsed();
    eprintln!("jetrun status failed after {took:?}");
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(took < FAIL_FAST, "took {took:?}");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_fast_and_keeps_the_runner_unready() {
    let bed = TestBed::with_nats(NatsServer::start_with_config(&format!(
        r#"authorization {{ users = [ {{ user: "app", password: "{PASSWORD}" }} ] }}"#
    )));
    let wrong = "pw-wrong-Zt5c-leak-canary";
    let auth = format!("user = \"app\"\npassword = {}", toml_str(wrong));
    wrong_credentials_fail_fast(&bed, &auth, "user/password auth, user \"app\"", wrong).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_fast_and_keeps_the_runner_unready() {
    let bed = TestBed::with_nats(NatsServer::start_with_config(&format!(
        r#"authorization {{ token: "{TOKEN}" }}"#
    )));
    let wrong = "tok-wrong-Hq3w-leak-canary";
    let auth = format!("token = {}", toml_str(wrong));
    wrong_credentials_fail_fast(&bed, &auth, "token auth", wrong).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_creds_fail_fast_and_keep_the_runner_unready() {
    let bed = TestBed::with_nats(NatsServer::start_with_config(
        &JwtAuth::new().server_config(),
    ));
    // A well-formed user of another operator's account.
    let (creds, seed) = JwtAuth::new().user_creds("stranger");
    let path = bed.path("stranger.creds");
    std::fs::write(&path, creds).expect("write creds");
    let method = format!("creds file auth, {}", path.display());
    wrong_credentials_fail_fast(&bed, "creds = \"stranger.creds\"", &method, &seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_emit_is_retried_and_logged_as_a_permission_error() {
    // jetrun's user may use JetStream (its API, acks, reply inboxes) and
    // nothing else: not publish `echo`'s output, `ev.in.echoed`.
    let bed = TestBed::with_nats(NatsServer::start_with_config(&format!(
        r#"authorization {{ users = [
            {{ user: "admin", password: "{PASSWORD}" }},
            {{ user: "jetrun", password: "{PASSWORD}",
               permissions: {{ publish: {{ allow: ["$JS.API.>", "$JS.ACK.>", "_INBOX.>"] }} }} }}
        ] }}"#
    )));
    let client = ConnectOptions::with_user_and_password("admin".into(), PASSWORD.into())
        .connect(bed.nats.url())
        .await
        .expect("test client connects");
    let url_line = format!("url = {}\n", toml_str(bed.nats.url()));
    let base = bed.base_config().replace(
        &url_line,
        &format!(
            "{url_line}user = \"jetrun\"\npassword = {}\n",
            toml_str(PASSWORD)
        ),
    );
    let config = bed.write_config(&format!(
        "{base}\n[functions.echo]\nsubjects = [\"ev.in\"]\nbuiltin = \"echo\"\n"
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    let js = &async_nats::jetstream::new(client);
    js.publish("ev.in", r#"{"n": 1}"#.into())
        .await
        .expect("publish")
        .await
        .expect("stored");

    let metrics = bed.metrics;
    let retries = || async move {
        let text = scrape(metrics).await;
        metric(
            &text,
            "jetrun_events_processed_total",
            &[("function", "echo"), ("outcome", "retry")],
        )
        .unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(15), "a retry", || async {
        retries().await >= 1.0
    })
    .await;
    wait_until(Duration::from_secs(5), "the redelivery", || async {
        let text = scrape(metrics).await;
        metric(
            &text,
            "jetrun_events_received_total",
            &[("function", "echo")],
        ) >= Some(2.0)
    })
    .await;
    let log = runner.log();
    assert!(
        log.contains("NATS denied permission to publish to ev.in.echoed"),
        "{log}"
    );
    assert!(log.contains("Handler failed; retrying"), "{log}");
    assert!(
        log.contains("is jetrun's NATS user allowed to publish to ev.in.echoed?"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "{log}");

    // Not lost: the input is still unacked, and nothing was emitted.
    let info = consumer_info(js, TestBed::STREAM, "echo")
        .await
        .expect("consumer");
    assert_eq!(info.ack_floor.stream_sequence, 0, "{info:?}");
    assert_eq!(info.num_ack_pending, 1, "{info:?}");
    assert_eq!(stream_messages(js, TestBed::STREAM).await.len(), 1);
    let text = scrape(metrics).await;
    for outcome in ["success", "dead_letter"] {
        assert_eq!(
            metric(
                &text,
                "jetrun_events_processed_total",
                &[("function", "echo"), ("outcome", outcome)]
            )
            .unwrap_or(0.0),
            0.0,
            "{outcome}: {text}"
        );
    }
}
