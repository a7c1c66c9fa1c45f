//! The streams of `[streams.*]`, created when missing and updated when they
//! differ, and the `DLQ` stream for dead letters.

use anyhow::Context as _;
use async_nats::jetstream::stream::{Config as StreamSpec, RetentionPolicy, StorageType};
use async_nats::jetstream::Context;
use jetrun_config::{Config, Retention, Storage, StreamConfig, DLQ_STREAM, DLQ_SUBJECTS};

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

/// Makes every declared stream, and `DLQ`, look as the config says.
pub(crate) async fn ensure_streams(js: &Context, config: &Config) -> anyhow::Result<()> {
    for (name, stream) in &config.streams {
        let mut spec = desired(name, stream);
        // An aggregate appends a command's events as one atomic batch.
        spec.allow_atomic_publish = config.aggregates.values().any(|a| &a.stream == name);
        ensure(js, spec).await?;
    }
    let replicas = config
        .streams
        .values()
        .map(|s| s.replicas)
        .max()
        .unwrap_or(1);
    let dlq = StreamSpec {
        name: DLQ_STREAM.to_string(),
        subjects: vec![DLQ_SUBJECTS.to_string()],
        num_replicas: replicas,
        ..Default::default()
    };
    ensure(js, dlq).await
}

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

/// Creates `want` if missing; otherwise updates the fields jetrun manages
/// when they differ, leaving the rest of the stream's settings alone.
async fn ensure(js: &Context, want: StreamSpec) -> anyhow::Result<()> {
    let name = want.name.clone();
    let existing = match js.get_stream(&name).await {
        Ok(stream) => stream.cached_info().config.clone(),
        Err(err) if is_stream_not_found(&err) => {
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
    if updated != existing {
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
    }
    Ok(())
}

fn is_stream_not_found(err: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::ErrorCode;
    matches!(err.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}
