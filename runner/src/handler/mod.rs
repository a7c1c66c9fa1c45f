//! The handler kinds behind a function: built-in Rust functions, exec
//! programs (one process per event, or long-lived workers) and HTTP
//! endpoints, each implementing [`jetrun_functions::Function`].

mod account;
mod exec;
mod http;
mod process;
mod protocol;
mod worker;

use std::sync::Arc;

use anyhow::bail;
use jetrun_config::{ExecMode, FunctionConfig, Handler};
use jetrun_functions::Function;

/// The handler a function's config names.
pub(crate) fn build(function: &FunctionConfig) -> anyhow::Result<Arc<dyn Function>> {
    Ok(match &function.handler {
        Handler::Builtin(name) => match jetrun_functions::builtin(name) {
            Some(f) => Arc::from(f),
            None => bail!(
                "functions.{}.builtin: no built-in called {name:?}",
                function.name
            ),
        },
        Handler::Exec(exec) => {
            let run_as = account::resolve(exec)?;
            process::close_inherited_descriptors();
            match exec.mode {
                ExecMode::PerEvent => Arc::new(exec::Exec::new(
                    &function.name,
                    exec.clone(),
                    run_as,
                    answers(function),
                )),
                ExecMode::Worker => Arc::new(worker::WorkerPool::new(
                    &function.name,
                    exec.clone(),
                    run_as,
                    answers(function),
                )),
            }
        }
        Handler::Http(config) => {
            Arc::new(http::Http::new(&function.name, config, answers(function))?)
        }
    })
}

/// Whether the function answers: a request function, an aggregate's command
/// handler or a projection gets an input document (as the event's data)
/// and gives back a result, rather than an event in and events out.
pub(crate) fn answers(function: &FunctionConfig) -> bool {
    function.request_subject().is_some() || function.role != jetrun_config::Role::Plain
}
