//! Everything that talks to NATS to set up and to read: the connection (and
//! where and as whom to connect: [`settings`]), the
//! streams, every consumer jetrun makes, the KV buckets it keeps, and the
//! readers of a stream's history.

mod connect;
mod consumer;
mod history;
mod kv;
pub(crate) mod settings;
mod streams;

pub(crate) use connect::{connect, connect_once};
pub(crate) use consumer::{
    created_ns, is_consumer_not_found, Bound, Durable, Floor, PIN_GROUP, PIN_TIMEOUT,
};
pub(crate) use history::{stream_info, History, Item, Start, Stored};
pub(crate) use kv::{
    dead_letter_bodies, parked_keys, replicas, BucketError, BucketSpec, DEAD_LETTER_BODIES,
};
pub(crate) use streams::{ensure_schedules, ensure_streams, StreamConflict};
