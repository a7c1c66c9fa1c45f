//! `jetrun check` on the flow-control keys (`key`, `batch`, `rate` and the
//! key's settings): the forms config/README.md shows pass, and each mistake
//! the issue names (a bad pointer, `batch.size` of 0, a rate of 0, `key` on a
//! request function) is reported with its key path and line, exit status 2.
//! The same for scheduled functions (`schedule`, `time_zone`): a 5-field
//! cron, an unknown time zone, `@at`, a time zone on `@every`, `schedule`
//! beside `subjects`.

use jetrun_e2e::{line_of, run_check, write_config};

/// The flow-control example of config/README.md, on a stream holding its
/// subjects.
const GOOD: &str = r#"[streams.EVENTS]
subjects = ["payment.>", "order.>", "partner.>"]

[functions.apply-payment]
subjects = ["payment.>"]
builtin = "noop"
key = "/account_id"
on_dead_letter = "park"
missing_key = "unordered"
partitions = 8

[functions.by-order]
subjects = ["order.*.placed"]
builtin = "noop"
key = "subject:2"

[functions.load-warehouse]
subjects = ["order.>"]
http = { url = "http://127.0.0.1:8080/batch" }
batch = { size = 100, wait = "50ms" }

[functions.notify-partner]
subjects = ["partner.>"]
http = { url = "http://127.0.0.1:8080/hook" }
rate = "200/s"
"#;

/// One mistake per function.
const BAD: &str = r#"[streams.EVENTS]
subjects = ["payment.>", "order.>", "partner.>"]

[functions.pointer]
subjects = ["payment.>"]
builtin = "noop"
key = "account_id"

[functions.token]
subjects = ["order.placed"]
builtin = "noop"
key = "subject:3"

[functions.empty-batch]
subjects = ["order.shipped"]
builtin = "noop"
batch = { size = 0 }

[functions.no-rate]
subjects = ["partner.>"]
builtin = "noop"
rate = "0/s"

[functions.answer]
request = "cmd.balance"
builtin = "noop"
key = "/account_id"

[functions.unkeyed]
subjects = ["order.paid"]
builtin = "noop"
partitions = 8
"#;

#[test]
fn check_accepts_the_flow_control_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), GOOD);
    let (code, stderr) = run_check(&config);
    assert_eq!(code, 0, "a good config exits 0; stderr:\n{stderr}");
}

#[test]
fn check_reports_each_flow_control_mistake_with_key_path_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), BAD);

    let (code, stderr) = run_check(&config);

    assert_eq!(code, 2, "a bad config exits 2; stderr:\n{stderr}");
    let expected = [
        (
            "key = \"account_id\"",
            "functions.pointer.key must be a JSON pointer into the event's data like \
             \"/account_id\", or \"subject:N\" for the N-th subject token (from 1), got \
             \"account_id\" (a field name is \"/account_id\" as a pointer)",
        ),
        (
            "key = \"subject:3\"",
            "functions.token.key reads subject token 3, but no subject of the function has one: \
             \"order.placed\" has 2 tokens",
        ),
        (
            "batch = { size = 0 }",
            "functions.empty-batch.batch.size must be an integer from 1 to 10000, got 0",
        ),
        (
            "rate = \"0/s\"",
            "functions.no-rate.rate must be \"N/s\" or \"N/m\" (N calls per second or per \
             minute, a whole number of at least 1), like \"200/s\", got \"0/s\"",
        ),
        (
            "key = \"/account_id\"",
            "functions.answer.key has no meaning for a request function (request = ...): key \
             is for stream functions",
        ),
        (
            "partitions = 8",
            "functions.unkeyed.partitions has no meaning without key: partitions is for a \
             function whose events are ordered by key (key = \"/account_id\" or \"subject:N\")",
        ),
    ];
    for (marker, message) in expected {
        let want = format!("{message} (line {})", line_of(BAD, marker));
        assert!(
            stderr.contains(&want),
            "stderr lacks {want:?}; stderr:\n{stderr}"
        );
    }
}

/// The scheduled functions of config/README.md: no stream to declare.
const SCHEDULED: &str = r#"[functions.nightly-report]
schedule = "0 0 2 * * *"
time_zone = "Europe/Berlin"
builtin = "noop"

[functions.heartbeat]
schedule = "@every 30s"
builtin = "noop"

[functions.weekly-digest]
schedule = "@weekly"
builtin = "noop"
"#;

/// One scheduling mistake per function.
const BAD_SCHEDULES: &str = r#"[streams.EVENTS]
subjects = ["order.>"]

[functions.five-fields]
schedule = "0 2 * * *"
builtin = "noop"

[functions.mars]
schedule = "0 0 2 * * *"
time_zone = "Mars/Olympus"
builtin = "noop"

[functions.once]
schedule = "@at 2026-12-24T18:00:00Z"
builtin = "noop"

[functions.every-zoned]
schedule = "@every 1m"
time_zone = "Europe/Berlin"
builtin = "noop"

[functions.both]
schedule = "@hourly"
subjects = ["order.placed"]
builtin = "noop"
"#;

#[test]
fn check_accepts_scheduled_functions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), SCHEDULED);
    let (code, stderr) = run_check(&config);
    assert_eq!(code, 0, "a good config exits 0; stderr:\n{stderr}");
}

#[test]
fn check_reports_each_schedule_mistake_with_key_path_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), BAD_SCHEDULES);

    let (code, stderr) = run_check(&config);

    assert_eq!(code, 2, "a bad config exits 2; stderr:\n{stderr}");
    let expected = [
        (
            "schedule = \"0 2 * * *\"",
            "functions.five-fields.schedule \"0 2 * * *\" has 5 fields, but a schedule's cron has \
             6, seconds first (second minute hour day month weekday): add the seconds, like \
             \"0 0 2 * * *\"",
        ),
        (
            "time_zone = \"Mars/Olympus\"",
            "functions.mars.time_zone \"Mars/Olympus\" is not an IANA time zone name, like \
             \"Europe/Berlin\" or \"America/New_York\"",
        ),
        (
            "schedule = \"@at",
            "functions.once.schedule \"@at 2026-12-24T18:00:00Z\" is a one-off time (@at), not a \
             schedule a function runs on",
        ),
        (
            "time_zone = \"Europe/Berlin\"",
            "functions.every-zoned.time_zone \"Europe/Berlin\" has no meaning for \"@every 1m\": \
             @every counts from the last tick, whatever the clock says; drop time_zone",
        ),
        (
            "subjects = [\"order.placed\"]",
            "functions.both.subjects has no meaning for a scheduled function (schedule = ...): \
             its events are its ticks, on jetrun.schedule.both in the schedules stream; drop \
             subjects",
        ),
    ];
    for (marker, message) in expected {
        let line = line_of(BAD_SCHEDULES, marker);
        let found = stderr
            .lines()
            .any(|l| l.trim_start().starts_with(message) && l.ends_with(&format!("(line {line})")));
        assert!(
            found,
            "stderr lacks {message:?} on line {line}; stderr:\n{stderr}"
        );
    }
}
