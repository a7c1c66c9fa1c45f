//! Every `jetrun ...` example runs as written: the fenced commands of
//! README.md, docs/*.md, config/README.md and deploy/README.md, and the
//! `Examples:` of every verb's and sub-verb's `--help` (walked from
//! `jetrun --help`, so a new verb cannot be missed).
//!
//! Each command runs once, with bash, from a fresh copy of the repository's
//! configs, functions and SDK in a temp dir, against a real nats-server
//! (given as `NATS_URL`, as every verb reads it), after `jetrun run` of the
//! config it names has bound its functions, and after whatever state it
//! needs (dead letters to list, saga instances to show) was made. It must not
//! exit 2 (a usage or config error); where the doc shows its output, it must
//! exit 0 and print that shape. Every command is printed with the file and
//! line it came from, so a failure says where to fix the doc.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jetrun_e2e::{
    free_port, jetrun_bin, repo_root, run_command_with_env, wait_until, without_outside_settings,
    NatsServer,
};

/// The Markdown files whose fenced `jetrun` commands are run.
const DOCS: &[&str] = &[
    "README.md",
    "docs/architecture.md",
    "docs/events.md",
    "docs/functions.md",
    "docs/schedules.md",
    "config/README.md",
    "deploy/README.md",
];

/// Commands not run, matched by how they start (environment prefixes
/// removed), each with the reason.
const SKIP: &[(&str, &str)] = &[
    // Services: they run until stopped. tests/tests/*.rs start `jetrun run`
    // in every way the docs show; dev.rs covers `jetrun dev`.
    ("jetrun run", "a service, runs until stopped"),
    (
        "jetrun dev",
        "a service with its own nats-server, runs until stopped",
    ),
    // `${fpath[1]}` is zsh's: bash would write /_jetrun.
    (
        "jetrun completions zsh",
        "writes into zsh's fpath, a zsh-only expansion",
    ),
];

/// Verbs that talk to NATS: `jetrun run` of the config they name goes first.
const NATS_VERBS: &[&str] = &[
    "publish",
    "status",
    "dlq",
    "events",
    "replay",
    "saga",
    "projection",
    "schedule",
];

/// How long one command may take.
const COMMAND_TIMEOUT: &str = "60";

/// One example: where it is written, the command line as written
/// (continuations joined), and the output the doc shows for it, if any.
#[derive(Debug)]
struct Example {
    origin: String,
    line: String,
    shown: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_command_runs_as_written() {
    let mut examples = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(repo_root().join(doc))
            .unwrap_or_else(|e| panic!("read {doc}: {e}"));
        examples.extend(doc_examples(doc, &text));
    }
    examples.extend(help_examples());
    assert!(
        examples.len() > 40,
        "only {} examples found: is the extraction broken?",
        examples.len()
    );

    let mut skips_used = vec![false; SKIP.len()];
    let mut failures = Vec::new();
    for example in &examples {
        let command = jetrun_part(&example.line);
        if let Some(i) = SKIP
            .iter()
            .position(|(start, _)| without_env(&command).starts_with(start))
        {
            skips_used[i] = true;
            println!(
                "{}: {}\n    skipped: {}",
                example.origin, example.line, SKIP[i].1
            );
            continue;
        }
        match run_example(example, &command).await {
            Ok(note) => println!("{}: {}\n    {note}", example.origin, example.line),
            Err(error) => {
                println!("{}: {}\n    FAILED: {error}", example.origin, example.line);
                failures.push(format!("{}: {}\n    {error}", example.origin, example.line));
            }
        }
    }
    for (used, (start, _)) in skips_used.iter().zip(SKIP) {
        assert!(used, "skip entry {start:?} matches no example: remove it");
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples fail:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
}

/// Runs one example in a fresh workspace; `Ok` says what happened.
async fn run_example(example: &Example, command: &str) -> Result<String, String> {
    let ws = Workspace::new();
    let words = shell_words(&without_env(command));
    let verb = verb(&words).ok_or("no verb")?;
    let named = ws.named_config(&words, command);
    if verb != "init" && named.starts_with(ws.root.join("etc/jetrun")) {
        // An installed config: the quick start's, as if `jetrun init`'s had
        // been edited into it.
        std::fs::copy(ws.root.join("config/jetrun.toml"), &named).expect("install config");
    }

    let server = NATS_VERBS.contains(&verb).then(NatsServer::start);
    let mut runner = None;
    if let Some(server) = &server {
        if named.is_file() {
            runner = Some(ws.start_runner(&named, &server.url()).await?);
            prepare(&named, &server.url(), &words).await?;
        }
    }
    let url = server.as_ref().map(NatsServer::url).unwrap_or_default();
    let line = ws.rewrite(command, &url);
    let output = ws.bash(&line, &url);
    drop(runner);

    let code = output.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = || format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    if code == 2 {
        return Err(format!("exit status 2 (usage or config error)\n{}", said()));
    }
    if code == 124 {
        return Err(format!(
            "still running after {COMMAND_TIMEOUT} s\n{}",
            said()
        ));
    }
    // A panic, a command or file not found, a death by a signal: never what
    // a doc means, whatever it shows.
    if code == 101 || code == 126 || code == 127 || code < 0 || stderr.contains("panicked at") {
        return Err(format!("crashed or not found (exit {code})\n{}", said()));
    }
    if !example.shown.is_empty() {
        if code != 0 {
            return Err(format!(
                "the doc shows its output, but it exits {code}\n{}",
                said()
            ));
        }
        let printed = if stdout.trim().is_empty() {
            &stderr
        } else {
            &stdout
        };
        same_shape(&example.shown, printed).map_err(|e| format!("{e}\n{}", said()))?;
        return Ok(format!("exit {code}, output of the shape shown"));
    }
    Ok(format!("exit {code}"))
}

/// A temp dir holding what the docs' commands use from a clone: the
/// configs, the example functions, the Python SDK, `target/debug/jetrun`,
/// plus `etc/jetrun/` for `/etc/jetrun/`, a home and a `nats` context.
struct Workspace {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetrun-docs-")
            .tempdir()
            .expect("create temp dir");
        let root = dir.path().to_path_buf();
        let repo = repo_root();
        for folder in ["config/examples", "functions/examples", "sdk/python"] {
            copy_dir(&repo.join(folder), &root.join(folder));
        }
        for entry in std::fs::read_dir(repo.join("config")).expect("read config/") {
            let path = entry.expect("read config/").path();
            if path.extension().is_some_and(|e| e == "toml" || e == "json") {
                std::fs::copy(&path, root.join("config").join(path.file_name().unwrap()))
                    .expect("copy config file");
            }
        }
        for folder in [
            "bin",
            "target/debug",
            "etc/jetrun",
            "xdg/nats/context",
            "runner",
        ] {
            std::fs::create_dir_all(root.join(folder)).expect("create folder");
        }
        // What makes `config/jetrun.toml` the default config at a clone's root.
        std::fs::write(root.join("runner/Cargo.toml"), "").expect("write runner/Cargo.toml");
        for link in ["bin/jetrun", "target/debug/jetrun"] {
            std::os::unix::fs::symlink(jetrun_bin(), root.join(link)).expect("link jetrun");
        }
        Workspace { _dir: dir, root }
    }

    /// The config file a command reads, in this workspace: `-c`/`--config`,
    /// `check`'s argument, `JETRUN_CONFIG`, else `config/jetrun.toml` (a
    /// clone's root has no `jetrun.toml`).
    fn named_config(&self, words: &[String], command: &str) -> PathBuf {
        let mut named = None;
        for (i, word) in words.iter().enumerate() {
            if word == "-c" || word == "--config" {
                named = words.get(i + 1).cloned();
            } else if let Some(path) = word.strip_prefix("--config=") {
                named = Some(path.to_string());
            }
        }
        if named.is_none() && verb(words) == Some("check") {
            named = words
                .iter()
                .skip_while(|w| *w != "check")
                .skip(1)
                .find(|w| !w.starts_with('-'))
                .cloned();
        }
        if named.is_none() {
            named = shell_words(command)
                .iter()
                .find_map(|w| w.strip_prefix("JETRUN_CONFIG=").map(str::to_string));
        }
        let named = named.unwrap_or_else(|| "config/jetrun.toml".to_string());
        match named.strip_prefix("/etc/jetrun/") {
            Some(rest) => self.root.join("etc/jetrun").join(rest),
            None => self.root.join(named),
        }
    }

    /// The command with `/etc/jetrun/` moved into the workspace and every
    /// `nats://` URL list pointed at the test's server.
    fn rewrite(&self, command: &str, url: &str) -> String {
        let etc = format!("{}/", self.root.join("etc/jetrun").display());
        let command = command.replace("/etc/jetrun/", &etc);
        if url.is_empty() {
            return command;
        }
        let mut out = String::new();
        let mut rest = command.as_str();
        while let Some(at) = rest.find("nats://") {
            out.push_str(&rest[..at]);
            out.push_str(url);
            let end = rest[at..]
                .find(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                .map_or(rest.len(), |n| at + n);
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    /// Runs `line` with bash (pipefail) from the workspace root.
    fn bash(&self, line: &str, url: &str) -> std::process::Output {
        let home = self.root.join("home");
        for target in line.split_whitespace().filter_map(|w| w.strip_prefix("~/")) {
            if let Some(parent) = home.join(target).parent() {
                std::fs::create_dir_all(parent).expect("create folder in home");
            }
        }
        let context = format!(r#"{{"url": "{url}"}}"#);
        std::fs::write(self.root.join("xdg/nats/context/orders.json"), context)
            .expect("write context");
        let path = format!(
            "{}:{}",
            self.root.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("timeout");
        without_outside_settings(&mut command)
            .args([COMMAND_TIMEOUT, "bash", "-o", "pipefail", "-c", line])
            .current_dir(&self.root)
            .env("PATH", path)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", self.root.join("xdg"))
            .stdin(Stdio::null());
        if !url.is_empty() {
            command.env("NATS_URL", url);
        }
        command.output().expect("run bash")
    }

    /// `jetrun run` of `config` (metrics on a free port) until every
    /// function's consumer is bound.
    async fn start_runner(&self, config: &Path, url: &str) -> Result<jetrun_e2e::Runner, String> {
        let text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
        let copy = config.with_file_name(".docs-run-runner.toml");
        std::fs::write(&copy, with_metrics_on(&text, free_port())).map_err(|e| e.to_string())?;
        let runner = jetrun_e2e::Runner::start_with_env(&copy, &[("NATS_URL", url)]);
        let copy_str = copy.display().to_string();
        // Shorter than wait_until's own limit, so that a runner that never
        // binds ends here, where its log is printed, not in a bare panic.
        let ready = tokio::time::timeout(
            Duration::from_secs(30),
            wait_until(Duration::from_secs(60), "jetrun run binds", || {
                let (code, _, _) =
                    run_command_with_env(&["status", "-c", &copy_str], &[("NATS_URL", url)]);
                async move { code == 0 }
            }),
        )
        .await;
        match ready {
            Ok(()) => Ok(runner),
            Err(_) => Err(format!("jetrun run did not bind:\n{}", runner.log())),
        }
    }
}

/// State a command needs beyond bound functions: dead letters for `dlq`,
/// saga instances for `saga`, an event on the subject for `events`.
async fn prepare(config: &Path, url: &str, words: &[String]) -> Result<(), String> {
    let config = config.display().to_string();
    let env = [("NATS_URL", url)];
    let publish = |subject: &str, data: &str| {
        let (code, out, err) =
            run_command_with_env(&["publish", "-c", &config, subject, data], &env);
        (code == 0).then_some(()).ok_or(format!(
            "preparing: publish {subject} exits {code}: {out}{err}"
        ))
    };
    let args = positionals(words);
    let declares = |table: &str, name: &str| {
        std::fs::read_to_string(&config)
            .unwrap_or_default()
            .contains(&format!("[{table}.{name}]"))
    };
    match (args.first().copied(), args.get(2).copied()) {
        // Fourteen dead letters: the examples' sequence numbers (3, 12 to 14) exist.
        (Some("dlq"), Some(function)) => {
            if !declares("functions", function) {
                return Err(format!("{config} declares no function {function}"));
            }
            for _ in 0..14 {
                publish("order.placed", r#"{"order_id": 2, "items": []}"#)?;
            }
            let args = ["dlq", "list", function, "--json"];
            wait_for(&config, url, &args, |out| json_rows(out).len() >= 14).await
        }
        (Some("saga"), Some(saga)) => {
            if !declares("sagas", saga) {
                return Err(format!("{config} declares no saga {saga}"));
            }
            let keys = ["o-1", "o-3", "o-1001"];
            for key in keys {
                let order = format!(
                    r#"{{"order_id": "{key}", "total": 20, "items": [{{"sku": "pen", "qty": 1}}]}}"#
                );
                publish("order.placed", &order)?;
            }
            wait_for(&config, url, &["saga", "list", saga, "--json"], |out| {
                let rows = json_rows(out);
                keys.iter()
                    .all(|key| rows.iter().any(|row| row["key"] == *key))
            })
            .await
        }
        (Some("events"), _) => {
            let subject = args.get(1).copied().unwrap_or("order.placed");
            publish(
                &subject.replace('*', "42").replace('>', "placed"),
                r#"{"order_id": 42}"#,
            )
        }
        _ => Ok(()),
    }
}

/// Waits up to 30 s until `jetrun ARGS -c config` prints what `done` wants.
async fn wait_for(
    config: &str,
    url: &str,
    args: &[&str],
    done: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["-c", config]);
    for _ in 0..300 {
        let (_, out, _) = run_command_with_env(&full, &[("NATS_URL", url)]);
        if done(&out) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "preparing: jetrun {} never showed the state needed",
        full.join(" ")
    ))
}

/// The rows of a `--json` list (none when it is not one).
fn json_rows(out: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(out).unwrap_or_default()
}

/// `text` with `[metrics] listen` set to `port` (added when missing).
fn with_metrics_on(text: &str, port: u16) -> String {
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let mut out = Vec::new();
    let mut in_metrics = false;
    let mut found = false;
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            in_metrics = line.trim() == "[metrics]";
            found |= in_metrics;
        }
        if in_metrics && line.trim_start().starts_with("listen") {
            out.push(listen.clone());
        } else {
            out.push(line.to_string());
        }
    }
    if !found {
        out.push(format!("\n[metrics]\n{listen}"));
    }
    out.join("\n") + "\n"
}

/// The fenced `jetrun` commands of one Markdown file. In a block with `$ `
/// prompts only prompted lines are commands, and the lines after each are
/// its output; elsewhere a `# ` line right after a command is its output, and
/// so is a ```text block that directly follows, for the block's first command.
fn doc_examples(doc: &str, text: &str) -> Vec<Example> {
    let lines: Vec<&str> = text.lines().collect();
    let mut examples: Vec<Example> = Vec::new();
    let mut i = 0;
    let mut last_block_first: Option<usize> = None;
    let mut last_block_end = 0;
    while i < lines.len() {
        if !lines[i].trim_start().starts_with("```") {
            i += 1;
            continue;
        }
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j].trim_start().starts_with("```"))
            .unwrap_or(lines.len());
        let block = &lines[start..end];
        let prompted = block.iter().any(|l| l.starts_with("$ "));
        let adjacent = last_block_end + 1 < i
            && lines[last_block_end + 1..i]
                .iter()
                .all(|l| l.trim().is_empty());
        let first_in_block = examples.len();
        let mut j = 0;
        let mut found_command = false;
        // The example the output lines of a `$ ` block belong to.
        let mut prompted_example = None;
        while j < block.len() {
            let mut line = block[j].trim().to_string();
            let number = start + j + 1;
            if prompted {
                match line.strip_prefix("$ ") {
                    Some(rest) => line = rest.to_string(),
                    None => {
                        if let Some(k) = prompted_example {
                            let example: &mut Example = &mut examples[k];
                            example.shown.push(block[j].to_string());
                        }
                        j += 1;
                        continue;
                    }
                }
            }
            while line.ends_with('\\') && j + 1 < block.len() {
                line.pop();
                j += 1;
                line = format!("{} {}", line.trim_end(), block[j].trim());
            }
            prompted_example = None;
            if is_jetrun_command(&line) {
                found_command = true;
                prompted_example = prompted.then_some(examples.len());
                examples.push(Example {
                    origin: format!("{doc}:{number}"),
                    line,
                    shown: Vec::new(),
                });
                while !prompted && j + 1 < block.len() && block[j + 1].starts_with("# ") {
                    j += 1;
                    let shown = block[j].trim_start_matches("# ").to_string();
                    examples.last_mut().unwrap().shown.push(shown);
                }
            }
            j += 1;
        }
        let fence = lines[i].trim_start().trim_start_matches("```");
        if !found_command && fence == "text" && adjacent {
            if let Some(k) = last_block_first {
                if examples[k].shown.is_empty() {
                    examples[k].shown = block.iter().map(|l| l.to_string()).collect();
                }
            }
        }
        last_block_first = (examples.len() > first_in_block).then_some(first_in_block);
        last_block_end = end;
        i = end + 1;
    }
    examples
}

/// The `Examples:` lines of `jetrun --help`, of every verb's and of every
/// sub-verb's; panics when a verb without sub-verbs has none.
fn help_examples() -> Vec<Example> {
    let mut examples = Vec::new();
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = pending.pop() {
        let mut args = path.clone();
        args.push("--help".to_string());
        let output = Command::new(jetrun_bin())
            .args(&args)
            .output()
            .expect("run jetrun --help");
        let help = String::from_utf8_lossy(&output.stdout).into_owned();
        let origin = format!("`jetrun {}`", args.join(" "));
        let verbs = section(&help, "Commands:");
        for entry in &verbs {
            let name = entry.split_whitespace().next().unwrap_or_default();
            if name != "help" {
                let mut sub = path.clone();
                sub.push(name.to_string());
                pending.push(sub);
            }
        }
        let lines = section(&help, "Examples:");
        assert!(
            path.is_empty() || !verbs.is_empty() || !lines.is_empty(),
            "{origin} has no Examples: section"
        );
        let mut k = 0;
        while k < lines.len() {
            let mut line = lines[k].trim().to_string();
            while line.ends_with('\\') && k + 1 < lines.len() {
                line.pop();
                k += 1;
                line = format!("{} {}", line.trim_end(), lines[k].trim());
            }
            if is_jetrun_command(&line) {
                examples.push(Example {
                    origin: origin.clone(),
                    line,
                    shown: Vec::new(),
                });
            }
            k += 1;
        }
    }
    examples
}

/// The indented lines after `title` in a `--help`, up to a blank line.
fn section(help: &str, title: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether one of the line's shell commands is `jetrun` (or a path to it).
fn is_jetrun_command(line: &str) -> bool {
    !line.starts_with('#') && segments(line).iter().any(|s| jetrun_pipeline(s))
}

/// Whether a pipeline runs `jetrun`.
fn jetrun_pipeline(segment: &str) -> bool {
    split_unquoted(segment, &["|"]).iter().any(|part| {
        without_env(part)
            .split_whitespace()
            .next()
            .is_some_and(|w| w == "jetrun" || w.ends_with("/jetrun"))
    })
}

/// The line's `jetrun` pipelines joined by `&&`, its comment dropped: what
/// else the line runs (`systemctl reload jetrun`, `install -d`) is not the
/// docs' to test.
fn jetrun_part(line: &str) -> String {
    let code = strip_comment(line);
    segments(&code)
        .into_iter()
        .filter(|s| jetrun_pipeline(s))
        .map(|s| s.trim().to_string())
        .collect::<Vec<_>>()
        .join(" && ")
}

/// The `&&`, `||` and `;` separated parts of a shell line.
fn segments(line: &str) -> Vec<String> {
    split_unquoted(&strip_comment(line), &["&&", "||", ";"])
}

/// `line` up to an unquoted ` #`.
fn strip_comment(line: &str) -> String {
    let mut quote = None;
    let chars: Vec<char> = line.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || chars[i - 1].is_whitespace() => {
                return chars[..i].iter().collect::<String>().trim_end().to_string();
            }
            _ => {}
        }
    }
    line.to_string()
}

/// `line` split at the unquoted separators (longest first).
fn split_unquoted(line: &str, separators: &[&str]) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if quote.is_none() {
            if let Some(sep) = separators.iter().find(|s| rest.starts_with(**s)) {
                // `||` is not two pipes.
                if !(*sep == "|" && rest.starts_with("||")) {
                    parts.push(std::mem::take(&mut current));
                    rest = &rest[sep.len()..];
                    continue;
                }
            }
        }
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        current.push(c);
        rest = &rest[c.len_utf8()..];
    }
    parts.push(current);
    parts
}

/// The command without its leading `NAME=value` assignments.
fn without_env(command: &str) -> String {
    let mut rest = command.trim_start();
    loop {
        let word = rest.split_whitespace().next().unwrap_or_default();
        let is_assignment = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        if !is_assignment {
            return rest.to_string();
        }
        rest = rest[word.len()..].trim_start();
    }
}

/// Shell words, quotes removed (enough for the docs' commands).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (_, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

/// Options that take a value, as the docs' commands use them.
const VALUE_OPTIONS: &[&str] = &[
    "-c",
    "--config",
    "-s",
    "--server",
    "--creds",
    "--nkey",
    "--user",
    "--password",
    "--tlscert",
    "--tlskey",
    "--tlsca",
    "--context",
    "--log-format",
    "--stream",
    "--correlation-id",
    "--header",
    "--since",
    "--from-seq",
    "--until-seq",
    "--state",
    "--to",
    "--older-than",
];

/// The words of a `jetrun ...` command's first jetrun pipeline that are not
/// options nor option values: the verb, a sub-verb, the arguments.
fn positionals(words: &[String]) -> Vec<&str> {
    let Some(at) = words
        .iter()
        .position(|w| w == "jetrun" || w.ends_with("/jetrun"))
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut rest = words[at + 1..].iter();
    while let Some(word) = rest.next() {
        if ["|", "&&", ">"].contains(&word.as_str()) {
            break;
        }
        if VALUE_OPTIONS.contains(&word.as_str()) {
            rest.next();
        } else if !word.starts_with('-') || word == "-" {
            found.push(word.as_str());
        }
    }
    found
}

/// The verb of a `jetrun ...` command's words.
fn verb(words: &[String]) -> Option<&str> {
    positionals(words).first().copied()
}

/// Whether `printed` has the shape of what the doc shows: the same table
/// header, or the same kinds of columns (numbers, times, JSON, text) on
/// the first line.
fn same_shape(shown: &[String], printed: &str) -> Result<(), String> {
    let shown_first = shown.iter().find(|l| !l.trim().is_empty()).ok_or("empty")?;
    let printed_first = printed
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or("it prints nothing")?;
    let shown_cols = columns(shown_first);
    let printed_cols = columns(printed_first);
    let is_header = shown_cols
        .iter()
        .all(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == ' '));
    // A table's header is compared as is; other lines by the kind of each
    // column, and a sentence (one text column) by its first word too.
    let shape = |cols: &[String]| -> Vec<String> {
        match cols {
            [only] if kind(only) == "text" => {
                vec![format!(
                    "text {}",
                    only.split_whitespace().next().unwrap_or_default()
                )]
            }
            _ => cols.iter().map(|c| kind(c).to_string()).collect(),
        }
    };
    let (want, got) = if is_header {
        (shown_cols, printed_cols)
    } else {
        (shape(&shown_cols), shape(&printed_cols))
    };
    if want == got {
        Ok(())
    } else {
        Err(format!(
            "the doc shows {shown_first:?} ({want:?}), it prints {printed_first:?} ({got:?})"
        ))
    }
}

/// The columns of a line: parts separated by two spaces or more.
fn columns(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// What a column holds.
fn kind(column: &str) -> &'static str {
    if column.chars().all(|c| c.is_ascii_digit()) {
        "number"
    } else if column.len() >= 20 && column.as_bytes()[4] == b'-' && column.contains('T') {
        "time"
    } else if column.starts_with('{') || column.starts_with('[') {
        "json"
    } else {
        "text"
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("read dir entry");
        let path = entry.path();
        let name = entry.file_name();
        if name == "__pycache__" || name == ".venv" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(name));
        } else {
            std::fs::copy(&path, to.join(name)).expect("copy file");
        }
    }
}
