//! Inline calls (`"pool": {"type": "inline"}`): a call from a WASM function to a WASM
//! function whose live deployment has an inline pool runs here, in the caller's worker and
//! on its engine, with no hop to a router and back: the seed's pool that "runs in the
//! caller's goroutine".
//!
//! The worker follows the routing table to know the callee's live deployment. A call goes
//! inline only when nothing about it needs the router: the callee is WASM, its live
//! deployment's pool is inline, it has no invoke policy (its function's or its
//! deployment's), no contract, no interceptors and no `max_concurrency`, it is addressed
//! by name (not through a named contract), and the caller's alias has no interceptors.
//! Anything else goes to the router as usual, so an inline pool never skips a rule. What
//! the router would check of the call itself is checked here the same way (depth,
//! deadline); the callee's invocation is logged as the router would log it.

use crate::WasmWorker;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use reactor_api::calls::{self, CallContext};
use reactor_api::logs::{LogEntry, LogSink};
use reactor_api::pool::Pool;
use reactor_api::{ApiError, CallForwarder, CallLink, DeploymentSpec, ErrorCode, Invocation};
use reactor_api::{RuntimeWorker, headers};
use reactor_proto::routing::RoutingTable;
use reactor_worker_link::calls::CallLimits;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the table says may run inline, per version.
#[derive(Default)]
struct Index {
    version: u64,
    /// Live deployments with an inline pool and nothing the router must run, by org and
    /// function.
    inline: HashMap<(String, String), Arc<DeploymentSpec>>,
    /// Caller aliases with interceptors of their own (org, function, alias).
    intercepted: HashSet<(String, String, String)>,
}

impl Index {
    fn build(table: &RoutingTable) -> Self {
        let mut index = Index {
            version: table.version,
            ..Default::default()
        };
        for f in &table.functions {
            let Some(live) = &f.live else { continue };
            if let Some(calls) = live
                .calls
                .as_deref()
                .and_then(|j| serde_json::from_str::<reactor_api::manifest::Calls>(j).ok())
            {
                for (alias, call) in calls {
                    if call.interceptors.as_ref().is_some_and(|i| !i.is_empty()) {
                        index
                            .intercepted
                            .insert((f.org.clone(), f.name.clone(), alias));
                    }
                }
            }
            let pool: Option<Pool> = live
                .pool
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok());
            let plain = f.policy.is_none()
                && live.policy.is_none()
                && live.contract.is_none()
                && live.interceptors.is_none()
                && live.max_concurrency.is_none();
            if f.runtime == "wasm"
                && pool == Some(Pool::Inline)
                && plain
                && let Some(spec) =
                    reactor_worker_link::protocol::live_spec(f, reactor_api::Runtime::Wasm)
            {
                index
                    .inline
                    .insert((f.org.clone(), f.name.clone()), Arc::new(spec));
            }
        }
        index
    }
}

/// The calls of this worker's invocations: inline when they may be, else on to `fallback`
/// (the router).
pub struct InlineCalls {
    worker: Weak<WasmWorker>,
    table: watch::Receiver<Arc<RoutingTable>>,
    index: Mutex<Arc<Index>>,
    fallback: CallLink,
    limits: CallLimits,
    logs: Arc<dyn LogSink>,
}

impl InlineCalls {
    pub(crate) fn new(
        worker: Weak<WasmWorker>,
        table: watch::Receiver<Arc<RoutingTable>>,
        fallback: CallLink,
        limits: CallLimits,
        logs: Arc<dyn LogSink>,
    ) -> Self {
        Self {
            worker,
            table,
            index: Mutex::new(Arc::default()),
            fallback,
            limits,
            logs,
        }
    }

    /// The index of the newest table, rebuilt when the version moved.
    fn index(&self) -> Arc<Index> {
        let table = self.table.borrow().clone();
        let mut held = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if held.version != table.version || (table.version == 0 && held.inline.is_empty()) {
            *held = Arc::new(Index::build(&table));
        }
        held.clone()
    }

    /// The callee's spec when the call may run here.
    fn inline(&self, context: &CallContext) -> Option<Arc<DeploymentSpec>> {
        if context.target.contract.is_some() || context.next.is_some() {
            return None;
        }
        let index = self.index();
        if let Some(alias) = &context.target.alias
            && index.intercepted.contains(&(
                context.org.clone(),
                context.caller_function.clone(),
                alias.clone(),
            ))
        {
            return None;
        }
        index
            .inline
            .get(&(context.org.clone(), context.target.function.clone()))
            .cloned()
    }

    /// Runs the call on this worker, as the router would: depth and deadline checked,
    /// headers stamped from the context, the invocation logged.
    async fn run(
        &self,
        worker: Arc<WasmWorker>,
        spec: Arc<DeploymentSpec>,
        context: CallContext,
        request: http::Request<Body>,
    ) -> Response {
        let started = Instant::now();
        let timeout = match calls::next_depth(
            context.chain.len() as u32,
            self.limits.max_depth,
            &context.path(),
        )
        .and_then(|_| {
            calls::callee_timeout(
                Duration::from_millis(context.remaining_ms),
                spec.timeout(),
                context.target.timeout_ms.map(Duration::from_millis),
                self.limits.deadline_margin,
            )
        }) {
            Ok(t) => t,
            Err(e) => {
                let e = ApiError::from(e);
                self.log(
                    &spec,
                    &context,
                    e.status().as_u16(),
                    started,
                    false,
                    Some(&e.message),
                );
                return e.into_response();
            }
        };
        let (mut parts, body) = request.into_parts();
        headers::strip_reserved(&mut parts.headers);
        calls::stamp_call_headers(&mut parts.headers, &context);
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                parts.headers.insert(name, v);
            }
        };
        set(headers::DEADLINE_MS, calls::deadline_header(timeout));
        set(headers::CALL_DEPTH, (context.chain.len() + 1).to_string());
        let invocation = Invocation {
            spec: spec.clone(),
            request: http::Request::from_parts(parts, body),
            deadline: started + timeout,
            request_id: context.request_id.clone(),
            chain: context.chain.clone(),
        };
        let (mut response, cold) = match worker.invoke(invocation).await {
            Ok(outcome) => (outcome.response, outcome.cold_start),
            Err(failure) => (
                failure
                    .error
                    .to_api_error(&spec, started.elapsed())
                    .into_response(),
                failure.cold_start,
            ),
        };
        self.log(
            &spec,
            &context,
            response.status().as_u16(),
            started,
            cold,
            None,
        );
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&spec.function) {
            h.insert(headers::FUNCTION, v);
        }
        h.insert(
            headers::COLD_START,
            HeaderValue::from_static(if cold { "true" } else { "false" }),
        );
        if let Ok(v) =
            HeaderValue::from_str(&format!("{:.3}", started.elapsed().as_secs_f64() * 1e3))
        {
            h.insert(headers::DURATION_MS, v);
        }
        response
    }

    fn log(
        &self,
        spec: &DeploymentSpec,
        context: &CallContext,
        status: u16,
        started: Instant,
        cold: bool,
        refused: Option<&str>,
    ) {
        let mut entry = LogEntry::invocation(
            &spec.org,
            &spec.function,
            Some(&spec.deployment_id),
            &context.request_id,
            status,
            started.elapsed(),
            cold,
        );
        entry.message = match refused {
            Some(why) => format!("refused: {why}"),
            None => format!(
                "call from {} ({}){}, depth {}, inline",
                context.caller_function,
                context.caller_deployment,
                context
                    .target
                    .alias
                    .as_ref()
                    .map(|a| format!(" as {a}"))
                    .unwrap_or_default(),
                context.chain.len() + 1
            ),
        };
        self.logs.emit(entry);
    }
}

#[async_trait::async_trait]
impl CallForwarder for InlineCalls {
    async fn forward_call(&self, context: CallContext, request: http::Request<Body>) -> Response {
        if let Some(spec) = self.inline(&context)
            && let Some(worker) = self.worker.upgrade()
        {
            return self.run(worker, spec, context, request).await;
        }
        match self.fallback.get() {
            Some(router) => router.forward_call(context, request).await,
            None => ApiError::new(
                ErrorCode::NoWorkerAvailable,
                "calls between functions are not set up on this worker: it has no router to send them to (worker.router_url)",
            )
            .into_response(),
        }
    }
}
