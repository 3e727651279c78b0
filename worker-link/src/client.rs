//! The router side: forwards an invocation to a worker over HTTP/2 and turns the answer
//! back into an outcome or a failure.

use crate::protocol::{self, Failure};
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reactor_api::{DeploymentSpec, Invocation, InvokeError, InvokeFailure, InvokeOutcome};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long past the function's deadline a router waits for a worker that enforces it
/// itself, before giving up on that worker.
const DEADLINE_SLACK: Duration = Duration::from_secs(2);
/// The most of a failure body read back.
const FAILURE_MAX_BYTES: usize = 64 * 1024;

type HttpClient = Client<HttpConnector, Body>;

thread_local! {
    // One client (and so one HTTP/2 connection per worker) per server thread: each
    // runtime drives its own connections, nothing is handed between threads.
    static CLIENT: HttpClient = new_client();
}

fn new_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_only(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(10)))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .build(connector)
}

/// How long a worker that refused a connection is passed over (the registry's TTL: by
/// then it is back, or out of the table).
const DOWN_FOR: Duration = Duration::from_secs(3);

/// Forwards invocations to worker services, authenticated with the internal token.
#[derive(Clone)]
pub struct RemoteWorkers {
    auth: HeaderValue,
    /// Workers whose address refused a connection, and since when.
    down: Arc<Mutex<HashMap<String, Instant>>>,
}

impl RemoteWorkers {
    pub fn new(internal_token: &str) -> Result<Self, InvokeError> {
        let mut auth =
            HeaderValue::from_str(internal_token).map_err(|_| InvokeError::Unavailable {
                message: "the internal token is not a valid header value".into(),
            })?;
        auth.set_sensitive(true);
        Ok(Self {
            auth,
            down: Arc::default(),
        })
    }

    /// The worker at `url` refused a connection less than [`DOWN_FOR`] ago: routers pick
    /// the next worker for its deployments meanwhile.
    pub fn is_down(&self, url: &str) -> bool {
        let Ok(mut down) = self.down.lock() else {
            return false;
        };
        match down.get(url) {
            Some(since) if since.elapsed() < DOWN_FOR => true,
            Some(_) => {
                down.remove(url);
                false
            }
            None => false,
        }
    }

    fn failed(&self, url: &str, e: &hyper_util::client::legacy::Error) -> InvokeError {
        if e.is_connect()
            && let Ok(mut down) = self.down.lock()
        {
            down.insert(url.to_string(), Instant::now());
        }
        InvokeError::Unavailable {
            message: describe(e),
        }
    }

    /// Runs `invocation` on the first of `workers` (base URLs, e.g. `http://10.0.0.5:7080`)
    /// that accepts a connection. Only a request without a body moves on to the next one
    /// (a body, once sent, cannot be sent again); a worker that refused is marked down.
    pub async fn invoke(
        &self,
        workers: &[Arc<str>],
        invocation: Invocation,
    ) -> Result<InvokeOutcome, InvokeFailure> {
        let Invocation {
            spec,
            request,
            deadline,
            request_id: _,
        } = invocation;
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        parts.version = http::Version::HTTP_2;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let h = &mut parts.headers;
        for name in protocol::ALL {
            h.remove(name);
        }
        h.insert(protocol::AUTH, self.auth.clone());
        if let Ok(v) = HeaderValue::from_str(&protocol::encode_spec(&spec)) {
            h.insert(protocol::SPEC, v);
        }
        h.insert(
            protocol::TIMEOUT_MS,
            HeaderValue::from(left.as_millis() as u64),
        );
        let retryable = http_body::Body::size_hint(&body).exact() == Some(0);
        let mut body = Some(body);
        let mut refused = None;
        for (i, base_url) in workers.iter().enumerate() {
            let base_url: &str = base_url;
            let last = i + 1 == workers.len() || !retryable;
            let uri: Uri = format!(
                "{}{}{}",
                base_url.trim_end_matches('/'),
                protocol::INVOKE_PREFIX,
                path
            )
            .parse()
            .map_err(|e| InvokeError::Unavailable {
                message: format!("worker address {base_url} is not valid: {e}"),
            })?;
            let this_body = if retryable {
                Body::empty()
            } else {
                match body.take() {
                    Some(b) => b,
                    None => break,
                }
            };
            let mut req = Request::new(this_body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = parts.version;
            *req.headers_mut() = if last {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };

            let client = CLIENT.with(|c| c.clone());
            let sent =
                tokio::time::timeout_at(deadline + DEADLINE_SLACK, client.request(req)).await;
            match sent {
                Ok(Ok(response)) => return self.answer(base_url, response).await,
                Ok(Err(e)) if e.is_connect() && !last => {
                    refused = Some(self.failed(base_url, &e));
                }
                Ok(Err(e)) => return Err(self.failed(base_url, &e).into()),
                Err(_) => {
                    return Err(InvokeError::Unavailable {
                        message: format!(
                            "no answer within the deadline and {} s more",
                            DEADLINE_SLACK.as_secs()
                        ),
                    }
                    .into());
                }
            }
        }
        Err(refused
            .unwrap_or_else(|| InvokeError::Unavailable {
                message: "no worker to send the request to".into(),
            })
            .into())
    }

    /// The worker's answer as an outcome or a failure.
    async fn answer(
        &self,
        base_url: &str,
        response: http::Response<hyper::body::Incoming>,
    ) -> Result<InvokeOutcome, InvokeFailure> {
        let (mut parts, body) = response.into_parts();
        let cold_start = parts
            .headers
            .get(protocol::COLD_START)
            .is_some_and(|v| v.as_bytes() == b"true");
        if parts.headers.contains_key(protocol::ERROR) {
            let bytes = read_limited(body).await;
            let error = serde_json::from_slice::<Failure>(&bytes)
                .map(Failure::into_error)
                .unwrap_or_else(|_| InvokeError::Unavailable {
                    message: format!("the worker answered {} without a reason", parts.status),
                });
            return Err(InvokeFailure { error, cold_start });
        }
        // A worker marks every answer; one without the mark came from something else (a
        // refused token, a wrong address, a proxy, the HTTP/2 layer).
        if !parts.headers.contains_key(protocol::COLD_START) {
            let message = if parts.status == http::StatusCode::UNAUTHORIZED {
                "the worker refused the internal token".to_string()
            } else {
                format!(
                    "{base_url} answered {} without being a worker",
                    parts.status
                )
            };
            return Err(InvokeError::Unavailable { message }.into());
        }
        for name in protocol::ALL {
            parts.headers.remove(name);
        }
        Ok(InvokeOutcome {
            response: http::Response::from_parts(parts, Body::new(body)),
            cold_start,
        })
    }
}

impl RemoteWorkers {
    /// Has the worker at `base_url` load `spec` now (before it goes live).
    pub async fn prepare(&self, base_url: &str, spec: &DeploymentSpec) -> Result<(), InvokeError> {
        let unavailable = |message: String| InvokeError::Unavailable { message };
        let mut req = Request::post(format!(
            "{}{}",
            base_url.trim_end_matches('/'),
            protocol::PREPARE_PATH
        ))
        .version(http::Version::HTTP_2)
        .header(protocol::AUTH, self.auth.clone());
        if let Ok(v) = HeaderValue::from_str(&protocol::encode_spec(spec)) {
            req = req.header(protocol::SPEC, v);
        }
        let req = req
            .body(Body::empty())
            .map_err(|e| unavailable(format!("worker address {base_url} is not valid: {e}")))?;
        let client = CLIENT.with(|c| c.clone());
        let response = client
            .request(req)
            .await
            .map_err(|e| self.failed(base_url, &e))?;
        let (parts, body) = response.into_parts();
        if parts.headers.contains_key(protocol::ERROR) {
            let bytes = read_limited(body).await;
            return Err(serde_json::from_slice::<Failure>(&bytes)
                .map(Failure::into_error)
                .unwrap_or_else(|_| unavailable(format!("the worker answered {}", parts.status))));
        }
        if !parts.status.is_success() {
            return Err(unavailable(format!("the worker answered {}", parts.status)));
        }
        Ok(())
    }
}

async fn read_limited(body: hyper::body::Incoming) -> Bytes {
    let limited = http_body_util::Limited::new(body, FAILURE_MAX_BYTES);
    match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

/// The client error with its cause (hyper's own message is terse: "client error (Connect)").
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}
