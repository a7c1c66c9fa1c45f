//! No config text, however broken, makes `jetrun_config::parse` panic, and
//! every error it reports can be shown to a user: a message, and a line that
//! is in the file. Property tests over three kinds of input: arbitrary text,
//! documents built from the real keys with values of every TOML type, and the
//! shipped sample configs cut and shuffled; named tests for the inputs that
//! break parsers (deep nesting, huge values).
//!
//! Each property runs a few thousand cases at most, a second or two in a debug
//! build, so `cargo test` stays quick. For a longer hunt, `PROPTEST_CASES`
//! sets the count of every property here:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release -p jetrun-config --test never_panics
//! ```
//!
//! A failing case is printed shrunk (no regression files are written): keep
//! it as a named test below.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use jetrun_config::{parse, Config, ConfigErrors};
use jetrun_functions::BUILTINS;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;

const BASE: &str = "/srv/jetrun/config";

/// The shipped configs, valid as they are (see `the_samples_parse`).
const SAMPLES: [(&str, &str); 4] = [
    ("jetrun.toml", include_str!("../jetrun.toml")),
    (
        "examples/cluster.toml",
        include_str!("../examples/cluster.toml"),
    ),
    (
        "examples/ecommerce.toml",
        include_str!("../examples/ecommerce.toml"),
    ),
    (
        "examples/worker.toml",
        include_str!("../examples/worker.toml"),
    ),
];

// The keys each table accepts, as in `src/parse/*.rs`.
const TOP_KEYS: &[&str] = &[
    "nats",
    "metrics",
    "defaults",
    "streams",
    "functions",
    "shutdown_timeout",
];
const NATS_KEYS: &[&str] = &["url", "creds", "nkey", "user", "password", "token", "tls"];
const TLS_KEYS: &[&str] = &["ca", "cert", "key"];
const METRICS_KEYS: &[&str] = &["listen"];
const DEFAULTS_KEYS: &[&str] = &[
    "concurrency",
    "timeout",
    "retry",
    "ack_wait",
    "max_ack_pending",
];
const STREAM_KEYS: &[&str] = &[
    "subjects",
    "storage",
    "replicas",
    "max_age",
    "duplicate_window",
    "retention",
];
const HANDLER_KEYS: &[&str] = &["builtin", "exec", "http"];
/// A function's keys besides its handler.
const FUNCTION_KEYS: &[&str] = &[
    "subjects",
    "stream",
    "concurrency",
    "timeout",
    "retry",
    "ack_wait",
    "max_ack_pending",
    "dead_letter",
    "emits",
    "json",
];
const RETRY_KEYS: &[&str] = &[
    "max_attempts",
    "initial_delay",
    "multiplier",
    "max_delay",
    "jitter",
];
const EXEC_KEYS: &[&str] = &["command", "env", "mode", "workers", "user", "group"];
const HTTP_KEYS: &[&str] = &["url", "headers", "timeout"];

/// The property's config: `default` cases unless `PROPTEST_CASES` says
/// otherwise, and no regression files.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn parse_with(text: &str, env: &BTreeMap<String, String>) -> Result<Config, ConfigErrors> {
    parse(text, env, Path::new(BASE), BUILTINS)
}

/// The lines of `text` as an editor numbers them: the (empty) line after a
/// last newline counts, as an error at the end of the file is on it
/// (`"'''\n"` is "key with no value" on line 2).
fn line_count(text: &str) -> usize {
    text.split('\n').count()
}

/// The property: `parse` returns, and an `Err` holds at least one error, each
/// with a message and, when it has a line, one of the text's lines, in the
/// order of their lines (errors with no line last).
fn parses_or_reports(text: &str, env: &BTreeMap<String, String>) -> Result<(), TestCaseError> {
    let Err(errors) = parse_with(text, env) else {
        return Ok(());
    };
    prop_assert!(!errors.0.is_empty(), "an Err without an error");
    let lines = line_count(text);
    for error in &errors.0 {
        prop_assert!(
            !error.message.trim().is_empty(),
            "an error without a message: {error:?}"
        );
        if let Some(line) = error.line {
            prop_assert!(
                (1..=lines).contains(&line),
                "line {line} in a text of {lines} lines: {error}"
            );
        }
    }
    let order: Vec<usize> = errors
        .0
        .iter()
        .map(|e| e.line.unwrap_or(usize::MAX))
        .collect();
    prop_assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "errors out of line order: {errors}"
    );
    prop_assert!(!errors.to_string().trim().is_empty());
    Ok(())
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

// --- Structure-aware documents -------------------------------------------

/// A TOML value, as `write_value` writes it.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Written as is: dates and times, and spellings the other variants do
    /// not produce (`0x7F`, `1_000`, `+inf`, literal strings, out-of-range
    /// integers).
    Raw(&'static str),
    Array(Vec<Value>),
    Table(Vec<(String, Value)>),
}

/// `[path]` and its keys, or the root's keys when `path` is empty.
#[derive(Debug, Clone)]
struct Section {
    path: Vec<String>,
    entries: Vec<(String, Value)>,
}

fn write_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_key(key: &str, out: &mut String) {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        out.push_str(key);
    } else {
        write_str(key, out);
    }
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Str(s) => write_str(s, out),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) if f.is_nan() => out.push_str("nan"),
        Value::Float(f) if f.is_infinite() => out.push_str(if *f > 0.0 { "inf" } else { "-inf" }),
        // Debug keeps a `.0` or an exponent, as TOML floats need.
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Raw(raw) => out.push_str(raw),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Table(entries) => {
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { " " });
                write_key(key, out);
                out.push_str(" = ");
                write_value(value, out);
            }
            out.push_str(" }");
        }
    }
}

fn write_document(sections: &[Section]) -> String {
    let mut out = String::new();
    for section in sections {
        if !section.path.is_empty() {
            out.push_str("\n[");
            for (i, key) in section.path.iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                write_key(key, &mut out);
            }
            out.push_str("]\n");
        }
        for (key, value) in &section.entries {
            write_key(key, &mut out);
            out.push_str(" = ");
            write_value(value, &mut out);
            out.push('\n');
        }
    }
    out
}

/// How far a document strays from a valid one. `Low`: valid values but for
/// about one in seventy, and the keys a table needs, so the checks between
/// keys and tables run and some documents parse. `High`: keys come and go
/// and values of any type are everywhere.
#[derive(Debug, Clone, Copy)]
enum Noise {
    Low,
    High,
}

/// The weight of a valid value.
const VALID: u32 = 200;

impl Noise {
    /// The weight of a wrong value, against `VALID` for a valid one.
    fn weight(self) -> u32 {
        match self {
            Noise::Low => 1,
            Noise::High => 50,
        }
    }

    /// How likely a table has a key it does not need.
    fn presence(self) -> f64 {
        match self {
            Noise::Low => 0.3,
            Noise::High => 0.5,
        }
    }
}

/// Strings that mean something to some key, or break it.
const STRINGS: &[&str] = &[
    "",
    " ",
    "\n",
    "a\u{0}b",
    "ünïcode",
    "${HOST}",
    "${MISSING}",
    "${",
    "${}",
    "${A-B}",
    "$HOST",
    "x${HOST}${TOKEN}y",
    "nats://127.0.0.1:4222",
    "http://127.0.0.1:8080/events",
    "https://",
    "127.0.0.1:9600",
    "file",
    "workqueue",
    "worker",
    "root",
    "0",
    "4294967295",
    "99999999999999999999",
    "a:b",
    "python3",
    "../x/y.py",
];

/// Function subjects, each captured by one of `STREAM_SUBJECTS`.
const SUBJECTS: &[&str] = &[
    "order.placed",
    "order.>",
    "order.*",
    "order.*.x",
    "user.registered",
    "user.>",
    "inventory.>",
    "inventory.reserved",
    "payment.completed",
    "email.sent",
];
/// Subjects a function cannot have: invalid, or captured by no stream.
const BAD_SUBJECTS: &[&str] = &[
    "",
    "dlq.x",
    "dlq.>",
    "dlq.*",
    ">",
    "*",
    "*.*",
    "a..b",
    ".a",
    "a.",
    "order.>.x",
    "order.pl*",
    "a b",
    "${SUBJECT}",
];

/// Stream subjects, none overlapping another.
const STREAM_SUBJECTS: &[&str] = &["order.>", "user.>", "inventory.>", "payment.>", "email.>"];
const BAD_STREAM_SUBJECTS: &[&str] = &[">", "*.*", "dlq.x", "dlq.>", "", "a..b", "order.placed"];

const DURATIONS: &[&str] = &[
    "1ns",
    "250ms",
    "1s",
    "30s",
    "5m",
    "7d",
    "1y",
    "1h 30m",
    "18446744073709551615s",
    "584542046090y",
];
const BAD_DURATIONS: &[&str] = &[
    "0s",
    "0ms",
    "5 sec",
    "-5s",
    "s",
    "18446744073709551616s",
    "584542046091y",
    "99999999999999999999999d",
    "${TIMEOUT}",
];

/// Stream and function names.
const NAMES: &[&str] = &[
    "ORDERS",
    "USERS",
    "EMAILS",
    "hello",
    "reserve-stock",
    "ship_order",
];
const BAD_NAMES: &[&str] = &[
    "DLQ",
    "a.b",
    "MY STREAM",
    "a*",
    "a>",
    "a/b",
    "",
    "ünï",
    "\t",
];

const RAW: &[&str] = &[
    "1979-05-27T07:32:00Z",
    "1979-05-27T00:32:00.999999-07:00",
    "1979-05-27 07:32:00",
    "1979-05-27T07:32:00",
    "1979-05-27",
    "07:32:00",
    "00:00:00.123456789",
    "9999-12-31T23:59:59Z",
    "0000-01-01",
    "1979-02-30",
    "+inf",
    "-nan",
    "+nan",
    "0x7FFFFFFFFFFFFFFF",
    "0o755",
    "0b1010",
    "1_000",
    "-0",
    "+0.0",
    "9223372036854775808",
    "-9223372036854775809",
    "1e400",
    "'literal ${HOST}'",
    "'''multi\nline'''",
    "\"\"\"multi\nline\"\"\"",
    "[]",
    "{}",
    "[[]]",
];

/// Any string, often one that means something to some key.
fn string() -> BoxedStrategy<String> {
    let pools = [
        STRINGS,
        SUBJECTS,
        BAD_SUBJECTS,
        STREAM_SUBJECTS,
        BAD_STREAM_SUBJECTS,
        DURATIONS,
        BAD_DURATIONS,
        NAMES,
        BAD_NAMES,
    ];
    prop_oneof![
        4 => select(pools.concat()).prop_map(str::to_owned),
        2 => "[a-z0-9.>*${}A-Z_ :/-]{0,16}",
        1 => ".{0,12}",
        1 => (0usize..5_000).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

/// One of `valid`, or, as often as `noise` says, one of `invalid` or any
/// string.
fn pick(
    valid: &'static [&'static str],
    invalid: &'static [&'static str],
    noise: Noise,
) -> BoxedStrategy<String> {
    let wrong = noise.weight();
    prop_oneof![
        VALID => select(valid).prop_map(str::to_owned),
        wrong => select(invalid).prop_map(str::to_owned),
        wrong => string(),
    ]
    .boxed()
}

fn text(
    valid: &'static [&'static str],
    invalid: &'static [&'static str],
    noise: Noise,
) -> BoxedStrategy<Value> {
    pick(valid, invalid, noise).prop_map(Value::Str).boxed()
}

fn integer() -> BoxedStrategy<i64> {
    prop_oneof![
        3 => -3i64..20,
        1 => select(vec![
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            1,
            5,
            6,
            i64::from(i32::MAX),
            i64::from(u32::MAX) - 1,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::MAX,
        ]),
        1 => any::<i64>(),
    ]
    .boxed()
}

/// A count (`concurrency`, `replicas`...) in `valid`, or any integer as
/// often as `noise` says.
fn count(valid: std::ops::Range<i64>, noise: Noise) -> BoxedStrategy<Value> {
    prop_oneof![
        VALID => valid.prop_map(Value::Int),
        noise.weight() => integer().prop_map(Value::Int),
    ]
    .boxed()
}

fn float() -> BoxedStrategy<f64> {
    prop_oneof![
        2 => select(&[
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            0.1,
            0.5,
            1.0,
            1.0000000000000002,
            2.0,
            1e300,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
        ][..]),
        1 => any::<f64>(),
        1 => -2.0f64..3.0,
    ]
    .boxed()
}

/// A float in `valid`, or any number as often as `noise` says.
fn number(valid: std::ops::Range<f64>, noise: Noise) -> BoxedStrategy<Value> {
    prop_oneof![
        VALID => valid.prop_map(Value::Float),
        noise.weight() => float().prop_map(Value::Float),
        noise.weight() => integer().prop_map(Value::Int),
    ]
    .boxed()
}

/// Any value, nested a little.
fn any_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        string().prop_map(Value::Str),
        integer().prop_map(Value::Int),
        float().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        select(RAW).prop_map(Value::Raw),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key(), inner), 0..4).prop_map(Value::Table),
        ]
    })
    .boxed()
}

/// A key this table does not declare: another table's, or made up.
fn key() -> BoxedStrategy<String> {
    let known = [TOP_KEYS, FUNCTION_KEYS, EXEC_KEYS, RETRY_KEYS].concat();
    prop_oneof![
        select(known).prop_map(str::to_owned),
        "[a-z_]{1,8}",
        ".{0,6}",
    ]
    .boxed()
}

/// A list of 1 to 4 strings (or none, or any value, as often as `noise` says).
fn list(items: BoxedStrategy<String>, noise: Noise) -> BoxedStrategy<Value> {
    prop_oneof![
        VALID => vec(items.prop_map(Value::Str), 1..4).prop_map(Value::Array),
        noise.weight() => Just(Value::Array(Vec::new())),
    ]
    .boxed()
}

/// A value `key` of the table `scope` accepts, but as often as `noise` says:
/// one it refuses, or any value.
fn value_for(scope: &'static str, key: &'static str, noise: Noise) -> BoxedStrategy<Value> {
    let likely = match (scope, key) {
        ("nats", "url") => prop_oneof![
            text(
                &["nats://127.0.0.1:4222", "tls://nats-1:4222", "${HOST}"],
                &["", " "],
                noise
            ),
            list(
                pick(&["nats://a:4222", "nats://b:4222"], &["", " "], noise),
                noise
            ),
        ]
        .boxed(),
        ("http", "url") => text(
            &[
                "http://127.0.0.1:8080/events",
                "https://hooks.example/x",
                "http://${HOST}/x",
            ],
            &["https://", "http:// x", "ftp://x", "nats://a:4222"],
            noise,
        ),
        (_, "creds" | "nkey" | "ca" | "cert" | "key") => text(
            &[
                "jetrun.creds",
                "/etc/nats/ca.pem",
                "../tls/key.pem",
                "${HOST}.pem",
            ],
            &["", "${MISSING}"],
            noise,
        ),
        ("nats", "user" | "password" | "token") => text(
            &["jetrun", "s3cret", "${TOKEN}"],
            &["", "${MISSING}"],
            noise,
        ),
        ("exec", "user" | "group") => prop_oneof![
            text(
                &["root", "nobody", "1000", "0"],
                &["", "a:b", "a b", "4294967295"],
                noise
            ),
            count(0..70_000, noise),
        ]
        .boxed(),
        (_, "tls") => table("tls", TLS_KEYS, &[], noise)
            .prop_map(Value::Table)
            .boxed(),
        (_, "listen") => text(
            &["127.0.0.1:9600", "[::]:9600", "0.0.0.0:0"],
            &["0.0.0.0:99999", "localhost:9600", "127.0.0.1", ""],
            noise,
        ),
        (_, "concurrency" | "max_attempts" | "workers") => count(1..8, noise),
        (_, "max_ack_pending") => count(1..20_000, noise),
        (_, "replicas") => count(1..6, noise),
        (
            _,
            "timeout" | "ack_wait" | "max_age" | "duplicate_window" | "initial_delay" | "max_delay"
            | "shutdown_timeout",
        ) => text(DURATIONS, BAD_DURATIONS, noise),
        (_, "multiplier") => number(1.0..4.0, noise),
        (_, "jitter") => number(0.0..1.0, noise),
        ("streams", "subjects") => list(pick(STREAM_SUBJECTS, BAD_STREAM_SUBJECTS, noise), noise),
        (_, "subjects" | "emits") => list(pick(SUBJECTS, BAD_SUBJECTS, noise), noise),
        (_, "stream") => text(NAMES, BAD_NAMES, noise),
        (_, "dead_letter") => text(
            &["dlq.x", "dlq.reserve-stock", "email.failed", "${SUBJECT}"],
            &["dlq.>", "order.placed", "", "a b"],
            noise,
        ),
        (_, "json") => any::<bool>().prop_map(Value::Bool).boxed(),
        (_, "builtin") => text(BUILTINS, &["nope", "", "Noop"], noise),
        (_, "command") => list(
            pick(
                &["python3", "./run.sh", "/bin/true", "handler.py", "--worker"],
                &["", "${MISSING}"],
                noise,
            ),
            noise,
        ),
        (_, "exec") => prop_oneof![
            value_for("exec", "command", noise),
            table("exec", EXEC_KEYS, &["command"], noise).prop_map(Value::Table),
        ]
        .boxed(),
        (_, "mode") => text(&["per-event", "worker"], &["fork", ""], noise),
        (_, "env" | "headers") => btree_map(
            pick(&["PATH", "TOKEN", "X_Y"], &["", "A=B", "a\u{0}"], noise),
            text(&["1", "${HOST}", ""], &["${MISSING}", "${"], noise),
            0..4,
        )
        .prop_map(|entries| Value::Table(entries.into_iter().collect()))
        .boxed(),
        (_, "http") => prop_oneof![
            value_for("http", "url", noise),
            table("http", HTTP_KEYS, &["url"], noise).prop_map(Value::Table),
        ]
        .boxed(),
        (_, "storage") => text(&["file", "memory"], &["disk"], noise),
        (_, "retention") => text(&["limits", "interest", "workqueue"], &["work-queue"], noise),
        (_, "retry") => table("retry", RETRY_KEYS, &[], noise)
            .prop_map(Value::Table)
            .boxed(),
        _ => text(STRINGS, STRINGS, noise),
    };
    prop_oneof![VALID => likely, noise.weight() => any_value()].boxed()
}

/// The `required` keys, some of the other `keys`, each with a value, and
/// sometimes a key the table does not declare, in any order.
fn table(
    scope: &'static str,
    keys: &'static [&'static str],
    required: &'static [&'static str],
    noise: Noise,
) -> BoxedStrategy<Vec<(String, Value)>> {
    let entries: Vec<_> = keys
        .iter()
        .map(|key| {
            let entry =
                value_for(scope, key, noise).prop_map(move |value| ((*key).to_owned(), value));
            match noise {
                Noise::Low if required.contains(key) => entry.prop_map(Some).boxed(),
                _ => proptest::option::weighted(noise.presence(), entry).boxed(),
            }
        })
        .collect();
    let unknown = proptest::option::weighted(
        f64::from(noise.weight()) / f64::from(VALID),
        (key(), any_value()),
    );
    (entries, unknown)
        .prop_map(|(entries, unknown)| entries.into_iter().flatten().chain(unknown).collect())
        .prop_shuffle()
        .boxed()
}

/// A function's table: at `Noise::Low`, exactly one handler.
fn function(noise: Noise) -> BoxedStrategy<Vec<(String, Value)>> {
    let handlers = match noise {
        Noise::Low => select(HANDLER_KEYS)
            .prop_flat_map(move |key| {
                value_for("functions", key, noise)
                    .prop_map(move |value| vec![(key.to_owned(), value)])
            })
            .boxed(),
        Noise::High => table("functions", HANDLER_KEYS, &[], noise),
    };
    (
        handlers,
        table("functions", FUNCTION_KEYS, &["subjects"], noise),
    )
        .prop_map(|(mut handlers, rest)| {
            handlers.extend(rest);
            handlers
        })
        .prop_shuffle()
        .boxed()
}

/// `[parent.NAME]` tables, or one `[parent]` table of inline tables. At
/// `Noise::Low`, at least one and no name twice.
fn named(
    parent: &'static str,
    tables: BoxedStrategy<Vec<(String, Value)>>,
    noise: Noise,
) -> BoxedStrategy<Vec<Section>> {
    let names = match noise {
        Noise::Low => proptest::sample::subsequence(NAMES, 1..4)
            .prop_map(|names| names.into_iter().map(str::to_owned).collect())
            .boxed(),
        Noise::High => vec(pick(NAMES, BAD_NAMES, noise), 0..4).boxed(),
    };
    let named = names.prop_flat_map(move |names| {
        let n = names.len();
        (Just(names), vec(tables.clone(), n))
    });
    (named, any::<bool>())
        .prop_map(move |((names, tables), inline)| {
            let tables = names.into_iter().zip(tables);
            if inline {
                let entries = tables
                    .map(|(name, entries)| (name, Value::Table(entries)))
                    .collect();
                vec![Section {
                    path: vec![parent.to_owned()],
                    entries,
                }]
            } else {
                tables
                    .map(|(name, entries)| Section {
                        path: vec![parent.to_owned(), name],
                        entries,
                    })
                    .collect()
            }
        })
        .boxed()
}

/// `[path]`, or nothing.
fn section(
    path: &'static str,
    keys: &'static [&'static str],
    noise: Noise,
) -> BoxedStrategy<Vec<Section>> {
    proptest::option::weighted(0.6, table(path, keys, &[], noise))
        .prop_map(move |entries| {
            entries
                .map(|entries| Section {
                    path: vec![path.to_owned()],
                    entries,
                })
                .into_iter()
                .collect()
        })
        .boxed()
}

/// A config document from the real sections and keys, in any order.
fn document(noise: Noise) -> impl Strategy<Value = String> {
    let nats = match noise {
        // At most one way to authenticate.
        Noise::Low => section("nats", &["url", "tls", "token"], noise),
        Noise::High => section("nats", NATS_KEYS, noise),
    };
    let root = prop_oneof![
        3 => Just(Vec::new()),
        1 => value_for("", "shutdown_timeout", noise)
            .prop_map(|v| vec![("shutdown_timeout".to_owned(), v)]),
        noise.weight() => (key(), any_value()).prop_map(|entry| vec![entry]),
    ];
    (
        root,
        nats,
        section("metrics", METRICS_KEYS, noise),
        section("defaults", DEFAULTS_KEYS, noise),
        named(
            "streams",
            table("streams", STREAM_KEYS, &["subjects"], noise),
            noise,
        ),
        named("functions", function(noise), noise),
    )
        .prop_flat_map(|(root, nats, metrics, defaults, streams, functions)| {
            let tables: Vec<Section> = [nats, metrics, defaults, streams, functions]
                .into_iter()
                .flatten()
                .collect();
            (Just(root), Just(tables).prop_shuffle())
        })
        .prop_map(|(root, tables)| {
            let mut sections = vec![Section {
                path: Vec::new(),
                entries: root,
            }];
            sections.extend(tables);
            write_document(&sections)
        })
}

/// The environment for `${VAR}`, `JETRUN_NATS_URL` included. At
/// `Noise::Low`, the variables the documents name are set.
fn env(noise: Noise) -> impl Strategy<Value = BTreeMap<String, String>> {
    let names = prop_oneof![
        4 => select(&["HOST", "TOKEN", "MISSING", "TIMEOUT", "SUBJECT", "JETRUN_NATS_URL"][..])
            .prop_map(str::to_owned),
        1 => "[A-Za-z_][A-Za-z0-9_]{0,6}",
        1 => ".{0,6}",
    ];
    let values = prop_oneof![
        4 => select(&[
            "",
            " ",
            ",, ,",
            "nats://a:4222,nats://b:4222",
            "${HOST}",
            "30s",
            "0s",
            "order.>",
            "a b",
            "\u{0}",
        ][..])
        .prop_map(str::to_owned),
        1 => string(),
    ];
    let set: &[(&str, &str)] = match noise {
        Noise::Low => &[
            ("HOST", "nats-1"),
            ("TOKEN", "s3cret"),
            ("TIMEOUT", "30s"),
            ("SUBJECT", "dlq.from-env"),
        ],
        Noise::High => &[],
    };
    btree_map(names, values, 0..5).prop_map(move |mut env| {
        for (name, value) in set {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        env
    })
}

// --- Mutated samples ------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    /// A line of any sample, or a made-up one, inserted before a line.
    InsertLine(Index, String),
    /// Text inserted at a byte (moved back to a char boundary).
    Splice(Index, String),
    TruncateAt(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let sample_line = select(
        SAMPLES
            .iter()
            .flat_map(|(_, text)| text.lines())
            .collect::<Vec<_>>(),
    )
    .prop_map(str::to_owned);
    let splice = prop_oneof![
        select(&["[", "]", "{", "}", "\"", "'", "=", ",", ".", "#", "\n", "\\", "${", "\u{0}"][..])
            .prop_map(str::to_owned),
        string(),
    ];
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::DeleteLine),
        2 => any::<Index>().prop_map(Mutation::DuplicateLine),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        2 => (any::<Index>(), prop_oneof![3 => sample_line, 1 => string()])
            .prop_map(|(at, line)| Mutation::InsertLine(at, line)),
        2 => (any::<Index>(), splice).prop_map(|(at, text)| Mutation::Splice(at, text)),
        1 => any::<Index>().prop_map(Mutation::TruncateAt),
    ]
}

fn char_boundary(text: &str, at: &Index) -> usize {
    let mut at = at.index(text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut text = text.to_owned();
    for mutation in mutations {
        let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
        match mutation {
            Mutation::DeleteLine(at) => {
                lines.remove(at.index(lines.len()));
            }
            Mutation::DuplicateLine(at) => {
                let at = at.index(lines.len());
                lines.insert(at, lines[at].clone());
            }
            Mutation::SwapLines(a, b) => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
            }
            Mutation::InsertLine(at, line) => {
                lines.insert(at.index(lines.len() + 1), line.clone());
            }
            Mutation::Splice(at, insert) => {
                text.insert_str(char_boundary(&text, at), insert);
                continue;
            }
            Mutation::TruncateAt(at) => {
                text.truncate(char_boundary(&text, at));
                continue;
            }
        }
        text = lines.join("\n");
    }
    text
}

// --- Properties -----------------------------------------------------------
//
// Case counts give each property a second or two in a debug build.

proptest! {
    #![proptest_config(cases(4096))]

    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        parses_or_reports(&String::from_utf8_lossy(&bytes), &no_env())?;
    }
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn toml_looking_text(text in r#"[\[\]{}=",.'#a-z0-9_ \n$>*-]{0,300}"#) {
        parses_or_reports(&text, &no_env())?;
    }
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn documents_of_real_keys(text in document(Noise::High), env in env(Noise::High)) {
        parses_or_reports(&text, &env)?;
    }
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn nearly_valid_documents(text in document(Noise::Low), env in env(Noise::Low)) {
        parses_or_reports(&text, &env)?;
    }
}

proptest! {
    #![proptest_config(cases(2048))]

    #[test]
    fn mutated_samples(
        (_, sample) in select(&SAMPLES[..]),
        mutations in vec(mutation(), 1..6),
        env in env(Noise::High),
    ) {
        parses_or_reports(&mutate(sample, &mutations), &env)?;
    }
}

// --- Named cases ----------------------------------------------------------

/// The mutations start from valid configs.
#[test]
fn the_samples_parse() {
    for (name, text) in SAMPLES {
        if let Err(errors) = parse_with(text, &no_env()) {
            panic!("{name} does not parse:\n{errors}");
        }
    }
}

/// The TOML parser's recursion limit, not the stack, stops deep nesting.
#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    const DEPTH: usize = 10_000;
    let texts = [
        format!("a = {}{}", "[".repeat(DEPTH), "]".repeat(DEPTH)),
        format!("a = {}1{}", "{ b = ".repeat(DEPTH), " }".repeat(DEPTH)),
        format!("{} = 1", vec!["a"; DEPTH].join(".")),
        format!("[{}]", vec!["a"; DEPTH].join(".")),
        format!("[functions.x]\nexec = {}", "[".repeat(DEPTH)),
    ];
    // A thread with the stack of a tokio worker: what `jetrun` parses on.
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for text in &texts {
                let errors = parse_with(text, &no_env()).expect_err("nesting this deep");
                assert!(errors.to_string().starts_with("invalid TOML"), "{errors}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A 1 MiB value, and a file of many functions, are read like any other.
#[test]
fn huge_values_and_many_keys() {
    let text = format!(
        "[streams.S]\nsubjects = [\"a.>\"]\n\n[functions.f]\nsubjects = [\"a.x\"]\n\
         http = \"http://{}\"\n",
        "h".repeat(1 << 20)
    );
    parse_with(&text, &no_env()).unwrap();

    let mut text = "[streams.S]\nsubjects = [\"a.>\"]\n".to_owned();
    for i in 0..1_000 {
        let _ = write!(
            text,
            "[functions.f{i}]\nsubjects = [\"a.{i}\"]\nbuiltin = \"noop\"\n"
        );
    }
    let config = parse_with(&text, &no_env()).unwrap();
    assert_eq!(config.functions.len(), 1_000);
}

/// A config `parse` accepts gives a retry policy whose every delay can be
/// computed, also when `max_delay` is near `u64::MAX` seconds (the most
/// humantime reads) and the jitter stretches it past what a `Duration`
/// holds (`Duration::from_secs_f64` used to panic there).
#[test]
fn an_accepted_retry_policy_delays_without_panicking() {
    let text = r#"
[streams.S]
subjects = ["a.>"]

[functions.f]
subjects = ["a.x"]
builtin = "noop"
retry = { max_delay = "584542046090y", multiplier = 1e300 }
"#;
    let config = parse_with(text, &no_env()).unwrap();
    let policy = config.functions["f"].retry;
    for attempt in 1..=u64::from(policy.max_attempts()) {
        for unit in [0.0, 0.5, 0.999_999] {
            policy.delay(attempt, unit);
        }
    }
}
