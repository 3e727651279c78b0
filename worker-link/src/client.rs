//! The router side: forwards an invocation to a worker over HTTP/2 and turns the answer
//! back into an outcome or a failure.

use crate::protocol;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use reactor_api::{DeploymentSpec, Invocation, InvokeError, InvokeFailure, InvokeOutcome};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long past the function's deadline a router waits for a worker that enforces it
/// itself, before giving up on that worker.
const DEADLINE_SLACK: Duration = Duration::from_secs(2);
/// The most of a failure body read back.
const FAILURE_MAX_BYTES: usize = 64 * 1024;

type HttpClient = Client<reactor_service::tls::Connector, Body>;

thread_local! {
    // One client (and so one HTTP/2 connection per worker) per server thread and
    // connector: each runtime drives its own connections, nothing is handed between
    // threads.
    static CLIENTS: std::cell::RefCell<Vec<(usize, HttpClient)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Ids of TLS connectors (0: plain TCP), so that each thread keeps one client per config.
static NEXT_CONNECTOR: AtomicUsize = AtomicUsize::new(1);

pub(crate) fn http_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector
}

pub(crate) fn new_client(connector: reactor_service::tls::Connector) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_only(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(10)))
        .http2_keep_alive_timeout(Duration::from_secs(5))
        .build(connector)
}

/// How long a worker that refused a connection is passed over (about the registry's
/// TTL: by then it is back, or out of the table).
const DOWN_FOR: Duration = Duration::from_secs(1);
/// Load bound: a deployment's worker (first in rendezvous order) takes requests while it
/// has fewer than `max(LOAD_FLOOR, LOAD_FACTOR × the mean in flight)` of this router's
/// requests in flight; beyond that the next worker in rendezvous order takes them. The
/// floor keeps a quiet function on its warm worker; the factor (1.25, as in "consistent
/// hashing with bounded loads") lets a hot one spill instead of melting one worker.
const LOAD_FLOOR: usize = 32;
const LOAD_FACTOR: f64 = 1.25;

/// Forwards invocations to worker services, authenticated with the internal token, over
/// plain TCP or mutual TLS ([`RemoteWorkers::with_tls`]).
#[derive(Clone)]
pub struct RemoteWorkers {
    auth: HeaderValue,
    /// The connector's id (0: plain TCP) and the connector.
    connector: (usize, reactor_service::tls::Connector),
    /// Workers whose address refused a connection, and since when.
    down: Arc<Mutex<HashMap<String, Instant>>>,
    /// This router's requests in flight per worker (until their response body ends).
    in_flight: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
}

/// The index in `loads` (workers in rendezvous order) of the worker to send to: the first
/// under the load bound, else the least loaded.
pub fn bounded_pick(loads: &[usize]) -> usize {
    if loads.is_empty() {
        return 0;
    }
    let total: usize = loads.iter().sum();
    let mean = (total + 1) as f64 / loads.len() as f64;
    let bound = LOAD_FLOOR.max((LOAD_FACTOR * mean).ceil() as usize);
    loads.iter().position(|&l| l < bound).unwrap_or_else(|| {
        loads
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .map_or(0, |(i, _)| i)
    })
}

/// One request counted against a worker while it runs.
struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request body of one attempt. It takes the real body out of the shared slot on its
/// first poll, so an attempt that never got to send it (the worker refused the connection)
/// leaves it there for the next worker: such a request was not sent and is retried.
struct AttemptBody {
    slot: Arc<Mutex<Option<Body>>>,
    taken: Option<Body>,
    hint: http_body::SizeHint,
}

impl http_body::Body for AttemptBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            this.taken = this.slot.lock().ok().and_then(|mut s| s.take());
        }
        match this.taken.as_mut() {
            Some(body) => std::pin::Pin::new(body).poll_frame(cx),
            None => std::task::Poll::Ready(Some(Err(axum::Error::new(
                "the request body went to another attempt",
            )))),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.hint
    }
}

impl RemoteWorkers {
    pub fn new(internal_token: &str) -> Result<Self, InvokeError> {
        let mut auth =
            HeaderValue::from_str(internal_token).map_err(|_| InvokeError::Unavailable {
                message: "the internal token is not a valid header value".into(),
            })?;
        auth.set_sensitive(true);
        let plain = reactor_service::tls::plain_connector(http_connector()).map_err(|e| {
            InvokeError::Unavailable {
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            auth,
            connector: (0, plain),
            down: Arc::default(),
            in_flight: Arc::default(),
        })
    }

    /// Reaches workers over mutual TLS only (`https`), presenting `tls`'s certificate and
    /// accepting only a worker's.
    pub fn with_tls(
        mut self,
        tls: &reactor_service::tls::InternalTls,
    ) -> Result<Self, InvokeError> {
        let connector = tls
            .https_connector(http_connector(), reactor_service::tls::Role::Worker)
            .map_err(|e| InvokeError::Unavailable {
                message: e.to_string(),
            })?;
        self.connector = (NEXT_CONNECTOR.fetch_add(1, Ordering::Relaxed), connector);
        Ok(self)
    }

    /// This thread's client for this connector.
    fn client(&self) -> HttpClient {
        let (id, connector) = &self.connector;
        CLIENTS.with(|clients| {
            let mut clients = clients.borrow_mut();
            if let Some((_, c)) = clients.iter().find(|(i, _)| i == id) {
                return c.clone();
            }
            let c = new_client(connector.clone());
            clients.push((*id, c.clone()));
            c
        })
    }

    fn load_of(&self, url: &str) -> Arc<AtomicUsize> {
        let Ok(mut map) = self.in_flight.lock() else {
            return Arc::default();
        };
        if let Some(c) = map.get(url) {
            return c.clone();
        }
        if map.len() >= 4096 {
            map.retain(|_, c| c.load(Ordering::Acquire) > 0);
        }
        map.entry(url.to_string()).or_default().clone()
    }

    /// `workers` (rendezvous order) reordered by the load bound: the pick first, then the
    /// others in their order, to fail over to.
    fn balance(&self, workers: &[Arc<str>]) -> Vec<(Arc<str>, Arc<AtomicUsize>)> {
        let mut counted: Vec<(Arc<str>, Arc<AtomicUsize>)> = workers
            .iter()
            .map(|w| (w.clone(), self.load_of(w)))
            .collect();
        let loads: Vec<usize> = counted
            .iter()
            .map(|(_, c)| c.load(Ordering::Acquire))
            .collect();
        let pick = bounded_pick(&loads);
        if pick > 0 && pick < counted.len() {
            let chosen = counted.remove(pick);
            counted.insert(0, chosen);
        }
        counted
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

    /// Runs `invocation` on one of `workers` (base URLs in rendezvous order, e.g.
    /// `http://10.0.0.5:7080`): the first under the load bound ([`bounded_pick`]), then
    /// the others in order while a worker refuses the connection. A request moves on only
    /// while it has not been sent (its body not yet read), so nothing runs twice; a worker
    /// that refused is marked down for [`DOWN_FOR`].
    pub async fn invoke(
        &self,
        workers: &[Arc<str>],
        invocation: Invocation,
    ) -> Result<InvokeOutcome, InvokeFailure> {
        self.invoke_reporting(workers, invocation).await.1
    }

    /// [`RemoteWorkers::invoke`], saying which worker answered or failed last (for a
    /// retry to go elsewhere).
    pub async fn invoke_reporting(
        &self,
        workers: &[Arc<str>],
        invocation: Invocation,
    ) -> (Option<Arc<str>>, Result<InvokeOutcome, InvokeFailure>) {
        let mut last = None;
        let result = self.try_in_order(workers, invocation, &mut last).await;
        (last, result)
    }

    async fn try_in_order(
        &self,
        workers: &[Arc<str>],
        invocation: Invocation,
        last_tried: &mut Option<Arc<str>>,
    ) -> Result<InvokeOutcome, InvokeFailure> {
        let Invocation {
            spec,
            request,
            deadline,
            request_id: _,
            chain,
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
        if !chain.is_empty()
            && let Ok(v) = HeaderValue::from_str(&protocol::encode_chain(&chain))
        {
            h.insert(protocol::CHAIN, v);
        }
        let hint = http_body::Body::size_hint(&body);
        let slot = Arc::new(Mutex::new(Some(body)));
        let order = self.balance(workers);
        let mut refused = None;
        for (i, (base_url, load)) in order.iter().enumerate() {
            *last_tried = Some(base_url.clone());
            let base_url: &str = base_url;
            let last = i + 1 == order.len();
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
            let mut req = Request::new(Body::new(AttemptBody {
                slot: slot.clone(),
                taken: None,
                hint,
            }));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = parts.version;
            *req.headers_mut() = if last {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };

            load.fetch_add(1, Ordering::AcqRel);
            let guard = LoadGuard(load.clone());
            let client = self.client();
            let sent =
                tokio::time::timeout_at(deadline + DEADLINE_SLACK, client.request(req)).await;
            // Not sent when the body is still in the slot: the next worker may take it.
            let unsent = slot.lock().is_ok_and(|s| s.is_some());
            match sent {
                Ok(Ok(response)) => return self.answer(base_url, response, guard).await,
                Ok(Err(e)) if e.is_connect() && unsent && !last => {
                    tracing::debug!(worker = base_url, error = %describe(&e), "worker refused the connection: trying the next");
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
        guard: LoadGuard,
    ) -> Result<InvokeOutcome, InvokeFailure> {
        let (mut parts, body) = response.into_parts();
        let cold_start = parts
            .headers
            .get(protocol::COLD_START)
            .is_some_and(|v| v.as_bytes() == b"true");
        if parts.headers.contains_key(protocol::ERROR) {
            let bytes = read_limited(body).await;
            let error = if bytes.is_empty() {
                InvokeError::Unavailable {
                    message: format!("the worker answered {} without a reason", parts.status),
                }
            } else {
                protocol::decode_error(&bytes)
            };
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
        // The worker's load counts until the response body ends or is dropped.
        let body = body.map_frame(move |frame| {
            let _counted = &guard;
            frame
        });
        Ok(InvokeOutcome {
            response: http::Response::from_parts(parts, Body::new(body)),
            cold_start,
        })
    }
}

impl RemoteWorkers {
    /// A control call (`/prepare`, `/build`) about `spec` to the worker at `base_url`.
    fn control_request(
        &self,
        base_url: &str,
        path: &str,
        spec: &DeploymentSpec,
    ) -> Result<Request<Body>, String> {
        let mut req = Request::post(format!("{}{path}", base_url.trim_end_matches('/')))
            .version(http::Version::HTTP_2)
            .header(protocol::AUTH, self.auth.clone());
        if let Ok(v) = HeaderValue::from_str(&protocol::encode_spec(spec)) {
            req = req.header(protocol::SPEC, v);
        }
        req.body(Body::empty())
            .map_err(|e| format!("worker address {base_url} is not valid: {e}"))
    }

    /// Has the worker at `base_url` load `spec` now (before it goes live).
    pub async fn prepare(&self, base_url: &str, spec: &DeploymentSpec) -> Result<(), InvokeError> {
        let unavailable = |message: String| InvokeError::Unavailable { message };
        let req = self
            .control_request(base_url, protocol::PREPARE_PATH, spec)
            .map_err(unavailable)?;
        let client = self.client();
        let response = client
            .request(req)
            .await
            .map_err(|e| self.failed(base_url, &e))?;
        let (parts, body) = response.into_parts();
        if parts.headers.contains_key(protocol::ERROR) {
            let bytes = read_limited(body).await;
            return Err(if bytes.is_empty() {
                unavailable(format!("the worker answered {}", parts.status))
            } else {
                protocol::decode_error(&bytes)
            });
        }
        if !parts.status.is_success() {
            return Err(unavailable(format!("the worker answered {}", parts.status)));
        }
        Ok(())
    }
}

/// Why a build on a worker did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The worker built and the bundle failed: the deployment fails with this reason.
    #[error("{0}")]
    Failed(String),
    /// The worker went away after taking the build (it may have run out of memory on this
    /// bundle): not retried elsewhere, so that one bundle cannot take down every worker.
    #[error("{0}")]
    Lost(String),
    /// The worker could not be reached, or answered as no worker would: try another.
    #[error("{0}")]
    Unreachable(String),
}

impl RemoteWorkers {
    /// Has the worker at `base_url` build `spec` from its stored bundle.
    pub async fn build(&self, base_url: &str, spec: &DeploymentSpec) -> Result<(), BuildError> {
        let req = self
            .control_request(base_url, protocol::BUILD_PATH, spec)
            .map_err(BuildError::Unreachable)?;
        let client = self.client();
        let response = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                BuildError::Unreachable(describe(&e))
            } else {
                BuildError::Lost(describe(&e))
            }
        })?;
        let (parts, body) = response.into_parts();
        if parts.status.is_success() {
            return Ok(());
        }
        let bytes = read_limited(body).await;
        if parts.status == http::StatusCode::UNPROCESSABLE_ENTITY
            && parts.headers.contains_key(protocol::ERROR)
        {
            return Err(BuildError::Failed(
                serde_json::from_slice::<protocol::BuildFailed>(&bytes)
                    .map(|f| f.message)
                    .unwrap_or_else(|_| "the build failed (its reason could not be read)".into()),
            ));
        }
        Err(BuildError::Unreachable(format!(
            "{base_url} answered the build with {}",
            parts.status
        )))
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
pub(crate) fn describe(e: &hyper_util::client::legacy::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_home_worker_keeps_requests_until_the_bound_then_they_spill() {
        // Quiet: everything stays home, even when the others are idle.
        assert_eq!(bounded_pick(&[0, 0, 0]), 0);
        assert_eq!(bounded_pick(&[LOAD_FLOOR - 1, 0, 0]), 0);
        // At the floor with the others idle: the next in rendezvous order.
        assert_eq!(bounded_pick(&[LOAD_FLOOR, 0, 0]), 1);
        assert_eq!(bounded_pick(&[LOAD_FLOOR, LOAD_FLOOR, 0]), 2);
        // Heavily loaded everywhere: the bound grows with the mean (1.25 ×).
        assert_eq!(bounded_pick(&[100, 90, 90]), 0);
        assert_eq!(bounded_pick(&[130, 90, 90]), 1);
        // All over the bound (cannot happen with the mean, but be total): least loaded.
        assert_eq!(bounded_pick(&[]), 0);
    }
}
