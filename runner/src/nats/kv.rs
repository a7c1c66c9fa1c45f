//! Every KV bucket jetrun keeps (saga instances, aggregate snapshots,
//! projection read models and their pointers), opened or created in one
//! place.

use async_nats::jetstream::{kv, stream, Context};

/// A bucket jetrun uses, and how to make it when it is missing.
pub(crate) struct BucketSpec<'a> {
    pub(crate) name: &'a str,
    /// What the bucket holds, for `nats kv ls`.
    pub(crate) holds: &'a str,
    /// Values kept per key.
    pub(crate) history: i64,
    /// Settings to copy (a read model's new bucket copies the old one's).
    pub(crate) like: Option<&'a stream::Config>,
}

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
        if let Ok(store) = js.get_key_value(self.name).await {
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
        match js.create_key_value(config).await {
            Ok(store) => Ok(store),
            Err(err) => js.get_key_value(self.name).await.map_err(|_| BucketError {
                bucket: self.name.to_string(),
                reason: err.to_string(),
            }),
        }
    }
}
