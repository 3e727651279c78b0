//! Calls between functions on the worker where they start (the rules are in
//! `reactor_api::calls`). [`CallScope`] is one invocation's right to call, built from what
//! the router stamped on its request, never from the function's code: the runtime hands
//! it each outgoing request to `*.reactor.internal`, and it resolves the host through the
//! caller's `calls`, counts the call, checks the deadline, stamps the context and sends
//! it through the worker's [`CallLink`]: to a router's call listener ([`RouterCalls`]) or,
//! in `reactor dev`, to the router in process. When the invocation ends, its
//! [`CallGuard`] cancels every call it started that is still running, down the chain.
//!
//! Code that runs out of the worker's reach (a Bun process, a Lambda function) sends its
//! calls back with a capability: [`CallGrants`] maps each running invocation's capability
//! to its scope, and revokes it when the invocation ends.

use crate::protocol;
use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use reactor_api::calls::{
    self, CallContext, CallError, TraceParent, callee_timeout, check_baggage, count_call,
};
use reactor_api::config::CallsConfig;
use reactor_api::model::Role;
use reactor_api::{
    ApiError, CallForwarder, CallLink, DeploymentSpec, ErrorCode, Invocation, headers,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;

/// The longest `tracestate` passed on to a callee.
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// What bounds the calls of one invocation (`[functions.calls]`).
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    pub max_calls_per_invocation: u32,
    pub deadline_margin: Duration,
    /// Hops a chain may have (checked where a call runs: the router, or an inline call).
    pub max_depth: u32,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self::from(&CallsConfig::default())
    }
}

impl From<&CallsConfig> for CallLimits {
    fn from(c: &CallsConfig) -> Self {
        Self {
            max_calls_per_invocation: c.max_calls_per_invocation,
            deadline_margin: Duration::from_millis(c.deadline_margin_ms),
            max_depth: c.max_depth,
        }
    }
}

/// The host an outgoing request names (its URI's authority, else its `Host` header), when
/// it is under `reactor.internal`: such a request is a call, never sent elsewhere.
pub fn internal_host<B>(request: &Request<B>) -> Option<String> {
    let host = match request.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => request
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .to_string(),
    };
    // `user@host` is not a host: refuse it as a call rather than send it outside.
    let host = host.rsplit('@').next().unwrap_or_default().to_string();
    calls::is_internal(&host).then_some(host)
}

/// One invocation's calls: who it acts for, where it is in its chain and trace, its
/// deadline and how many calls it started.
pub struct CallScope {
    link: CallLink,
    limits: CallLimits,
    spec: Arc<DeploymentSpec>,
    /// The original request's token and role, as the router stamped them.
    identity: Option<(String, Role)>,
    request_id: String,
    traceparent: Option<TraceParent>,
    tracestate: Option<String>,
    baggage: Option<String>,
    /// The chain, this invocation's function last.
    chain: Vec<String>,
    deadline: Instant,
    started: AtomicU32,
    cancel: CancellationToken,
    /// Set when this invocation runs a custom interceptor: its handle on the rest of the
    /// chain, used by its call to `next.reactor.internal`.
    next: Option<String>,
}

impl CallScope {
    /// The scope of an invocation of `spec` whose request (as the router rewrote it) has
    /// `headers`; `chain` ends with `spec.function`.
    pub fn new(
        link: CallLink,
        limits: CallLimits,
        spec: Arc<DeploymentSpec>,
        headers: &HeaderMap,
        chain: Vec<String>,
        deadline: Instant,
        request_id: &str,
    ) -> Arc<Self> {
        let get = |name: &str| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        let identity =
            get(headers::CALLER_TOKEN).zip(get(headers::CALLER_ROLE).and_then(|r| Role::parse(&r)));
        Arc::new(Self {
            link,
            limits,
            identity,
            request_id: request_id.to_string(),
            traceparent: get(headers::TRACEPARENT).and_then(|t| TraceParent::parse(&t)),
            // W3C lets a hop drop a `tracestate` longer than 512 characters.
            tracestate: get(headers::TRACESTATE).filter(|t| t.len() <= MAX_TRACESTATE_BYTES),
            // An invalid one from outside is not passed on (the calls would all fail).
            baggage: get(headers::BAGGAGE).filter(|b| check_baggage(b).is_ok()),
            chain,
            deadline,
            started: AtomicU32::new(0),
            cancel: CancellationToken::new(),
            next: get(headers::NEXT),
            spec,
        })
    }

    /// The scope of `invocation`, as the router sent it (before the runtime changes its
    /// request).
    pub fn for_invocation(
        link: CallLink,
        limits: CallLimits,
        invocation: &Invocation,
    ) -> Arc<Self> {
        Self::new(
            link,
            limits,
            invocation.spec.clone(),
            invocation.request.headers(),
            invocation.path(),
            invocation.deadline,
            &invocation.request_id,
        )
    }

    /// Held while the invocation runs: dropping it cancels the calls still running.
    pub fn guard(&self) -> CallGuard {
        CallGuard(self.cancel.clone())
    }

    pub fn deployment(&self) -> &DeploymentSpec {
        &self.spec
    }

    /// Makes the call `request` (to `host`, under `reactor.internal`) and answers what
    /// the caller's code reads: the callee's response, or a refusal as the platform's
    /// JSON error.
    pub async fn call(&self, host: &str, request: Request<Body>) -> Response<Body> {
        match self.prepare(host, request) {
            Ok((forwarder, context, request, span)) => {
                let cancel = self.cancel.clone();
                let response = tokio::select! {
                    r = forwarder.forward_call(context, request).instrument(span.clone()) => r,
                    _ = cancel.cancelled() => return ended(),
                };
                if reactor_service::telemetry::tracing_on() {
                    span.record("http.response.status_code", response.status().as_u16());
                    if response.status().is_server_error() {
                        reactor_service::telemetry::set_error(&span, "the callee failed");
                    }
                }
                let (parts, body) = response.into_parts();
                let inner = Arc::new(std::sync::Mutex::new(Some(body)));
                // Dropped when the invocation ends, even if nobody reads it any more: the
                // callee's stream is reset then, not at its own deadline.
                let slot = Arc::downgrade(&inner);
                let watch = cancel.clone();
                tokio::spawn(async move {
                    watch.cancelled().await;
                    if let Some(slot) = slot.upgrade()
                        && let Ok(mut body) = slot.lock()
                    {
                        body.take();
                    }
                });
                let body = Body::new(Cancellable {
                    inner,
                    cancelled: Box::pin(cancel.cancelled_owned()),
                });
                Response::from_parts(parts, body)
            }
            Err(e) => e.into_response(),
        }
    }

    /// The checks a call passes on this worker, and the context it carries.
    fn prepare(&self, host: &str, request: Request<Body>) -> Result<Prepared, ApiError> {
        if self.cancel.is_cancelled() {
            return Err(ended_error());
        }
        // An interceptor's `next` is the rest of its chain, whatever its `calls` say.
        let next = self.next.clone().filter(|_| {
            calls::internal_target(host).as_deref() == Some(reactor_api::interceptors::NEXT_LABEL)
        });
        let target = match &next {
            Some(_) => calls::CallTarget {
                function: reactor_api::interceptors::NEXT_LABEL.to_string(),
                contract: None,
                alias: None,
                timeout_ms: None,
            },
            None => calls::resolve(host, self.spec.calls.as_ref())?.ok_or_else(|| {
                CallError::NotAllowed {
                    target: host.to_string(),
                    reason: "functions are called at NAME.reactor.internal",
                }
            })?,
        };
        let Some((token_id, role)) = self.identity.clone() else {
            return Err(ApiError::new(
                ErrorCode::CallNotAllowed,
                "this invocation carries no caller identity: calls are made only while serving a request",
            ));
        };
        self.started
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                count_call(n, self.limits.max_calls_per_invocation).ok()
            })
            .map_err(|_| CallError::TooManyCalls {
                max: self.limits.max_calls_per_invocation,
            })?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        callee_timeout(remaining, Duration::MAX, None, self.limits.deadline_margin)?;
        let (mut parts, body) = request.into_parts();
        // The caller's own `baggage` is its context for the callee (checked); without
        // one, the invocation's passes on.
        let own_baggage: Vec<&str> = parts
            .headers
            .get_all(headers::BAGGAGE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let baggage = if own_baggage.is_empty() {
            self.baggage.clone()
        } else {
            Some(own_baggage.join(","))
        };
        if let Some(b) = &baggage {
            check_baggage(b).map_err(CallError::from)?;
        }
        // The call's client span, under the span the function was given; the callee's
        // router span is its child.
        let span = reactor_service::trace_span!(
            "call",
            otel.name = %format_args!("call {}", target.function),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            faas.invoked_name = %target.function,
            http.response.status_code = tracing::field::Empty,
        );
        let traceparent = reactor_service::telemetry::traceparent_of(&span, self.traceparent);
        let Some(forwarder) = self.link.get().cloned() else {
            return Err(ApiError::new(
                ErrorCode::NoWorkerAvailable,
                "calls between functions are not set up on this worker: it has no router to send them to (worker.router_url)",
            ));
        };
        let context = CallContext {
            org: self.spec.org.clone(),
            token_id,
            role,
            caller_function: self.spec.function.clone(),
            caller_deployment: self.spec.deployment_id.clone(),
            request_id: self.request_id.clone(),
            traceparent: traceparent.to_string(),
            tracestate: self.tracestate.clone(),
            baggage,
            chain: self.chain.clone(),
            target,
            remaining_ms: remaining.as_millis() as u64,
            next,
        };
        // The path and query only: the host named the callee.
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        parts.uri = path
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        // What the context carries, the router sets on the callee's request.
        for name in [
            http::header::HOST.as_str(),
            headers::TRACEPARENT,
            headers::TRACESTATE,
            headers::BAGGAGE,
        ] {
            parts.headers.remove(name);
        }
        for name in protocol::ALL {
            parts.headers.remove(name);
        }
        Ok((forwarder, context, Request::from_parts(parts, body), span))
    }
}

/// A call that passed this worker's checks: where it goes, what it carries, the request.
type Prepared = (
    Arc<dyn CallForwarder>,
    CallContext,
    Request<Body>,
    tracing::Span,
);

/// Cancels an invocation's running calls when dropped (the invocation ended: answered,
/// timed out, crashed or its client went away).
pub struct CallGuard(CancellationToken);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn ended_error() -> ApiError {
    ApiError::new(
        ErrorCode::DeadlineExceeded,
        "the calling invocation has ended: its calls are cancelled",
    )
}

fn ended() -> Response<Body> {
    ended_error().into_response()
}

/// A call's response body, cut when the calling invocation ends.
struct Cancellable {
    inner: Arc<std::sync::Mutex<Option<Body>>>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl http_body::Body for Cancellable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let ended = || {
            Poll::Ready(Some(Err(axum::Error::new(
                "the calling invocation has ended",
            ))))
        };
        if this.cancelled.as_mut().poll(cx).is_ready() {
            return ended();
        }
        let Ok(mut inner) = this.inner.lock() else {
            return ended();
        };
        match inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => ended(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .lock()
            .ok()
            .and_then(|b| b.as_ref().map(http_body::Body::size_hint))
            .unwrap_or_default()
    }
}

/// The request headers of the capability protocol: the runtime gives an invocation its
/// capability (and, to Lambda, the URL to call back) on its request; the harness sends
/// the capability and the host the function named back with each call.
pub use reactor_bun_dist::{CALL_CAPABILITY, CALL_HOST, CALL_URL};

/// The capabilities of running invocations, each mapped to its [`CallScope`]. A
/// capability is 24 random bytes: unguessable, good only while its invocation runs, and
/// only for calls as that invocation.
#[derive(Clone, Default)]
pub struct CallGrants(Arc<std::sync::Mutex<HashMap<String, Arc<CallScope>>>>);

impl CallGrants {
    /// A capability for `scope`'s invocation, valid until the grant is dropped.
    pub fn grant(&self, scope: Arc<CallScope>) -> CallGrant {
        let capability = hex::encode(rand::random::<[u8; 24]>());
        let guard = scope.guard();
        if let Ok(mut grants) = self.0.lock() {
            grants.insert(capability.clone(), scope);
        }
        CallGrant {
            capability,
            grants: self.clone(),
            _guard: guard,
        }
    }

    /// How many invocations hold a capability now.
    pub fn len(&self) -> usize {
        self.0.lock().map(|g| g.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One call sent back with a capability ([`CALL_CAPABILITY`]) and the host the function
    /// named ([`CALL_HOST`]); `request`'s URI is the call's path and query. Without a
    /// capability that is running, 403 `call_not_allowed`.
    pub async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let scope = header(CALL_CAPABILITY)
            .and_then(|capability| self.0.lock().ok().and_then(|g| g.get(&capability).cloned()));
        let Some(scope) = scope else {
            return ApiError::new(
                ErrorCode::CallNotAllowed,
                "calls between functions are made while serving a request, from its own code (this capability is unknown or its invocation has ended)",
            )
            .into_response();
        };
        let Some(host) = header(CALL_HOST) else {
            return ApiError::new(
                ErrorCode::InvalidInput,
                format!("the call names no host ({CALL_HOST}, which the harness sends)"),
            )
            .into_response();
        };
        for name in [
            CALL_CAPABILITY,
            CALL_HOST,
            CALL_URL,
            http::header::HOST.as_str(),
        ] {
            parts.headers.remove(name);
        }
        scope.call(&host, Request::from_parts(parts, body)).await
    }
}

/// An invocation's right to call: revoked (and its calls still running cancelled) when
/// dropped.
pub struct CallGrant {
    capability: String,
    grants: CallGrants,
    _guard: CallGuard,
}

impl CallGrant {
    pub fn capability(&self) -> &str {
        &self.capability
    }
}

impl Drop for CallGrant {
    fn drop(&mut self) {
        if let Ok(mut grants) = self.grants.0.lock() {
            grants.remove(&self.capability);
        }
    }
}

/// A response body that holds its invocation's [`CallGrant`] until it ends or is dropped.
pub struct GrantedBody {
    inner: Body,
    grant: Option<CallGrant>,
}

impl GrantedBody {
    pub fn new(inner: Body, grant: CallGrant) -> Self {
        Self {
            inner,
            grant: Some(grant),
        }
    }
}

impl http_body::Body for GrantedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // The answer is complete: the invocation is over, whoever holds the body.
            this.grant = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Sends calls to a router's call listener (`data_plane.call_listen`) over HTTP/2,
/// authenticated with the internal token and, with `internal.tls`, the worker's
/// certificate.
pub struct RouterCalls {
    base: String,
    auth: HeaderValue,
    client: hyper_util::client::legacy::Client<reactor_service::tls::Connector, Body>,
}

impl RouterCalls {
    /// Calls to `router_url`; with `tls`, over mutual TLS to a router's certificate only.
    pub fn new(
        router_url: &str,
        internal_token: &str,
        tls: Option<&reactor_service::tls::InternalTls>,
    ) -> Result<Self, String> {
        let mut auth = HeaderValue::from_str(internal_token)
            .map_err(|_| "the internal token is not a valid header value".to_string())?;
        auth.set_sensitive(true);
        let (base, connector) = match tls {
            Some(tls) => (
                reactor_proto::client::https_url(router_url).ok_or_else(|| {
                    format!("worker.router_url {router_url:?} is not an http(s) URL")
                })?,
                tls.https_connector(
                    crate::client::http_connector(),
                    reactor_service::tls::Role::Router,
                )
                .map_err(|e| e.to_string())?,
            ),
            None => (
                router_url.to_string(),
                reactor_service::tls::plain_connector(crate::client::http_connector())
                    .map_err(|e| e.to_string())?,
            ),
        };
        base.parse::<Uri>()
            .map_err(|e| format!("worker.router_url {router_url:?} is not a URL: {e}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            auth,
            client: crate::client::new_client(connector),
        })
    }
}

#[async_trait::async_trait]
impl CallForwarder for RouterCalls {
    async fn forward_call(&self, context: CallContext, request: Request<Body>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = format!("{}{}{path}", self.base, protocol::CALL_PREFIX);
        parts.uri = match uri.parse() {
            Ok(uri) => uri,
            Err(e) => {
                return ApiError::new(
                    ErrorCode::InvalidInput,
                    format!("the call's path is not valid: {e}"),
                )
                .into_response();
            }
        };
        parts.version = http::Version::HTTP_2;
        parts.headers.insert(protocol::AUTH, self.auth.clone());
        // The baggage (up to 8 KiB) as itself, the rest of the context in one header:
        // together well inside HTTP/2's 16 KiB of headers.
        let mut context = context;
        if let Some(v) = context
            .baggage
            .take()
            .and_then(|b| HeaderValue::from_str(&b).ok())
        {
            parts.headers.insert(headers::BAGGAGE, v);
        }
        if let Ok(v) = HeaderValue::from_str(&protocol::encode_call(&context)) {
            parts.headers.insert(protocol::CALL, v);
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => response.map(Body::new),
            Err(e) => ApiError::new(
                ErrorCode::WorkerUnavailable,
                format!(
                    "the call to {} could not reach a router: {}",
                    context.target.function,
                    crate::client::describe(&e)
                ),
            )
            .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_hosts_are_taken_from_the_uri_or_the_host_header() {
        let req = Request::get("http://users.reactor.internal/x")
            .body(())
            .expect("request");
        assert_eq!(
            internal_host(&req).as_deref(),
            Some("users.reactor.internal")
        );
        let req = Request::get("/x")
            .header("host", "Users.Reactor.Internal:8080")
            .body(())
            .expect("request");
        assert_eq!(
            internal_host(&req).as_deref(),
            Some("Users.Reactor.Internal:8080")
        );
        let req = Request::get("https://example.com/x")
            .body(())
            .expect("request");
        assert_eq!(internal_host(&req), None);
        let req = Request::get("http://a@b.reactor.internal/")
            .body(())
            .expect("request");
        assert_eq!(internal_host(&req).as_deref(), Some("b.reactor.internal"));
    }

    /// Answers every call with the function it was for and the caller's depth.
    struct Echo;

    #[async_trait::async_trait]
    impl CallForwarder for Echo {
        async fn forward_call(&self, context: CallContext, _: Request<Body>) -> Response<Body> {
            Response::new(Body::from(format!(
                "{} from {} at {}",
                context.target.function,
                context.caller_function,
                context.chain.len()
            )))
        }
    }

    fn scope() -> Arc<CallScope> {
        let spec = DeploymentSpec {
            org: "acme".into(),
            function: "front".into(),
            deployment_id: "dep_1".into(),
            runtime: reactor_api::Runtime::Lambda,
            entrypoint: "index.js".into(),
            bundle_key: String::new(),
            sha256: String::new(),
            timeout_ms: 5_000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
            calls: None,
            pool: None,
        };
        let mut h = HeaderMap::new();
        h.insert(headers::CALLER_TOKEN, HeaderValue::from_static("tok_1"));
        h.insert(headers::CALLER_ROLE, HeaderValue::from_static("invoker"));
        CallScope::new(
            CallLink::to(Arc::new(Echo)),
            CallLimits::default(),
            Arc::new(spec),
            &h,
            vec!["front".into()],
            Instant::now() + Duration::from_secs(5),
            "req_1",
        )
    }

    async fn answer(grants: &CallGrants, capability: &str) -> (u16, String) {
        let req = Request::get("/x")
            .header(CALL_CAPABILITY, capability)
            .header(CALL_HOST, "back.reactor.internal")
            .body(Body::empty())
            .expect("request");
        let resp = grants.answer(req).await;
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_capability_calls_as_its_invocation_until_it_is_revoked() {
        let grants = CallGrants::default();
        let grant = grants.grant(scope());
        let capability = grant.capability().to_string();
        assert_eq!(capability.len(), 48);
        assert_eq!(grants.len(), 1);
        let (status, body) = answer(&grants, &capability).await;
        assert_eq!((status, body.as_str()), (200, "back from front at 1"));
        let (status, body) = answer(&grants, &"0".repeat(48)).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("call_not_allowed"), "{body}");
        drop(grant);
        assert!(grants.is_empty());
        let (status, body) = answer(&grants, &capability).await;
        assert_eq!(status, 403, "revoked with its invocation: {body}");
    }
}
