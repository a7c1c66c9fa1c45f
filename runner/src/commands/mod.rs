//! Commands beyond running functions: each file is one `jetrun` verb.

pub(crate) mod dlq;
pub(crate) mod events;
pub(crate) mod init;
pub(crate) mod projection;
pub(crate) mod replay;
pub(crate) mod saga;
pub(crate) mod status;
