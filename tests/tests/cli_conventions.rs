//! The command line fits a NATS user's habits: `ls` and `info` for `list`
//! and `show`, shell completions, and connection flags on every verb.

use std::io::Read;
use std::process::{Command, Stdio};

use jetrun_e2e::{jetrun_bin, run_command};

#[test]
fn ls_and_info_are_list_and_show() {
    for (alias, verb) in [
        (["dlq", "ls"], ["dlq", "list"]),
        (["dlq", "info"], ["dlq", "show"]),
        (["saga", "ls"], ["saga", "list"]),
        (["saga", "info"], ["saga", "show"]),
    ] {
        let (code, by_alias, stderr) = run_command(&[alias[0], alias[1], "--help"]);
        assert_eq!(code, 0, "{alias:?}: {stderr}");
        let (_, by_name, _) = run_command(&[verb[0], verb[1], "--help"]);
        // The same help, its usage line naming the verb the alias stands for.
        assert_eq!(by_alias, by_name, "{alias:?}");
    }
}

#[test]
fn completions_name_every_verb_and_the_connection_flags() {
    // Every verb `jetrun --help` lists.
    let (_, help, _) = run_command(&["--help"]);
    let verbs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|verb| *verb != "help")
        .collect();
    assert!(verbs.len() >= 13, "{help}");
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = run_command(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        let words: std::collections::BTreeSet<&str> = script
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .collect();
        for verb in &verbs {
            assert!(words.contains(verb), "{shell} completions lack verb {verb}");
        }
        // Fish writes a long flag as `-l context`.
        for flag in ["context", "creds", "server", "tlsca"] {
            let long = format!("--{flag}");
            assert!(
                words.contains(flag) || words.contains(long.as_str()),
                "{shell} completions lack --{flag}"
            );
        }
    }
    let (code, _, stderr) = run_command(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn a_reader_closing_the_pipe_early_is_no_panic() {
    // The reading end is closed before jetrun starts: its first write meets
    // a closed pipe, however short the script.
    let (reader, writer) = nix::unistd::pipe().expect("a pipe");
    drop(reader);
    let mut child = Command::new(jetrun_bin())
        .args(["completions", "bash"])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jetrun completions");
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!stderr.contains("panic"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

/// `--json` gives one JSON object on stdout, for scripts.
fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_publish_and_replay_speak_json() {
    let bed = jetrun_e2e::TestBed::new();
    bed.jetstream()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: jetrun_e2e::TestBed::STREAM.into(),
            subjects: vec!["ev.>".into()],
            ..Default::default()
        })
        .await
        .expect("create the stream");
    let config = bed.write_config(&format!(
        "{}\n[functions.hello]\nsubjects = [\"ev.hello\"]\nbuiltin = \"noop\"\n",
        bed.base_config()
    ));
    let config = config.to_str().expect("UTF-8");

    let (code, stdout, stderr) = run_command(&["check", "--json", config]);
    assert_eq!(code, 0, "{stderr}");
    let checked = json(&stdout);
    assert_eq!(
        (checked["ok"].as_bool(), checked["functions"].as_u64()),
        (Some(true), Some(1))
    );
    let bad = bed.path("bad.toml");
    std::fs::write(&bad, "[functions.x]\nbuiltin = 1\n").expect("write bad.toml");
    let (code, stdout, _) = run_command(&["check", "--json", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    let refused = json(&stdout);
    assert_eq!(refused["ok"], false);
    assert!(
        !refused["errors"].as_array().expect("errors").is_empty(),
        "{refused}"
    );

    let url = bed.nats.url();
    let (code, stdout, stderr) = run_command(&[
        "publish", "--json", "-s", &url, "--id", "e-1", "ev.hello", "{}",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let published = json(&stdout);
    assert_eq!(published["id"], "e-1");
    assert_eq!(published["stream"], "EVENTS");
    assert_eq!(published["sequence"], 1);
    assert_eq!(published["duplicate"], false);

    let (code, stdout, stderr) =
        run_command(&["replay", "hello", "--from-seq", "1", "--json", "-c", config]);
    assert_eq!(code, 0, "{stderr}");
    let replayed = json(&stdout);
    assert_eq!(replayed["function"], "hello");
    assert_eq!(
        (replayed["events"].as_u64(), replayed["succeeded"].as_u64()),
        (Some(1), Some(1))
    );
}
