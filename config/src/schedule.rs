//! A scheduled function's schedule as nats-server reads it (ADR-51 message
//! schedules): parsing `schedule` and `time_zone` with the server's own
//! grammar, so `jetrun check` refuses what the server would drop, and the
//! time arithmetic jetrun needs around the server's ticks: the next fire
//! time, the occurrence a tick was fired for, and the server version a
//! schedule needs. Pure: no clock is read here.
//!
//! The grammar is nats-server's (`server/cron.go`, after robfig/cron):
//! exactly six fields (second, minute, hour, day of month, month, day of
//! week), each a comma-separated list of `*`, `?`, `N`, `N-M`, with an
//! optional `/STEP`; months `jan`..`dec` and weekdays `sun`..`sat` by name,
//! weekdays 0 (Sunday) to 6. Day of month and day of week both restricted
//! (neither starting with `*` or `?`): a day matching either fires, as in
//! crontab. Besides cron: `@every <Go duration>` of at least one second, and
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`,
//! `@hourly`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// The named schedules and the cron expression nats-server reads each as.
const NAMED: [(&str, &str); 7] = [
    ("@yearly", "0 0 0 1 1 *"),
    ("@annually", "0 0 0 1 1 *"),
    ("@monthly", "0 0 0 1 * *"),
    ("@weekly", "0 0 0 * * 0"),
    ("@daily", "0 0 0 * * *"),
    ("@midnight", "0 0 0 * * *"),
    ("@hourly", "0 0 * * * *"),
];

/// The forms a schedule takes, as the end of an error message.
pub const SCHEDULE_FORMS: &str = "a 6-field cron (second minute hour day month weekday) like \
     \"0 0 2 * * *\", \"@every <duration>\" like \"@every 30s\", or one of @yearly, @annually, \
     @monthly, @weekly, @daily, @midnight, @hourly";

/// The oldest nats-server that runs cron, `@every` and named schedules.
const CRON_SERVER: (u32, u32) = (2, 14);

/// A valid schedule: when a scheduled function's ticks fire.
#[derive(Debug, Clone)]
pub struct Schedule {
    when: When,
    time_zone: Tz,
}

#[derive(Debug, Clone)]
enum When {
    /// A cron expression (a named one already expanded).
    Cron(Box<Cron>),
    /// `@every D`: D after the last tick.
    Every(Duration),
}

impl Schedule {
    /// Reads `expression` (what `schedule =` holds, and what nats-server
    /// gets as `Nats-Schedule`) in `time_zone` (an IANA name; `None`: UTC).
    /// The error is the end of a sentence about the expression, or about the
    /// time zone when it starts with "time zone".
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let when = if let Some(duration) = expression.strip_prefix("@every ") {
            When::Every(every(duration)?)
        } else if expression.starts_with("@at ") || expression == "@at" {
            return Err(format!(
                "{expression:?} is a one-off time (@at), not a schedule a function runs on; \
                 use {SCHEDULE_FORMS}"
            ));
        } else if expression.starts_with('@') {
            let cron = NAMED
                .iter()
                .find(|(name, _)| *name == expression)
                .map(|(_, cron)| *cron)
                .ok_or_else(|| format!("{expression:?} is not a schedule: use {SCHEDULE_FORMS}"))?;
            When::Cron(Box::new(cron_of(cron)?))
        } else {
            When::Cron(Box::new(cron_of(expression)?))
        };
        let time_zone = match time_zone {
            None => Tz::UTC,
            Some(name) => {
                if matches!(when, When::Every(_)) {
                    return Err(format!(
                        "time zone {name:?} has no meaning for {expression:?}: @every counts from \
                         the last tick, whatever the clock says; drop time_zone"
                    ));
                }
                time_zone_named(name).map_err(|why| format!("time zone {why}"))?
            }
        };
        let schedule = Schedule { when, time_zone };
        // nats-server gives up on a cron with no fire time within five
        // years ("0 0 0 31 2 *"): refuse it here rather than never run.
        let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).single();
        if let (When::Cron(_), Some(epoch)) = (&schedule.when, epoch) {
            if schedule.next_after(epoch).is_none() {
                return Err(format!(
                    "{expression:?} never fires: no date has that day, month and weekday"
                ));
            }
        }
        Ok(schedule)
    }

    /// The first fire time after `after`, in the schedule's time zone.
    ///
    /// For `@every D` the server counts from when the schedule was stored
    /// (then from each tick), which the config alone does not know: this is
    /// `after + D`, the latest the next tick can come; see
    /// [`Schedule::next_after_stored`].
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        let after = after.with_timezone(&self.time_zone);
        match &self.when {
            When::Cron(cron) => cron.find_next_occurrence(&after, false).ok(),
            When::Every(every) => {
                after.checked_add_signed(chrono::Duration::from_std(*every).ok()?)
            }
        }
    }

    /// The first fire time after `after` of this schedule stored (its
    /// holder message published) at `stored`: for `@every D` the server
    /// fires at the stored time, rounded to the second, plus each multiple
    /// of D; a cron does not depend on when it was stored.
    pub fn next_after_stored(
        &self,
        stored: DateTime<Utc>,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Tz>> {
        let When::Every(every) = &self.when else {
            return self.next_after(after);
        };
        let every = i128::try_from(every.as_nanos()).ok()?;
        let start = i128::from(round_to_second(stored).timestamp_nanos_opt()?);
        let after = i128::from(after.timestamp_nanos_opt()?);
        let periods = if after < start {
            1
        } else {
            (after - start) / every + 1
        };
        let next = i64::try_from(start + periods.max(1) * every).ok()?;
        Some(DateTime::from_timestamp_nanos(next).with_timezone(&self.time_zone))
    }

    /// The occurrence a tick was fired for, given the tick's
    /// `Nats-Schedule-Next` (the fire time after it): the cron's previous
    /// match before `next`, or `next - D` for `@every D`.
    pub fn scheduled_before(&self, next: DateTime<Utc>) -> Option<DateTime<Tz>> {
        let next = next.with_timezone(&self.time_zone);
        match &self.when {
            When::Cron(cron) => {
                // Cron times are whole seconds: past one, that second is
                // the occurrence before.
                let whole = next.with_nanosecond(0)?;
                cron.find_previous_occurrence(&whole, whole != next).ok()
            }
            When::Every(every) => next.checked_sub_signed(chrono::Duration::from_std(*every).ok()?),
        }
    }

    /// The oldest nats-server (major, minor) that runs this schedule: 2.14
    /// for cron, `@every` and named schedules.
    pub fn needs_server(&self) -> (u32, u32) {
        CRON_SERVER
    }

    /// The time zone fire times are given in (UTC unless `time_zone` says).
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// `Some(D)` for `@every D`.
    pub fn every(&self) -> Option<Duration> {
        match self.when {
            When::Every(every) => Some(every),
            When::Cron(_) => None,
        }
    }
}

/// The IANA time zone `name` (as `time_zone =` holds it); the error is the
/// end of a sentence about it.
pub fn time_zone_named(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!(
            "{name:?} is not an IANA time zone name, like \"Europe/Berlin\" or \
             \"America/New_York\""
        )
    })
}

/// What Go's `time.Round(time.Second)` makes of `at`: halves round up.
fn round_to_second(at: DateTime<Utc>) -> DateTime<Utc> {
    let whole = at.timestamp();
    let whole = if at.timestamp_subsec_nanos() >= 500_000_000 {
        whole + 1
    } else {
        whole
    };
    DateTime::from_timestamp(whole, 0).unwrap_or(at)
}

/// `@every`'s duration: Go's duration syntax (what nats-server parses),
/// a whole number of seconds, at least one (the server rounds each fire
/// time to the second and fires no more often).
fn every(text: &str) -> Result<Duration, String> {
    let duration = go_duration(text).ok_or_else(|| {
        format!(
            "\"@every {text}\" needs a duration like 30s, 1m30s, 1.5h or 2h (units h, m, s, ms, \
             us, ns; no days)"
        )
    })?;
    if duration < Duration::from_secs(1) {
        return Err(format!(
            "\"@every {text}\" is shorter than 1s: nats-server fires a schedule at most once a \
             second"
        ));
    }
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "\"@every {text}\" is not a whole number of seconds: nats-server rounds each fire \
             time to the second, so it would not fire every {text}"
        ));
    }
    Ok(duration)
}

/// Go's `time.ParseDuration`, for durations of at least zero: a sequence
/// of decimal numbers, each with an optional fraction and a unit (`ns`,
/// `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`), like `1h30m` or `1.5s`; `None`
/// when Go refuses it or it is negative.
fn go_duration(text: &str) -> Option<Duration> {
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(len)
            }
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let (_, scale) = UNITS.iter().find(|(name, _)| *name == unit)?;
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut value = whole.checked_mul(*scale)?;
        let mut place = *scale;
        for digit in fraction.bytes() {
            place /= 10;
            value = value.checked_add(u128::from(digit - b'0') * place)?;
        }
        total = total.checked_add(value)?;
        // Go refuses what does not fit an int64 of nanoseconds.
        if total > i64::MAX as u128 {
            return None;
        }
        rest = after;
    }
    u64::try_from(total).ok().map(Duration::from_nanos)
}

/// The bounds of one cron field and its names.
struct Bounds {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Bounds; 6] = [
    Bounds {
        name: "second",
        min: 0,
        max: 59,
        names: &[],
    },
    Bounds {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Bounds {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Bounds {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Bounds {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    Bounds {
        name: "day of week",
        min: 0,
        max: 6,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

/// One field as nats-server reads it: the values it matches, and whether a
/// range of it started with `*` or `?` (with no step above 1), which makes
/// a day field "unrestricted" for the day-of-month/day-of-week rule.
struct FieldValues {
    values: Vec<u32>,
    star: bool,
}

/// A 6-field cron expression, read with nats-server's grammar and handed to
/// croner in a form it reads the same way (each field as its list of
/// values, an unrestricted day field as `*`).
fn cron_of(expression: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    match fields.len() {
        6 => {}
        5 => {
            return Err(format!(
                "{expression:?} has 5 fields, but a schedule's cron has 6, seconds first \
                 (second minute hour day month weekday): add the seconds, like \"0 {}\"",
                fields.join(" ")
            ))
        }
        n => {
            return Err(format!(
                "{expression:?} has {n} fields, but a schedule's cron has 6: second minute hour \
                 day month weekday, like \"0 0 2 * * *\""
            ))
        }
    }
    let mut canonical = Vec::with_capacity(6);
    for (field, bounds) in fields.iter().zip(&FIELDS) {
        let read = field_values(field, bounds)
            .map_err(|why| format!("{expression:?}: {} field {field:?}: {why}", bounds.name))?;
        let is_day = matches!(bounds.name, "day of month" | "day of week");
        canonical.push(if read.star && is_day {
            "*".to_owned()
        } else {
            let values: Vec<String> = read.values.iter().map(u32::to_string).collect();
            values.join(",")
        });
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(&canonical.join(" "))
        .map_err(|e| format!("{expression:?} is not a valid cron: {e}"))
}

/// nats-server's `getField`: a comma-separated list of ranges.
fn field_values(field: &str, bounds: &Bounds) -> Result<FieldValues, String> {
    let mut bits: u64 = 0;
    let mut star = false;
    for range in field.split(',').filter(|r| !r.is_empty()) {
        let (range_bits, range_star) = range_values(range, bounds)?;
        bits |= range_bits;
        star |= range_star;
    }
    let values: Vec<u32> = (bounds.min..=bounds.max)
        .filter(|v| bits & (1 << v) != 0)
        .collect();
    if values.is_empty() {
        return Err("matches no value".to_owned());
    }
    Ok(FieldValues { values, star })
}

/// nats-server's `getRange`: `*`, `?`, `N` or `N-M`, then an optional
/// `/STEP` (`N/STEP` runs from N to the field's maximum).
fn range_values(range: &str, bounds: &Bounds) -> Result<(u64, bool), String> {
    let range_and_step: Vec<&str> = range.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut star) = if matches!(low_and_high[0], "*" | "?") {
        (bounds.min, bounds.max, true)
    } else {
        let start = number_or_name(low_and_high[0], bounds)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => number_or_name(low_and_high[1], bounds)?,
            _ => return Err(format!("{range:?} has more than one -")),
        };
        (start, end, false)
    };
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = number(range_and_step[1])?;
            if single {
                end = bounds.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
        _ => return Err(format!("{range:?} has more than one /")),
    };
    if start < bounds.min {
        return Err(format!("{start} is below the least value, {}", bounds.min));
    }
    if end > bounds.max {
        return Err(format!("{end} is above the greatest value, {}", bounds.max));
    }
    if start > end {
        return Err(format!("{range:?} starts after it ends"));
    }
    if step == 0 {
        return Err(format!("{range:?} has a step of 0"));
    }
    let mut bits = 0u64;
    let mut value = start;
    while value <= end {
        bits |= 1 << value;
        value += step;
    }
    Ok((bits, star))
}

fn number_or_name(text: &str, bounds: &Bounds) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = bounds.names.iter().position(|name| *name == lower) {
        let first = if bounds.names.len() == 12 { 1 } else { 0 };
        return Ok(first + i as u32);
    }
    number(text)
}

/// A whole number as Go's `strconv.Atoi` reads it (an optional `+`).
fn number(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a number"));
    }
    digits
        .parse::<u32>()
        .ok()
        .filter(|n| *n < 64)
        .ok_or_else(|| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("an RFC 3339 time")
            .with_timezone(&Utc)
    }

    fn parsed(expression: &str, time_zone: Option<&str>) -> Schedule {
        Schedule::parse(expression, time_zone).expect(expression)
    }

    fn refused(expression: &str, time_zone: Option<&str>) -> String {
        Schedule::parse(expression, time_zone).expect_err(expression)
    }

    fn next(schedule: &Schedule, after: &str) -> String {
        schedule
            .next_after(utc(after))
            .expect("a next fire time")
            .to_rfc3339()
    }

    fn before(schedule: &Schedule, next: &str) -> String {
        schedule
            .scheduled_before(utc(next))
            .expect("an occurrence before")
            .to_rfc3339()
    }

    #[test]
    fn cron_next_and_previous() {
        let nightly = parsed("0 0 2 * * *", None);
        assert_eq!(
            next(&nightly, "2026-03-10T01:00:00Z"),
            "2026-03-10T02:00:00+00:00"
        );
        assert_eq!(
            next(&nightly, "2026-03-10T02:00:00Z"),
            "2026-03-11T02:00:00+00:00"
        );
        assert_eq!(
            before(&nightly, "2026-03-11T02:00:00Z"),
            "2026-03-10T02:00:00+00:00"
        );

        let even = parsed("*/2 * * * * *", None);
        assert_eq!(
            next(&even, "2026-03-10T01:00:01Z"),
            "2026-03-10T01:00:02+00:00"
        );
        assert_eq!(
            next(&even, "2026-03-10T01:00:02Z"),
            "2026-03-10T01:00:04+00:00"
        );
        assert_eq!(
            before(&even, "2026-03-10T01:00:04Z"),
            "2026-03-10T01:00:02+00:00"
        );
        // A Nats-Schedule-Next with a fraction still finds the tick before it.
        assert_eq!(
            before(&even, "2026-03-10T01:00:04.000000001Z"),
            "2026-03-10T01:00:04+00:00"
        );

        let weekdays = parsed("30 15 9 * Jan-Mar mon-fri", None);
        // 2026-03-14 is a Saturday: the next is Monday the 16th.
        assert_eq!(
            next(&weekdays, "2026-03-13T10:00:00Z"),
            "2026-03-16T09:15:30+00:00"
        );
        assert_eq!(
            before(&weekdays, "2026-03-16T09:15:30Z"),
            "2026-03-13T09:15:30+00:00"
        );
        assert_eq!(
            next(&weekdays, "2026-03-31T10:00:00Z"),
            "2027-01-01T09:15:30+00:00"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_as_crontab() {
        // Both restricted: the 13th or a Friday.
        let either = parsed("0 0 0 13 * 5", None);
        // 2026-03-06 is a Friday, the 13th is one too, then Friday the 20th.
        assert_eq!(
            next(&either, "2026-03-01T00:00:00Z"),
            "2026-03-06T00:00:00+00:00"
        );
        assert_eq!(
            next(&either, "2026-04-04T00:00:00Z"),
            "2026-04-10T00:00:00+00:00"
        );
        assert_eq!(
            next(&either, "2026-04-10T00:00:00Z"),
            "2026-04-13T00:00:00+00:00"
        );
        // One of them *: only the other counts.
        let fridays = parsed("0 0 0 * * fri", None);
        assert_eq!(
            next(&fridays, "2026-04-10T00:00:00Z"),
            "2026-04-17T00:00:00+00:00"
        );
        // ? as *, and a step above 1 restricts (nats-server's rule).
        let odd_days_or_mondays = parsed("0 0 0 */2 * 1", None);
        // After Friday the 3rd: Sunday the 5th (odd), then Monday the 6th.
        assert_eq!(
            next(&odd_days_or_mondays, "2026-04-03T00:00:00Z"),
            "2026-04-05T00:00:00+00:00"
        );
        assert_eq!(
            next(&odd_days_or_mondays, "2026-04-05T00:00:00Z"),
            "2026-04-06T00:00:00+00:00"
        );
        let question = parsed("0 0 0 ? * 1", None);
        assert_eq!(
            next(&question, "2026-04-01T00:00:00Z"),
            "2026-04-06T00:00:00+00:00"
        );
    }

    #[test]
    fn every() {
        let every = parsed("@every 1m30s", None);
        assert_eq!(every.every(), Some(Duration::from_secs(90)));
        assert_eq!(
            next(&every, "2026-03-10T01:00:00Z"),
            "2026-03-10T01:01:30+00:00"
        );
        assert_eq!(
            before(&every, "2026-03-10T01:01:30Z"),
            "2026-03-10T01:00:00+00:00"
        );
        // Stored at 01:00:00.6 (rounded to :01), every 90 s from there.
        let stored = utc("2026-03-10T01:00:00.6Z");
        let at = |after: &str| {
            every
                .next_after_stored(stored, utc(after))
                .expect("a fire time")
                .to_rfc3339()
        };
        assert_eq!(at("2026-03-10T00:59:00Z"), "2026-03-10T01:01:31+00:00");
        assert_eq!(at("2026-03-10T01:01:31Z"), "2026-03-10T01:03:01+00:00");
        assert_eq!(at("2026-03-10T01:02:00Z"), "2026-03-10T01:03:01+00:00");
        for (text, secs) in [
            ("@every 1s", 1.0),
            ("@every 2h", 7200.0),
            ("@every 2000ms", 2.0),
            ("@every 1m0.0s", 60.0),
            ("@every .5h", 1800.0),
        ] {
            assert_eq!(
                parsed(text, None).every().map(|d| d.as_secs_f64()),
                Some(secs),
                "{text}"
            );
        }
    }

    #[test]
    fn named_schedules() {
        let cases = [
            ("@yearly", "2027-01-01T00:00:00+00:00"),
            ("@annually", "2027-01-01T00:00:00+00:00"),
            ("@monthly", "2026-04-01T00:00:00+00:00"),
            // 2026-03-10 is a Tuesday: the next Sunday is the 15th.
            ("@weekly", "2026-03-15T00:00:00+00:00"),
            ("@daily", "2026-03-11T00:00:00+00:00"),
            ("@midnight", "2026-03-11T00:00:00+00:00"),
            ("@hourly", "2026-03-10T02:00:00+00:00"),
        ];
        for (named, expected) in cases {
            assert_eq!(
                next(&parsed(named, None), "2026-03-10T01:00:00Z"),
                expected,
                "{named}"
            );
        }
        assert_eq!(
            before(&parsed("@hourly", None), "2026-03-10T02:00:00Z"),
            "2026-03-10T01:00:00+00:00"
        );
    }

    #[test]
    fn a_time_zone_gives_its_offset() {
        let kolkata = parsed("0 0 2 * * *", Some("Asia/Kolkata"));
        assert_eq!(kolkata.time_zone(), chrono_tz::Asia::Kolkata);
        // 02:00 in Kolkata is 20:30 UTC the day before.
        assert_eq!(
            next(&kolkata, "2026-03-09T12:00:00Z"),
            "2026-03-10T02:00:00+05:30"
        );
        assert_eq!(
            before(&kolkata, "2026-03-10T20:30:00Z"),
            "2026-03-10T02:00:00+05:30"
        );
        let every = parsed("*/2 * * * * *", Some("Asia/Kolkata"));
        assert!(next(&every, "2026-03-10T00:00:00Z").ends_with("+05:30"));
        // Berlin in winter and in summer (DST from 2026-03-29).
        let berlin = parsed("0 0 2 * * *", Some("Europe/Berlin"));
        assert_eq!(
            next(&berlin, "2026-03-10T00:00:00Z"),
            "2026-03-10T02:00:00+01:00"
        );
        assert_eq!(
            next(&berlin, "2026-04-09T12:00:00Z"),
            "2026-04-10T02:00:00+02:00"
        );
        // Without a time zone: UTC.
        assert_eq!(parsed("0 0 2 * * *", None).time_zone(), Tz::UTC);
    }

    #[test]
    fn the_server_version_needed() {
        for expression in ["0 0 2 * * *", "@every 30s", "@daily"] {
            assert_eq!(
                parsed(expression, None).needs_server(),
                (2, 14),
                "{expression}"
            );
        }
    }

    #[test]
    fn refused_forms() {
        let five = refused("0 2 * * *", None);
        assert!(
            five.contains("has 5 fields") && five.contains("\"0 0 2 * * *\""),
            "{five}"
        );
        assert!(refused("0 0 2 * * * 2026", None).contains("has 7 fields"));
        assert!(refused("", None).contains("has 0 fields"));
        assert!(refused("@at 2026-12-24T18:00:00Z", None).contains("one-off time (@at)"));
        assert!(refused("@reboot", None).contains("\"@reboot\" is not a schedule"));
        assert!(refused("@every 500ms", None).contains("shorter than 1s"));
        assert!(refused("@every 1.5s", None).contains("whole number of seconds"));
        assert!(refused("@every 1h0m0.5s", None).contains("whole number of seconds"));
        assert!(refused("@every 1d", None).contains("needs a duration"));
        assert!(refused("@every -5s", None).contains("needs a duration"));
        assert!(refused("@every 0", None).contains("shorter than 1s"));
        assert!(refused("@every 5", None).contains("needs a duration"));
        assert!(refused("@every", None).contains("not a schedule"));
        assert_eq!(
            refused("0 0 24 * * *", None),
            "\"0 0 24 * * *\": hour field \"24\": 24 is above the greatest value, 23"
        );
        assert!(refused("0 0 0 * * 7", None).contains("day of week field \"7\""));
        assert!(refused("0 0 0 L * *", None).contains("\"L\" is not a number"));
        assert!(refused("0 0 0 * * 5#2", None).contains("is not a number"));
        assert!(refused("0 0 0 5-1 * *", None).contains("starts after it ends"));
        assert!(refused("*/0 * * * * *", None).contains("a step of 0"));
        assert!(refused("0 0 0 31 2 *", None).contains("never fires"));
        assert!(refused(", * * * * *", None).contains("matches no value"));
    }

    #[test]
    fn refused_time_zones() {
        let every = refused("@every 1m", Some("Europe/Berlin"));
        assert!(
            every.starts_with("time zone \"Europe/Berlin\" has no meaning"),
            "{every}"
        );
        let unknown = refused("0 0 2 * * *", Some("Mars/Olympus"));
        assert!(
            unknown.starts_with("time zone \"Mars/Olympus\" is not an IANA"),
            "{unknown}"
        );
        assert!(refused("0 0 2 * * *", Some("Local")).contains("not an IANA"));
        assert!(refused("0 0 2 * * *", Some("")).contains("not an IANA"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(go_duration("2h45m"), Some(Duration::from_secs(9900)));
        assert_eq!(go_duration("1µs"), Some(Duration::from_micros(1)));
        for bad in [
            "", "s", "1", "1.s.", "1x", "1 s", "-1s", "1d", ".s", "3000000h",
        ] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
    }
}
