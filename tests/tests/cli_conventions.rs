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
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = run_command(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        // Fish writes a long flag as `-l context`.
        for word in [
            "publish", "status", "dlq", "saga", "context", "creds", "server",
        ] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let (code, _, stderr) = run_command(&["completions", "tcsh"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn a_reader_closing_the_pipe_early_is_no_panic() {
    let mut child = Command::new(jetrun_bin())
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run jetrun completions");
    drop(child.stdout.take());
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
