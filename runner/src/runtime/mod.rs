//! The long-running side of jetrun: `jetrun run` and `jetrun dev`, the
//! supervisor that starts, stops and swaps functions and sagas, reloading
//! the config, and loading it.

pub(crate) mod config_file;
mod dev;
mod diff;
mod reload;
mod run;
mod supervisor;

pub(crate) use dev::dev;
pub(crate) use reload::Source;
pub(crate) use run::run;
