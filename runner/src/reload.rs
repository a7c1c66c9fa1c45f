//! Reloading the config while running: on SIGHUP, and with `--watch` when
//! the file changes.

use std::path::PathBuf;

/// Where the config comes from, and whether to watch it.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) watch: bool,
}
