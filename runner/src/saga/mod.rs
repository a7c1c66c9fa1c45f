//! Declarative sagas (`[sagas.NAME]`): long-running processes over events,
//! each step a command and its reply, failures undone by compensations. The
//! state machine is pure (`machine`); the runtime around it stores each
//! instance in a KV bucket and publishes what the machine decides.

pub(crate) mod machine;
mod runtime;

pub(crate) use runtime::{run, units};
