//! Custom interceptors: functions of the org a request passes through before the built-in
//! interceptors (`interceptors.custom`, outermost first). User code never runs here: the
//! router invokes each interceptor function on its worker, like any function, with the
//! request and a one-time handle ([`headers::NEXT`]). The interceptor either answers
//! itself (the target never runs), or sends a request, changed or not, to
//! `http://next.reactor.internal`: its worker attaches the handle to that call, the router
//! hands it back here ([`Nexts`]), and it runs the rest of the chain (the next interceptor,
//! then retry → breaker → admission → forward). What the interceptor answers, changed or
//! not, is the answer.
//!
//! The rest of the chain keeps the platform's headers of the original request (identity,
//! deadline, depth, trace): whatever the interceptor set in them is replaced.

use super::{Answer, Attempt, Outcome};
use crate::admission::Permit;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue};
use reactor_api::{ApiError, DeploymentSpec, ErrorCode, headers};
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{Layer, Service};

/// A request an interceptor sent to `next`, and where its answer goes.
pub struct NextRequest {
    pub request: http::Request<Body>,
    pub reply: oneshot::Sender<Response>,
}

/// The handles of the interceptors running on this router: each is taken once, by a call
/// from the same org and interceptor function it was given to.
#[derive(Default)]
pub struct Nexts {
    slots: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    org: String,
    function: String,
    /// The request the interceptor runs for: a handle serves no other.
    request_id: String,
    tx: oneshot::Sender<NextRequest>,
}

/// Closes a handle when its run ends, however it ends (answered, timed out, dropped).
struct Open {
    nexts: Arc<Nexts>,
    id: String,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.nexts.close(&self.id);
    }
}

impl Nexts {
    fn open(
        &self,
        org: &str,
        function: &str,
        request_id: &str,
    ) -> (String, oneshot::Receiver<NextRequest>) {
        let id = format!("nx_{}", ulid::Ulid::new());
        let (tx, rx) = oneshot::channel();
        let slot = Slot {
            org: org.to_string(),
            function: function.to_string(),
            request_id: request_id.to_string(),
            tx,
        };
        self.lock().insert(id.clone(), slot);
        (id, rx)
    }

    fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Hands `request` to the interceptor run that gave out `id`, when the call comes from
    /// that run's org, function and request; `Err` says why not.
    pub fn take(
        &self,
        id: &str,
        org: &str,
        function: &str,
        request_id: &str,
    ) -> Result<oneshot::Sender<NextRequest>, ApiError> {
        let mut slots = self.lock();
        match slots.get(id) {
            Some(s) if s.org == org && s.function == function && s.request_id == request_id => {
                Ok(slots.remove(id).map(|s| s.tx).ok_or_else(gone)?)
            }
            _ => Err(gone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

fn gone() -> ApiError {
    ApiError::new(
        ErrorCode::CallNotAllowed,
        "next.reactor.internal is the rest of the chain of the interceptor's own invocation, and it may be called once",
    )
}

/// Invokes interceptor function `.0` with a request (the router's dispatch, as a call).
pub type InvokeInterceptor = Arc<
    dyn Fn(String, http::Request<Body>) -> BoxFuture<'static, Result<Response, ApiError>>
        + Send
        + Sync,
>;

/// The custom interceptors of one request.
#[derive(Clone)]
pub struct CustomLayer {
    /// The interceptor functions, outermost first.
    pub functions: Arc<Vec<String>>,
    pub org: String,
    pub nexts: Arc<Nexts>,
    pub invoke: InvokeInterceptor,
    /// The target's deployment, for the failures the rest of the chain answers with.
    pub spec: Arc<DeploymentSpec>,
    pub started: Instant,
    /// The request the interceptors run for.
    pub request_id: String,
    /// The target's request body bound (`functions.invoke_max_body_bytes`).
    pub limit: u64,
    /// The contracts the target's request is held to: what an interceptor sends on is
    /// checked again.
    pub checks: Arc<crate::contract::Checks>,
}

impl<S> Layer<S> for CustomLayer {
    type Service = CustomService<S>;
    fn layer(&self, inner: S) -> CustomService<S> {
        CustomService {
            layer: self.clone(),
            index: 0,
            inner,
        }
    }
}

#[derive(Clone)]
pub struct CustomService<S> {
    layer: CustomLayer,
    /// The interceptor this service runs.
    index: usize,
    inner: S,
}

impl<S> Service<Attempt> for CustomService<S>
where
    S: Service<Attempt, Response = Answer, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Answer, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let Some(function) = this.layer.functions.get(this.index).cloned() else {
                let mut inner = this.inner;
                return inner.call(attempt).await;
            };
            let nexts = this.layer.nexts.clone();
            let (id, rx) = nexts.open(&this.layer.org, &function, &this.layer.request_id);
            let _open = Open {
                nexts: nexts.clone(),
                id: id.clone(),
            };
            let Attempt {
                mut parts, body, ..
            } = attempt;
            let platform = platform_headers(&parts.headers);
            if let Ok(v) = HeaderValue::from_str(&id) {
                parts.headers.insert(headers::NEXT, v);
            }
            let run = (this.layer.invoke)(function, http::Request::from_parts(parts, body));
            // The rest of the chain, when the interceptor calls next (once).
            let rest = async move {
                if let Ok(next) = rx.await {
                    let (mut parts, body) = next.request.into_parts();
                    // What the interceptor sends on is held to the same bounds as what it
                    // got: the body limit and the target's contracts.
                    let body = if this.layer.checks.wants_input() {
                        let mut reported = crate::contract::Reported::default();
                        let read = this.layer.checks.input(
                            &this.layer.spec.function,
                            body,
                            this.layer.limit,
                            &mut reported,
                        );
                        match read.await {
                            Ok(bytes) => {
                                parts.headers.remove(http::header::TRANSFER_ENCODING);
                                parts.headers.insert(
                                    http::header::CONTENT_LENGTH,
                                    HeaderValue::from(bytes.len()),
                                );
                                Body::from(bytes)
                            }
                            Err(e) => {
                                let _ = next.reply.send(e.into_response());
                                return std::future::pending::<()>().await;
                            }
                        }
                    } else {
                        crate::body::Counted::wrap(body, this.layer.limit).0
                    };
                    headers::strip_reserved(&mut parts.headers);
                    parts.headers.remove(headers::NEXT);
                    for (name, value) in platform.iter() {
                        parts.headers.insert(name, value.clone());
                    }
                    let attempt = Attempt {
                        parts,
                        body,
                        number: 1,
                        avoid: Vec::new(),
                    };
                    let mut rest = CustomService {
                        index: this.index + 1,
                        ..this
                    };
                    let Ok(answer) = rest.call(attempt).await;
                    let response = answer_response(answer, &rest.layer.spec, rest.layer.started);
                    let _ = next.reply.send(response);
                }
                std::future::pending::<()>().await
            };
            let result = tokio::select! {
                r = run => r,
                () = rest => unreachable!("the rest never ends on its own"),
            };
            Ok(match result {
                Ok(response) => Answer::new(
                    Outcome::Response {
                        response,
                        cold: false,
                        permit: None,
                    },
                    None,
                ),
                Err(e) => Answer::refused(e),
            })
        })
    }
}

/// What the rest of the chain is bound by: the original request's platform headers.
fn platform_headers(h: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in headers::RESERVED_FOR_ROUTER
        .iter()
        .chain(&[
            headers::REQUEST_ID,
            headers::TRACEPARENT,
            headers::TRACESTATE,
            headers::BAGGAGE,
            headers::IDEMPOTENCY_KEY,
        ])
        .filter(|n| **n != headers::NEXT)
    {
        for value in h.get_all(*name) {
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                kept.append(name, value.clone());
            }
        }
    }
    kept
}

/// The answer of the rest of the chain as the interceptor reads it: the target's
/// response (its concurrency permits held until the body ends), or the platform's error.
fn answer_response(answer: Answer, spec: &DeploymentSpec, started: Instant) -> Response {
    match answer.outcome {
        Outcome::Response {
            response, permit, ..
        } => match permit {
            Some(permit) => response.map(|body| {
                Body::new(Held {
                    body,
                    _permit: permit,
                })
            }),
            None => response,
        },
        Outcome::Failed(f) => f
            .error
            .to_api_error(spec, started.elapsed())
            .into_response(),
        Outcome::Refused(e) => e.into_response(),
    }
}

/// A body that holds a permit until it is dropped.
struct Held {
    body: Body,
    _permit: Permit,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_taken_once_by_its_own_interceptor() {
        let nexts = Arc::new(Nexts::default());
        let (id, _rx) = nexts.open("acme", "guard", "req_1");
        assert!(
            nexts.take(&id, "other", "guard", "req_1").is_err(),
            "another org"
        );
        assert!(
            nexts.take(&id, "acme", "audit", "req_1").is_err(),
            "another function"
        );
        assert!(
            nexts.take(&id, "acme", "guard", "req_2").is_err(),
            "another request"
        );
        assert!(nexts.take("nx_forged", "acme", "guard", "req_1").is_err());
        assert!(nexts.take(&id, "acme", "guard", "req_1").is_ok());
        assert!(nexts.take(&id, "acme", "guard", "req_1").is_err(), "once");
        let (id, _rx) = nexts.open("acme", "guard", "req_1");
        drop(Open {
            nexts: nexts.clone(),
            id,
        });
        assert_eq!(nexts.len(), 0, "closed when its run is dropped");
    }
}
