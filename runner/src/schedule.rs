//! Scheduled functions on nats-server's message schedules (ADR-51): the
//! schedules stream's name and subjects, the stored schedules (one holder
//! message per function, on `jetrun.schedules.<service>.<function>`) made
//! to match the config at start and after every reload, the check that the
//! nats-server in use runs what the config's schedules need. (The tick
//! metrics are a layer: `layers/ticked.rs`.)
//!
//! The server fires each tick into `jetrun.schedule.<function>`, once
//! however many replicas run; the function consumes it like any event.

use std::collections::BTreeSet;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream::Stream};
use async_nats::{HeaderMap, HeaderName};
use futures::TryStreamExt as _;
use jetrun_config::schedule::Schedule;
use jetrun_config::{name, Config, FunctionConfig};

use crate::emit::{self, PublishError};
use crate::headers::{BadHeader, Put};

/// The subjects of the schedules stream: ticks, the schedules, and
/// delayed events (held, and due: `delayed.rs`).
pub(crate) const STREAM_SUBJECTS: [&str; 3] = [
    "jetrun.schedule.>",
    "jetrun.schedules.>",
    crate::delayed::SUBJECTS,
];

/// The CloudEvents type of a tick.
pub(crate) const TICK_TYPE: &str = "jetrun.schedule.tick";

/// How long a fired tick waits to be handled before the stream drops it: a
/// week, in Go's duration syntax (nats-server refuses `7d`).
const TICK_TTL: &str = "168h";

/// The server's: the schedule, where it fires, in which time zone, and
/// the TTL of what it fires.
const NATS_SCHEDULE: HeaderName = HeaderName::from_static("Nats-Schedule");
const NATS_TARGET: HeaderName = HeaderName::from_static("Nats-Schedule-Target");
const NATS_TIME_ZONE: HeaderName = HeaderName::from_static("Nats-Schedule-Time-Zone");
const NATS_TTL: HeaderName = HeaderName::from_static("Nats-Schedule-TTL");
/// jetrun's own copies, which the server keeps on every tick it fires (it
/// strips every `Nats-Schedule*` header): a tick says which schedule fired it.
pub(crate) const JETRUN_SCHEDULE: &str = "Jetrun-Schedule";
pub(crate) const JETRUN_TIME_ZONE: &str = "Jetrun-Schedule-Time-Zone";
/// On a tick `jetrun schedule trigger` published: the time it was asked for.
pub(crate) const JETRUN_SCHEDULED_AT: &str = "Jetrun-Scheduled-At";
/// Only store the holder when the subject's last message is still the one read.
const EXPECTED_LAST: HeaderName = HeaderName::from_static("Nats-Expected-Last-Subject-Sequence");

/// The stream jetrun keeps schedules and ticks in (`[schedules] stream`).
pub(crate) fn stream(config: &Config) -> &str {
    &config.schedules_stream
}

/// The functions of `config` that run on a schedule.
fn scheduled(
    config: &Config,
) -> impl Iterator<Item = (&FunctionConfig, &jetrun_config::ScheduleConfig)> {
    config
        .functions
        .values()
        .filter_map(|f| f.schedule.as_ref().map(|s| (f, s)))
}

/// Refuses a config whose schedules the nats-server at `version` cannot
/// run: cron and `@every` need 2.14, a saga step's `delay` 2.12 (`@at`).
pub(crate) fn check_server(config: &Config, version: &str) -> Result<(), String> {
    let found = major_minor(version);
    for saga in config.sagas.values() {
        let (major, minor) = crate::delayed::NEEDS_SERVER;
        if let Some(step) = saga.steps.iter().find(|s| s.delay.is_some()) {
            if found.is_some_and(|found| found < crate::delayed::NEEDS_SERVER) {
                return Err(format!(
                    "step {} of saga {} has a delay, which needs nats-server {major}.{minor} or \
                     later; the server is {version}",
                    step.name, saga.name
                ));
            }
        }
    }
    for (function, schedule) in scheduled(config) {
        let needs = Schedule::parse(&schedule.expression, schedule.time_zone.as_deref())
            .map(|s| s.needs_server())
            .unwrap_or((2, 14));
        if found.is_some_and(|found| found < needs) {
            return Err(format!(
                "schedule {:?} of function {} needs nats-server {}.{} or later; the server is \
                 {version}",
                schedule.expression, function.name, needs.0, needs.1
            ));
        }
    }
    Ok(())
}

/// `2.11.3` -> (2, 11); `2.12.0-RC.1` -> (2, 12); `None` when unreadable.
pub(crate) fn major_minor(version: &str) -> Option<(u32, u32)> {
    let version = version.trim().trim_start_matches('v');
    let mut parts = version.split('.');
    let number = |part: Option<&str>| -> Option<u32> {
        let digits: String = part?.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    Some((number(parts.next())?, number(parts.next())?))
}

/// What one function's stored schedule must say.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    function: String,
    subject: String,
    expression: String,
    time_zone: Option<String>,
    target: String,
}

impl Holder {
    fn of(service: &str, function: &FunctionConfig) -> Option<Holder> {
        let schedule = function.schedule.as_ref()?;
        Some(Holder {
            function: function.name.clone(),
            subject: name::schedule_holder_subject(service, &function.name),
            expression: schedule.expression.clone(),
            time_zone: schedule.time_zone.clone(),
            target: name::schedule_tick_subject(&function.name),
        })
    }

    /// Whether the stored holder's headers say what this one does: every
    /// header jetrun writes on it (an older jetrun's holder is replaced).
    fn is_stored_in(&self, headers: &HeaderMap) -> bool {
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        get(NATS_SCHEDULE.as_ref()).as_deref() == Some(self.expression.as_str())
            && get(JETRUN_SCHEDULE).as_deref() == Some(self.expression.as_str())
            && get(NATS_TIME_ZONE.as_ref()) == self.time_zone
            && get(JETRUN_TIME_ZONE) == self.time_zone
            && get(NATS_TARGET.as_ref()).as_deref() == Some(self.target.as_str())
            && get(NATS_TTL.as_ref()).as_deref() == Some(TICK_TTL)
    }

    /// The holder message's headers, stored only if the subject's last
    /// message is still at `last` (0: none).
    fn headers(&self, last: u64) -> Result<HeaderMap, BadHeader> {
        let mut headers = HeaderMap::with_capacity(8);
        headers.put(NATS_SCHEDULE, &self.expression)?;
        headers.put(NATS_TARGET, &self.target)?;
        headers.put(NATS_TTL, TICK_TTL)?;
        headers.put(crate::headers::name(JETRUN_SCHEDULE)?, &self.expression)?;
        if let Some(zone) = &self.time_zone {
            headers.put(NATS_TIME_ZONE, zone)?;
            headers.put(crate::headers::name(JETRUN_TIME_ZONE)?, zone)?;
        }
        headers.put_number(EXPECTED_LAST, last);
        Ok(headers)
    }

    fn body(&self) -> bytes::Bytes {
        serde_json::json!({ "function": self.function })
            .to_string()
            .into()
    }
}

/// Makes the stored schedules match `config`: a new schedule is stored, a
/// changed one replaced, one whose function is gone (or has no schedule
/// any more) deleted; an unchanged one is left alone (storing an `@every`
/// again would restart its phase). Every replica does it at start and
/// after each reload: it is idempotent, and two replicas doing it at once
/// store one holder.
pub(crate) async fn reconcile(js: &jetstream::Context, config: &Config) -> anyhow::Result<()> {
    let service = &config.service.name;
    let holders: Vec<Holder> = (config.functions.values())
        .filter_map(|f| Holder::of(service, f))
        .collect();
    let name = stream(config);
    let stream = match crate::nats::stream_info(js, name).await? {
        Some(_) => js
            .get_stream_no_info(name)
            .await
            .with_context(|| format!("cannot read stream {name}"))?,
        // Never made: no schedule was ever stored, none is wanted.
        None if holders.is_empty() => return Ok(()),
        None => anyhow::bail!("stream {name} does not exist; it holds the schedules"),
    };
    for holder in &holders {
        store(js, &stream, holder).await?;
    }
    let prefix = format!("jetrun.schedules.{service}.");
    let stored: Vec<String> = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .with_context(|| format!("cannot list the schedules in stream {name}"))?
        .map_ok(|(subject, _)| subject)
        .try_collect()
        .await
        .with_context(|| format!("cannot list the schedules in stream {name}"))?;
    let wanted: BTreeSet<&str> = holders.iter().map(|h| h.subject.as_str()).collect();
    for subject in stored {
        if wanted.contains(subject.as_str()) {
            continue;
        }
        stream
            .purge()
            .filter(subject.clone())
            .await
            .with_context(|| format!("cannot delete the schedule on {subject}"))?;
        let function = subject.strip_prefix(&prefix).unwrap_or(&subject);
        tracing::info!(function = %function, subject = %subject, "Schedule deleted: the function has no schedule any more.");
    }
    Ok(())
}

/// Stores `holder` unless its subject already holds the same schedule.
async fn store(
    js: &jetstream::Context,
    stream: &Stream<()>,
    holder: &Holder,
) -> anyhow::Result<()> {
    let subject = &holder.subject;
    // Twice at most: a replica storing it first makes the second look find
    // it stored.
    for _ in 0..2 {
        let last = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) if holder.is_stored_in(&message.headers) => return Ok(()),
            Ok(message) => Some(message.sequence),
            Err(err)
                if matches!(
                    err.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                None
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read the schedule on {subject}"))
            }
        };
        let headers = holder
            .headers(last.unwrap_or(0))
            .map_err(|err| anyhow::anyhow!("schedule of function {}: {err}", holder.function))?;
        match emit::publish(js, subject, headers, holder.body()).await {
            Ok(_) => {}
            Err(PublishError::WrongLastSequence { .. }) => continue,
            // The server refused this schedule (a time zone its host does
            // not know, say): trying again cannot help, and the other
            // functions must not wait for it.
            Err(err @ (PublishError::Failed { .. } | PublishError::TooBig { .. })) => {
                tracing::error!(
                    function = %holder.function,
                    schedule = %holder.expression,
                    %err,
                    "nats-server refused the schedule; the function runs but gets no tick \
                     until the schedule is fixed (jetrun schedule list shows it missing)."
                );
                return Ok(());
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "cannot store schedule {:?} of function {}",
                        holder.expression, holder.function
                    )
                })
            }
        }
        // The server rolls the subject up to the new holder; purging keeps
        // it so when the roll-up did not happen.
        stream
            .purge()
            .filter(subject.clone())
            .keep(1)
            .await
            .with_context(|| format!("cannot drop the old schedule on {subject}"))?;
        let zone = holder.time_zone.as_deref().unwrap_or("UTC");
        match last {
            None => {
                tracing::info!(function = %holder.function, schedule = %holder.expression, time_zone = %zone, "Schedule stored.")
            }
            Some(_) => {
                tracing::info!(function = %holder.function, schedule = %holder.expression, time_zone = %zone, "Schedule replaced.")
            }
        }
        return Ok(());
    }
    tracing::warn!(
        function = %holder.function,
        schedule = %holder.expression,
        "Another runner stored a different schedule for the function at the same time (a \
         rolling deploy with two configs?); the last runner to start or reload decides."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Config {
        jetrun_config::parse(toml, &Default::default(), std::path::Path::new("."), &[])
            .expect("valid config")
    }

    fn config(expression: &str) -> Config {
        parse(&format!(
            "[functions.tick]\nschedule = {expression:?}\nexec = [\"true\"]\n"
        ))
    }

    #[test]
    fn cron_against_an_older_server_is_refused_naming_both_versions() {
        let cron = config("*/2 * * * * *");
        assert_eq!(
            check_server(&cron, "2.11.3"),
            Err(
                "schedule \"*/2 * * * * *\" of function tick needs nats-server 2.14 or later; \
                 the server is 2.11.3"
                    .to_string()
            )
        );
        assert_eq!(check_server(&cron, "2.15.1"), Ok(()));
        assert_eq!(check_server(&cron, "2.14.0"), Ok(()));
        assert!(check_server(&config("@every 1s"), "2.12.0").is_err());
    }

    #[test]
    fn a_delayed_saga_step_against_an_older_server_is_refused() {
        let saga = parse(
            "[streams.EV]\nsubjects = [\"ev.>\"]\n[functions.f]\nsubjects = [\"ev.x\"]\nexec = [\"true\"]\n[sagas.pay]\nkey = \"id\"\nstart = \"ev.placed\"\ncompleted = \
             \"ev.paid\"\nfailed = \"ev.unpaid\"\n[[sagas.pay.steps]]\nname = \"remind\"\ncommand = \
             \"ev.remind\"\nsuccess = \"ev.reminded\"\ndelay = \"1h\"\n",
        );
        assert_eq!(
            check_server(&saga, "2.11.11"),
            Err(
                "step remind of saga pay has a delay, which needs nats-server 2.12 or later; the \
                 server is 2.11.11"
                    .to_string()
            )
        );
        assert_eq!(check_server(&saga, "2.12.0"), Ok(()));
    }

    #[test]
    fn a_config_without_schedules_runs_on_any_server() {
        let config = parse(
            "[streams.EV]\nsubjects = [\"ev.>\"]\n[functions.f]\nsubjects = [\"ev.>\"]\nexec = \
             [\"true\"]\n",
        );
        assert_eq!(check_server(&config, "2.10.0"), Ok(()));
    }

    #[test]
    fn versions_are_read_to_major_and_minor() {
        assert_eq!(major_minor("2.11.3"), Some((2, 11)));
        assert_eq!(major_minor("2.12.0-RC.1"), Some((2, 12)));
        assert_eq!(major_minor("v2.15.1"), Some((2, 15)));
        assert_eq!(major_minor("nonsense"), None);
    }

    #[test]
    fn a_holder_matches_only_the_same_schedule_zone_and_target() {
        let holder = Holder {
            function: "tick".into(),
            subject: "jetrun.schedules.jetrun.tick".into(),
            expression: "*/2 * * * * *".into(),
            time_zone: Some("Asia/Kolkata".into()),
            target: "jetrun.schedule.tick".into(),
        };
        let headers = holder.headers(0).expect("headers");
        assert!(holder.is_stored_in(&headers));
        assert_eq!(
            headers.get("Jetrun-Schedule").map(|v| v.as_str()),
            Some("*/2 * * * * *")
        );
        assert_eq!(
            headers.get("Nats-Schedule-TTL").map(|v| v.as_str()),
            Some("168h")
        );
        let utc = Holder {
            time_zone: None,
            ..holder.clone()
        };
        assert!(!utc.is_stored_in(&headers));
        assert!(utc
            .headers(0)
            .expect("headers")
            .get("Nats-Schedule-Time-Zone")
            .is_none());
        let slower = Holder {
            expression: "*/3 * * * * *".into(),
            ..holder.clone()
        };
        assert!(!slower.is_stored_in(&headers));
    }
}
