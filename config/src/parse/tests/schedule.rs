//! Scheduled functions as users write them: `schedule` and `time_zone` in
//! `[functions.NAME]` and `[schedules] stream`, each accepted form read into
//! the model (a stream function on the schedules stream) and each refused
//! one with its exact error.

use super::*;
use crate::{ScheduleConfig, Trigger};

/// `[functions.tick]` on line 7, its keys from line 8.
fn tick(keys: &str) -> String {
    with_streams(&format!("\n[functions.tick]\n{keys}\nbuiltin = \"noop\"\n"))
}

fn function(text: &str) -> crate::FunctionConfig {
    ok(text).functions.remove("tick").expect("function tick")
}

#[test]
fn a_scheduled_function_is_bound_to_its_tick_subject() {
    let config = ok(&tick(
        "schedule = \"0 0 2 * * *\"\ntime_zone = \"Europe/Berlin\"",
    ));
    assert_eq!(config.schedules_stream, "JETRUN_SCHEDULES");
    let fc = &config.functions["tick"];
    assert_eq!(
        fc.schedule,
        Some(ScheduleConfig {
            expression: "0 0 2 * * *".into(),
            time_zone: Some("Europe/Berlin".into()),
        })
    );
    assert_eq!(
        fc.trigger,
        Trigger::Stream(StreamBinding {
            consumer: "tick".into(),
            subjects: vec!["jetrun.schedule.tick".into()],
            stream: "JETRUN_SCHEDULES".into(),
            managed: true,
            dead_letter: "dlq.tick".into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
        })
    );
    // A function without a schedule has none.
    assert_eq!(
        function(&tick("subjects = [\"order.placed\"]")).schedule,
        None
    );
}

#[test]
fn every_accepted_form() {
    for expression in [
        "*/2 * * * * *",
        "0 30 9 * * mon-fri",
        "0 0 0 1,15 jan-jun,dec ?",
        "0  0   12 */2 * *",
        "@every 1s",
        "@every 1m30s",
        "@every 1500s",
        "@every 2h",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ] {
        let fc = function(&tick(&format!("schedule = {expression:?}")));
        let schedule = fc.schedule.expect(expression);
        assert_eq!(schedule.expression, expression);
        assert_eq!(schedule.time_zone, None);
    }
    for zone in ["Asia/Kolkata", "America/New_York", "UTC"] {
        let fc = function(&tick(&format!(
            "schedule = \"@daily\"\ntime_zone = {zone:?}"
        )));
        assert_eq!(fc.schedule.unwrap().time_zone.as_deref(), Some(zone));
    }
}

#[test]
fn the_schedules_stream_may_be_named() {
    let text = format!(
        "[schedules]\nstream = \"TEAM_A_SCHEDULES\"\n{}",
        tick("schedule = \"@hourly\"")
    );
    let config = ok(&text);
    assert_eq!(config.schedules_stream, "TEAM_A_SCHEDULES");
    assert_eq!(
        config.functions["tick"].binding().unwrap().stream,
        "TEAM_A_SCHEDULES"
    );
}

#[test]
fn a_scheduled_function_may_set_what_a_stream_function_sets() {
    let fc = function(&tick(
        "schedule = \"@every 10s\"\ndead_letter = \"dlq.nightly\"\nconcurrency = 1\n\
         max_ack_pending = 1\nack_wait = \"5m\"\nrate = \"1/s\"",
    ));
    let binding = fc.binding().unwrap();
    assert_eq!(binding.dead_letter, "dlq.nightly");
    assert_eq!(binding.ack_wait, Duration::from_secs(300));
    assert_eq!((fc.concurrency, binding.max_ack_pending), (1, 1));
}

#[test]
fn refused_expressions() {
    let cases = [
        (
            "0 2 * * *",
            "functions.tick.schedule \"0 2 * * *\" has 5 fields, but a schedule's cron has 6, \
             seconds first (second minute hour day month weekday): add the seconds, like \
             \"0 0 2 * * *\" (line 8)",
        ),
        (
            "0 0 2 * * * 2027",
            "functions.tick.schedule \"0 0 2 * * * 2027\" has 7 fields, but a schedule's cron \
             has 6: second minute hour day month weekday, like \"0 0 2 * * *\" (line 8)",
        ),
        (
            "0 0 24 * * *",
            "functions.tick.schedule \"0 0 24 * * *\": hour field \"24\": 24 is above the \
             greatest value, 23 (line 8)",
        ),
        (
            "0 0 0 * * 7",
            "functions.tick.schedule \"0 0 0 * * 7\": day of week field \"7\": 7 is above the \
             greatest value, 6 (line 8)",
        ),
        (
            "0 0 0 L * *",
            "functions.tick.schedule \"0 0 0 L * *\": day of month field \"L\": \"L\" is not a \
             number (line 8)",
        ),
        (
            "0 0 0 31 2 *",
            "functions.tick.schedule \"0 0 0 31 2 *\" never fires: no date has that day, month \
             and weekday (line 8)",
        ),
        (
            "@every 500ms",
            "functions.tick.schedule \"@every 500ms\" is shorter than 1s: nats-server fires a \
             schedule at most once a second (line 8)",
        ),
        (
            "@every 1d",
            "functions.tick.schedule \"@every 1d\" needs a duration like 30s, 1m30s, 1.5h or 2h \
             (units h, m, s, ms, us, ns; no days) (line 8)",
        ),
        (
            "@every -5s",
            "functions.tick.schedule \"@every -5s\" needs a duration like 30s, 1m30s, 1.5h or 2h \
             (units h, m, s, ms, us, ns; no days) (line 8)",
        ),
        (
            "@at 2026-12-24T18:00:00Z",
            "functions.tick.schedule \"@at 2026-12-24T18:00:00Z\" is a one-off time (@at), not \
             a schedule a function runs on; use a 6-field cron (second minute hour day month \
             weekday) like \"0 0 2 * * *\", \"@every <duration>\" like \"@every 30s\", or one \
             of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly (line 8)",
        ),
        (
            "@reboot",
            "functions.tick.schedule \"@reboot\" is not a schedule: use a 6-field cron (second \
             minute hour day month weekday) like \"0 0 2 * * *\", \"@every <duration>\" like \
             \"@every 30s\", or one of @yearly, @annually, @monthly, @weekly, @daily, \
             @midnight, @hourly (line 8)",
        ),
    ];
    for (expression, expected) in cases {
        assert_eq!(
            errors(&tick(&format!("schedule = {expression:?}"))),
            [expected],
            "{expression}"
        );
    }
    assert_eq!(
        errors(&tick("schedule = 5")),
        [
            "functions.tick.schedule must be a string: a 6-field cron (second minute hour day \
          month weekday) like \"0 0 2 * * *\", \"@every <duration>\" like \"@every 30s\", or \
          one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, got 5 \
          (line 8)"
        ]
    );
}

#[test]
fn refused_time_zones() {
    assert_eq!(
        errors(&tick("schedule = \"@daily\"\ntime_zone = \"Mars/Olympus\"")),
        [
            "functions.tick.time_zone \"Mars/Olympus\" is not an IANA time zone name, like \
          \"Europe/Berlin\" or \"America/New_York\" (line 9)"
        ]
    );
    // Named even when the expression is wrong too.
    assert_eq!(
        errors(&tick("schedule = \"0 2 * * *\"\ntime_zone = \"Berlin\"")),
        [
            "functions.tick.time_zone \"Berlin\" is not an IANA time zone name, like \
          \"Europe/Berlin\" or \"America/New_York\" (line 9)"
        ]
    );
    assert_eq!(
        errors(&tick(
            "schedule = \"@every 1m\"\ntime_zone = \"Europe/Berlin\""
        )),
        [
            "functions.tick.time_zone \"Europe/Berlin\" has no meaning for \"@every 1m\": @every \
          counts from the last tick, whatever the clock says; drop time_zone (line 9)"
        ]
    );
    assert_eq!(
        errors(&tick(
            "subjects = [\"order.placed\"]\ntime_zone = \"Europe/Berlin\""
        )),
        [
            "functions.tick.time_zone has no meaning without schedule: it is the time zone a \
          schedule's cron is read in (line 9)"
        ]
    );
}

#[test]
fn a_schedule_goes_alone() {
    for (key, value) in [
        ("subjects", "[\"order.placed\"]"),
        ("stream", "\"ORDERS\""),
        ("request", "\"cmd.tick\""),
    ] {
        assert_eq!(
            errors(&tick(&format!("schedule = \"@hourly\"\n{key} = {value}"))),
            [format!(
                "functions.tick.{key} has no meaning for a scheduled function (schedule = ...): \
                 its events are its ticks, on jetrun.schedule.tick in the schedules stream; \
                 drop {key} (line 9)"
            )],
            "{key}"
        );
    }
}

#[test]
fn jetrun_keeps_the_schedule_subjects() {
    let streams = "[streams.MINE]\nsubjects = [\"jetrun.schedule.x\"]\n\
                   [functions.f]\nsubjects = [\"order.placed\"]\nbuiltin = \"noop\"\n";
    assert_eq!(
        errors(&with_streams(&format!("\n{streams}"))),
        [
            "streams.MINE.subjects \"jetrun.schedule.x\" overlaps jetrun.schedule.>, which jetrun \
          keeps for scheduled functions' ticks in stream JETRUN_SCHEDULES; JetStream refuses \
          streams whose subjects overlap, so pick subjects outside it (line 8)"
        ]
    );
    let subjects = tick("subjects = [\"jetrun.>\"]\nstream = \"OTHER\"");
    assert_eq!(
        errors(&subjects),
        [
            "functions.tick.subjects \"jetrun.>\" overlaps jetrun.schedule.>, which jetrun keeps \
          for scheduled functions' ticks; to run a function on a schedule, set schedule = \
          \"...\" instead of subjects (line 8)"
        ]
    );
    let emits = tick("subjects = [\"order.placed\"]\nemits = [\"jetrun.schedules.jetrun.x\"]");
    assert_eq!(
        errors(&emits),
        ["functions.tick.emits \"jetrun.schedules.jetrun.x\" overlaps jetrun.schedules.>, which \
          jetrun keeps for scheduled functions' schedules; a function emits no events there \
          (line 9)"]
    );
    let delayed = tick("subjects = [\"order.placed\"]\nemits = [\"jetrun.delayed.due\"]");
    assert_eq!(
        errors(&delayed),
        [
            "functions.tick.emits \"jetrun.delayed.due\" overlaps jetrun.delayed.>, which jetrun \
          keeps for delayed events; a function emits no events there (line 9)"
        ]
    );
    // A wildcard names no space outright: a stream or an emit may hold it
    // while no function is scheduled.
    let wide = "[dead_letters]\nprefix = \"team.dlq\"\n[streams.ALL]\n\
                subjects = [\"*.schedule.>\", \"team.b\"]\n[functions.f]\n\
                subjects = [\"team.b\"]\nemits = [\">\"]\nbuiltin = \"noop\"\n";
    ok(wide);
    // With a scheduled function, jetrun's stream would overlap it.
    let scheduled = format!("{wide}[functions.tick]\nschedule = \"@hourly\"\nbuiltin = \"noop\"\n");
    assert_eq!(
        errors(&scheduled),
        [
            "streams.ALL.subjects \"*.schedule.>\" overlaps jetrun.schedule.>, which jetrun keeps \
          for scheduled functions' ticks in stream JETRUN_SCHEDULES; JetStream refuses streams \
          whose subjects overlap, so pick subjects outside it (line 4)"
        ]
    );
}

#[test]
fn the_schedules_stream_is_jetruns() {
    assert_eq!(
        errors(&format!(
            "[streams.JETRUN_SCHEDULES]\nsubjects = [\"tick.>\"]\n{}",
            tick("schedule = \"@hourly\"")
        )),
        [
            "streams.JETRUN_SCHEDULES is reserved: jetrun creates and manages the \
          JETRUN_SCHEDULES stream for scheduled functions (jetrun.schedule.> and \
          jetrun.schedules.>) and delayed events (jetrun.delayed.>); pick another name (line 1)"
        ]
    );
    assert_eq!(
        errors(&format!(
            "[schedules]\nstream = \"DLQ\"\n{}",
            tick("schedule = \"@hourly\"")
        )),
        ["schedules.stream \"DLQ\" is the dead-letter stream ([dead_letters] stream); scheduled \
          functions' ticks need a stream of their own (line 2)"]
    );
    assert_eq!(
        errors(&format!(
            "[schedules]\nstream = \"A.B\"\nreplicas = 3\n{}",
            tick("schedule = \"@hourly\"")
        )),
        [
            "schedules.stream \"A.B\" is not a valid stream name: it must not be empty nor \
             contain whitespace, ., *, >, / or \\ (line 2)",
            "schedules.replicas is not a known key; expected one of: stream (line 3)",
        ]
    );
}

#[test]
fn no_function_takes_the_name_of_the_relay_of_delayed_events() {
    assert_eq!(
        errors(
            "[streams.EV]\nsubjects = [\"ev.>\"]\n[functions.jetrun-delayed]\nsubjects = \
             [\"ev.x\"]\nbuiltin = \"noop\"\n"
        ),
        [
            "functions.jetrun-delayed jetrun-delayed is the name of jetrun's relay of delayed \
          events (its durable consumer and metrics); rename the function (line 3)"
        ]
    );
}
