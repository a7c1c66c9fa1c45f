//! A programmable HTTP server for HTTP-function tests, on a loopback port the
//! OS picks: it records every request (headers, body and the peer's address,
//! so connection reuse can be counted) and answers each by a script the test
//! gives, by call number; a reply may also never come.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::task::JoinHandle;

use crate::wait::wait_until;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The client's address: one port per TCP connection.
    pub peer: SocketAddr,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// The first value of header `name` (any case) as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Keeps the request waiting for good: the client has to time out.
    Never,
}

impl Reply {
    /// `status` with no headers and an empty body.
    pub fn status(status: u16) -> Self {
        Reply::Respond {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// 200 with `Content-Type: application/json` and `value` as the body.
    pub fn json(value: serde_json::Value) -> Self {
        Reply::status(200)
            .header("content-type", "application/json")
            .body(value.to_string())
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Respond { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }

    /// Sets the response body.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        if let Reply::Respond { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }
}

type Script = dyn Fn(usize) -> Reply + Send + Sync;

struct Shared {
    script: Box<Script>,
    requests: Mutex<Vec<Request>>,
}

/// The server; stops accepting on drop.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Starts a server answering call `n` (from 1) with `script(n)`. Must be
    /// called inside a Tokio runtime.
    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test HTTP server on 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("test HTTP server");
        });
        HttpServer { addr, shared, task }
    }

    /// A server answering every call with `reply`.
    pub async fn always(reply: Reply) -> Self {
        Self::start(move |_| reply.clone()).await
    }

    /// `http://127.0.0.1:<port>/events`.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// How many requests arrived so far.
    pub fn calls(&self) -> usize {
        self.shared.requests.lock().expect("requests lock").len()
    }

    /// Waits (up to `within`) until at least `calls` requests arrived.
    pub async fn wait_for_calls(&self, calls: usize, within: Duration) {
        wait_until(within, &format!("{calls} HTTP request(s)"), || async move {
            self.calls() >= calls
        })
        .await;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = {
        let mut requests = shared.requests.lock().expect("requests lock");
        requests.push(Request {
            peer,
            method,
            uri,
            headers,
            body,
        });
        requests.len()
    };
    match (shared.script)(call) {
        Reply::Never => std::future::pending().await,
        Reply::Respond {
            status,
            headers,
            body,
        } => {
            let status = StatusCode::from_u16(status).expect("a valid status code");
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                    HeaderValue::from_str(&value).expect("a valid header value"),
                );
            }
            (status, map, body).into_response()
        }
    }
}
