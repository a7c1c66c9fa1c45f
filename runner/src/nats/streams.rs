//! The streams of `[streams.*]`, created when missing and updated when they
//! differ, the `DLQ` stream for dead letters, and the schedules stream
//! holding schedules, their ticks and delayed events (`JETRUN_SCHEDULES`,
//! made with `allow_msg_schedules`). jetrun marks what it
//! creates (the stream's metadata) and updates only those, or those whose
//! config says `manage = true`: a stream someone else made is reported with
//! its differences and left alone.

use anyhow::Context as _;
use async_nats::jetstream::stream::{Config as StreamSpec, RetentionPolicy, StorageType};
use async_nats::jetstream::Context;
use jetrun_config::{Config, Retention, Storage, StreamConfig};

/// JetStream refused to change an existing stream to the config's settings
/// (its storage type, say): retrying cannot help, a person has to choose.
#[derive(Debug, thiserror::Error)]
#[error(
    "stream {stream} exists with settings JetStream will not change to the config's: {reason}. \
     Make [streams.{stream}] match the stream (`nats stream info {stream}`), \
     or edit or delete the stream if nothing else needs it as it is"
)]
pub(crate) struct StreamConflict {
    stream: String,
    reason: String,
}

/// Makes every declared stream, `DLQ`, and the schedules stream look as the
/// config says. The schedules stream must be made when a function has a
/// schedule; otherwise it is made for delayed events when the server runs
/// message schedules (2.12), and a failure to make it (a declared stream
/// taking `>`, a user not allowed to) is a warning: delayed events then
/// fail. Whether the schedules stream is there.
pub(crate) async fn ensure_streams(js: &Context, config: &Config) -> anyhow::Result<bool> {
    for (name, stream) in &config.streams {
        let mut spec = desired(name, stream);
        // An aggregate appends a command's events as one atomic batch.
        spec.allow_atomic_publish = config.aggregates.values().any(|a| &a.stream == name);
        ensure(js, spec, stream.manage).await?;
    }
    let replicas = config
        .streams
        .values()
        .map(|s| s.replicas)
        .max()
        .unwrap_or(1);
    let dlq = StreamSpec {
        name: config.dead_letters.stream.clone(),
        subjects: vec![config.dead_letters.subjects()],
        num_replicas: replicas,
        ..Default::default()
    };
    // The dead-letter stream is jetrun's by its reserved name, marked or not
    // (one made before the mark existed).
    ensure(js, dlq, Some(true)).await?;
    // jetrun's too: it holds nothing but what jetrun puts there.
    let schedules = schedules(&config.schedules_stream, replicas);
    if config.functions.values().any(|f| f.schedule.is_some()) {
        ensure(js, schedules, Some(true)).await?;
        return Ok(true);
    }
    let version = js.client().server_info().version;
    if let Err(why) = crate::delayed::check_server(&version) {
        tracing::info!(%why, "No delayed events with this server.");
        return Ok(false);
    }
    let name = schedules.name.clone();
    match ensure(js, schedules, Some(true)).await {
        Ok(()) => Ok(true),
        Err(err) => {
            tracing::warn!(
                stream = %name,
                error = %format!("{err:#}"),
                "Cannot make the stream that holds delayed events; an emit with a delay fails \
                 until it exists."
            );
            Ok(false)
        }
    }
}

/// Makes schedules stream `name` (one replica) when it is missing, as a
/// runner would: for a verb that holds a delayed event before any runner
/// ran (`jetrun publish --delay`). One that exists is left as it is (a
/// runner's may have more replicas).
pub(crate) async fn ensure_schedules(js: &Context, name: &str) -> anyhow::Result<()> {
    match js.get_stream(name).await {
        Ok(_) => Ok(()),
        Err(err) if is_stream_not_found(&err) => ensure(js, schedules(name, 1), Some(true)).await,
        Err(err) => Err(err).with_context(|| format!("cannot look up stream {name}")),
    }
}

/// How long the schedules stream remembers a delayed event's id: an input
/// handled again within it (a crash before its ack, a retry) holds its
/// delayed events once.
pub(crate) const SCHEDULES_DUPLICATE_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(600);

/// The schedules stream: file storage, message schedules and per-message
/// TTLs on (a fired tick expires unhandled after `Nats-Schedule-TTL`),
/// roll-ups allowed (the server rolls each schedule's subject up to its
/// newest holder), the tick, holder and delayed-event subjects, and a
/// duplicate window of [`SCHEDULES_DUPLICATE_WINDOW`].
fn schedules(name: &str, replicas: usize) -> StreamSpec {
    StreamSpec {
        name: name.to_string(),
        subjects: crate::schedule::STREAM_SUBJECTS
            .iter()
            .map(ToString::to_string)
            .collect(),
        storage: StorageType::File,
        num_replicas: replicas,
        allow_message_schedules: true,
        allow_message_ttl: true,
        allow_rollup: true,
        duplicate_window: SCHEDULES_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The metadata entry that marks a stream jetrun created.
const MARK: (&str, &str) = ("jetrun.managed", "true");

fn desired(name: &str, stream: &StreamConfig) -> StreamSpec {
    let mut spec = StreamSpec {
        name: name.to_string(),
        subjects: stream.subjects.clone(),
        storage: match stream.storage {
            Storage::File => StorageType::File,
            Storage::Memory => StorageType::Memory,
        },
        num_replicas: stream.replicas,
        retention: match stream.retention {
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
            Retention::WorkQueue => RetentionPolicy::WorkQueue,
        },
        ..Default::default()
    };
    if let Some(max_age) = stream.max_age {
        spec.max_age = max_age;
    }
    if let Some(window) = stream.duplicate_window {
        spec.duplicate_window = window;
    }
    spec
}

/// Creates `want` if missing (unless `manage = false`), marked as jetrun's;
/// otherwise, when the fields jetrun sets differ, updates the stream if it
/// manages it (`manage`, or unset and marked) and else says how it differs
/// and leaves it alone. The rest of a stream's settings are never touched.
async fn ensure(js: &Context, mut want: StreamSpec, manage: Option<bool>) -> anyhow::Result<()> {
    let name = want.name.clone();
    let existing = match js.get_stream(&name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(err) if is_stream_not_found(&err) => {
            if manage == Some(false) {
                anyhow::bail!(
                    "stream {name} does not exist, and [streams.{name}] says manage = false: \
                     create it (`nats stream add {name}`), or let jetrun create it"
                );
            }
            want.metadata.insert(MARK.0.into(), MARK.1.into());
            js.create_stream(want)
                .await
                .with_context(|| format!("cannot create stream {name}"))?;
            tracing::info!(stream = %name, "Created stream.");
            return Ok(());
        }
        Err(err) => return Err(err).with_context(|| format!("cannot look up stream {name}")),
    };
    let mut updated = existing.clone();
    updated.subjects = want.subjects;
    updated.storage = want.storage;
    updated.num_replicas = want.num_replicas;
    updated.retention = want.retention;
    if want.max_age != std::time::Duration::ZERO {
        updated.max_age = want.max_age;
    }
    if want.duplicate_window != std::time::Duration::ZERO {
        updated.duplicate_window = want.duplicate_window;
    }
    if want.allow_atomic_publish {
        updated.allow_atomic_publish = true;
    }
    // Schedules, TTLs and roll-ups, once on, stay on (JetStream refuses to
    // turn schedules off).
    updated.allow_message_schedules |= want.allow_message_schedules;
    updated.allow_message_ttl |= want.allow_message_ttl;
    updated.allow_rollup |= want.allow_rollup;
    if updated == existing {
        return Ok(());
    }
    let marked = existing.metadata.get(MARK.0).map(String::as_str) == Some(MARK.1);
    if !manage.unwrap_or(marked) {
        let differences = differences(&existing, &updated).join("; ");
        tracing::warn!(
            stream = %name,
            %differences,
            "Stream {name} differs from the config, but jetrun did not create it: left as it is. \
             Set manage = true under [streams.{name}] to let jetrun update it, or make the \
             config match."
        );
        return Ok(());
    }
    if manage == Some(true) {
        updated.metadata.insert(MARK.0.into(), MARK.1.into());
    }
    use async_nats::jetstream::context::CreateStreamErrorKind;
    match js.update_stream(updated).await {
        Ok(_) => {}
        Err(err) => {
            if let CreateStreamErrorKind::JetStream(refusal) = err.kind() {
                return Err(StreamConflict {
                    stream: name,
                    reason: refusal.to_string(),
                }
                .into());
            }
            return Err(err).with_context(|| format!("cannot update stream {name}"));
        }
    }
    tracing::info!(stream = %name, "Updated stream to match the config.");
    Ok(())
}

/// What jetrun would change: `field: now -> config`, for the fields it sets.
fn differences(now: &StreamSpec, config: &StreamSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |field: &str, now: String, config: String| {
        if now != config {
            out.push(format!("{field}: {now} -> {config}"));
        }
    };
    differ(
        "subjects",
        format!("{:?}", now.subjects),
        format!("{:?}", config.subjects),
    );
    differ(
        "storage",
        format!("{:?}", now.storage),
        format!("{:?}", config.storage),
    );
    differ(
        "replicas",
        now.num_replicas.to_string(),
        config.num_replicas.to_string(),
    );
    differ(
        "retention",
        format!("{:?}", now.retention),
        format!("{:?}", config.retention),
    );
    let duration = |d: std::time::Duration| humantime::format_duration(d).to_string();
    differ("max_age", duration(now.max_age), duration(config.max_age));
    differ(
        "duplicate_window",
        duration(now.duplicate_window),
        duration(config.duplicate_window),
    );
    differ(
        "allow_atomic_publish",
        now.allow_atomic_publish.to_string(),
        config.allow_atomic_publish.to_string(),
    );
    differ(
        "allow_msg_schedules",
        now.allow_message_schedules.to_string(),
        config.allow_message_schedules.to_string(),
    );
    differ(
        "allow_msg_ttl",
        now.allow_message_ttl.to_string(),
        config.allow_message_ttl.to_string(),
    );
    differ(
        "allow_rollup_hdrs",
        now.allow_rollup.to_string(),
        config.allow_rollup.to_string(),
    );
    out
}

fn is_stream_not_found(err: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::ErrorCode;
    matches!(err.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}
