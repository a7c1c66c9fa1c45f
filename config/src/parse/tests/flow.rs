//! Flow control as users write it: `key` (with `on_dead_letter`,
//! `missing_key`, `partitions`), `batch` and `rate`, each accepted form read
//! into the model and each refused one with its exact error.

use super::*;
use crate::{BatchConfig, KeyConfig, KeySource, MissingKey, OnDeadLetter, Rate};

/// `[functions.f]` on line 7, its keys from line 9.
fn f(keys: &str) -> String {
    with_streams(&format!(
        "\n[functions.f]\nsubjects = [\"order.>\"]\n{keys}\nbuiltin = \"noop\"\n"
    ))
}

fn function(text: &str) -> crate::FunctionConfig {
    ok(text).functions.remove("f").expect("function f")
}

#[test]
fn a_key_is_a_json_pointer_with_defaults() {
    let fc = function(&f("key = \"/account_id\""));
    assert_eq!(
        fc.key,
        Some(KeyConfig {
            source: KeySource::Pointer("/account_id".into()),
            on_dead_letter: OnDeadLetter::Continue,
            missing_key: MissingKey::DeadLetter,
            partitions: 4,
        })
    );
    assert_eq!((fc.batch, fc.rate), (None, None));
    // RFC 6901: "/" is the member named "", ~0 and ~1 are escapes.
    for pointer in ["/", "/a~1b~0c/0", "/order/id", "/ü"] {
        let fc = function(&f(&format!("key = {pointer:?}")));
        assert_eq!(
            fc.key.unwrap().source,
            KeySource::Pointer(pointer.into()),
            "{pointer}"
        );
    }
}

#[test]
fn a_key_is_a_subject_token_with_its_settings() {
    let fc = function(&f(
        "key = \"subject:2\"\non_dead_letter = \"park\"\nmissing_key = \"unordered\"\n\
         partitions = 64",
    ));
    assert_eq!(
        fc.key,
        Some(KeyConfig {
            source: KeySource::SubjectToken(2),
            on_dead_letter: OnDeadLetter::Park,
            missing_key: MissingKey::Unordered,
            partitions: 64,
        })
    );
    let fc = function(&f(
        "key = \"subject:1\"\non_dead_letter = \"continue\"\nmissing_key = \"dead_letter\"\n\
         partitions = 1",
    ));
    let key = fc.key.unwrap();
    assert_eq!(key.source, KeySource::SubjectToken(1));
    assert_eq!(
        (key.on_dead_letter, key.missing_key, key.partitions),
        (OnDeadLetter::Continue, MissingKey::DeadLetter, 1)
    );
}

#[test]
fn a_key_from_the_environment() {
    let text = f("key = \"${KEY}\"");
    let config = parse_env(&text, &[("KEY", "subject:3")]).unwrap();
    assert_eq!(
        config.functions["f"].key.as_ref().unwrap().source,
        KeySource::SubjectToken(3)
    );
}

#[test]
fn a_subject_token_some_subject_has() {
    // order.> has any number of tokens; order.*.paid has 3.
    for subjects in [
        r#"["order.>"]"#,
        r#"["order.placed", "order.*.paid"]"#,
        r#"["user.*.*"]"#,
    ] {
        let text = with_streams(&format!(
            "\n[functions.f]\nsubjects = {subjects}\nbuiltin = \"noop\"\nkey = \"subject:3\"\n"
        ));
        assert_eq!(
            function(&text).key.unwrap().source,
            KeySource::SubjectToken(3),
            "{subjects}"
        );
    }
}

#[test]
fn a_subject_token_no_subject_has_names_the_subjects() {
    let text = with_streams(
        r#"
[functions.f]
subjects = ["order.placed"]
builtin = "noop"
key = "subject:3"

[functions.g]
subjects = ["order.x", "inventory.*"]
builtin = "noop"
key = "subject:5"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.key reads subject token 3, but no subject of the function has one: \
             \"order.placed\" has 2 tokens (line 10)",
            "functions.g.key reads subject token 5, but no subject of the function has one: \
             \"order.x\" has 2 tokens, \"inventory.*\" has 2 tokens (line 15)",
        ]
    );
    let text = "[streams.FLAT]\nsubjects = [\"flat\"]\n\n[functions.h]\nsubjects = [\"flat\"]\n\
                builtin = \"noop\"\nkey = \"subject:2\"\n";
    assert_eq!(
        errors(text),
        [
            "functions.h.key reads subject token 2, but no subject of the function has one: \
          \"flat\" has 1 token (line 7)"
        ]
    );
}

#[test]
fn bad_keys() {
    const FORMS: &str = "a JSON pointer into the event's data like \"/account_id\", or \
                         \"subject:N\" for the N-th subject token (from 1)";
    let cases: [(&str, String); 9] = [
        (
            r#""""#,
            "must point into the event's data: \"\" is the whole data, not a key; point at a \
             field, like \"/account_id\""
                .into(),
        ),
        (
            r#""account_id""#,
            format!(
                "must be {FORMS}, got \"account_id\" (a field name is \"/account_id\" as a \
                 pointer)"
            ),
        ),
        (
            r#""/a~2b""#,
            "\"/a~2b\" is not a JSON pointer: ~ must be followed by 0 (for ~) or 1 (for /)".into(),
        ),
        (
            r#""/a~""#,
            "\"/a~\" is not a JSON pointer: ~ must be followed by 0 (for ~) or 1 (for /)".into(),
        ),
        (
            r#""subject:0""#,
            "must be \"subject:N\" with N a subject token's position, from 1, got \"subject:0\""
                .into(),
        ),
        (
            r#""subject:""#,
            "must be \"subject:N\" with N a subject token's position, from 1, got \"subject:\""
                .into(),
        ),
        (
            r#""subject:+2""#,
            "must be \"subject:N\" with N a subject token's position, from 1, got \"subject:+2\""
                .into(),
        ),
        (
            r#""subject:two""#,
            "must be \"subject:N\" with N a subject token's position, from 1, got \
             \"subject:two\""
                .into(),
        ),
        (r#"5"#, format!("must be {FORMS}, got 5")),
    ];
    for (value, message) in cases {
        assert_eq!(
            errors(&f(&format!("key = {value}"))),
            [format!("functions.f.key {message} (line 9)")],
            "key = {value}"
        );
    }
}

#[test]
fn bad_key_settings() {
    assert_eq!(
        errors(&f(
            "key = \"/id\"\non_dead_letter = \"skip\"\nmissing_key = \"drop\"\npartitions = 0"
        )),
        [
            "functions.f.on_dead_letter must be \"continue\" or \"park\", got \"skip\" (line 10)",
            "functions.f.missing_key must be \"dead_letter\" or \"unordered\", got \"drop\" \
             (line 11)",
            "functions.f.partitions must be an integer from 1 to 64, got 0 (line 12)",
        ]
    );
    assert_eq!(
        errors(&f("key = \"/id\"\npartitions = 65")),
        ["functions.f.partitions must be an integer from 1 to 64, got 65 (line 10)"]
    );
    assert_eq!(
        errors(&f("key = \"/id\"\npartitions = \"8\"")),
        ["functions.f.partitions must be an integer from 1 to 64, got \"8\" (line 10)"]
    );
}

#[test]
fn key_settings_need_a_key() {
    assert_eq!(
        errors(&f(
            "on_dead_letter = \"park\"\nmissing_key = \"unordered\"\npartitions = 8"
        )),
        [
            "functions.f.on_dead_letter has no meaning without key: on_dead_letter is for a \
             function whose events are ordered by key (key = \"/account_id\" or \"subject:N\") \
             (line 9)",
            "functions.f.missing_key has no meaning without key: missing_key is for a function \
             whose events are ordered by key (key = \"/account_id\" or \"subject:N\") (line 10)",
            "functions.f.partitions has no meaning without key: partitions is for a function \
             whose events are ordered by key (key = \"/account_id\" or \"subject:N\") (line 11)",
        ]
    );
}

#[test]
fn batches() {
    let f1 = function(&f("batch = { size = 100 }"));
    assert_eq!(
        f1.batch,
        Some(BatchConfig {
            size: 100,
            wait: Duration::from_millis(50),
        })
    );
    assert_eq!((f1.key, f1.rate), (None, None));
    let f2 = function(&f("batch = { size = 1, wait = \"2s\" }"));
    assert_eq!(
        f2.batch,
        Some(BatchConfig {
            size: 1,
            wait: Duration::from_secs(2),
        })
    );
    // As a table of its own, with a key: a batch never holds two events of one key.
    let f3 = function(&with_streams(
        "\n[functions.f]\nsubjects = [\"order.>\"]\nbuiltin = \"noop\"\nkey = \"/id\"\n\n\
         [functions.f.batch]\nsize = 10000\nwait = \"1m\"\n",
    ));
    assert_eq!(
        f3.batch,
        Some(BatchConfig {
            size: 10_000,
            wait: Duration::from_secs(60),
        })
    );
    assert!(f3.key.is_some());
}

#[test]
fn bad_batches() {
    let cases = [
        (
            "batch = 100",
            "functions.f.batch must be a table, got 100 (line 9)",
        ),
        (
            "batch = {}",
            "functions.f.batch.size is required: the most events in one handler call, like \
             size = 100 (line 9)",
        ),
        (
            "batch = { wait = \"10ms\" }",
            "functions.f.batch.size is required: the most events in one handler call, like \
             size = 100 (line 9)",
        ),
        (
            "batch = { size = 0 }",
            "functions.f.batch.size must be an integer from 1 to 10000, got 0 (line 9)",
        ),
        (
            "batch = { size = 10001 }",
            "functions.f.batch.size must be an integer from 1 to 10000, got 10001 (line 9)",
        ),
        (
            "batch = { size = 1.5 }",
            "functions.f.batch.size must be an integer from 1 to 10000, got 1.5 (line 9)",
        ),
        (
            "batch = { size = 10, wait = \"soon\" }",
            "functions.f.batch.wait must be a duration like 250ms, 30s, 5m or 7d, got \"soon\" \
             (line 9)",
        ),
        (
            "batch = { size = 10, wait = \"0s\" }",
            "functions.f.batch.wait must be a non-zero duration like 250ms, 30s, 5m or 7d, \
             got \"0s\" (line 9)",
        ),
        (
            "batch = { size = 10, max_wait = \"1s\" }",
            "functions.f.batch.max_wait is not a known key; expected one of: size, wait \
             (line 9)",
        ),
    ];
    for (keys, error) in cases {
        assert_eq!(errors(&f(keys)), [error], "{keys}");
    }
}

#[test]
fn a_batch_fits_in_max_ack_pending() {
    assert_eq!(
        errors(&f("batch = { size = 100 }\nmax_ack_pending = 50")),
        ["functions.f.max_ack_pending must be at least batch.size (100), got 50 (line 10)"]
    );
    let text = format!(
        "[defaults]\nmax_ack_pending = 50\nconcurrency = 1\n{}",
        f("batch = { size = 100 }")
    );
    assert_eq!(
        errors(&text),
        [
            "functions.f.batch.size must not be more than max_ack_pending (50, from \
             [defaults]), got 100: a batch is filled from the events delivered and not yet \
             acked (line 13)"
        ]
    );
    assert_eq!(
        function(&f("batch = { size = 50 }\nmax_ack_pending = 50"))
            .batch
            .map(|b| b.size),
        Some(50)
    );
}

#[test]
fn rates() {
    for (text, calls, per) in [
        ("200/s", 200, 1),
        ("600/m", 600, 60),
        ("1/s", 1, 1),
        ("4294967295/m", u32::MAX, 60),
    ] {
        let fc = function(&f(&format!("rate = {text:?}")));
        assert_eq!(
            fc.rate,
            Some(Rate {
                calls,
                per: Duration::from_secs(per),
            }),
            "{text}"
        );
        assert_eq!((fc.key, fc.batch), (None, None));
    }
    let fc = function(&f("rate = \"30/m\""));
    assert_eq!(fc.rate.unwrap().per_second(), 0.5);
}

#[test]
fn bad_rates() {
    const FORMS: &str = "\"N/s\" or \"N/m\" (N calls per second or per minute, a whole number \
                         of at least 1), like \"200/s\"";
    for value in [
        "\"0/s\"",
        "\"abc\"",
        "\"5/h\"",
        "\"1.5/s\"",
        "\"-1/s\"",
        "\"+1/s\"",
        "\"200 / s\"",
        "\"/s\"",
        "\"4294967296/s\"",
        "200",
    ] {
        assert_eq!(
            errors(&f(&format!("rate = {value}"))),
            [format!(
                "functions.f.rate must be {FORMS}, got {value} (line 9)"
            )],
            "rate = {value}"
        );
    }
}

#[test]
fn flow_control_is_for_stream_functions() {
    let text = with_streams(
        r#"
[functions.q]
request = "cmd.order.place"
builtin = "noop"
key = "/id"
batch = { size = 10 }
rate = "5/s"
partitions = 2
"#,
    );
    let no_meaning = |key: &str, line: usize| {
        format!(
            "functions.q.{key} has no meaning for a request function (request = ...): {key} is \
             for stream functions (line {line})"
        )
    };
    assert_eq!(
        errors(&text),
        [
            no_meaning("key", 10),
            no_meaning("batch", 11),
            no_meaning("rate", 12),
            no_meaning("partitions", 13),
        ]
    );
}

#[test]
fn batches_are_not_for_aggregates_nor_projections() {
    let text = with_streams(
        r#"
[functions.handle]
subjects = ["order.*.place"]
builtin = "noop"
aggregate = "order"
batch = { size = 10 }

[functions.view]
subjects = ["user.>"]
builtin = "noop"
projection = { bucket = "users", key = "/id" }
batch = { size = 10 }

[aggregates.order]
stream = "ORDERS"
subject = "order.{id}"
id = "order_id"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.handle.batch has no meaning for an aggregate's command handler \
             (aggregate = ...), which handles one command at a time (line 11)",
            "functions.view.batch has no meaning for a projection (projection = ...), which \
             applies one event at a time (line 17)",
        ]
    );
    // Ordering by key and a rate are theirs to use.
    let text = text.replace("batch = { size = 10 }", "key = \"/id\"\nrate = \"10/s\"");
    let config = ok(&text);
    assert!(config.functions["handle"].key.is_some() && config.functions["view"].rate.is_some());
}

#[test]
fn flow_control_is_not_a_default() {
    let text = format!(
        "[defaults]\nkey = \"/id\"\nbatch = {{ size = 10 }}\nrate = \"1/s\"\npartitions = 2\n\
         timeout = \"1s\"\n{}",
        f("")
    );
    let elsewhere = |key: &str, line: usize| {
        format!(
            "defaults.{key} is not a [defaults] key: key, on_dead_letter, missing_key, \
             partitions, batch and rate are set in each function's own table (line {line})"
        )
    };
    assert_eq!(
        errors(&text),
        [
            elsewhere("key", 2),
            elsewhere("batch", 3),
            elsewhere("rate", 4),
            elsewhere("partitions", 5),
        ]
    );
    // Any other stranger is still just unknown.
    let text = format!("[defaults]\njson = true\n{}", f(""));
    assert_eq!(
        errors(&text),
        [
            "defaults.json is not a known key; expected one of: concurrency, timeout, retry, \
          ack_wait, max_ack_pending (line 2)"
        ]
    );
}

#[test]
fn every_flow_error_of_a_function_at_once() {
    assert_eq!(
        errors(&f("key = \"id\"\nbatch = { size = 0 }\nrate = \"0/s\"")).len(),
        3
    );
}

#[test]
fn a_function_may_not_take_a_partition_consumer_name() {
    let text = with_streams(
        r#"
[functions.pay]
subjects = ["order.paid"]
builtin = "noop"
key = "/account_id"

[functions.pay-p3]
subjects = ["order.refunded"]
builtin = "noop"
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "functions.pay-p3 is the name of a durable consumer of function pay on stream ORDERS \
          (its 4 key partitions are consumers pay-p0 to pay-p3); rename the function (line 12)"
        ]
    );
    // Past the partitions, on another stream, or keyed itself: no clash.
    ok(&text.replace("pay-p3", "pay-p4"));
    ok(&text.replace("order.refunded", "user.refunded"));
    ok(&text.replace(
        "subjects = [\"order.refunded\"]",
        "subjects = [\"order.refunded\"]\nkey = \"/id\"",
    ));
}

#[test]
fn a_batch_does_not_go_with_park() {
    assert_eq!(
        errors(&f(
            "key = \"/account_id\"\non_dead_letter = \"park\"\nbatch = { size = 10 }"
        )),
        [
            "functions.f.batch cannot go with on_dead_letter = \"park\" yet: a batch's items \
             are not checked against the parked keys; use one or the other (line 11)"
        ]
    );
    let continuing = function(&f(
        "key = \"/account_id\"\non_dead_letter = \"continue\"\nbatch = { size = 10 }",
    ));
    assert!(continuing.batch.is_some() && continuing.key.is_some());
}
