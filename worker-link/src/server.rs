//! The worker side: invocations under `/invoke`, checked, decoded and handed to the
//! runtime worker; its outcome goes back with the internal headers.

use crate::protocol::{self, Failure};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use reactor_api::token::InternalToken;
use reactor_api::{DeploymentSpec, Invocation, InvokeError, InvokeFailure, RuntimeWorker, headers};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

struct Link {
    worker: Arc<dyn RuntimeWorker>,
    token: InternalToken,
}

/// The invocation routes of a worker service (add `/healthz` and `/readyz` beside them).
pub fn worker_app(worker: Arc<dyn RuntimeWorker>, internal_token: &str) -> Router {
    let link = Arc::new(Link {
        worker,
        token: InternalToken::new(internal_token),
    });
    Router::new()
        .route(protocol::INVOKE_PREFIX, axum::routing::any(invoke))
        .route(
            &format!("{}/", protocol::INVOKE_PREFIX),
            axum::routing::any(invoke),
        )
        .route(
            &format!("{}/{{*sub}}", protocol::INVOKE_PREFIX),
            axum::routing::any(invoke),
        )
        .route(protocol::PREPARE_PATH, axum::routing::post(prepare))
        .with_state(link)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn failure(status: StatusCode, error: &InvokeError, cold_start: bool) -> Response {
    let body = serde_json::to_vec(&Failure::from_error(error)).unwrap_or_default();
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(protocol::ERROR, HeaderValue::from_static("1"));
    h.insert(protocol::COLD_START, bool_header(cold_start));
    r
}

fn bool_header(b: bool) -> HeaderValue {
    HeaderValue::from_static(if b { "true" } else { "false" })
}

fn bad_request(message: String) -> Response {
    failure(
        StatusCode::BAD_REQUEST,
        &InvokeError::Unavailable { message },
        false,
    )
}

/// What every internal call must carry: the internal token, and the spec of a deployment
/// of this worker's runtime. `Err` is the answer to give instead.
fn authorize(link: &Link, h: &http::HeaderMap) -> Result<DeploymentSpec, Box<Response>> {
    let authorized = h
        .get(protocol::AUTH)
        .is_some_and(|v| link.token.matches(v.as_bytes()));
    if !authorized {
        return Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                "a valid internal token is required",
            )
                .into_response(),
        ));
    }
    let spec = h
        .get(protocol::SPEC)
        .and_then(|v| v.to_str().ok())
        .and_then(protocol::decode_spec)
        .ok_or_else(|| {
            Box::new(bad_request(
                "the caller sent no valid deployment spec".into(),
            ))
        })?;
    if spec.runtime != link.worker.runtime() {
        return Err(Box::new(bad_request(format!(
            "this is a {} worker, not {}",
            link.worker.runtime(),
            spec.runtime
        ))));
    }
    Ok(spec)
}

/// Loads a deployment that is about to go live (the control plane calls this on promote,
/// before the routing table changes).
async fn prepare(State(link): State<Arc<Link>>, h: http::HeaderMap) -> Response {
    let spec = match authorize(&link, &h) {
        Ok(spec) => spec,
        Err(answer) => return *answer,
    };
    match link.worker.prepare(&spec).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failure(StatusCode::OK, &e, false),
    }
}

async fn invoke(State(link): State<Arc<Link>>, req: Request) -> Response {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let h = &parts.headers;
    let spec = match authorize(&link, h) {
        Ok(spec) => spec,
        Err(answer) => return *answer,
    };
    let timeout_ms = h
        .get(protocol::TIMEOUT_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(spec.timeout_ms)
        .min(spec.timeout_ms);
    let request_id = h
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    for name in protocol::ALL {
        parts.headers.remove(name);
    }
    // The function sees the path relative to its mount, as in the embedded default.
    let sub = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .strip_prefix(protocol::INVOKE_PREFIX)
        .unwrap_or("/");
    let sub = if sub.is_empty() || sub.starts_with('?') {
        format!("/{sub}")
    } else {
        sub.to_string()
    };
    parts.uri = match Uri::builder().path_and_query(sub).build() {
        Ok(uri) => uri,
        Err(e) => return bad_request(format!("request path is not valid: {e}")),
    };
    let invocation = Invocation {
        spec: Arc::new(spec),
        request: http::Request::from_parts(parts, body),
        deadline: started + Duration::from_millis(timeout_ms),
        request_id,
    };
    match link.worker.invoke(invocation).await {
        Ok(outcome) => {
            let mut response = outcome.response;
            let h = response.headers_mut();
            for name in protocol::ALL {
                h.remove(name);
            }
            h.insert(protocol::COLD_START, bool_header(outcome.cold_start));
            set_ms(h, started);
            response
        }
        Err(InvokeFailure { error, cold_start }) => {
            let mut r = failure(StatusCode::OK, &error, cold_start);
            set_ms(r.headers_mut(), started);
            r
        }
    }
}

fn set_ms(h: &mut http::HeaderMap, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if let Ok(v) = HeaderValue::from_str(&format!("{ms:.3}")) {
        h.insert(protocol::WORKER_MS, v);
    }
}
