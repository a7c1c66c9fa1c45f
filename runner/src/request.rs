//! Request functions: a function with `request = "subject"` answers core
//! NATS requests on that subject instead of consuming a stream. Every
//! request function of a runner is an endpoint (named after the function)
//! of one NATS micro service, `jetrun` (`[service] name`), in a queue group
//! of the same name: replicas
//! share the requests, and `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer.
//! The reply is the function's result; a failure is answered with the micro
//! error headers (`Nats-Service-Error`, `Nats-Service-Error-Code`): never a
//! silent timeout. Each endpoint holds at most `concurrency` requests running
//! and [`WAITING`] more waiting for a turn; one more is answered 503 at once,
//! so a flood costs a quick refusal, never an unbounded queue.

use std::sync::Arc;
use std::time::SystemTime;

use std::panic::AssertUnwindSafe;

use async_nats::service::{self, ServiceExt};
use futures::{FutureExt as _, StreamExt};
use jetrun_functions::{Context, Failure, Function};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

use crate::envelope::{self, Origin};
use crate::metrics::RequestMetrics;
use crate::readiness::Readiness;
use crate::redact;
use crate::shutdown::{retry_until, Shutdown};
use crate::tasks;

/// Requests an endpoint keeps waiting for a turn, beyond those running.
const WAITING: usize = 1024;

/// Where request functions register their endpoints: the micro service
/// `name` (`jetrun` unless `[service] name` says otherwise), registered on
/// `client` by the first request function.
#[derive(Clone)]
pub(crate) struct Service {
    pub(crate) client: async_nats::Client,
    pub(crate) name: String,
    pub(crate) registered: Arc<OnceCell<Arc<service::Service>>>,
}

impl Service {
    /// The service, registered now if it is not yet; `None` once draining.
    async fn get(&self, shutdown: &Shutdown) -> Option<Arc<service::Service>> {
        retry_until("register the micro service", shutdown, || async {
            self.registered
                .get_or_try_init(|| async {
                    register(&self.client, &self.name).await.map(Arc::new)
                })
                .await
                .cloned()
        })
        .await
    }
}

/// Registers the micro service `name` on `client`, in the queue group of
/// the same name.
async fn register(client: &async_nats::Client, name: &str) -> anyhow::Result<service::Service> {
    client
        .service_builder()
        .description("jetrun request functions: one endpoint per function")
        .queue_group(name)
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|err| anyhow::anyhow!("cannot register the {name} micro service: {err}"))
}

/// One request function: its name, subject and concurrency.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) function: String,
    pub(crate) subject: String,
    pub(crate) concurrency: usize,
}

/// Answers `endpoint`'s requests with `handler` (its layers around it) until
/// `shutdown` drains, then finishes the requests in flight (answering those
/// still running when the drain is abandoned with a 503 error).
pub(crate) async fn serve(
    endpoint: Endpoint,
    handler: Arc<dyn Function>,
    service: Service,
    metrics: RequestMetrics,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    let Endpoint {
        function: name,
        subject,
        concurrency,
    } = endpoint;
    let Some(service) = service.get(&shutdown).await else {
        return;
    };
    let added = retry_until("add the request endpoint", &shutdown, || {
        service.endpoint_builder().name(&name).add(subject.clone())
    })
    .await;
    let Some(mut endpoint) = added else { return };
    tracing::info!(function = %name, %subject, "Answering requests.");
    readiness.set_bound(&name, true);
    let running = Arc::new(Semaphore::new(concurrency));
    let admitted = Arc::new(Semaphore::new(concurrency + WAITING));
    let name: Arc<str> = name.into();
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        let request = tokio::select! {
            request = endpoint.next() => request,
            () = shutdown.draining() => None,
        };
        let Some(request) = request else { break };
        let Ok(admission) = admitted.clone().try_acquire_owned() else {
            metrics.answered(503);
            let _ = request
                .respond(Err(service::error::Error {
                    status: format!(
                        "function {name} is busy: {concurrency} requests running and {WAITING} \
                         waiting; send it again later"
                    ),
                    code: 503,
                }))
                .await;
            continue;
        };
        let (name, handler, metrics, shutdown, running) = (
            name.clone(),
            handler.clone(),
            metrics.clone(),
            shutdown.clone(),
            running.clone(),
        );
        in_flight.spawn(async move {
            tokio::select! {
                () = async {
                    let Ok(_turn) = running.acquire_owned().await else { return };
                    answer(&name, handler.as_ref(), &metrics, &request).await;
                } => {}
                () = shutdown.abandoned() => {
                    let _ = request
                        .respond(Err(service::error::Error {
                            status: "jetrun is shutting down; send the request again".into(),
                            code: 503,
                        }))
                        .await;
                }
            }
            drop(admission);
        });
    }
    let _ = endpoint.stop().await;
    readiness.set_bound(&name, false);
    while in_flight.join_next().await.is_some() {}
}

/// Runs the function for one request and answers it.
async fn answer(
    function: &str,
    handler: &dyn Function,
    metrics: &RequestMetrics,
    request: &service::Request,
) {
    let message = &request.message;
    let subject = message.subject.as_str();
    let origin = Origin {
        subject,
        stream: "request",
        sequence: 0,
        published: SystemTime::now(),
    };
    // A request without an id of its own (a bare `nats req`) gets a new one:
    // sequence 0, no stream stored it.
    let outcome = match envelope::read_event(&origin, message.headers.as_ref(), &message.payload) {
        Ok(event) => {
            let ctx = Context {
                function: function.to_string(),
                attempt: 1,
                subject: subject.to_string(),
                stream: String::new(),
                stream_created: 0,
                sequence: 0,
                trace: None,
            };
            let call = AssertUnwindSafe(handler.call(&event, &ctx)).catch_unwind();
            call.await.unwrap_or_else(|panic| {
                let message = tasks::panic_message(panic.as_ref());
                Err(Failure::retryable(format!(
                    "the handler panicked: {message}"
                )))
            })
        }
        Err(failure) => Err(failure),
    };
    let (response, code) = match outcome {
        Ok(output) => (Ok(output.result.unwrap_or_default()), 200),
        Err(failure) => {
            let code = failure.service_code();
            let error = redact::text(&failure.message);
            tracing::warn!(%function, %subject, code, %error, "Request failed.");
            (
                Err(service::error::Error {
                    status: reply_status(code, &error),
                    code: usize::from(code),
                }),
                code,
            )
        }
    };
    metrics.answered(code);
    if let Err(err) = request.respond(response).await {
        tracing::warn!(%function, %subject, %err, "Cannot send the reply.");
    }
}

/// What a failed request is told: the function's own failure message, on
/// one line; for a resource jetrun could not reach (503), only that, the
/// details being the runner's (they are in its log).
fn reply_status(code: u16, error: &str) -> String {
    if code == 503 {
        return "jetrun cannot answer now: a resource it needs is unavailable; send the request \
                again later"
            .to_string();
    }
    error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_says_the_functions_failure_on_one_line_and_keeps_internals_in() {
        assert_eq!(reply_status(400, "bad\r\norder"), "bad  order");
        assert!(reply_status(503, "cannot read KV bucket x: io").starts_with("jetrun cannot"));
    }
}
