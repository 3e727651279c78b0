//! The worker side: invocations under `/invoke`, checked, decoded and handed to the
//! runtime worker, its outcome going back with the internal headers; `/prepare` loads a
//! deployment about to go live; `/build` builds one for the control plane.

use crate::protocol;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use reactor_api::token::InternalToken;
use reactor_api::{
    Builder, DeploymentSpec, Invocation, InvokeError, InvokeFailure, RuntimeWorker, headers,
};
use reactor_storage::Storage;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

struct Link {
    worker: Arc<dyn RuntimeWorker>,
    build: BuildHost,
    /// Routers' calls: invoke and prepare.
    token: InternalToken,
    /// The control plane's calls: build.
    build_token: InternalToken,
}

/// Builds run one at a time per worker: a build is CPU-bound (compiling, bundling) and
/// must not starve the invocations this worker serves.
const BUILDS_AT_ONCE: usize = 1;

/// What `/build` stands on: the runtime's builder, the storage the bundle is read from,
/// and a scratch directory to unpack it in (emptied after each build).
pub struct BuildHost {
    builder: Arc<dyn Builder>,
    storage: Arc<dyn Storage>,
    scratch: PathBuf,
    slots: tokio::sync::Semaphore,
}

impl BuildHost {
    pub fn new(builder: Arc<dyn Builder>, storage: Arc<dyn Storage>, scratch: PathBuf) -> Self {
        Self {
            builder,
            storage,
            scratch,
            slots: tokio::sync::Semaphore::new(BUILDS_AT_ONCE),
        }
    }

    /// Reads the bundle of `spec`, checks it is the one the control plane received
    /// (its SHA-256), unpacks it safely and builds it. `Err` is the reason to report.
    pub async fn build(&self, spec: &DeploymentSpec) -> Result<(), String> {
        if !safe_id(&spec.deployment_id) {
            return Err(format!(
                "deployment id {:?} is not valid",
                spec.deployment_id
            ));
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "the worker is shutting down".to_string())?;
        tokio::fs::create_dir_all(&self.scratch)
            .await
            .map_err(|e| format!("creating the build directory: {e}"))?;
        // Shared with the unpacking thread, so that a build the control plane gives up on
        // (which drops this future) cannot remove the directory under it.
        let work = Arc::new(
            tempfile::Builder::new()
                .prefix(&format!("{}-", spec.deployment_id))
                .tempdir_in(&self.scratch)
                .map_err(|e| format!("creating a build directory: {e}"))?,
        );
        let archive = work.path().join("bundle.tar.gz");
        self.storage
            .get_to_file(&spec.bundle_key, &archive)
            .await
            .map_err(|e| {
                tracing::warn!(key = %spec.bundle_key, error = %e, "reading a bundle to build");
                "the bundle could not be read from storage".to_string()
            })?;
        let expected = spec.sha256.clone();
        let held = work.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let archive = held.path().join("bundle.tar.gz");
            let found = reactor_storage::bundle::sha256_file(&archive)
                .map_err(|e| format!("reading the bundle: {e}"))?;
            if !found.eq_ignore_ascii_case(&expected) {
                return Err(format!(
                    "the stored bundle is not the one received (sha256 {found}, expected {expected})"
                ));
            }
            let dir = held.path().join("bundle");
            std::fs::create_dir_all(&dir).map_err(|e| format!("unpacking: {e}"))?;
            reactor_storage::bundle::unpack(&archive, &dir)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        unpacked.map_err(|e| format!("unpacking stopped: {e}"))??;
        self.builder
            .build(spec, &work.path().join("bundle"))
            .await
            .map_err(|reason| cap(reason, MAX_REASON_BYTES))
    }
}

/// The most of a build's failure reason sent back (Bun's own text can be long): enough to
/// read, and far below what the control plane reads of an answer.
const MAX_REASON_BYTES: usize = 16 * 1024;

/// `text` cut to at most `max` bytes, on a character boundary, saying so.
fn cap(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(" [...]");
    text
}

/// Deployment ids name directories: letters, digits, `_` and `-` only.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The routes of a worker service (add `/healthz` and `/readyz` beside them).
pub fn worker_app(
    worker: Arc<dyn RuntimeWorker>,
    builds: BuildHost,
    internal_token: &str,
    worker_token: &str,
) -> Router {
    let link = Arc::new(Link {
        worker,
        build: builds,
        token: InternalToken::new(internal_token),
        build_token: InternalToken::new(worker_token),
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
        .route(protocol::BUILD_PATH, axum::routing::post(build))
        .with_state(link)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

fn failure(status: StatusCode, error: &InvokeError, cold_start: bool) -> Response {
    let body = protocol::encode_error(error);
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
    authorize_with(link, &link.token, h)
}

/// [`authorize`] against `token`.
fn authorize_with(
    link: &Link,
    token: &InternalToken,
    h: &http::HeaderMap,
) -> Result<DeploymentSpec, Box<Response>> {
    let authorized = h
        .get(protocol::AUTH)
        .is_some_and(|v| token.matches(v.as_bytes()));
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
    // The id names folders on the worker's disk.
    if !safe_id(&spec.deployment_id) {
        return Err(Box::new(bad_request(format!(
            "deployment id {:?} is not valid",
            spec.deployment_id
        ))));
    }
    Ok(spec)
}

/// Loads a deployment that is about to go live (the control plane calls this on promote,
/// before the routing table changes).
async fn prepare(State(link): State<Arc<Link>>, h: http::HeaderMap) -> Response {
    // Routers (internal token) and the control plane on promote (workers' token).
    let spec = match authorize(&link, &h).or_else(|_| authorize_with(&link, &link.build_token, &h))
    {
        Ok(spec) => spec,
        Err(answer) => return *answer,
    };
    match link.worker.prepare(&spec).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failure(StatusCode::OK, &e, false),
    }
}

/// Builds a deployment for the control plane: 204 when its artifacts are stored, else
/// [`protocol::ERROR`] with the reason.
async fn build(State(link): State<Arc<Link>>, h: http::HeaderMap) -> Response {
    // Only the control plane asks for builds: the workers' credential, not the routers'.
    let spec = match authorize_with(&link, &link.build_token, &h) {
        Ok(spec) => spec,
        Err(answer) => return *answer,
    };
    let started = Instant::now();
    match link.build.build(&spec).await {
        Ok(()) => {
            tracing::info!(deployment_id = %spec.deployment_id, function = %spec.function, ms = started.elapsed().as_millis() as u64, "built");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => {
            tracing::info!(deployment_id = %spec.deployment_id, function = %spec.function, reason = %message, "build failed");
            let body = serde_json::to_vec(&protocol::BuildFailed { message }).unwrap_or_default();
            let mut r = (StatusCode::UNPROCESSABLE_ENTITY, body).into_response();
            r.headers_mut()
                .insert(protocol::ERROR, HeaderValue::from_static("1"));
            r
        }
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
    let chain = match h
        .get(protocol::CHAIN)
        .map(|v| v.to_str().ok().and_then(protocol::decode_chain))
    {
        None => Vec::new(),
        Some(Some(chain)) => chain,
        Some(None) => {
            return bad_request(format!(
                "{} is not a list of function names",
                protocol::CHAIN
            ));
        }
    };
    // The worker's lines about this invocation carry the router's trace and span
    // (`--log-format json`): the function's `traceparent` names them.
    let trace = parts
        .headers
        .get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(reactor_api::calls::TraceParent::parse);
    let trace_id = trace.map(|t| format!("{:032x}", t.trace_id));
    let span_id = trace.map(|t| format!("{:016x}", t.parent_id));
    let span = if reactor_service::telemetry::tracing_on() {
        // The worker's server span, a child of the router's hop; the function's parent.
        let empty = tracing::field::Empty;
        let span = tracing::info_span!(
            "invoke",
            otel.name = %format_args!("worker {}", spec.function),
            otel.kind = "server",
            otel.status_code = empty,
            faas.invoked_name = %spec.function,
            faas.invocation_id = %request_id,
            faas.coldstart = empty,
            reactor.org = %spec.org,
            reactor.deployment = %spec.deployment_id,
            function = %spec.function,
            deployment_id = %spec.deployment_id,
            request_id = %request_id,
            trace_id = empty,
            span_id = empty,
        );
        let mine = reactor_service::telemetry::traceparent_recorded(&span, trace);
        if let Ok(v) = HeaderValue::from_str(&mine.to_string()) {
            parts.headers.insert(headers::TRACEPARENT, v);
        }
        span
    } else {
        tracing::info_span!(
            "invoke",
            function = %spec.function,
            deployment_id = %spec.deployment_id,
            request_id = %request_id,
            trace_id = trace_id.as_deref(),
            span_id = span_id.as_deref(),
        )
    };
    for name in protocol::ALL {
        parts.headers.remove(name);
    }
    // The function sees the path relative to its mount, as in the embedded default.
    parts.uri = match protocol::relative_path(&parts.uri, protocol::INVOKE_PREFIX) {
        Ok(uri) => uri,
        Err(message) => return bad_request(message),
    };
    let invocation = Invocation {
        spec: Arc::new(spec),
        request: http::Request::from_parts(parts, body),
        deadline: started + Duration::from_millis(timeout_ms),
        request_id,
        chain,
    };
    match link
        .worker
        .invoke(invocation)
        .instrument(span.clone())
        .await
    {
        Ok(outcome) => {
            span.record("faas.coldstart", outcome.cold_start);
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
            span.record("faas.coldstart", cold_start);
            reactor_service::telemetry::set_error(&span, error.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_reasons_are_capped_on_a_character_boundary() {
        assert_eq!(cap("short".into(), 16), "short");
        let long = "é".repeat(10); // 20 bytes
        let capped = cap(long, 5);
        assert_eq!(capped, "éé [...]");
    }

    #[test]
    fn only_plain_ids_name_build_directories() {
        assert!(safe_id("dep_01KBX6W4S0M8YQF3D5V2N7P9RT"));
        for bad in ["", "../x", "/abs", "a/b", "dep 1", &"d".repeat(65)] {
            assert!(!safe_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_build_failure_is_only_its_own_shape() {
        let ok = serde_json::from_slice::<protocol::BuildFailed>(br#"{"message":"no fetch"}"#);
        assert!(ok.is_ok());
        let invoke_error = br#"{"kind":"unavailable","message":"this is a bun worker, not wasm"}"#;
        assert!(serde_json::from_slice::<protocol::BuildFailed>(invoke_error).is_err());
    }
}
