//! Calls that Lambda functions make (`fetch("http://NAME.reactor.internal/...")`).
//!
//! A Lambda function runs in AWS, out of any worker's reach, so the router that invokes it
//! plays the worker's part: for each invocation it builds the [`CallScope`] from the
//! request it is about to sign, grants it a capability, and gives the function that
//! capability and the URL to call back on (`functions.lambda.call_url`) as two request
//! headers, which the harness takes off before the function sees the request. The
//! harness sends each call to `{call_url}/call{path}` with the capability and the host the
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
        if let Some(warning) = config.call_url_warning() {
            tracing::warn!("{warning}");
        }
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
        if let Ok(v) = HeaderValue::from_str(grant.capability()) {
            h.insert(HeaderName::from_static(CALL_CAPABILITY), v);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::BodyExt;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// Answers with a body that streams until the test drops it; keeps the request's
    /// headers.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Option<http::HeaderMap>>,
    }

    impl RuntimeRole for Fake {
        fn runtime(&self) -> Runtime {
            Runtime::Lambda
        }
    }

    #[async_trait::async_trait]
    impl RuntimeWorker for Fake {
        async fn prepare(&self, _: &DeploymentSpec) -> Result<(), reactor_api::InvokeError> {
            Ok(())
        }

        async fn invoke(&self, invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
            if let Ok(mut seen) = self.seen.lock() {
                *seen = Some(invocation.request.headers().clone());
            }
            let chunks =
                futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("one"))])
                    .chain(futures::stream::pending());
            Ok(InvokeOutcome {
                response: http::Response::new(Body::from_stream(chunks)),
                cold_start: false,
            })
        }
    }

    fn invocation() -> Invocation {
        let spec = DeploymentSpec {
            org: "acme".into(),
            function: "hello".into(),
            deployment_id: "dep_1".into(),
            runtime: Runtime::Lambda,
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
        Invocation {
            spec: Arc::new(spec),
            request: http::Request::new(Body::empty()),
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(5),
            request_id: "req_1".into(),
            chain: Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_invocation_holds_its_capability_until_its_answer_is_gone() {
        let calls = LambdaCalls::new(
            "https://r1.calls.example.com",
            CallLink::new(),
            CallLimits::default(),
        )
        .expect("calls");
        let fake = Arc::new(Fake::default());
        let worker = calls.wrap(fake.clone());
        let outcome = worker.invoke(invocation()).await.expect("invoked");
        let seen = fake.seen.lock().expect("lock").clone().expect("a request");
        assert_eq!(seen[CALL_URL], "https://r1.calls.example.com");
        let capability = seen[CALL_CAPABILITY].to_str().expect("text").to_string();
        assert_eq!(capability.len(), 48);
        assert_eq!(calls.grants.len(), 1, "granted while the answer streams");
        let mut body = outcome.response.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "one");
        drop(body);
        assert!(
            calls.grants.is_empty(),
            "revoked when the answer is dropped"
        );
        // The capability opens nothing any more.
        let answer = calls
            .router()
            .oneshot(
                http::Request::get("/call/x")
                    .header(CALL_CAPABILITY, &capability)
                    .header(
                        reactor_worker_link::calls::CALL_HOST,
                        "back.reactor.internal",
                    )
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        assert_eq!(answer.status(), 403);
    }

    #[tokio::test]
    async fn a_failed_invocation_leaves_no_capability() {
        struct Failing;
        impl RuntimeRole for Failing {
            fn runtime(&self) -> Runtime {
                Runtime::Lambda
            }
        }
        #[async_trait::async_trait]
        impl RuntimeWorker for Failing {
            async fn prepare(&self, _: &DeploymentSpec) -> Result<(), reactor_api::InvokeError> {
                Ok(())
            }
            async fn invoke(&self, _: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
                Err(InvokeFailure {
                    error: reactor_api::InvokeError::Timeout { timeout_ms: 1 },
                    cold_start: false,
                })
            }
        }
        let calls = LambdaCalls::new("http://127.0.0.1:1", CallLink::new(), CallLimits::default())
            .expect("calls");
        assert!(
            calls
                .wrap(Arc::new(Failing))
                .invoke(invocation())
                .await
                .is_err()
        );
        assert!(calls.grants.is_empty());
    }
}
