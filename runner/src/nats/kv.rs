//! Every bucket jetrun keeps, opened or created in one place: KV buckets
//! (saga instances, aggregate snapshots, projection read models and their
//! pointers) and the object store holding the bodies of dead letters too big
//! to carry them.

use async_nats::jetstream::{kv, object_store, stream, Context};

/// The object store holding, whole, each event whose dead letter could not
/// carry its body (over the server's max_payload with jetrun's headers).
pub(crate) const DEAD_LETTER_BODIES: &str = "jetrun_dead_letters";

/// The object store of [`DEAD_LETTER_BODIES`], created when missing.
pub(crate) async fn dead_letter_bodies(
    js: &Context,
) -> Result<object_store::ObjectStore, BucketError> {
    if let Ok(store) = js.get_object_store(DEAD_LETTER_BODIES).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: DEAD_LETTER_BODIES.to_string(),
        description: Some(
            "jetrun: whole bodies of events whose dead letter could not carry them".to_string(),
        ),
        ..Default::default()
    };
    match js.create_object_store(config).await {
        Ok(store) => Ok(store),
        Err(err) => js
            .get_object_store(DEAD_LETTER_BODIES)
            .await
            .map_err(|_| BucketError {
                bucket: DEAD_LETTER_BODIES.to_string(),
                reason: err.to_string(),
            }),
    }
}

/// A bucket jetrun uses, and how to make it when it is missing.
pub(crate) struct BucketSpec<'a> {
    pub(crate) name: &'a str,
    /// What the bucket holds, for `nats kv ls`.
    pub(crate) holds: &'a str,
    /// Values kept per key.
    pub(crate) history: i64,
    /// Settings to copy (a read model's new bucket copies the old one's).
    pub(crate) like: Option<&'a stream::Config>,
    /// Whether a value may carry its own TTL (`Nats-TTL`, nats-server 2.11).
    pub(crate) message_ttl: bool,
}

/// How long the marker of a value purged by its TTL is kept, so that a watch
/// sees it go.
const TTL_MARKERS: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[error("cannot create KV bucket {bucket}: {reason}")]
pub(crate) struct BucketError {
    bucket: String,
    reason: String,
}

impl BucketSpec<'_> {
    /// The bucket, created when missing. One another process made meanwhile
    /// is as good.
    pub(crate) async fn open(&self, js: &Context) -> Result<kv::Store, BucketError> {
        let failed = |reason: String| BucketError {
            bucket: self.name.to_string(),
            reason,
        };
        if let Ok(store) = js.get_key_value(self.name).await {
            if self.message_ttl {
                self.allow_message_ttl(js)
                    .await
                    .map_err(|err| failed(err.to_string()))?;
            }
            return Ok(store);
        }
        let mut config = kv::Config {
            bucket: self.name.to_string(),
            description: format!("jetrun: {}", self.holds),
            history: self.history,
            ..Default::default()
        };
        if let Some(like) = self.like {
            config.history = like.max_messages_per_subject.max(1);
            config.max_age = like.max_age;
            config.max_bytes = like.max_bytes;
            config.max_value_size = like.max_message_size;
            config.storage = like.storage;
            config.num_replicas = like.num_replicas;
        }
        if self.message_ttl {
            config.limit_markers = Some(TTL_MARKERS);
        }
        match js.create_key_value(config).await {
            Ok(store) => Ok(store),
            Err(err) => js
                .get_key_value(self.name)
                .await
                .map_err(|_| failed(err.to_string())),
        }
    }

    /// Lets a bucket made before values carried a TTL take them.
    async fn allow_message_ttl(&self, js: &Context) -> Result<(), async_nats::Error> {
        let stream = js.get_stream(format!("KV_{}", self.name)).await?;
        let mut config = stream.cached_info().config.clone();
        if config.allow_message_ttl {
            return Ok(());
        }
        config.allow_message_ttl = true;
        config.subject_delete_marker_ttl = Some(TTL_MARKERS);
        js.update_stream(config).await?;
        Ok(())
    }
}

/// The bucket of replica heartbeats ([`jetrun_config::name::REPLICAS`]),
/// created when missing: in memory (heartbeats need no disk), one value
/// per replica, and a value older than `max_age` dropped by the server.
pub(crate) async fn replicas(
    js: &Context,
    max_age: std::time::Duration,
) -> Result<kv::Store, BucketError> {
    let name = jetrun_config::name::REPLICAS;
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: name.to_string(),
        description: "jetrun: heartbeats of the running replicas of each function".to_string(),
        history: 1,
        max_age,
        storage: stream::StorageType::Memory,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(err) => js.get_key_value(name).await.map_err(|_| BucketError {
            bucket: name.to_string(),
            reason: err.to_string(),
        }),
    }
}

/// The bucket of parked keys ([`jetrun_config::name::PARKED_KEYS`]), created
/// when missing: per park-mode function, each key parked behind a dead
/// letter (`on_dead_letter = "park"`).
pub(crate) async fn parked_keys(js: &Context) -> Result<kv::Store, BucketError> {
    BucketSpec {
        name: jetrun_config::name::PARKED_KEYS,
        holds: "the keys parked behind a dead letter (on_dead_letter = \"park\")",
        history: 1,
        like: None,
        message_ttl: false,
    }
    .open(js)
    .await
}
