//! Calls that Lambda functions make (`fetch("http://NAME.reactor.internal/...")`).
//!
//! A Lambda function runs in AWS, out of any worker's reach, so the router that invokes it
//! plays the worker's part: for each invocation it builds the [`CallScope`] from the
//! request it is about to sign, grants it a capability, and gives the function that
//! capability and the URL to call back on (`functions.lambda.call_url`) as two request
//! headers, which the harness takes off before the function sees the request. The
//! harness sends each call to `{call_url}/call/{path}` with the capability and the host the
//! function named; this listener (`functions.lambda.call_listen`, never the public one)
//! maps the capability back to its scope and makes the call as for any runtime. The
//! capability is revoked, and the calls still running cancelled, when the invocation
//! ends: its answer read to the end, dropped (client gone) or failed.

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue};
use reactor_api::config::LambdaConfig;
use reactor_api::{
    ApiError, CallLink, DeploymentSpec, ErrorCode, Invocation, InvokeFailure, InvokeOutcome,
    Runtime, RuntimeRole, RuntimeWorker,
};
use reactor_worker_link::calls::{
    CALL_CAPABILITY, CALL_URL, CallGrants, CallLimits, CallScope, GrantedBody,
};
use reactor_worker_link::protocol;
use std::sync::Arc;

/// The capabilities of the Lambda invocations running through this router.
pub struct LambdaCalls {
    grants: CallGrants,
    url: HeaderValue,
    link: CallLink,
    limits: CallLimits,
}

impl LambdaCalls {
    /// Calls back on `url` (a base URL that Lambda functions can reach), made through
    /// `link` (the router itself) under `limits`.
    pub fn new(url: &str, link: CallLink, limits: CallLimits) -> anyhow::Result<Arc<Self>> {
        let url = HeaderValue::from_str(url)
            .map_err(|e| anyhow::anyhow!("functions.lambda.call_url {url:?}: {e}"))?;
        Ok(Arc::new(Self {
            grants: CallGrants::default(),
            url,
            link,
            limits,
        }))
    }

    /// `runtime` with its invocations given a capability to call.
    pub fn wrap(self: &Arc<Self>, runtime: Arc<dyn RuntimeWorker>) -> Arc<dyn RuntimeWorker> {
        Arc::new(Calling {
            inner: runtime,
            calls: self.clone(),
        })
    }

    /// Binds `config.call_listen` for the calls of Lambda functions, which are given
    /// `config.call_url()`.
    pub fn bind(
        config: &LambdaConfig,
        link: CallLink,
        limits: CallLimits,
    ) -> anyhow::Result<(Arc<Self>, LambdaCallListener)> {
        let url = config.call_url()?;
        let listener = reactor_service::bind_exclusive(config.call_listen).with_context(|| {
            format!(
                "binding {} (functions.lambda.call_listen, where Lambda functions send their calls)",
                config.call_listen
            )
        })?;
        let calls = Self::new(&url, link, limits)?;
        let app = reactor_service::public_app(calls.router());
        Ok((calls, LambdaCallListener { listener, app, url }))
    }

    /// The routes of `call_listen`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(protocol::CALL_PREFIX, axum::routing::any(answer))
            .route("/call/", axum::routing::any(answer))
            .route("/call/{*rest}", axum::routing::any(answer))
            .with_state(self.clone())
            .layer(axum::extract::DefaultBodyLimit::disable())
    }
}

async fn answer(State(calls): State<Arc<LambdaCalls>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    parts.uri = match protocol::relative_path(&parts.uri, protocol::CALL_PREFIX) {
        Ok(uri) => uri,
        Err(message) => return ApiError::new(ErrorCode::InvalidInput, message).into_response(),
    };
    calls
        .grants
        .answer(http::Request::from_parts(parts, body))
        .await
}

/// The listener of [`LambdaCalls::bind`], to serve beside the router's own.
pub struct LambdaCallListener {
    pub listener: tokio::net::TcpListener,
    pub app: Router,
    /// What Lambda functions are given to call back on.
    pub url: String,
}

/// A runtime whose invocations may call back through [`LambdaCalls`].
struct Calling {
    inner: Arc<dyn RuntimeWorker>,
    calls: Arc<LambdaCalls>,
}

impl RuntimeRole for Calling {
    fn runtime(&self) -> Runtime {
        self.inner.runtime()
    }
}

#[async_trait::async_trait]
impl RuntimeWorker for Calling {
    async fn prepare(&self, spec: &DeploymentSpec) -> Result<(), reactor_api::InvokeError> {
        self.inner.prepare(spec).await
    }

    async fn invoke(&self, mut invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
        let calls = &self.calls;
        let scope = CallScope::for_invocation(calls.link.clone(), calls.limits, &invocation);
        // Held until the answer is done: dropped with the future (client gone) or on
        // failure, it revokes the capability and cancels the calls.
        let grant = calls.grants.grant(scope);
        let h = invocation.request.headers_mut();
        h.insert(HeaderName::from_static(CALL_URL), calls.url.clone());
        match HeaderValue::from_str(grant.capability()) {
            Ok(v) => h.insert(HeaderName::from_static(CALL_CAPABILITY), v),
            Err(_) => h.remove(CALL_CAPABILITY),
        };
        let outcome = self.inner.invoke(invocation).await?;
        Ok(InvokeOutcome {
            response: outcome
                .response
                .map(|body| Body::new(GrantedBody::new(body, grant))),
            cold_start: outcome.cold_start,
        })
    }

    async fn retire(&self, deployment_id: &str) {
        self.inner.retire(deployment_id).await
    }
}
