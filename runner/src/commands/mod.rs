//! Commands beyond running functions: each file is one `jetrun` verb.

pub(crate) mod dlq;
pub(crate) mod init;
pub(crate) mod status;
