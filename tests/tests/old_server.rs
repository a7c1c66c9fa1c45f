//! jetrun against a nats-server older than what time as a trigger needs
//! (2.11.11, from `deploy/install-nats-server.sh --old`): a config with a
//! cron schedule stops the runner at start, naming the schedule, the version
//! found and the version needed; a config without one runs, and an emit
//! with a delay is dead-lettered saying why.

use std::time::Duration;

use jetrun_e2e::{
    header, stream_messages, toml_str, wait_for_consumer, wait_ready, wait_until, NatsServer,
    Runner, TestBed,
};

/// A nats-server 2.11 for `test`, or `None` (said on stderr) when
/// `NATS_SERVER_OLD_BIN` is not set: `tests/run.sh` sets it.
fn old_server(test: &str) -> Option<NatsServer> {
    let Some(bin) = std::env::var_os("NATS_SERVER_OLD_BIN").filter(|b| !b.is_empty()) else {
        eprintln!(
            "SKIPPED: {test}: NATS_SERVER_OLD_BIN is not set; run it with tests/run.sh, or set \
             it to the output of deploy/install-nats-server.sh --old"
        );
        return None;
    };
    let server = NatsServer::start_binary(std::path::Path::new(&bin));
    assert!(
        server.log().contains("Version:  2.11."),
        "NATS_SERVER_OLD_BIN is not nats-server 2.11:\n{}",
        server.log()
    );
    Some(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_on_nats_server_2_11_stops_the_runner_naming_both_versions() {
    let Some(nats) = old_server("a_cron_schedule_on_nats_server_2_11") else {
        return;
    };
    let bed = TestBed::with_nats(nats);
    let config = bed.write_config(&format!(
        "{}\n[functions.report]\nschedule = \"*/2 * * * * *\"\nbuiltin = \"noop\"\n",
        bed.base_config()
    ));
    stops_saying(
        &config,
        "schedule \"*/2 * * * * *\" of function report needs nats-server 2.14 or later; the \
         server is 2.11.11",
    )
    .await;
}

/// Starts a runner on `config` and checks it stops with exit status 1,
/// its log saying `why`.
async fn stops_saying(config: &std::path::Path, why: &str) {
    let mut runner = Runner::start(config);
    let status = runner
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the runner stops");
    assert_eq!(status.code(), Some(1), "{}", runner.log());
    assert!(runner.log().contains(why), "{}", runner.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_schedules_a_runner_runs_on_2_11_and_a_delayed_emit_says_what_it_needs() {
    let Some(nats) = old_server("without_schedules_a_runner_runs_on_2_11") else {
        return;
    };
    let bed = TestBed::with_nats(nats);
    let script = bed.write_script(
        "remind.sh",
        r#"cat > /dev/null
echo '{"emit": [{"type": "ev.reminder", "data": {}, "delay": "1s"}]}'
"#,
    );
    let config = bed.write_config(&format!(
        "{}\n[functions.remind]\nsubjects = [\"ev.placed\"]\nexec = [\"sh\", {}]\n\
         retry = {{ max_attempts = 1 }}\n\n[functions.echo]\nsubjects = [\"ev.in\"]\n\
         builtin = \"echo\"\n",
        bed.base_config(),
        toml_str(script.to_string_lossy()),
    ));
    let runner = Runner::start(&config);
    wait_ready(bed.metrics).await;
    assert!(
        runner.log().contains("No delayed events with this server."),
        "{}",
        runner.log()
    );
    let js = bed.jetstream().await;
    wait_for_consumer(&js, TestBed::STREAM, "echo").await;
    // Everything else runs.
    js.publish("ev.in", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    js.publish("ev.placed", "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    wait_until(
        Duration::from_secs(20),
        "the echo and the dead letter",
        || {
            let js = &js;
            async move {
                let echoed = stream_messages(js, TestBed::STREAM)
                    .await
                    .iter()
                    .any(|m| m.subject.as_str() == "ev.in.echoed");
                echoed && !stream_messages(js, "DLQ").await.is_empty()
            }
        },
    )
    .await;
    let letters = stream_messages(&js, "DLQ").await;
    let error = header(&letters[0].headers, "Jetrun-Error").unwrap_or_default();
    assert!(
        error.contains("delayed events need nats-server 2.12 or later; the server is 2.11.11"),
        "{error}"
    );
    assert!(
        stream_messages(&js, TestBed::STREAM)
            .await
            .iter()
            .all(|m| m.subject.as_str() != "ev.reminder"),
        "nothing delayed is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_saga_step_on_nats_server_2_11_stops_the_runner_naming_both_versions() {
    let Some(nats) = old_server("a_delayed_saga_step_on_nats_server_2_11") else {
        return;
    };
    let bed = TestBed::with_nats(nats);
    let config = bed.write_config(&format!(
        "{}\n[functions.echo]\nsubjects = [\"ev.in\"]\nbuiltin = \"echo\"\n\n[sagas.pay]\n\
         key = \"order_id\"\nstart = \"ev.placed\"\ncompleted = \"ev.paid\"\nfailed = \
         \"ev.unpaid\"\n\n[[sagas.pay.steps]]\nname = \"remind\"\ncommand = \"ev.remind\"\n\
         success = \"ev.reminded\"\ndelay = \"1h\"\n",
        bed.base_config()
    ));
    stops_saying(
        &config,
        "step remind of saga pay has a delay, which needs nats-server 2.12 or later; the server \
         is 2.11.11",
    )
    .await;
}
