//! Request functions: a function with `request = "subject"` answers core
//! NATS requests on that subject instead of consuming a stream. Every
//! request function of a runner is an endpoint (named after the function)
//! of one NATS micro service, `jetrun`, in queue group `jetrun`: replicas
//! share the requests, and `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer.
//! The reply is the function's result; a failure is answered with the micro
//! error headers (`Nats-Service-Error`, `Nats-Service-Error-Code`): never a
//! silent timeout.

use std::sync::Arc;
use std::time::SystemTime;

use async_nats::service::{self, ServiceExt};
use futures::StreamExt;
use jetrun_config::{FunctionConfig, Role};
use jetrun_functions::{Context, Event, Function};
use tokio::sync::{watch, OnceCell, Semaphore};
use tokio::task::JoinSet;

use crate::delivery::until_set;
use crate::envelope::{self, Origin};
use crate::metrics::Metrics;
use crate::middleware;
use crate::readiness::Readiness;

/// The micro service's name, and the queue group of its endpoints.
const SERVICE: &str = "jetrun";

/// Where request functions register their endpoints: the `jetrun` micro
/// service, registered on `client` by the first request function.
pub(crate) struct Service {
    pub(crate) client: async_nats::Client,
    pub(crate) registered: Arc<OnceCell<Arc<service::Service>>>,
}

impl Service {
    /// The service, registered now if it is not yet; `None` once draining.
    async fn get(&self, draining: &mut watch::Receiver<bool>) -> Option<Arc<service::Service>> {
        loop {
            let registered = self
                .registered
                .get_or_try_init(|| async { register(&self.client).await.map(Arc::new) })
                .await;
            match registered {
                Ok(service) => return Some(service.clone()),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "Retrying in 1s.");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = until_set(draining) => return None,
                    }
                }
            }
        }
    }
}

/// Registers the `jetrun` micro service on `client`.
async fn register(client: &async_nats::Client) -> anyhow::Result<service::Service> {
    client
        .service_builder()
        .description("jetrun request functions: one endpoint per function")
        .queue_group(SERVICE)
        .start(SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|err| anyhow::anyhow!("cannot register the {SERVICE} micro service: {err}"))
}

/// Answers `config`'s requests until `draining` is set, then finishes the
/// requests in flight (answering those still running when `abandon` is set
/// with a 503 error).
pub(crate) async fn serve(
    config: FunctionConfig,
    handler: Arc<dyn Function>,
    service: Service,
    metrics: Metrics,
    readiness: Readiness,
    mut draining: watch::Receiver<bool>,
    abandon: watch::Receiver<bool>,
) {
    let function_metrics = metrics.for_function(&config.name);
    let handler = middleware::layered(
        handler,
        config.timeout,
        function_metrics.in_flight,
        function_metrics.duration,
    );
    let Some(service) = service.get(&mut draining).await else {
        return;
    };
    let name = config.name.clone();
    let subject = config.request.clone().unwrap_or_default();
    let mut endpoint = loop {
        match service
            .endpoint_builder()
            .name(&name)
            .add(subject.clone())
            .await
        {
            Ok(endpoint) => break endpoint,
            Err(err) => {
                tracing::warn!(function = %name, %subject, %err, "Cannot add the request endpoint; retrying.");
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = until_set(&mut draining) => return,
                }
            }
        }
    };
    tracing::info!(function = %name, %subject, "Answering requests.");
    readiness.set_bound(&name, true);
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let config = Arc::new(config);
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        let request = tokio::select! {
            request = endpoint.next() => request,
            () = until_set(&mut draining) => None,
        };
        let Some(request) = request else { break };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (config, handler, metrics) = (config.clone(), handler.clone(), metrics.clone());
        let mut abandon = abandon.clone();
        in_flight.spawn(async move {
            tokio::select! {
                () = answer(&config, handler.as_ref(), &metrics, &request) => {}
                () = until_set(&mut abandon) => {
                    let _ = request
                        .respond(Err(service::error::Error {
                            status: "jetrun is shutting down; send the request again".into(),
                            code: 503,
                        }))
                        .await;
                }
            }
            drop(permit);
        });
    }
    let _ = endpoint.stop().await;
    readiness.set_bound(&name, false);
    while in_flight.join_next().await.is_some() {}
}

/// Runs the function for one request and answers it.
async fn answer(
    config: &FunctionConfig,
    handler: &dyn Function,
    metrics: &Metrics,
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
    let outcome = match envelope::read_event(&origin, message.headers.as_ref(), &message.payload) {
        // A request without an id of its own (a bare `nats req`) gets a new
        // one: sequence 0, no stream stored it.
        Ok(event) => {
            let ctx = Context {
                function: config.name.clone(),
                attempt: 1,
                subject: subject.to_string(),
                stream: String::new(),
                sequence: 0,
            };
            if config.role == Role::Plain {
                // A plain request function's input document is the request
                // as a CloudEvent.
                let document = Event {
                    data: serde_json::to_vec(&event.to_structured_json())
                        .unwrap_or_default()
                        .into(),
                    datacontenttype: Some("application/json".into()),
                    ..event.clone()
                };
                handler.call(&document, &ctx).await
            } else {
                handler.call(&event, &ctx).await
            }
        }
        Err(failure) => Err(failure),
    };
    let (response, code) = match outcome {
        Ok(output) => (Ok(output.result.unwrap_or_default()), 200),
        Err(failure) => {
            let code = failure.service_code();
            tracing::warn!(function = %config.name, %subject, code, error = %failure, "Request failed.");
            (
                Err(service::error::Error {
                    // A header value: one line.
                    status: failure.message.replace(['\r', '\n'], " "),
                    code: usize::from(code),
                }),
                code,
            )
        }
    };
    metrics.requested(&config.name, code);
    if let Err(err) = request.respond(response).await {
        tracing::warn!(function = %config.name, %subject, %err, "Cannot send the reply.");
    }
}
