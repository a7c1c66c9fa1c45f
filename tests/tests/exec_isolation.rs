//! What an exec child can reach and take: only the documented environment
//! and no open descriptor of the runner's (worker mode; per event is in
//! `exec.rs`), at most 16 MiB of stdout before it is killed (per event and
//! as one worker reply line), and, with `user` / `group`, another account's
//! uid, gid and home with no supplementary groups. (Timeouts killing the
//! whole process group are in `timeout.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jetrun_e2e::{
    consumer_info, header, jetrun_bin, publish_bare, run_check, stream_messages, toml_str,
    wait_acked, wait_for_consumer, wait_until, Runner, TestBed,
};

/// The stdout limit as the runner's messages name it.
const LIMIT: &str = "16 MiB";

/// True while process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "<pid> (<comm>) <state> ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `KEY=value` lines (as `env` prints them) as a map.
fn env_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The descriptor numbers in `ls -l /proc/self/fd` output, less the one `ls`
/// opened to list them.
fn fd_numbers(listing: &str) -> BTreeSet<u32> {
    listing
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(_, target)| !(target.starts_with("/proc/") && target.ends_with("/fd")))
        .filter_map(|(left, _)| left.split_whitespace().last()?.parse().ok())
        .collect()
}

/// A field of `/proc/self/status`, like `Uid`, trimmed.
fn own_status(field: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn is_root() -> bool {
    own_status("Uid").split_whitespace().nth(1) == Some("0")
}

/// `(uid, gid, home)` of `name` in /etc/passwd.
fn passwd(name: &str) -> Option<(u32, u32, String)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[0] == name).then(|| {
            (
                f[2].parse().unwrap_or(u32::MAX),
                f[3].parse().unwrap_or(u32::MAX),
                f[5].to_string(),
            )
        })
    })
}

/// The name of group `gid` in /etc/group.
fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[2] == gid.to_string()).then(|| f[0].to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_only_the_documented_environment_and_no_descriptors() {
    let bed = TestBed::new();
    // `ls` lists what it inherited through the shell (whose own descriptors
    // are close-on-exec).
    let script = r#"env > worker.env
ls -l /proc/self/fd > worker.fds
while read -r request; do id=$(printf '%s' "$request" | sed 's/^{"id":\([0-9]*\).*/\1/'); echo "{\"id\": $id, \"ok\": true}"; done"#;
    let config = bed.write_config(&format!(
        r#"{base}
[functions.envcheck]
subjects = ["ev.env"]
exec = {{ command = ["sh", "-c", {script}], mode = "worker", env = {{ EXTRA = "from the table" }} }}
"#,
        base = bed.base_config(),
        script = toml_str(script),
    ));
    let _runner = Runner::start_with_env(
        &config,
        &[
            ("JETRUN_TEST_SECRET", "hunter2"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ],
    );
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "envcheck").await;

    publish_bare(&client, "ev.env", "{}").await;
    wait_acked(js, TestBed::STREAM, "envcheck", 1).await;

    let env = env_map(&std::fs::read_to_string(bed.path("worker.env")).expect("worker.env"));
    let var = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(var("JETRUN_FUNCTION"), Some("envcheck"), "{env:?}");
    assert_eq!(var("EXTRA"), Some("from the table"), "{env:?}");
    assert!(var("PATH").is_some(), "PATH is passed on: {env:?}");
    assert_eq!(
        var("HOME"),
        std::env::var("HOME").ok().as_deref(),
        "HOME is the runner's: {env:?}"
    );
    // The per-event variables come in each request, not the environment.
    let allowed = [
        "JETRUN_FUNCTION",
        "PATH",
        "HOME",
        "LANG",
        "TZ",
        "EXTRA",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    let leaked: Vec<&String> = env
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    assert!(leaked.is_empty(), "leaked into the worker: {leaked:?}");

    let listing = std::fs::read_to_string(bed.path("worker.fds")).expect("worker.fds");
    assert_eq!(
        fd_numbers(&listing),
        BTreeSet::from([0, 1, 2]),
        "only stdin, stdout and stderr are open in the worker:\n{listing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_event_child_writing_without_end_is_killed_at_the_stdout_limit() {
    let bed = TestBed::new();
    let pid_file = bed.path("yes.pid");
    let script = bed.write_script(
        "flood.sh",
        &format!("echo $$ > \"{}\"\nexec yes", pid_file.display()),
    );
    // A timeout far beyond the test's wait: only the limit can end the call.
    let config = bed.write_config(&format!(
        "{}{}",
        bed.base_config(),
        bed.sh_function(
            "flood",
            &["ev.flood"],
            &script,
            r#"timeout = "5m"
retry = { max_attempts = 1 }"#
        )
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "flood").await;

    publish_bare(&client, "ev.flood", "{}").await;

    wait_until(
        Duration::from_secs(20),
        "the flooding call is dead-lettered",
        || async move { stream_messages(js, "DLQ").await.len() == 1 },
    )
    .await;
    let dead = &stream_messages(js, "DLQ").await[0];
    let error = header(&dead.headers, "Jetrun-Error").unwrap_or_default();
    assert!(
        error.contains(&format!(
            "wrote more than {LIMIT} to stdout, the limit, and was killed"
        )),
        "the error names the limit: {error:?}"
    );
    assert_eq!(
        header(&dead.headers, "Jetrun-Reason").as_deref(),
        Some("exhausted"),
        "a retryable failure, on its last attempt"
    );
    let pid = read_pid(&pid_file).expect("the child wrote its pid");
    wait_until(
        Duration::from_secs(5),
        "the flooding child is gone",
        || async move { !alive(pid) },
    )
    .await;
    let peak_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", runner.pid()))
        .expect("runner status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 256 * 1024,
        "the runner's peak memory stayed bounded: {peak_kib} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reply_past_the_limit_kills_the_worker_and_the_event_is_retried() {
    let bed = TestBed::new();
    // Attempt 1: a "reply" of endless zero bytes with no newline, from a
    // process that never exits on its own. Attempt 2 (a new worker): ok.
    let script = r#"while read -r request; do
  attempt=$(printf '%s' "$request" | sed 's/.*"attempt":\([0-9]*\).*/\1/')
  printf 'EVENTS:1 %s %s %s\n' "$attempt" "$(date +%s.%N)" "$$" >> "$LEDGER"
  if [ "$attempt" = 1 ]; then exec cat /dev/zero; fi
  id=$(printf '%s' "$request" | sed 's/^{"id":\([0-9]*\).*/\1/'); echo "{\"id\": $id, \"ok\": true}"
done"#;
    let config = bed.write_config(&format!(
        r#"{base}
[functions.bigreply]
subjects = ["ev.big"]
exec = {{ command = ["sh", "-c", {script}], mode = "worker", env = {{ LEDGER = {ledger} }} }}
timeout = "5m"
"#,
        base = bed.base_config(),
        script = toml_str(script),
        ledger = toml_str(bed.ledger.path().to_string_lossy()),
    ));
    let runner = Runner::start(&config);
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "bigreply").await;

    publish_bare(&client, "ev.big", "{}").await;

    wait_until(
        Duration::from_secs(20),
        "the event is acked after a retry",
        || async move {
            consumer_info(js, TestBed::STREAM, "bigreply")
                .await
                .is_some_and(|i| i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0)
        },
    )
    .await;
    let entries = bed.ledger.entries();
    let attempts: Vec<u32> = entries.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2], "{entries:?}");
    let (first, second) = (&entries[0].extra[0], &entries[1].extra[0]);
    assert_ne!(first, second, "attempt 2 ran in a new worker: {entries:?}");
    let first: u32 = first.parse().expect("pid");
    wait_until(
        Duration::from_secs(5),
        "the flooding worker is gone",
        || async move { !alive(first) },
    )
    .await;
    let log = runner.log();
    assert!(
        log.contains(&format!(
            "wrote a reply line longer than {LIMIT}, the limit, and was killed; it will be \
             restarted"
        )),
        "the retry names the limit:\n{log}"
    );
    assert!(
        stream_messages(js, "DLQ").await.is_empty(),
        "a retryable failure, not a dead letter"
    );
}

/// `jetrun run -c CONFIG` started through `setpriv` with supplementary
/// groups 4 and 27, so a test can see a child lose them; killed on drop.
struct RunnerWithGroups {
    child: Child,
    log: std::path::PathBuf,
}

impl RunnerWithGroups {
    fn start(config: &Path, log: std::path::PathBuf) -> Self {
        let file = File::create(&log).expect("runner log");
        let child = Command::new("setpriv")
            .args(["--groups", "4,27", "--"])
            .arg(jetrun_bin())
            .args(["run", "-c"])
            .arg(config)
            .env_remove("JETRUN_CONFIG")
            .env_remove("JETRUN_NATS_URL")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .expect("start setpriv ... jetrun run");
        RunnerWithGroups { child, log }
    }
}

impl Drop for RunnerWithGroups {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- jetrun log ----\n{log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_run_as_the_configured_user_without_supplementary_groups() {
    if !is_root() {
        eprintln!(
            "note: skipping children_run_as_the_configured_user_without_supplementary_groups: \
             only root can start children as another user"
        );
        return;
    }
    let (uid, gid, home) = passwd("nobody").expect("a nobody user in /etc/passwd");
    let group = group_name(gid).expect("nobody's primary group in /etc/group");
    let bed = TestBed::new();
    // The child runs in the config's folder, so `nobody` must be able to
    // enter it, and to write its report into `out/`.
    std::fs::set_permissions(bed.dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = bed.path("out");
    std::fs::create_dir(&out).expect("mkdir out");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod out");
    let report = |name: &str| {
        format!(
            r#"{{ id -u; id -g; grep '^Groups:' /proc/self/status; echo "HOME=$HOME"; }} \
> out/{name}.tmp && mv out/{name}.tmp out/{name}"#
        )
    };
    let worker = format!(
        r#"{}
while read -r request; do id=$(printf '%s' "$request" | sed 's/^{{"id":\([0-9]*\).*/\1/'); echo "{{\"id\": $id, \"ok\": true}}"; done"#,
        report("worker")
    );
    let config = bed.write_config(&format!(
        r#"{base}
[functions.as-named]
subjects = ["ev.named"]
exec = {{ command = ["sh", "-c", {per_event}], user = "nobody", group = {group} }}

[functions.as-numeric]
subjects = ["ev.numeric"]
exec = {{ command = ["sh", "-c", {worker}], mode = "worker", user = {uid} }}
"#,
        base = bed.base_config(),
        per_event = toml_str(report("per-event")),
        worker = toml_str(worker),
        group = toml_str(&group),
    ));
    let _runner: Box<dyn std::any::Any> = if which("setpriv") {
        let runner = RunnerWithGroups::start(&config, bed.path("jetrun.log"));
        let status = format!("/proc/{}/status", runner.child.id());
        let status = &status;
        wait_until(
            Duration::from_secs(5),
            "the runner has supplementary groups 4 and 27 to drop",
            || async move {
                let status = std::fs::read_to_string(status).unwrap_or_default();
                status
                    .lines()
                    .any(|l| l.split_whitespace().eq(["Groups:", "4", "27"]))
            },
        )
        .await;
        Box::new(runner)
    } else {
        eprintln!("note: no setpriv here; the runner has no supplementary groups to drop");
        Box::new(Runner::start(&config))
    };
    let client = bed.client().await;
    let js = &async_nats::jetstream::new(client.clone());
    wait_for_consumer(js, TestBed::STREAM, "as-named").await;
    wait_for_consumer(js, TestBed::STREAM, "as-numeric").await;

    publish_bare(&client, "ev.named", "{}").await;
    publish_bare(&client, "ev.numeric", "{}").await;
    wait_acked(js, TestBed::STREAM, "as-named", 1).await;
    wait_acked(js, TestBed::STREAM, "as-numeric", 2).await;

    for name in ["per-event", "worker"] {
        let text = std::fs::read_to_string(out.join(name))
            .unwrap_or_else(|e| panic!("the {name} child wrote its report: {e}"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{name}: {text}");
        assert_eq!(lines[0], uid.to_string(), "{name}: the uid of nobody");
        assert_eq!(lines[1], gid.to_string(), "{name}: the gid of {group}");
        assert_eq!(
            lines[2].trim_start_matches("Groups:").trim(),
            "",
            "{name}: no supplementary group is kept (the runner has 4 and 27): {text}"
        );
        assert_eq!(lines[3], format!("HOME={home}"), "{name}: nobody's home");
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A config whose function runs as `user`/`group` (TOML values), on line 8.
fn config_running_as(dir: &Path, account: &str) -> std::path::PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    jetrun_e2e::write_config(
        dir,
        &format!(
            r#"[nats]
url = "nats://127.0.0.1:1"
[streams.EVENTS]
subjects = ["ev.>"]

[functions.f]
subjects = ["ev.f"]
exec = {{ command = ["true"], {account} }}
"#
        ),
    )
}

#[test]
fn an_unknown_user_or_group_is_a_config_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_running_as(dir.path(), r#"user = "no-such-user-jetrun""#);
    let (code, stderr) = run_check(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            r#"functions.f.exec.user "no-such-user-jetrun" is not a user on this machine (line 8)"#
        ),
        "{stderr}"
    );

    let config = config_running_as(
        dir.path(),
        r#"user = "nobody", group = "no-such-group-jetrun""#,
    );
    let (code, stderr) = run_check(&config);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(concat!(
            r#"functions.f.exec.group "no-such-group-jetrun" is not a group on this machine"#,
            " (line 8)"
        )),
        "{stderr}"
    );
}

#[test]
fn a_runner_that_is_not_root_refuses_another_user_at_start() {
    if !is_root() {
        eprintln!(
            "note: skipping a_runner_that_is_not_root_refuses_another_user_at_start: the test \
             becomes nobody to run jetrun, which needs root"
        );
        return;
    }
    let (uid, gid, _) = passwd("nobody").expect("a nobody user in /etc/passwd");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_running_as(dir.path(), r#"user = "root""#);
    // nobody runs a copy in a folder it can reach: the checkout (and its
    // target/) may be inside a folder only root can enter (a `mktemp -d`).
    let binary = dir.path().join("jetrun");
    std::fs::copy(jetrun_bin(), &binary).expect("copy jetrun where nobody can run it");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // The copy was just written: a child another test thread forks meanwhile
    // holds its write descriptor until that child's exec closes it, and
    // running the file then fails with "Text file busy". Try again shortly.
    let mut tries = 0;
    let output = loop {
        let run = Command::new(&binary)
            .args(["run", "-c"])
            .arg(&config)
            .env_remove("JETRUN_CONFIG")
            .env_remove("JETRUN_NATS_URL")
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .output();
        match run {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            run => break run.expect("run jetrun as nobody"),
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "functions.f.exec.user \"root\" cannot be used: only root can start a process as \
             another user, and jetrun runs as uid {uid}; run jetrun as root, or remove user \
             (line 8)"
        )),
        "{stderr}"
    );
}
