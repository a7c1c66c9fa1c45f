//! The config as users see it: whole files in, the exact errors (path,
//! message, line) or the validated values out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod flow;
mod schedule;

use crate::{
    parse, Account, AccountId, Config, ConfigErrors, ExecMode, Handler, NatsAuth, ProjectionConfig,
    Retention, RetryPolicy, Role, SagaConfig, SagaStep, Storage, StreamBinding,
};

const BUILTINS: &[&str] = &["noop", "reserve_stock", "take_payment", "welcome_email"];
const BASE: &str = "/srv/jetrun/config";

/// Streams most tests bind their functions to, on lines 1 to 5.
const STREAMS: &str = r#"
[streams.ORDERS]
subjects = ["order.>", "inventory.>"]

[streams.USERS]
subjects = ["user.>"]
"#;

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let text = text.strip_prefix('\n').unwrap_or(text);
    parse(text, &env, Path::new(BASE), BUILTINS)
}

fn ok(text: &str) -> Config {
    parse_env(text, &[]).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}"))
}

/// Every error, as displayed.
fn errors_env(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match parse_env(text, env) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => {
            assert!(!errors.0.is_empty());
            errors.0.iter().map(ToString::to_string).collect()
        }
    }
}

fn errors(text: &str) -> Vec<String> {
    errors_env(text, &[])
}

fn with_streams(functions: &str) -> String {
    format!("{STREAMS}{functions}")
}

#[test]
fn unknown_key() {
    let text = with_streams(
        r#"
[functions.thumbnail]
subjects = ["order.placed"]
builtin = "noop"
retyr = { max_attempts = 3 }
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.thumbnail.retyr is not a known key; expected one of: builtin, exec, http, \
          subjects, request, aggregate, projection, stream, concurrency, timeout, retry, ack_wait, max_ack_pending, \
          dead_letter, emits, json, schedule, time_zone, key, on_dead_letter, missing_key, partitions, batch, rate (line 10)"
        ]
    );
}

#[test]
fn unknown_keys_in_every_table() {
    let text = with_streams(
        r#"
[nats]
urls = "nats://x:4222"

[functions.f]
subjects = ["order.placed"]
exec = { command = ["./f"], workerz = 2 }
retry = { max_attempt = 3 }
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "nats.urls is not a known key; expected one of: url, creds, nkey, user, password, \
             token, tls (line 8)",
            "functions.f.exec.workerz is not a known key; expected one of: command, env, mode, \
             workers, user, group (line 12)",
            "functions.f.retry.max_attempt is not a known key; expected one of: max_attempts, \
             initial_delay, multiplier, max_delay, jitter (line 13)",
        ]
    );
}

#[test]
fn bad_duration() {
    let text = with_streams(
        r#"
[functions.thumbnail]
subjects = ["order.placed"]
builtin = "noop"
timeout = "five seconds"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.thumbnail.timeout must be a duration like 250ms, 30s, 5m or 7d, \
          got \"five seconds\" (line 10)"
        ]
    );
}

#[test]
fn zero_timeouts_are_refused() {
    let text = with_streams(
        r#"
[functions.f]
subjects = ["order.placed"]
builtin = "noop"
timeout = "0s"
ack_wait = 30
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.timeout must be a non-zero duration like 250ms, 30s, 5m or 7d, \
             got \"0s\" (line 10)",
            "functions.f.ack_wait must be a duration like 250ms, 30s, 5m or 7d, got 30 (line 11)",
        ]
    );
}

#[test]
fn missing_handler() {
    let text = with_streams(
        r#"
[functions.thumbnail]
subjects = ["order.placed"]
"#,
    );
    assert_eq!(
        errors(&text),
        ["functions.thumbnail must have exactly one of builtin, exec, http; it has none (line 7)"]
    );
}

#[test]
fn two_handlers() {
    let text = with_streams(
        r#"
[functions.thumbnail]
subjects = ["order.placed"]
builtin = "noop"
exec = ["./thumbnail"]
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.thumbnail must have exactly one of builtin, exec, http; it has builtin and \
          exec (line 7)"
        ]
    );
}

#[test]
fn subject_no_stream_captures() {
    let text = with_streams(
        r#"
[functions.thumbnail]
subjects = ["order.placed", "image.uploaded"]
builtin = "noop"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.thumbnail.subjects \"image.uploaded\" is not captured by any [streams.*] \
          entry; add it to a stream's subjects or name an existing stream with stream = \"...\" \
          (line 8)"
        ]
    );
}

#[test]
fn every_error_of_a_file_is_reported() {
    let text = with_streams(
        r#"
[functions.resize]
subjects = ["order.placed"]
builtin = "noop"
retyr = { max_attempts = 3 }
timeout = "five seconds"

[functions.thumbnail]
subjects = ["image.uploaded"]
builtin = "noop"

[functions.audit]
subjects = ["user.>"]

[functions.ship]
subjects = ["inventory.reserved"]
builtin = "noop"
http = "http://127.0.0.1:8080/ship"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.resize.retyr is not a known key; expected one of: builtin, exec, http, \
             subjects, request, aggregate, projection, stream, concurrency, timeout, retry, ack_wait, max_ack_pending, \
             dead_letter, emits, json, schedule, time_zone, key, on_dead_letter, missing_key, partitions, batch, rate (line 10)",
            "functions.resize.timeout must be a duration like 250ms, 30s, 5m or 7d, \
             got \"five seconds\" (line 11)",
            "functions.thumbnail.subjects \"image.uploaded\" is not captured by any [streams.*] \
             entry; add it to a stream's subjects or name an existing stream with \
             stream = \"...\" (line 14)",
            "functions.audit must have exactly one of builtin, exec, http; it has none (line 17)",
            "functions.ship must have exactly one of builtin, exec, http; it has builtin and \
             http (line 20)",
        ]
    );
}

#[test]
fn a_toml_syntax_error_is_one_error_on_its_line() {
    let text = r#"
[functions.f]
subjects = ["order.placed"
builtin = "noop"
"#;
    let errors = errors(text);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("invalid TOML: "), "{}", errors[0]);
    assert!(errors[0].ends_with("(line 3)"), "{}", errors[0]);
}

#[test]
fn wrong_types_say_what_was_expected_and_what_was_found() {
    let text = with_streams(
        r#"
[functions.f]
subjects = "order.placed"
builtin = 5
concurrency = "four"
max_ack_pending = -1
json = "yes"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.subjects must be a non-empty list of subjects, like [\"order.placed\"], \
             got \"order.placed\" (line 8)",
            "functions.f.builtin must be a string, got 5 (line 9)",
            "functions.f.concurrency must be a positive integer, got \"four\" (line 10)",
            "functions.f.max_ack_pending must be a positive integer, got -1 (line 11)",
            "functions.f.json must be true or false, got \"yes\" (line 12)",
        ]
    );
}

#[test]
fn unknown_builtin_lists_the_known_ones() {
    let text = with_streams(
        r#"
[functions.f]
subjects = ["order.placed"]
builtin = "nope"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.builtin \"nope\" is not a built-in function; known: noop, reserve_stock, \
          take_payment, welcome_email (line 9)"
        ]
    );
}

#[test]
fn no_functions_is_an_error() {
    assert_eq!(
        errors(STREAMS),
        [
            "functions must declare at least one function, like [functions.hello] with subjects \
          and a handler"
        ]
    );
}

#[test]
fn defaults_are_inherited_and_retry_tables_merge_key_by_key() {
    let config = ok(&with_streams(
        r#"
[defaults]
concurrency = 8
timeout = "10s"
ack_wait = "1m"
max_ack_pending = 500
retry = { max_attempts = 7, initial_delay = "2s" }

[functions.plain]
subjects = ["order.placed"]
builtin = "noop"

[functions.tuned]
subjects = ["user.registered"]
builtin = "welcome_email"
concurrency = 2
retry = { max_attempts = 3, jitter = 0.0 }
"#,
    ));
    let plain = &config.functions["plain"];
    assert_eq!(plain.concurrency, 8);
    assert_eq!(plain.timeout, Duration::from_secs(10));
    assert_eq!(plain.binding().unwrap().ack_wait, Duration::from_secs(60));
    assert_eq!(plain.binding().unwrap().max_ack_pending, 500);
    let s = Duration::from_secs;
    assert_eq!(
        plain.retry,
        RetryPolicy::new(7, s(2), 2.0, s(300), 0.1).unwrap()
    );
    let tuned = &config.functions["tuned"];
    assert_eq!(tuned.concurrency, 2);
    assert_eq!(tuned.timeout, Duration::from_secs(10));
    assert_eq!(
        tuned.retry,
        RetryPolicy::new(3, s(2), 2.0, s(300), 0.0).unwrap()
    );
}

#[test]
fn built_in_defaults() {
    let config = ok(&with_streams(
        r#"
[functions.f]
subjects = ["order.placed"]
builtin = "noop"
"#,
    ));
    assert_eq!(config.nats.urls, ["nats://127.0.0.1:4222"]);
    assert_eq!(config.nats.auth, NatsAuth::None);
    assert_eq!(config.nats.tls, None);
    assert_eq!(config.metrics.listen, "127.0.0.1:9600".parse().unwrap());
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
    let orders = &config.streams["ORDERS"];
    assert_eq!(orders.storage, Storage::File);
    assert_eq!(orders.replicas, 1);
    assert_eq!(orders.retention, Retention::Limits);
    assert_eq!((orders.max_age, orders.duplicate_window), (None, None));
    let f = &config.functions["f"];
    assert_eq!(f.name, "f");
    assert_eq!(
        (
            f.binding().unwrap().stream.as_str(),
            f.binding().unwrap().managed
        ),
        ("ORDERS", true)
    );
    assert_eq!(f.concurrency, 16);
    assert_eq!(f.timeout, Duration::from_secs(30));
    assert_eq!(f.binding().unwrap().ack_wait, Duration::from_secs(30));
    assert_eq!(f.binding().unwrap().max_ack_pending, 10_000);
    assert_eq!(f.retry, RetryPolicy::default());
    assert_eq!(f.binding().unwrap().dead_letter, "dlq.f");
    assert!(!f.json);
    assert_eq!(f.handler, Handler::Builtin("noop".into()));
}

#[test]
fn invalid_retry_policies_name_the_key() {
    let text = with_streams(
        r#"
[defaults]
retry = { initial_delay = "10s" }

[functions.f]
subjects = ["order.placed"]
builtin = "noop"
retry = { max_attempts = 0 }

[functions.g]
subjects = ["order.shipped"]
builtin = "noop"
retry = { max_delay = "5s" }
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.retry.max_attempts must be at least 1, got 0 (line 13)",
            "functions.g.retry.max_delay (5s) must not be shorter than initial_delay (10s) \
             (line 18)",
        ]
    );
}

#[test]
fn an_invalid_default_retry_is_reported_once() {
    let text = with_streams(
        r#"
[defaults]
retry = { jitter = 1.5 }

[functions.f]
subjects = ["order.placed"]
builtin = "noop"

[functions.g]
subjects = ["order.shipped"]
builtin = "noop"
retry = { max_attempts = 2 }
"#,
    );
    assert_eq!(
        errors(&text),
        ["defaults.retry.jitter must be between 0.0 and 1.0, got 1.5 (line 8)"]
    );
}

#[test]
fn max_ack_pending_must_cover_concurrency() {
    let text = with_streams(
        r#"
[functions.f]
subjects = ["order.placed"]
builtin = "noop"
concurrency = 16
max_ack_pending = 8

[functions.g]
subjects = ["order.shipped"]
builtin = "noop"
concurrency = 20000
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.max_ack_pending must be at least concurrency (16), got 8 (line 11)",
            "functions.g.concurrency must not be more than max_ack_pending (10000), got 20000 \
             (line 16)",
        ]
    );
}

#[test]
fn max_ack_pending_in_defaults_is_checked_once() {
    let text = with_streams(
        r#"
[defaults]
max_ack_pending = 4

[functions.f]
subjects = ["order.placed"]
builtin = "noop"

[functions.g]
subjects = ["order.shipped"]
builtin = "noop"
concurrency = 2
"#,
    );
    assert_eq!(
        errors(&text),
        ["defaults.max_ack_pending must be at least concurrency (16), got 4 (line 8)"]
    );
}

#[test]
fn nats_url_from_the_file_or_the_environment() {
    let text = with_streams(
        r#"
[nats]
url = ["nats://a:4222", "nats://b:4222"]

[functions.f]
subjects = ["order.placed"]
builtin = "noop"
"#,
    );
    assert_eq!(ok(&text).nats.urls, ["nats://a:4222", "nats://b:4222"]);
    let env = [("JETRUN_NATS_URL", "nats://x:4222, nats://y:4222,")];
    let config = parse_env(&text, &env).unwrap();
    assert_eq!(config.nats.urls, ["nats://x:4222", "nats://y:4222"]);
    let blank = [("JETRUN_NATS_URL", " ")];
    let config = parse_env(&text, &blank).unwrap();
    assert_eq!(config.nats.urls, ["nats://a:4222", "nats://b:4222"]);
}

#[test]
fn variables_are_replaced_from_the_environment() {
    let text = with_streams(
        r#"
[nats]
user = "jetrun"
password = "${NATS_PASSWORD}"

[functions.hook]
subjects = ["order.placed"]
http = { url = "https://${HOOK_HOST}/events", headers = { Authorization = "Bearer ${TOKEN}" } }
"#,
    );
    let env = [
        ("NATS_PASSWORD", "pw"),
        ("HOOK_HOST", "hooks.example.com"),
        ("TOKEN", "t0k"),
    ];
    let config = parse_env(&text, &env).unwrap();
    assert_eq!(
        config.nats.auth,
        NatsAuth::UserPassword {
            user: "jetrun".into(),
            password: "pw".into()
        }
    );
    let Handler::Http(http) = &config.functions["hook"].handler else {
        panic!("expected an http handler");
    };
    assert_eq!(http.url, "https://hooks.example.com/events");
    assert_eq!(http.headers["Authorization"], "Bearer t0k");
}

#[test]
fn a_missing_variable_is_an_error() {
    let text = with_streams(
        r#"
[functions.x]
subjects = ["order.placed"]
http = "${NOPE}"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.x.http \"${NOPE}\" refers to environment variable NOPE, which is not set \
          (line 9)"
        ]
    );
}

#[test]
fn auth_is_at_most_one_method() {
    let text = |nats: &str| {
        format!(
            "[nats]\n{nats}\n{STREAMS}\n[functions.f]\nsubjects = [\"order.placed\"]\n\
             builtin = \"noop\"\n"
        )
    };
    assert_eq!(
        errors(&text("creds = \"jetrun.creds\"\ntoken = \"t\"")),
        [
            "nats must use at most one of creds, nkey, user + password, token; it has creds and \
          token (line 1)"
        ]
    );
    assert_eq!(
        errors(&text(
            "nkey = \"seed.nk\"\nuser = \"u\"\npassword = \"p\"\ntoken = \"t\""
        )),
        [
            "nats must use at most one of creds, nkey, user + password, token; it has nkey, \
          user + password and token (line 1)"
        ]
    );
    assert_eq!(
        errors(&text("user = \"u\"")),
        ["nats.user is set without nats.password; set both or neither (line 2)"]
    );
    assert_eq!(
        errors(&text("password = \"p\"")),
        ["nats.password is set without nats.user; set both or neither (line 2)"]
    );
    assert_eq!(
        errors(&text("tls = { key = \"k.pem\" }")),
        ["nats.tls.key is set without nats.tls.cert; set both or neither (line 2)"]
    );

    let config = ok(&text(
        "creds = \"secrets/jetrun.creds\"\ntls = { ca = \"/etc/ssl/ca.pem\" }",
    ));
    assert_eq!(
        config.nats.auth,
        NatsAuth::Creds(PathBuf::from(BASE).join("secrets/jetrun.creds"))
    );
    let tls = config.nats.tls.unwrap();
    assert_eq!(tls.ca, Some(PathBuf::from("/etc/ssl/ca.pem")));
    assert_eq!((tls.cert, tls.key), (None, None));
    assert_eq!(
        ok(&text("token = \"t\"")).nats.auth,
        NatsAuth::Token("t".into())
    );
    assert_eq!(
        ok(&text("nkey = \"seed.nk\"")).nats.auth,
        NatsAuth::Nkey(PathBuf::from(BASE).join("seed.nk"))
    );
}

#[test]
fn exec_functions() {
    let config = ok(&with_streams(
        r#"
[functions.per-event]
subjects = ["order.placed"]
exec = ["./bin/handle", "--config", "handle.json"]

[functions.on-path]
subjects = ["order.shipped"]
exec = ["python3", "../functions/examples/ship_order.py"]

[functions.workers]
subjects = ["inventory.reserved"]
exec = { command = ["/usr/bin/handler"], env = { MODE = "fast" }, mode = "worker", workers = 3 }
"#,
    ));
    let exec = |name: &str| match &config.functions[name].handler {
        Handler::Exec(exec) => exec.clone(),
        other => panic!("expected exec, got {other:?}"),
    };
    let per_event = exec("per-event");
    assert_eq!(
        per_event.command,
        [
            format!("{BASE}/./bin/handle"),
            "--config".into(),
            "handle.json".into()
        ]
    );
    assert_eq!(per_event.dir, PathBuf::from(BASE));
    assert_eq!((per_event.mode, per_event.workers), (ExecMode::PerEvent, 1));
    assert_eq!(
        exec("on-path").command,
        ["python3", "../functions/examples/ship_order.py"]
    );
    let workers = exec("workers");
    assert_eq!(workers.command, ["/usr/bin/handler"]);
    assert_eq!(workers.env["MODE"], "fast");
    assert_eq!((workers.mode, workers.workers), (ExecMode::Worker, 3));
}

#[test]
fn exec_mistakes() {
    let text = with_streams(
        r#"
[functions.shell]
subjects = ["order.placed"]
exec = "python3 handler.py"

[functions.empty]
subjects = ["order.shipped"]
exec = []

[functions.workers]
subjects = ["inventory.reserved"]
exec = { command = ["./w"], workers = 4 }

[functions.nocommand]
subjects = ["inventory.released"]
exec = { mode = "worker" }
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.shell.exec must be an argv list of strings like [\"python3\", \
             \"handler.py\"], or a table with command, got \"python3 handler.py\" (line 9)",
            "functions.empty.exec must be an argv list of strings like [\"python3\", \
             \"handler.py\"], got an empty list (line 13)",
            "functions.workers.exec.workers only applies with mode = \"worker\"; add \
             mode = \"worker\" or remove workers (line 17)",
            "functions.nocommand.exec.command is required: an argv list of strings like \
             [\"python3\", \"handler.py\"] (line 21)",
        ]
    );
}

#[test]
fn exec_user_and_group_by_name_or_id() {
    let config = ok(&with_streams(
        r#"
[functions.named]
subjects = ["order.placed"]
exec = { command = ["./f"], user = "nobody", group = "nogroup" }

[functions.numeric]
subjects = ["order.shipped"]
exec = { command = ["./f"], user = 65534, group = "65534" }

[functions.user-only]
subjects = ["inventory.reserved"]
exec = { command = ["./w"], mode = "worker", user = "app" }
"#,
    ));
    let exec = |name: &str| match &config.functions[name].handler {
        Handler::Exec(exec) => exec.clone(),
        other => panic!("expected exec, got {other:?}"),
    };
    // Where each is set, for the runner's errors (equality ignores it).
    let at = |account: Option<Account>| account.map(|a| (a.id, a.path, a.line));
    let named = exec("named");
    assert_eq!(
        (at(named.user), at(named.group)),
        (
            Some((
                AccountId::Name("nobody".into()),
                "functions.named.exec.user".into(),
                9
            )),
            Some((
                AccountId::Name("nogroup".into()),
                "functions.named.exec.group".into(),
                9
            )),
        )
    );
    let numeric = exec("numeric");
    assert_eq!(
        (at(numeric.user), at(numeric.group)),
        (
            Some((
                AccountId::Id(65534),
                "functions.numeric.exec.user".into(),
                13
            )),
            Some((
                AccountId::Id(65534),
                "functions.numeric.exec.group".into(),
                13
            )),
        )
    );
    let user_only = exec("user-only");
    assert_eq!(
        user_only.user.map(|a| a.id),
        Some(AccountId::Name("app".into()))
    );
    assert_eq!(user_only.group, None, "the user's primary group");

    // A reload that only moves the line changes nothing.
    let moved = ok(&with_streams(
        r#"

[functions.named]
subjects = ["order.placed"]
exec = { command = ["./f"], user = "nobody", group = "nogroup" }
"#,
    ));
    assert_eq!(moved.functions["named"], config.functions["named"]);
}

#[test]
fn exec_user_and_group_mistakes() {
    let text = with_streams(
        r#"
[functions.negative]
subjects = ["order.placed"]
exec = { command = ["./f"], user = -1 }

[functions.empty]
subjects = ["order.shipped"]
exec = { command = ["./f"], user = "" }

[functions.too-big]
subjects = ["inventory.reserved"]
exec = { command = ["./f"], user = "nobody", group = "4294967295" }

[functions.group-only]
subjects = ["inventory.released"]
exec = { command = ["./f"], group = "nogroup" }

[functions.wrong-type]
subjects = ["user.registered"]
exec = { command = ["./f"], user = true }
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.negative.exec.user must be a user name or a numeric id, got -1 (line 9)",
            "functions.empty.exec.user must be a user name or a numeric id, got \"\" (line 13)",
            "functions.too-big.exec.group must be a group name or a numeric id, got \
             \"4294967295\" (line 17)",
            "functions.group-only.exec.group only applies with user: a child running as root \
             keeps root's powers whatever its group; add user = \"...\" or remove group (line 21)",
            "functions.wrong-type.exec.user must be a user name or a numeric id, got true \
             (line 25)",
        ]
    );
}

#[test]
fn http_functions() {
    let config = ok(&with_streams(
        r#"
[functions.short]
subjects = ["order.placed"]
http = "http://127.0.0.1:8080/events"

[functions.long]
subjects = ["order.shipped"]
http = { url = "https://example.com/hook", headers = { X-Key = "k" }, timeout = "2s" }
"#,
    ));
    let Handler::Http(short) = &config.functions["short"].handler else {
        panic!("expected http");
    };
    assert_eq!(short.url, "http://127.0.0.1:8080/events");
    assert!(short.headers.is_empty());
    assert_eq!(short.timeout, None);
    let Handler::Http(long) = &config.functions["long"].handler else {
        panic!("expected http");
    };
    assert_eq!(long.headers["X-Key"], "k");
    assert_eq!(long.timeout, Some(Duration::from_secs(2)));

    let text = with_streams(
        r#"
[functions.f]
subjects = ["order.placed"]
http = "127.0.0.1:8080/events"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.http must be a URL starting with http:// or https://, \
          got \"127.0.0.1:8080/events\" (line 9)"
        ]
    );
}

#[test]
fn a_function_lives_on_one_stream() {
    let text = with_streams(
        r#"
[functions.audit]
subjects = ["order.>", "user.>"]
http = "http://127.0.0.1:8080/events"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.audit.subjects \"user.>\" is captured by stream USERS, but \"order.>\" is \
          captured by stream ORDERS; a function's consumer lives on one stream, so split it \
          into one function per stream (line 8)"
        ]
    );
}

#[test]
fn a_function_may_name_its_stream() {
    let config = ok(&with_streams(
        r#"
[functions.legacy]
subjects = ["billing.invoice.*"]
stream = "BILLING"
builtin = "noop"
dead_letter = "dlq.billing"

[functions.declared]
subjects = ["order.placed"]
stream = "ORDERS"
builtin = "noop"
"#,
    ));
    let legacy = &config.functions["legacy"];
    assert_eq!(
        (
            legacy.binding().unwrap().stream.as_str(),
            legacy.binding().unwrap().managed
        ),
        ("BILLING", false)
    );
    let declared = &config.functions["declared"];
    assert_eq!(
        (
            declared.binding().unwrap().stream.as_str(),
            declared.binding().unwrap().managed
        ),
        ("ORDERS", true)
    );

    let text = with_streams(
        r#"
[functions.f]
subjects = ["user.registered"]
stream = "ORDERS"
builtin = "noop"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.subjects \"user.registered\" is not captured by stream ORDERS, which \
          stream = \"ORDERS\" names; add it to that stream's subjects (line 8)"
        ]
    );
}

#[test]
fn subject_mistakes() {
    let text = with_streams(
        r#"
[functions.f]
subjects = ["order.placed", "order.*", "order..x", "order.>.eu"]
builtin = "noop"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.subjects \"order.*\" overlaps \"order.placed\"; a consumer's subject \
             filters must not overlap (line 8)",
            "functions.f.subjects \"order..x\" is not a valid subject: it has an empty token \
             (a leading, trailing or doubled .) (line 8)",
            "functions.f.subjects \"order.>.eu\" is not a valid subject: > may only be the last \
             token (line 8)",
        ]
    );
}

#[test]
fn dead_letters_must_be_stored_and_not_come_back() {
    let config = ok(&with_streams(
        r#"
[functions.f]
subjects = ["order.placed"]
builtin = "noop"
dead_letter = "order.failed"
"#,
    ));
    assert_eq!(
        config.functions["f"].binding().unwrap().dead_letter,
        "order.failed"
    );

    let text = with_streams(
        r#"
[functions.lost]
subjects = ["order.placed"]
builtin = "noop"
dead_letter = "failed.orders"

[functions.loop]
subjects = ["order.>"]
builtin = "noop"
dead_letter = "order.failed"

[functions.wild]
subjects = ["order.shipped"]
builtin = "noop"
dead_letter = "dlq.>"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.lost.dead_letter \"failed.orders\" is not captured by dlq.> or by any \
             [streams.*] entry, so dead letters would be lost; use a subject under dlq. or add \
             it to a stream's subjects (line 10)",
            "functions.loop.dead_letter \"order.failed\" is matched by the function's own \
             subject \"order.>\", so its dead letters would come back to it; pick another \
             dead_letter (line 15)",
            "functions.wild.dead_letter \"dlq.>\" is not a valid subject: it must not contain \
             wildcards (* or >) (line 20)",
        ]
    );
}

#[test]
fn stream_mistakes() {
    let text = r#"
[streams.DLQ]
subjects = ["failed.>"]

[streams."MY STREAM"]
subjects = ["my.>"]

[streams.ALL]
subjects = [">"]
storage = "disk"
replicas = 7
retention = "work-queue"

[streams.ORDERS]
subjects = ["order.>"]
max_age = "1m"
duplicate_window = "2h"

[streams.PLACED]
subjects = ["order.placed"]

[streams.EMPTY]
subjects = []

[functions.f]
subjects = ["order.placed"]
builtin = "noop"
"#;
    assert_eq!(
        errors(text),
        [
            "streams.DLQ is reserved: jetrun creates and manages the DLQ stream for dead letters \
             (dlq.>); pick another name (line 1)",
            "streams.\"MY STREAM\" is not a valid stream name: it must not be empty nor contain \
             whitespace, ., *, >, / or \\ (line 4)",
            "streams.ALL.subjects \">\" overlaps dlq.>, which the DLQ stream holds for dead \
             letters; pick subjects outside it (line 8)",
            "streams.ALL.storage must be \"file\" or \"memory\", got \"disk\" (line 9)",
            "streams.ALL.replicas must be an integer from 1 to 5, got 7 (line 10)",
            "streams.ALL.retention must be \"limits\", \"interest\" or \"workqueue\", \
             got \"work-queue\" (line 11)",
            "streams.ORDERS.duplicate_window must not be longer than max_age (1m), got \"2h\" \
             (line 16)",
            "streams.PLACED.subjects \"order.placed\" overlaps \"order.>\" of stream ORDERS; \
             JetStream refuses streams whose subjects overlap (line 19)",
            "streams.EMPTY.subjects must be a non-empty list of subjects, like [\"order.>\"], \
             got an empty list (line 22)",
        ]
    );
}

#[test]
fn stream_settings() {
    let config = ok(r#"
[streams.ORDERS]
subjects = ["order.>"]
storage = "memory"
replicas = 3
max_age = "7d"
duplicate_window = "5m"
retention = "workqueue"

[functions.f]
subjects = ["order.placed"]
builtin = "noop"
"#);
    let orders = &config.streams["ORDERS"];
    assert_eq!(orders.subjects, ["order.>"]);
    assert_eq!(orders.storage, Storage::Memory);
    assert_eq!(orders.replicas, 3);
    assert_eq!(orders.max_age, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(orders.duplicate_window, Some(Duration::from_secs(300)));
    assert_eq!(orders.retention, Retention::WorkQueue);
}

#[test]
fn functions_on_a_work_queue_must_not_overlap() {
    let text = r#"
[streams.JOBS]
subjects = ["job.>"]
retention = "workqueue"

[functions.a]
subjects = ["job.resize"]
builtin = "noop"

[functions.b]
subjects = ["job.*"]
builtin = "noop"
"#;
    assert_eq!(
        errors(text),
        [
            "functions.b.subjects \"job.*\" overlaps \"job.resize\" of functions.a; stream JOBS \
          has retention = \"workqueue\", where each message goes to one consumer only (line 10)"
        ]
    );
}

#[test]
fn function_names_are_consumer_names() {
    let text = with_streams(
        r#"
[functions."resize.v2"]
subjects = ["order.placed"]
builtin = "noop"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.\"resize.v2\" is not a valid function name: it is also the durable \
          consumer's name, so use only letters, digits, - and _ (line 7)"
        ]
    );
}

#[test]
fn top_level_settings() {
    let config = ok(r#"
shutdown_timeout = "1m"

[metrics]
listen = "[::]:9100"

[streams.ORDERS]
subjects = ["order.>"]

[functions.f]
subjects = ["order.placed"]
builtin = "noop"
"#);
    assert_eq!(config.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(config.metrics.listen, "[::]:9100".parse().unwrap());
}

/// A config whose `[metrics] listen` is `listen`, on line 2.
fn with_listen(listen: &str) -> String {
    format!(
        "[metrics]\nlisten = {listen:?}\n[streams.ORDERS]\nsubjects = [\"order.>\"]\n\
         [functions.f]\nsubjects = [\"order.placed\"]\nbuiltin = \"noop\"\n"
    )
}

#[test]
fn metrics_listen_takes_an_ip_address_and_port() {
    for (listen, addr) in [
        ("127.0.0.1:9600", "127.0.0.1:9600"),
        ("0.0.0.0:9600", "0.0.0.0:9600"),
        ("[::]:9100", "[::]:9100"),
        ("[::1]:9100", "[::1]:9100"),
    ] {
        let config = ok(&with_listen(listen));
        assert_eq!(config.metrics.listen, addr.parse().unwrap(), "{listen}");
    }
}

#[test]
fn metrics_listen_port_alone_is_every_ipv4_interface() {
    let config = ok(&with_listen(":9600"));
    assert_eq!(config.metrics.listen, "0.0.0.0:9600".parse().unwrap());
    let config = ok(&with_listen(":0"));
    assert_eq!(config.metrics.listen, "0.0.0.0:0".parse().unwrap());
}

#[test]
fn metrics_listen_localhost_is_the_ipv4_loopback() {
    for listen in ["localhost:9600", "LOCALHOST:9600"] {
        let config = ok(&with_listen(listen));
        assert_eq!(config.metrics.listen, "127.0.0.1:9600".parse().unwrap());
    }
}

#[test]
fn metrics_listen_from_the_environment() {
    let config = parse_env(
        &with_listen("${METRICS_ADDR}"),
        &[("METRICS_ADDR", ":9700")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.metrics.listen, "0.0.0.0:9700".parse().unwrap());
}

#[test]
fn metrics_listen_refuses_other_forms() {
    for listen in [
        "example.internal:9600",
        "localhost",
        "localhost:",
        "localhost:http",
        ":",
        ":+9600",
        ":65536",
        "9600",
        "127.0.0.1",
        "::1:9600",
        "",
    ] {
        assert_eq!(
            errors(&with_listen(listen)),
            [format!(
                "metrics.listen must be an address and port like 127.0.0.1:9600, [::]:9600, \
                 localhost:9600 or :9600 (every interface), got {listen:?} (line 2)"
            )],
            "{listen:?}"
        );
    }
    assert_eq!(
        errors("[metrics]\nlisten = 9600\n[functions]\n"),
        [
            "metrics.listen must be an address and port like 127.0.0.1:9600, [::]:9600, \
             localhost:9600 or :9600 (every interface), got 9600 (line 2)",
            "functions must declare at least one function, like [functions.hello] with subjects \
             and a handler (line 3)",
        ]
    );
}

#[test]
fn errors_without_a_line_come_last() {
    let errors = errors(
        r#"
shutdown_timeout = "soon"
"#,
    );
    assert_eq!(
        errors,
        [
            "shutdown_timeout must be a duration like 250ms, 30s, 5m or 7d, got \"soon\" (line 1)",
            "functions must declare at least one function, like [functions.hello] with subjects \
             and a handler",
        ]
    );
}

/// Every file in config/ and config/examples/, as users start from them.
const SAMPLES: &[(&str, &str)] = &[
    ("jetrun.toml", include_str!("../../jetrun.toml")),
    (
        "examples/worker.toml",
        include_str!("../../examples/worker.toml"),
    ),
    (
        "examples/schedules.toml",
        include_str!("../../examples/schedules.toml"),
    ),
    (
        "examples/cluster.toml",
        include_str!("../../examples/cluster.toml"),
    ),
    (
        "examples/ecommerce.toml",
        include_str!("../../examples/ecommerce.toml"),
    ),
    (
        "examples/orders-cqrs.toml",
        include_str!("../../examples/orders-cqrs.toml"),
    ),
    (
        "examples/ecommerce-saga.toml",
        include_str!("../../examples/ecommerce-saga.toml"),
    ),
];

#[test]
fn sample_configs_are_valid() {
    for (name, text) in SAMPLES {
        let base = Path::new(BASE).join(name);
        let base = base.parent().unwrap();
        if let Err(errors) = parse(text, &BTreeMap::new(), base, BUILTINS) {
            panic!("config/{name} is not valid:\n{errors}");
        }
    }
}

#[test]
fn sample_configs_are_listed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = ["", "examples"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(dir.join(sub)).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .filter(|path| path.file_name().is_some_and(|name| name != "Cargo.toml"))
        .map(|path| {
            path.strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SAMPLES.iter().map(|(name, _)| name.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "add new sample configs to SAMPLES");
}

#[test]
fn quick_start_is_the_e_commerce_flow() {
    let (_, text) = SAMPLES[0];
    let config = parse(text, &BTreeMap::new(), Path::new(BASE), BUILTINS).unwrap();
    let stream_of = |f: &str| config.functions[f].binding().unwrap().stream.as_str();
    assert_eq!(stream_of("welcome-email"), "USERS");
    assert_eq!(stream_of("reserve-stock"), "ORDERS");
    assert_eq!(stream_of("ship-order"), "ORDERS");
    let reserve = &config.functions["reserve-stock"];
    assert_eq!(reserve.retry.max_attempts(), 3);
    assert_eq!(reserve.concurrency, 4);
    assert_eq!(reserve.timeout, Duration::from_secs(5));
    assert!(config.functions["ship-order"].json);
}

#[test]
fn no_input_makes_it_panic() {
    // Every prefix of every sample, and each with a byte changed: errors, not panics.
    for (_, text) in SAMPLES {
        for end in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = parse(&text[..end], &BTreeMap::new(), Path::new(BASE), BUILTINS);
        }
        for (i, _) in text.char_indices().step_by(7) {
            for c in ['"', '[', '=', '0', '.', '$', '{'] {
                let mut mutated = text.to_string();
                mutated.replace_range(
                    i..i + text[i..].chars().next().map_or(0, char::len_utf8),
                    &c.to_string(),
                );
                let _ = parse(&mutated, &BTreeMap::new(), Path::new(BASE), BUILTINS);
            }
        }
    }
}

#[test]
fn emits_lists_the_subjects_a_function_may_emit_to() {
    let config = ok(&with_streams(
        r#"
[functions.reserve]
subjects = ["order.placed"]
builtin = "reserve_stock"
emits = ["inventory.>", "order.rejected"]

[functions.welcome]
subjects = ["user.registered"]
builtin = "welcome_email"
"#,
    ));
    assert_eq!(
        config.functions["reserve"].emits,
        Some(vec![
            "inventory.>".to_string(),
            "order.rejected".to_string()
        ])
    );
    assert_eq!(config.functions["welcome"].emits, None);
    assert_eq!(
        errors(&with_streams(
            r#"
[functions.reserve]
subjects = ["order.placed"]
builtin = "reserve_stock"
emits = ["inventory.>.x"]
"#
        )),
        vec![
            "functions.reserve.emits \"inventory.>.x\" is not a valid subject: > may only be the last token (line 10)"
        ]
    );
}

/// STREAMS and a function on lines 1 to 9, then `sagas` from line 11.
fn with_sagas(sagas: &str) -> String {
    with_streams(&format!(
        "\n[functions.f]\nsubjects = [\"user.>\"]\nbuiltin = \"noop\"\n{sagas}"
    ))
}

/// Lines 11 to 30.
const FULFIL_ORDER: &str = r#"
[sagas.fulfil-order]
start = "order.placed"
key = "order_id"
timeout = "10m"
completed = "order.fulfilled"
failed = "order.cancelled"

[[sagas.fulfil-order.steps]]
name = "reserve"
command = "inventory.reserve"
success = "inventory.reserved"
failure = ["inventory.insufficient", "inventory.unknown"]
compensate = "inventory.release"
compensated = "inventory.released"
timeout = "45s"

[[sagas.fulfil-order.steps]]
name = "ship"
command = "order.ship"
success = ["order.shipped", "order.shipped-late"]
"#;

#[test]
fn a_saga_and_its_steps() {
    let config = ok(&with_sagas(FULFIL_ORDER));
    let strings = |s: &[&str]| s.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        config.sagas["fulfil-order"],
        SagaConfig {
            name: "fulfil-order".into(),
            start: "order.placed".into(),
            key: "/order_id".into(),
            timeout: Some(Duration::from_secs(600)),
            completed: "order.fulfilled".into(),
            failed: "order.cancelled".into(),
            retry: RetryPolicy::default(),
            steps: vec![
                SagaStep {
                    name: "reserve".into(),
                    command: "inventory.reserve".into(),
                    success: strings(&["inventory.reserved"]),
                    failure: strings(&["inventory.insufficient", "inventory.unknown"]),
                    compensate: Some("inventory.release".into()),
                    compensated: Some("inventory.released".into()),
                    timeout: Duration::from_secs(45),
                    delay: None,
                },
                SagaStep {
                    name: "ship".into(),
                    command: "order.ship".into(),
                    success: strings(&["order.shipped", "order.shipped-late"]),
                    failure: vec![],
                    compensate: None,
                    compensated: None,
                    timeout: Duration::from_secs(30),
                    delay: None,
                },
            ],
            consumers: vec![StreamBinding {
                consumer: "saga-fulfil-order".into(),
                subjects: strings(&[
                    "order.placed",
                    "inventory.reserved",
                    "inventory.insufficient",
                    "inventory.unknown",
                    "inventory.released",
                    "order.shipped",
                    "order.shipped-late",
                ]),
                stream: "ORDERS".into(),
                managed: true,
                dead_letter: "dlq.saga-fulfil-order".into(),
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 10_000,
            }],
            concurrency: 16,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    );
    assert!(ok(&with_streams(
        r#"
[functions.f]
subjects = ["user.>"]
builtin = "noop"
"#
    ))
    .sagas
    .is_empty());
}

#[test]
fn a_saga_retries_undos_with_its_policy_over_the_defaults() {
    let text = with_sagas(&format!(
        "{FULFIL_ORDER}\n[defaults]\nretry = {{ max_attempts = 7, jitter = 0.0 }}\n"
    ));
    let retry = ok(&text).sagas["fulfil-order"].retry;
    assert_eq!((retry.max_attempts(), retry.jitter()), (7, 0.0));

    let own = FULFIL_ORDER.replace(
        "timeout = \"10m\"",
        "timeout = \"10m\"\nretry = { initial_delay = \"2s\" }",
    );
    let text = with_sagas(&format!(
        "{own}\n[defaults]\nretry = {{ max_attempts = 7 }}\n"
    ));
    let retry = ok(&text).sagas["fulfil-order"].retry;
    assert_eq!(retry.max_attempts(), 7);
    assert_eq!(retry.initial_delay(), Duration::from_secs(2));

    let bad = FULFIL_ORDER.replace(
        "timeout = \"10m\"",
        "timeout = \"10m\"\nretry = { max_attempts = 0 }",
    );
    assert_eq!(
        errors(&with_sagas(&bad)),
        ["sagas.fulfil-order.retry.max_attempts must be at least 1, got 0 (line 15)"]
    );
}

#[test]
fn a_saga_keeps_ended_instances_for_its_retention() {
    let days = ok(&with_sagas(FULFIL_ORDER)).sagas["fulfil-order"].retention;
    assert_eq!(days, Duration::from_secs(7 * 24 * 3600));
    let own = FULFIL_ORDER.replace(
        "timeout = \"10m\"",
        "timeout = \"10m\"\nretention = \"36h\"",
    );
    let hours = ok(&with_sagas(&own)).sagas["fulfil-order"].retention;
    assert_eq!(hours, Duration::from_secs(36 * 3600));
    let zero = FULFIL_ORDER.replace("timeout = \"10m\"", "timeout = \"10m\"\nretention = \"0s\"");
    let errors = errors(&with_sagas(&zero));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("sagas.fulfil-order.retention") && errors[0].ends_with("(line 15)"),
        "{errors:?}"
    );
}

#[test]
fn a_saga_step_may_wait() {
    let waits = FULFIL_ORDER.replace(
        "command = \"order.ship\"",
        "command = \"order.ship\"\ndelay = \"24h\"",
    );
    let steps = &ok(&with_sagas(&waits)).sagas["fulfil-order"].steps;
    assert_eq!(steps[0].delay, None);
    assert_eq!(steps[1].delay, Some(Duration::from_secs(24 * 3600)));

    for (delay, got) in [
        (
            "\"0s\"",
            "must be a non-zero duration like 250ms, 30s, 5m or 7d, got \"0s\"",
        ),
        (
            "\"a day\"",
            "must be a duration like 250ms, 30s, 5m or 7d, got \"a day\"",
        ),
        (
            "86400",
            "must be a duration like 250ms, 30s, 5m or 7d, got 86400",
        ),
    ] {
        let bad = FULFIL_ORDER.replace(
            "command = \"order.ship\"",
            &format!("command = \"order.ship\"\ndelay = {delay}"),
        );
        assert_eq!(
            errors(&with_sagas(&bad)),
            [format!("sagas.fulfil-order.steps[1].delay {got} (line 30)")]
        );
    }
}

#[test]
fn saga_required_keys() {
    assert_eq!(
        errors(&with_sagas(
            r#"
[sagas.s]
start = "order.placed"
"#
        )),
        [
            "sagas.s.key is required, like key = \"order_id\" (line 11)",
            "sagas.s.completed is required, like completed = \"order.fulfilled\" (line 11)",
            "sagas.s.failed is required, like failed = \"order.cancelled\" (line 11)",
            "sagas.s.steps is required: at least one step, like [[sagas.s.steps]] with name, \
             command and success (line 11)",
        ]
    );
    assert_eq!(
        errors(&with_sagas(
            r#"
[sagas.s]
start = "order.placed"
key = "/order/id"
completed = "order.done"
failed = "order.failed"
steps = []

[sagas."a.b"]
"#
        )),
        [
            "sagas.s.steps must be a non-empty list of steps, like [[sagas.s.steps]] tables, \
             got an empty list (line 16)",
            "sagas.\"a.b\" is not a valid saga name: use only letters, digits, - and _ (line 18)",
        ]
    );
}

#[test]
fn saga_step_mistakes() {
    let text = with_sagas(
        r#"
[sagas.s]
start = "order.placed"
key = "order_id"
completed = "order.done"
failed = "order.failed"

[[sagas.s.steps]]
name = "re serve"
command = "inventory.*"
success = []
compensated = "inventory.released"
timeout = "0s"
retry = 3

[[sagas.s.steps]]
name = "ship"
command = "order.ship"

[[sagas.s.steps]]
name = "ship"
command = "order.ship-again"
success = "order.shipped-again"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "sagas.s.steps[0].name \"re serve\" is not a valid step name: use only letters, \
             digits, - and _ (line 18)",
            "sagas.s.steps[0].command \"inventory.*\" is not a valid event type: it must not \
             contain wildcards (* or >) (event types are subjects) (line 19)",
            "sagas.s.steps[0].success must be an event type or a non-empty list of them, like \
             [\"inventory.reserved\"], got an empty list (line 20)",
            "sagas.s.steps[0].compensated has no meaning without compensate: set the event \
             type that undoes the step (line 21)",
            "sagas.s.steps[0].timeout must be a non-zero duration like 250ms, 30s, 5m or 7d, \
             got \"0s\" (line 22)",
            "sagas.s.steps[0].retry is not a known key; expected one of: name, command, \
             success, failure, compensate, compensated, timeout, delay (line 23)",
            "sagas.s.steps[1].success is required, like success = \"inventory.reserved\" \
             (line 25)",
            "sagas.s.steps[2].name \"ship\" names another step already; step names must be \
             unique in a saga (line 30)",
        ]
    );
}

#[test]
fn every_saga_type_must_be_captured_by_a_stream() {
    let text = with_sagas(
        r#"
[sagas.s]
start = "order.placed"
key = "order_id"
completed = "saga.done"
failed = "order.failed"

[[sagas.s.steps]]
name = "charge"
command = "payment.charge"
success = ["payment.charged"]
failure = "order.charge-failed"
compensate = "payment.refund"
compensated = "payment.refunded"
"#,
    );
    let uncaptured = |path: &str, subject: &str, line: usize| {
        format!(
            "sagas.s.{path} {subject:?} is not captured by any [streams.*] entry; add it to a \
             stream's subjects (a saga's events travel through streams) (line {line})"
        )
    };
    assert_eq!(
        errors(&text),
        [
            uncaptured("completed", "saga.done", 14),
            uncaptured("steps[0].command", "payment.charge", 19),
            uncaptured("steps[0].success", "payment.charged", 20),
            uncaptured("steps[0].compensate", "payment.refund", 22),
            uncaptured("steps[0].compensated", "payment.refunded", 23),
        ]
    );
}

#[test]
fn an_event_type_plays_one_role_in_a_saga() {
    let text = with_sagas(
        r#"
[sagas.s]
start = "order.placed"
key = "order_id"
completed = "order.over"
failed = "order.over"

[[sagas.s.steps]]
name = "reserve"
command = "inventory.reserve"
success = "inventory.reserved"
failure = ["inventory.failed", "inventory.reserved"]

[[sagas.s.steps]]
name = "ship"
command = "inventory.reserved"
success = "order.placed"
"#,
    );
    let again = |path: &str, subject: &str, role: &str, line: usize| {
        format!(
            "sagas.s.{path} {subject:?} is already {role}; an event type plays one role in a \
             saga, since participants and the saga tell events apart by type alone (line {line})"
        )
    };
    assert_eq!(
        errors(&text),
        [
            again("failed", "order.over", "the completed type", 15),
            again(
                "steps[0].failure",
                "inventory.reserved",
                "a success type of step reserve",
                21
            ),
            again(
                "steps[1].command",
                "inventory.reserved",
                "a success type of step reserve",
                25
            ),
            again("steps[1].success", "order.placed", "the start type", 26),
        ]
    );
}

#[test]
fn a_projection_takes_one_event_at_a_time_unless_it_says_otherwise() {
    let config = ok(r#"
[defaults]
concurrency = 32

[streams.S]
subjects = ["order.>"]

[functions.summary]
subjects = ["order.>"]
projection = { bucket = "summaries", key = "order_id" }
builtin = "noop"

[functions.fast]
subjects = ["order.>"]
projection = { bucket = "fast", key = "/order/id" }
builtin = "noop"
concurrency = 4

[functions.query]
request = "q.summary"
projection = { bucket = "summaries", key = "order_id" }
builtin = "noop"
"#);
    let summary = &config.functions["summary"];
    assert_eq!(
        (
            summary.concurrency,
            summary.binding().unwrap().max_ack_pending
        ),
        (1, 1)
    );
    assert_eq!(
        summary.role,
        Role::Projection(ProjectionConfig {
            bucket: "summaries".into(),
            key: "/order_id".into()
        })
    );
    assert_eq!(config.functions["fast"].concurrency, 4);
    let query = &config.functions["query"];
    assert_eq!(query.concurrency, 32, "a query is no projection");
    assert_eq!(query.request_subject(), Some("q.summary"));
    assert!(query.binding().is_none());
}

#[test]
fn an_http_timeout_longer_than_the_functions_is_refused() {
    let text = with_streams(
        r#"
[functions.hook]
subjects = ["order.placed"]
timeout = "30s"
http = { url = "http://127.0.0.1:8080/", timeout = "45s" }

[functions.within]
subjects = ["order.shipped"]
http = { url = "http://127.0.0.1:8080/", timeout = "30s" }
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.hook.http.timeout (45s) is longer than the function's timeout (30s), \
             which would cut the call short; raise the function's timeout or lower this one \
             (line 10)"
        ]
    );
}

#[test]
fn names_jetrun_derives_are_not_taken_twice() {
    let text = with_sagas(&format!(
        "{FULFIL_ORDER}
[functions.saga-fulfil-order]
subjects = [\"user.deleted\"]
builtin = \"noop\"

[functions.counts]
subjects = [\"user.created\"]
builtin = \"noop\"
projection = {{ bucket = \"jetrun_saga_x\", key = \"/id\" }}

[functions.totals]
subjects = [\"user.updated\"]
builtin = \"noop\"
projection = {{ bucket = \"totals\", key = \"/id\" }}

[functions.shadow]
subjects = [\"user.renamed\"]
builtin = \"noop\"
projection = {{ bucket = \"totals_2\", key = \"/id\" }}
"
    ));
    assert_eq!(
        errors(&text),
        [
            "functions.saga-fulfil-order is the name of saga fulfil-order's durable consumer \
             and takes its dead-letter subject (dlq.saga-fulfil-order); rename the function \
             (line 32)",
            "functions.counts.projection.bucket \"jetrun_saga_x\" is a name jetrun keeps for \
             itself (jetrun_saga_...); pick another (line 36)",
            "functions.shadow.projection.bucket \"totals_2\" is a name `jetrun projection \
             rebuild` gives the buckets of \"totals\" (function totals); pick another (line 46)",
        ]
    );
}

#[test]
fn a_step_timeout_a_redelivered_command_cannot_meet_is_warned_of() {
    let text = with_sagas(&format!(
        "{FULFIL_ORDER}
[functions.reserver]
subjects = [\"inventory.reserve\"]
builtin = \"noop\"
ack_wait = \"1m\"
"
    ));
    let config = ok(&text);
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "sagas.fulfil-order.steps[0].timeout (45s) is shorter than the ack_wait (1m) of \
             function reserver, which consumes the step's command inventory.reserve: a \
             command in flight on a runner that dies is redelivered only after that ack wait, \
             too late to be answered; raise the step's timeout or lower the function's \
             ack_wait (line 25)"
        ]
    );
    assert!(ok(&with_sagas(FULFIL_ORDER)).warnings.is_empty());
}

/// The schema for editors (`config/jetrun.schema.json`) has, table by table,
/// exactly the keys the parser reads.
#[test]
fn the_schema_has_the_keys_of_the_parser() {
    use super::{aggregates, function, handler, nats, retry, sagas, shared, streams, TOP_KEYS};

    let schema: serde_json::Value = serde_json::from_str(&crate::json_schema()).unwrap();
    let keys_of = |properties: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = properties
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let sorted = |keys: &[&str]| -> Vec<String> {
        let mut keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys_of(&schema["properties"]),
        sorted(TOP_KEYS),
        "the top level"
    );
    let tables: [(&str, &[&str]); 16] = [
        ("Nats", nats::NATS_KEYS),
        ("Tls", nats::TLS_KEYS),
        ("Metrics", nats::METRICS_KEYS),
        ("Defaults", function::DEFAULTS_KEYS),
        ("Retry", retry::RETRY_KEYS),
        ("Stream", streams::STREAM_KEYS),
        ("Function", function::FUNCTION_KEYS),
        ("ExecTable", handler::EXEC_KEYS),
        ("HttpTable", handler::HTTP_KEYS),
        ("Projection", function::PROJECTION_KEYS),
        ("Aggregate", aggregates::AGGREGATE_KEYS),
        ("Saga", sagas::SAGA_KEYS),
        ("Step", sagas::STEP_KEYS),
        ("DeadLetters", shared::DEAD_LETTERS_KEYS),
        ("Service", shared::SERVICE_KEYS),
        ("Schedules", shared::SCHEDULES_KEYS),
    ];
    for (definition, keys) in tables {
        let table = &schema["definitions"][definition];
        assert_eq!(keys_of(&table["properties"]), sorted(keys), "{definition}");
        assert_eq!(table["additionalProperties"], false, "{definition}");
    }
}

/// A config with `telemetry` as its `[telemetry]` table, from line 1.
fn with_telemetry(telemetry: &str) -> String {
    format!(
        "[telemetry]\n{telemetry}\n[streams.ORDERS]\nsubjects = [\"order.>\"]\n\
         [functions.f]\nsubjects = [\"order.placed\"]\nbuiltin = \"noop\"\n"
    )
}

#[test]
fn telemetry_is_off_without_its_section() {
    let config = ok(&with_streams(
        "[functions.f]\nsubjects = [\"order.placed\"]\nbuiltin = \"noop\"\n",
    ));
    assert_eq!(config.telemetry, None);
}

#[test]
fn telemetry_defaults_and_the_traces_path() {
    let config = ok(&with_telemetry("otlp_endpoint = \"http://collector:4318\""));
    assert_eq!(
        config.telemetry,
        Some(crate::TelemetryConfig {
            traces_url: "http://collector:4318/v1/traces".into(),
            service_name: "jetrun".into(),
            sampling_ratio: 1.0,
            headers: BTreeMap::new(),
        })
    );
    for (given, url) in [
        (
            "https://otel.example:4318/",
            "https://otel.example:4318/v1/traces",
        ),
        (
            "http://127.0.0.1:4318/v1/traces",
            "http://127.0.0.1:4318/v1/traces",
        ),
        ("http://gateway/otlp", "http://gateway/otlp/v1/traces"),
    ] {
        let config = ok(&with_telemetry(&format!("otlp_endpoint = {given:?}")));
        assert_eq!(config.telemetry.unwrap().traces_url, url, "{given}");
    }
}

#[test]
fn telemetry_settings() {
    let config = parse_env(
        &with_telemetry(
            "otlp_endpoint = \"${OTLP}\"\nservice_name = \"orders\"\nsampling_ratio = 0.25\n\
             headers = { x-api-key = \"${KEY}\" }",
        ),
        &[("OTLP", "http://127.0.0.1:4318"), ("KEY", "s3cret")],
    )
    .unwrap();
    let telemetry = config.telemetry.unwrap();
    assert_eq!(telemetry.traces_url, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(telemetry.service_name, "orders");
    assert_eq!(telemetry.sampling_ratio, 0.25);
    assert_eq!(telemetry.headers["x-api-key"], "s3cret");
    let config = ok(&with_telemetry(
        "otlp_endpoint = \"http://c:4318\"\nsampling_ratio = 0",
    ));
    assert_eq!(config.telemetry.unwrap().sampling_ratio, 0.0);
}

#[test]
fn telemetry_errors_name_the_key_and_line() {
    assert_eq!(
        errors(&with_telemetry("service_name = \"jetrun\"")),
        [
            "telemetry.otlp_endpoint is required: the OTLP/HTTP receiver (a collector) to send \
             traces to, like otlp_endpoint = \"http://127.0.0.1:4318\"; remove [telemetry] to \
             send none (line 1)"
        ]
    );
    assert_eq!(
        errors(&with_telemetry("otlp_endpoint = \"127.0.0.1:4317\"")),
        [
            "telemetry.otlp_endpoint must be an http:// or https:// URL like \
             http://127.0.0.1:4318, got \"127.0.0.1:4317\" (line 2)"
        ]
    );
    assert_eq!(
        errors(&with_telemetry("otlp_endpoint = \"http://\"")),
        [
            "telemetry.otlp_endpoint must be an http:// or https:// URL like \
             http://127.0.0.1:4318, got \"http://\" (line 2)"
        ]
    );
    assert_eq!(
        errors(&with_telemetry(
            "otlp_endpoint = \"http://c:4318\"\nsampling_ratio = 1.5\nservice_name = \"\"\n\
             headers = { \"x y\" = \"1\" }\nexporter = \"otlp\""
        )),
        [
            "telemetry.sampling_ratio must be from 0 to 1, got 1.5 (line 3)",
            "telemetry.service_name must be a non-empty string, got \"\" (line 4)",
            "telemetry.headers has \"x y\", which is not an HTTP header name (line 5)",
            "telemetry.exporter is not a known key; expected one of: otlp_endpoint, \
             service_name, sampling_ratio, headers (line 6)",
        ]
    );
    assert_eq!(
        errors(&with_telemetry("otlp_endpoint = 4318")),
        [
            "telemetry.otlp_endpoint must be an http:// or https:// URL like \
             http://127.0.0.1:4318, got 4318 (line 2)"
        ]
    );
}

#[test]
fn dead_letters_and_service_name_what_two_teams_keep_apart() {
    let config = ok(&with_streams(
        r#"
[dead_letters]
stream = "ORDERS_DLQ"
prefix = "orders.dlq"

[service]
name = "orders-team"

[streams.DLQ]
subjects = ["dlq.>"]

[functions.reserve]
subjects = ["order.placed"]
builtin = "noop"
"#,
    ));
    assert_eq!(config.dead_letters.stream, "ORDERS_DLQ");
    assert_eq!(config.dead_letters.subjects(), "orders.dlq.>");
    let binding = config.functions["reserve"].binding().unwrap();
    assert_eq!(binding.dead_letter, "orders.dlq.reserve");
    assert_eq!(config.service.name, "orders-team");

    let defaults = ok(&with_streams(
        "\n[functions.reserve]\nsubjects = [\"order.placed\"]\nbuiltin = \"noop\"\n",
    ));
    assert_eq!(defaults.dead_letters.stream, "DLQ");
    assert_eq!(
        defaults.functions["reserve"].binding().unwrap().dead_letter,
        "dlq.reserve"
    );
    assert_eq!(defaults.service.name, "jetrun");

    let refused = errors(&with_streams(
        r#"
[dead_letters]
stream = "ORDERS_DLQ"
prefix = "orders.*"

[service]
name = "orders team"

[functions.reserve]
subjects = ["order.placed"]
builtin = "noop"
"#,
    ));
    let all = refused.join("\n");
    assert!(all.contains("dead_letters.prefix"), "{all}");
    assert!(
        all.contains("service.name") && all.contains("not a micro service name"),
        "{all}"
    );

    let taken = errors(&with_streams(
        r#"
[dead_letters]
stream = "ORDERS_DLQ"

[streams.ORDERS_DLQ]
subjects = ["x.>"]

[functions.reserve]
subjects = ["order.placed"]
builtin = "noop"
"#,
    ));
    assert!(
        taken.join("\n").contains("streams.ORDERS_DLQ is reserved"),
        "{taken:?}"
    );

    let overlapping = errors(&with_streams(
        r#"
[dead_letters]
prefix = "order.dlq"

[functions.reserve]
subjects = ["order.placed"]
builtin = "noop"
"#,
    ));
    assert!(
        overlapping.join("\n").contains("overlaps order.dlq.>"),
        "{overlapping:?}"
    );
}
