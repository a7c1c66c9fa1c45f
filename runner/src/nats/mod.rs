//! Everything that talks to NATS to set up: the connection, the streams and
//! the durable consumers.

mod connect;
mod consumer;
mod streams;

pub(crate) use connect::{connect, connect_once};
pub(crate) use consumer::{bind, is_consumer_not_found};
pub(crate) use streams::{ensure_streams, StreamConflict};
