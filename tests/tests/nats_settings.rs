//! Where and as whom the verbs connect, the way the `nats` CLI decides it:
//! flags over the environment over a `nats` context over the config file's
//! `[nats]`, against a real nats-server that wants a user and password.
//! A context is read from `$XDG_CONFIG_HOME/nats/context/NAME.json`, named
//! with `--context`/`NATS_CONTEXT` or selected in `nats/context.txt`.

use std::path::Path;

use jetrun_e2e::{run_command_with_env, stream_len, toml_str, NatsServer, TestBed};

const AUTH: &str = "authorization { user: ada, password: pw-settings }";

/// A bed whose server wants ada's password, a config that names the server
/// but no credentials, and a `nats` CLI context folder with `ada` (the
/// right URL and password) and `stale` (a URL nothing listens on).
async fn bed() -> (TestBed, String) {
    let bed = TestBed::with_nats(NatsServer::start_with_config(AUTH));
    as_ada(&bed)
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: TestBed::STREAM.into(),
            subjects: vec!["ev.>".into()],
            ..Default::default()
        })
        .await
        .expect("create the stream");
    let contexts = bed.path("xdg/nats/context");
    std::fs::create_dir_all(&contexts).unwrap();
    let ada = serde_json::json!({
        "description": "the test server as ada",
        "url": bed.nats.url(),
        "user": "ada",
        "password": "pw-settings",
    });
    std::fs::write(contexts.join("ada.json"), ada.to_string()).unwrap();
    let stale = serde_json::json!({ "url": dead_url(), "user": "ada", "password": "pw-settings" });
    std::fs::write(contexts.join("stale.json"), stale.to_string()).unwrap();
    let xdg = bed.path("xdg").display().to_string();
    (bed, xdg)
}

/// A URL no server listens on (port 1: no test's server takes it).
fn dead_url() -> String {
    "nats://127.0.0.1:1".to_string()
}

fn publish(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut all = vec!["publish"];
    all.extend_from_slice(args);
    all.extend(["ev.settings", "{}"]);
    let (code, stdout, stderr) = run_command_with_env(&all, env);
    (code, format!("{stdout}{stderr}"))
}

/// The bed's config with `url` instead of its server's, no credentials, and
/// one no-op function.
fn config(bed: &TestBed, url: &str) -> std::path::PathBuf {
    let base = bed
        .base_config()
        .replace(&toml_str(bed.nats.url()), &toml_str(url));
    bed.write_config(&format!(
        "{base}\n[functions.hello]\nsubjects = [\"ev.hello\"]\nbuiltin = \"noop\"\n"
    ))
}

async fn as_ada(bed: &TestBed) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("ada".into(), "pw-settings".into())
            .connect(bed.nats.url())
            .await
            .expect("connect as ada"),
    )
}

async fn stored(bed: &TestBed) -> u64 {
    stream_len(&as_ada(bed).await, TestBed::STREAM).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_the_environment_which_beats_a_context_which_beats_the_config() {
    let (bed, xdg) = bed().await;
    let url = bed.nats.url();
    let dead = dead_url();
    let xdg = ("XDG_CONFIG_HOME", xdg.as_str());

    // No credentials anywhere: the server refuses.
    let (code, out) = publish(&["--server", &url], &[xdg]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("authorization violation"), "{out}");

    // A named context gives URL and credentials.
    let (code, out) = publish(&["--context", "ada"], &[xdg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("to stream EVENTS"), "{out}");
    let (code, out) = publish(&[], &[xdg, ("NATS_CONTEXT", "ada")]);
    assert_eq!(code, 0, "NATS_CONTEXT names it too: {out}");

    // The context beats the config file's [nats] (its URL is dead here).
    let wrong = config(&bed, &dead);
    let wrong = wrong.to_str().unwrap();
    let (code, out) = publish(&["-c", wrong, "--context", "ada"], &[xdg]);
    assert_eq!(code, 0, "{out}");

    // The environment beats the context; a flag beats the environment.
    let (code, out) = publish(&["--context", "ada"], &[xdg, ("NATS_URL", &dead)]);
    assert_eq!(code, 1, "NATS_URL over the context's url: {out}");
    assert!(out.contains(&dead), "{out}");
    let (code, out) = publish(
        &["--context", "ada", "--server", &url],
        &[xdg, ("NATS_URL", &dead)],
    );
    assert_eq!(code, 0, "--server over NATS_URL: {out}");
    let (code, out) = publish(&["--context", "ada"], &[xdg, ("NATS_PASSWORD", "wrong")]);
    assert_eq!(code, 1, "NATS_PASSWORD over the context's: {out}");
    assert!(out.contains("authorization violation"), "{out}");
    let (code, out) = publish(&["--context", "stale", "--server", &url], &[xdg]);
    assert_eq!(
        code, 0,
        "the stale context's credentials, the flag's URL: {out}"
    );

    // JETRUN_NATS_URL as a list (a dead server first) works for publish.
    let list = format!("{dead},{url}");
    let (code, out) = publish(
        &["--user", "ada", "--password", "pw-settings"],
        &[xdg, ("JETRUN_NATS_URL", &list)],
    );
    assert_eq!(code, 0, "{out}");

    assert_eq!(stored(&bed).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_verbs_follow_the_selected_context() {
    let (bed, xdg) = bed().await;
    let xdg_env = ("XDG_CONFIG_HOME", xdg.as_str());
    let dir = Path::new(&xdg).join("nats");
    std::fs::write(dir.join("context.txt"), "ada\n").unwrap();
    let (code, out) = publish(&[], &[xdg_env]);
    assert_eq!(code, 0, "the selected context: {out}");
    // The config's dead URL gives way to the selected context: status
    // reaches NATS and finds no consumer (3), where without the context it
    // cannot reach NATS (1).
    let wrong = config(&bed, &dead_url());
    let wrong = wrong.to_str().unwrap();
    let (code, stdout, stderr) = run_command_with_env(&["status", "-c", wrong], &[xdg_env]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(
        stderr.contains("function hello has no consumer"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run_command_with_env(&["status", "-c", wrong], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("cannot reach NATS"), "{stderr}");
    // A named context wins over the selected one.
    let (code, out) = publish(&["--context", "stale"], &[xdg_env]);
    assert_eq!(code, 1, "{out}");
    std::fs::write(dir.join("context.txt"), "missing\n").unwrap();
    let (code, out) = publish(&[], &[xdg_env]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot read nats context") && out.contains("missing.json"),
        "{out}"
    );
}
