//! Keyed flow control: what decides, beyond `concurrency`, when an event may
//! start: its key ([`key`]), which partition of pinned consumers it belongs
//! to, and the order of the events of one key.

pub(crate) mod key;
pub(crate) mod park;
pub(crate) mod presence;
pub(crate) mod rate;
