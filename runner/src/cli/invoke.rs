//! `jetrun invoke FUNCTION [DATA|-]`: one call of a function of the config
//! on a payload, in this process and without NATS (like `faas-cli invoke`):
//! the handler (built-in, exec or HTTP) reads the payload as a delivery
//! would (`envelope::read_event`), and the result, the events it would emit
//! and how it ended are printed. Nothing is published or acked. A function
//! with a role (an aggregate's command handler, a projection) keeps its
//! state in NATS, so it is refused.

use std::io::Read;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use jetrun_config::Role;
use jetrun_functions::{Context, Emit, Failure, Later, Output};
use serde_json::{json, Value};

use super::args::FunctionArg;
use super::session::{self, Stopped};
use crate::envelope::{self, Origin};

/// `jetrun invoke --help`'s examples.
pub(crate) const EXAMPLES: &str = "\
Examples:
  jetrun invoke reserve-stock '{\"order_id\": 1, \"items\": [{\"sku\": \"book\", \"qty\": 1}]}'
  echo '{\"order_id\": 2, \"items\": []}' | jetrun invoke reserve-stock -
  jetrun invoke ship-order --subject inventory.reserved --json '{\"order_id\": 3}'

Exit status: 0 when the call succeeded, 1 when it failed and would be
retried, 65 when it failed permanently (it would be dead-lettered), 2 for a
usage or config error. Emits are printed, never published.";

/// Exit status of a permanent failure, as an exec function's own.
const EXIT_PERMANENT: u8 = 65;

/// The arguments of `jetrun invoke`.
#[derive(clap::Args)]
pub(crate) struct InvokeArgs {
    #[command(flatten)]
    target: FunctionArg,
    /// The payload (any input shape a delivery accepts); `-` reads stdin;
    /// none is an empty body.
    data: Option<String>,
    /// The subject the event arrives on [default: the function's first
    /// subject (or its request subject), wildcards filled in].
    #[arg(long)]
    subject: Option<String>,
    /// The delivery attempt the call is told it is.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    attempt: u64,
    /// Print `{"outcome", "error", "result", "emits"}` instead of lines.
    #[arg(long)]
    json: bool,
}

/// Runs `jetrun invoke`.
pub(crate) async fn invoke(args: InvokeArgs) -> ExitCode {
    let path = args.target.config.path();
    let loaded = match session::load(&path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    session::exit(
        async {
            let function = session::function(&loaded.config, &path, &args.target.function)?;
            if function.role != Role::Plain {
                return Err(Stopped::Usage(format!(
                    "function {} is an aggregate's command handler or a projection: its state \
                     is in NATS, so it cannot run without it; try `jetrun publish` with \
                     `jetrun run` running",
                    function.name
                )));
            }
            let (_, handler) = session::handler(&loaded, &function.name)?;
            let subject = match &args.subject {
                Some(subject) => subject.clone(),
                None => {
                    let filter = function
                        .request_subject()
                        .or_else(|| {
                            function
                                .binding()
                                .and_then(|b| b.subjects.first().map(String::as_str))
                        })
                        .unwrap_or("invoke");
                    jetrun_config::subject_example(filter)
                }
            };
            let body = Bytes::from(payload(args.data.as_deref())?);
            let origin = Origin {
                subject: &subject,
                stream: "invoke",
                sequence: 0,
                published: SystemTime::now(),
            };
            let ctx = Context {
                function: function.name.clone(),
                attempt: args.attempt,
                subject: subject.clone(),
                stream: origin.stream.to_string(),
                stream_created: 0,
                sequence: 0,
                trace: None,
            };
            let outcome = match envelope::read_event(&origin, None, &body) {
                Ok(event) => {
                    match tokio::time::timeout(function.timeout, handler.call(&event, &ctx)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(Failure::retryable(format!(
                            "timed out after {}",
                            humantime::format_duration(function.timeout)
                        ))),
                    }
                }
                Err(failure) => Err(failure),
            };
            print(&outcome, args.json);
            Ok(match &outcome {
                Ok(_) => ExitCode::SUCCESS,
                Err(failure) if failure.is_permanent() => ExitCode::from(EXIT_PERMANENT),
                Err(_) => ExitCode::FAILURE,
            })
        }
        .await,
    )
}

/// The payload: `-` is stdin, none is empty.
fn payload(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match data {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the data from stdin")?;
            Ok(buf)
        }
        Some(text) => Ok(text.as_bytes().to_vec()),
        None => Ok(Vec::new()),
    }
}

fn print(outcome: &Result<Output, Failure>, json: bool) {
    let (label, error, result, emits) = match outcome {
        Ok(output) => ("success", None, output.result.as_ref(), &output.emits[..]),
        Err(failure) if failure.is_permanent() => {
            ("permanent failure", Some(&failure.message), None, &[][..])
        }
        Err(failure) => ("retryable failure", Some(&failure.message), None, &[][..]),
    };
    let result_text = result.map(|r| String::from_utf8_lossy(r).into_owned());
    if json {
        let emits: Vec<Value> = emits
            .iter()
            .map(|e| {
                let mut emit =
                    json!({"subject": e.subject(), "type": e.event_type, "data": e.data});
                if let Some((key, when)) = later(e) {
                    emit[key] = Value::String(when);
                }
                emit
            })
            .collect();
        let result = result_text.as_deref().map(|text| {
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.into()))
        });
        let outcome = json!({
            "outcome": label.split(' ').next(),
            "error": error,
            "result": result,
            "emits": emits,
        });
        println!("{outcome}");
        return;
    }
    println!("outcome: {label}");
    if let Some(error) = error {
        println!("error:   {error}");
    }
    if let Some(result) = result_text {
        println!("result:  {result}");
    }
    for emit in emits {
        let when = later(emit).map_or(String::new(), |(key, when)| format!(" ({key} {when})"));
        println!(
            "emit:    {} {} {}{when}",
            emit.subject(),
            emit.event_type,
            emit.data
        );
    }
}

/// A delayed emit's `delay` or `at`, as it would be written.
fn later(emit: &Emit) -> Option<(&'static str, String)> {
    match emit.later? {
        Later::After(delay) => Some(("delay", humantime::format_duration(delay).to_string())),
        Later::At(at) => Some(("at", crate::delayed::rfc3339(at))),
    }
}
