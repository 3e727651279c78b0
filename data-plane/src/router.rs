//! The invoke path, in this order: authenticate (token hashes of the table) → look up →
//! pick the worker → rewrite (path relative to the mount, platform credentials out,
//! caller headers in) → invoke policies, on the rewritten request as the function would
//! see it (refused requests cost nothing further) → body limit → the layers of
//! [`crate::interceptors`]: timeout → retry → breaker → admission (the concurrency caps
//! and an adaptive pool's limit, held until the response body ends) → forward with the
//! deadline → stream back, then log the invocation.

use crate::admission::{Admission, LocalAdmission};
use crate::body::{Counted, Tail};
use crate::interceptors::custom::CustomLayer;
use crate::interceptors::retry::RetryLayer;
use crate::interceptors::{
    AdaptiveLayer, AdmissionLayer, Answer, Attempt, BreakerLayer, Cap, Forward, ForwardService,
    Outcome, Registry, TimeoutLayer,
};
use crate::table::{Policy, RouteIndex};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use reactor_api::access;
use reactor_api::calls::{self, CallContext, TraceParent};
use reactor_api::config::CallsConfig;
use reactor_api::error::request_id::RequestId;
use reactor_api::interceptors::{CircuitBreaker, Retry};
use reactor_api::logs::{LogEntry, LogSink, NoLogs};
use reactor_api::token::{bearer, token_hash};
use reactor_api::{
    ApiError, CallForwarder, DeploymentSpec, ErrorCode, Invocation, InvokeError, RuntimeWorker,
    Runtimes, headers,
};
use reactor_proto::routing::RoutingTable;
use reactor_worker_link::RemoteWorkers;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tracing::Instrument;

pub const INVOKE_PREFIX: &str = "/fn/v1/";

/// What a router is built with besides its workers.
pub struct RouterOptions {
    /// Invocation logs and platform events (crash, timeout).
    pub logs: Arc<dyn LogSink>,
    /// Request bodies above this get 413 `payload_too_large`.
    pub max_body_bytes: u64,
    /// The concurrency cap's counter.
    pub admission: Arc<dyn Admission>,
    /// `[functions.calls]`: depth and deadline margin of calls between functions.
    pub calls: CallsConfig,
}

impl Default for RouterOptions {
    fn default() -> Self {
        Self {
            logs: Arc::new(NoLogs),
            max_body_bytes: 16 * 1024 * 1024,
            admission: LocalAdmission::new(),
            calls: CallsConfig::default(),
        }
    }
}

/// How long a request that reaches a router without a routing table waits for one.
pub const FIRST_TABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct DataPlane {
    index: watch::Sender<Arc<RouteIndex>>,
    options: RouterOptions,
    /// In-process workers (the embedded default), used first.
    runtimes: Runtimes,
    /// Worker services listed in the routing table (the split topology).
    remote: Option<RemoteWorkers>,
    /// An in-process table source (the embedded default), checked before each lookup so
    /// that a request right after a promote never sees the table before it.
    local_source: std::sync::OnceLock<watch::Receiver<Arc<RoutingTable>>>,
    /// Circuit breakers and retry budgets, per function or call alias.
    interceptors: Registry,
    /// The custom interceptors running, by their `next` handle.
    nexts: Arc<crate::interceptors::custom::Nexts>,
    /// This router, for what outlives a borrow of it (custom interceptors invoke it).
    me: std::sync::Weak<DataPlane>,
}

impl DataPlane {
    /// A router that runs functions on in-process workers.
    pub fn new(runtimes: Runtimes) -> Arc<Self> {
        Self::build(runtimes, None, RouterOptions::default())
    }

    /// A router that forwards to the worker services of the routing table.
    pub fn with_remote_workers(remote: RemoteWorkers) -> Arc<Self> {
        Self::build(Runtimes::new(), Some(remote), RouterOptions::default())
    }

    /// A router with in-process `runtimes` and/or `remote` workers and `options`.
    pub fn build(
        runtimes: Runtimes,
        remote: Option<RemoteWorkers>,
        options: RouterOptions,
    ) -> Arc<Self> {
        let (index, _) = watch::channel(Arc::new(RouteIndex::default()));
        Arc::new_cyclic(|me| Self {
            options,
            index,
            runtimes,
            remote,
            local_source: std::sync::OnceLock::new(),
            interceptors: Registry::default(),
            nexts: Arc::default(),
            me: me.clone(),
        })
    }

    /// Takes a routing table unless it is older than the one held. Returns whether it
    /// was applied.
    pub fn apply(&self, table: &RoutingTable) -> bool {
        let current = self.index.borrow().version;
        if table.version < current || (table.version == current && current != 0) {
            tracing::debug!(
                held = current,
                offered = table.version,
                "ignoring a routing table that is not newer"
            );
            return false;
        }
        self.install(table);
        true
    }

    /// Takes a table from the control plane's stream unless it is older than the one held:
    /// a snapshot of the version held replaces it (see `follow`).
    pub fn apply_stream(&self, table: &RoutingTable) -> bool {
        if table.version < self.index.borrow().version {
            tracing::debug!(offered = table.version, "ignoring an older routing table");
            return false;
        }
        self.install(table);
        true
    }

    fn install(&self, table: &RoutingTable) {
        let previous = self.index.borrow().clone();
        self.index
            .send_replace(Arc::new(RouteIndex::build_from(table, &previous)));
        if reactor_service::metrics::get().recording() {
            reactor_service::metrics::get().routing_table(table.version);
        }
    }

    /// Follows an in-process source of routing tables until it closes.
    pub fn follow(
        self: &Arc<Self>,
        mut tables: watch::Receiver<Arc<RoutingTable>>,
    ) -> tokio::task::JoinHandle<()> {
        let _ = self.local_source.set(tables.clone());
        let dp = self.clone();
        tokio::spawn(async move {
            loop {
                let table = tables.borrow_and_update().clone();
                dp.apply(&table);
                if tables.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// Applies the in-process source's table if it is newer than the one held (the
    /// follower task may not have run yet).
    fn catch_up(&self) {
        if let Some(source) = self.local_source.get() {
            let newest = source.borrow().clone();
            if newest.version > self.version() {
                self.apply(&newest);
            }
        }
    }

    pub fn version(&self) -> u64 {
        self.index.borrow().version
    }

    /// Resolves after the router holds `version` or newer.
    pub async fn wait_for_version(&self, version: u64) {
        let mut rx = self.index.subscribe();
        let _ = rx.wait_for(|i| i.version >= version).await;
    }

    /// The first routing table, waited for at most [`FIRST_TABLE_WAIT`]; 503
    /// `no_worker_available` without one (nothing is known yet, not even tokens).
    async fn first_table(&self) -> Result<Arc<RouteIndex>, ApiError> {
        let mut rx = self.index.subscribe();
        match tokio::time::timeout(FIRST_TABLE_WAIT, rx.wait_for(|i| i.version > 0)).await {
            Ok(Ok(index)) => Ok(index.clone()),
            _ => Err(ApiError::new(
                ErrorCode::NoWorkerAvailable,
                "this router has no routing table yet (the control plane has not answered): retry",
            )),
        }
    }

    /// The table to route with: the newest, or the first one, waited for.
    async fn current_index(&self) -> Result<Arc<RouteIndex>, ApiError> {
        self.catch_up();
        let index = self.index.borrow().clone();
        if index.version == 0 {
            // A router that just started has no table yet: hold the request briefly for
            // the first one rather than refuse it as unknown (a balancer may send traffic
            // before `/readyz` says ready).
            return self.first_table().await;
        }
        Ok(index)
    }

    /// An outside request: authenticated by its bearer token, its path relative to the
    /// function's mount.
    async fn route(
        &self,
        name: &str,
        sub: &str,
        req: Request,
        started: Instant,
        request_id: String,
        trace: TraceParent,
    ) -> Result<Response, ApiError> {
        let index = self.current_index().await?;
        let grant = authenticate(&index, req.headers())?;
        let (mut parts, body) = req.into_parts();
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{sub}?{q}"),
            None => sub.to_string(),
        };
        parts.uri = Uri::builder()
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidInput,
                    format!("request path is not valid: {e}"),
                )
            })?;
        rewrite_headers(&mut parts.headers, name, &grant, &request_id, trace);
        let request = Routed {
            name,
            grant,
            parts,
            body,
            request_id,
            started,
            call: None,
            via: None,
        };
        self.dispatch(&index, request).await
    }

    /// A call between functions, from the worker that intercepted it (`context` is what
    /// that worker vouches for): the callee in the caller's org, under the original
    /// request's identity, its deadline clamped to the caller's, one hop deeper.
    pub async fn call(
        &self,
        mut context: CallContext,
        request: http::Request<Body>,
        started: Instant,
    ) -> Result<Response, ApiError> {
        if let Some(id) = &context.next {
            return self.next(id, &context, request).await;
        }
        let index = self.current_index().await?;
        // The router resolves too: when the caller's deployment is the live one here, its
        // `calls` must name the target the worker resolved.
        if let Some(caller) = index.function(&context.org, &context.caller_function)
            && let Some(live) = &caller.live
            && live.deployment_id == context.caller_deployment
        {
            check_target(live.calls.as_ref(), &context.target)?;
        }
        // A contract: the function bound to it in the org, now.
        let via = match context.target.contract.clone() {
            Some(name) => {
                let bound = index.contract(&context.org, &name).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::FunctionNotFound,
                        format!(
                            "contract {name} is bound to no function in org {} (reactor contracts bind {name} FUNCTION)",
                            context.org
                        ),
                    )
                    .with_detail("contract", name.clone())
                })?;
                context.target.function = bound.function.clone();
                Some((name, bound.contract.clone()))
            }
            None => None,
        };
        let grant = crate::Grant {
            token_id: context.token_id.clone(),
            org: context.org.clone(),
            role: context.role,
        };
        let (mut parts, body) = request.into_parts();
        calls::stamp_call_headers(&mut parts.headers, &context);
        let name = context.target.function.clone();
        let request = Routed {
            name: &name,
            grant,
            parts,
            body,
            request_id: context.request_id.clone(),
            started,
            call: Some(context),
            via,
        };
        self.dispatch(&index, request).await
    }

    /// A custom interceptor's call to `next.reactor.internal`: handed to the run that gave
    /// the interceptor its handle, which answers with the rest of the chain.
    async fn next(
        &self,
        id: &str,
        context: &CallContext,
        request: http::Request<Body>,
    ) -> Result<Response, ApiError> {
        let slot = self.nexts.take(
            id,
            &context.org,
            &context.caller_function,
            &context.request_id,
        )?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let next = crate::interceptors::custom::NextRequest { request, reply };
        if slot.send(next).is_err() {
            return Err(ApiError::new(
                ErrorCode::CallNotAllowed,
                "the interceptor's invocation has ended: its next is gone",
            ));
        }
        answer.await.map_err(|_| {
            ApiError::new(
                ErrorCode::CallNotAllowed,
                "the interceptor's invocation has ended: its next is gone",
            )
        })
    }

    /// Invokes custom interceptor `function` for a request to `target`: a call on the
    /// request's identity, one hop deeper, within its deadline.
    fn interceptor_invoker(
        &self,
        target: &DeploymentSpec,
        grant: &crate::Grant,
        request_id: &str,
        chain: &[String],
        deadline: Instant,
    ) -> crate::interceptors::custom::InvokeInterceptor {
        let me = self.me.clone();
        let grant = grant.clone();
        let request_id = request_id.to_string();
        let mut chain = chain.to_vec();
        chain.push(target.function.clone());
        let target = (target.function.clone(), target.deployment_id.clone());
        Arc::new(
            move |function: String,
                  request: http::Request<Body>|
                  -> BoxFuture<'static, Result<Response, ApiError>> {
                let me = me.clone();
                let context = CallContext {
                    org: grant.org.clone(),
                    token_id: grant.token_id.clone(),
                    role: grant.role,
                    caller_function: target.0.clone(),
                    caller_deployment: target.1.clone(),
                    request_id: request_id.clone(),
                    // The request carries its trace context as the target got it.
                    traceparent: request
                        .headers()
                        .get(headers::TRACEPARENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    tracestate: None,
                    baggage: None,
                    chain: chain.clone(),
                    target: calls::CallTarget {
                        function: function.clone(),
                        contract: None,
                        alias: None,
                        timeout_ms: None,
                    },
                    remaining_ms: deadline
                        .saturating_duration_since(Instant::now())
                        .as_millis() as u64,
                    next: None,
                };
                let grant = grant.clone();
                Box::pin(async move {
                    let dp = me.upgrade().ok_or_else(|| {
                        ApiError::new(ErrorCode::NoWorkerAvailable, "the router has stopped")
                    })?;
                    let index = dp.current_index().await?;
                    let (parts, body) = request.into_parts();
                    let request_id = context.request_id.clone();
                    // The interceptor's invocation has a span of its own, under the one
                    // of the request it intercepts.
                    let mut context = context;
                    let (span, trace) = invocation_span(
                        &function,
                        &request_id,
                        TraceParent::parse(&context.traceparent),
                    );
                    context.traceparent = trace.to_string();
                    let routed = Routed {
                        name: &function,
                        grant,
                        parts,
                        body,
                        request_id,
                        started: Instant::now(),
                        call: Some(context),
                        via: None,
                    };
                    let answer = dp.dispatch(&index, routed).instrument(span.clone()).await;
                    if let Ok(response) = &answer {
                        record_outcome(&span, response);
                    }
                    answer
                })
            },
        )
    }

    /// Everything after authentication, for outside requests and calls alike: look up →
    /// depth and deadline (calls) → pick → policies → body limit → timeout → retry →
    /// breaker → admission → forward → log.
    async fn dispatch(&self, index: &RouteIndex, r: Routed<'_>) -> Result<Response, ApiError> {
        let Routed {
            name,
            grant,
            mut parts,
            body,
            request_id,
            started,
            call,
            via,
        } = r;
        let not_found = || {
            ApiError::new(
                ErrorCode::FunctionNotFound,
                format!("function {name} not found"),
            )
            .with_detail("function", name)
        };
        let entry = index.function(&grant.org, name).ok_or_else(not_found)?;
        // From here on the function exists: its answers are counted, and its span named.
        let counted = |e: ApiError| {
            reactor_service::metrics::get().invoked(
                &grant.org,
                name,
                e.code.status().as_u16(),
                false,
                started.elapsed(),
            );
            e
        };
        let spec = entry.live.clone().ok_or_else(|| {
            counted(
                ApiError::new(
                    ErrorCode::DeploymentNotReady,
                    format!("function {name} has no live deployment: deploy and promote one"),
                )
                .with_detail("function", name),
            )
        })?;
        if reactor_service::telemetry::tracing_on() {
            let span = tracing::Span::current();
            reactor_service::telemetry::rename(&span, name);
            span.record("reactor.org", spec.org.as_str());
            span.record("reactor.deployment", spec.deployment_id.as_str());
        }
        // Refusals from here on are invocations of the function too: they are logged.
        let refused = |e: ApiError| self.log_refusal(&spec, &request_id, started, e);
        // A call: one hop deeper than its caller, and no longer than the caller has left.
        let (timeout, chain, clamped) = match &call {
            None => (spec.timeout(), Vec::new(), false),
            Some(context) => {
                let limits = &self.options.calls;
                calls::next_depth(
                    context.chain.len() as u32,
                    limits.max_depth,
                    &context.path(),
                )
                .map_err(|e| refused(e.into()))?;
                let timeout = calls::callee_timeout(
                    Duration::from_millis(context.remaining_ms),
                    spec.timeout(),
                    context.target.timeout_ms.map(Duration::from_millis),
                    Duration::from_millis(limits.deadline_margin_ms),
                )
                .map_err(|e| refused(e.into()))?;
                (timeout, context.chain.clone(), timeout < spec.timeout())
            }
        };
        let mut set = |k: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                parts.headers.insert(HeaderName::from_static(k), v);
            }
        };
        set(headers::DEADLINE_MS, calls::deadline_header(timeout));
        set(headers::CALL_DEPTH, (chain.len() + 1).to_string());
        let target = match (self.runtimes.get(entry.runtime), &self.remote) {
            (Some(local), _) => Target::Local(local.clone()),
            (None, Some(remote)) => {
                let urls = index.pick_workers(entry.runtime, &spec.deployment_id, |w| {
                    !remote.is_down(&w.url)
                });
                if urls.is_empty() {
                    return Err(refused(Runtimes::no_worker(entry.runtime)));
                }
                Target::Remote(remote.clone(), urls)
            }
            (None, None) => return Err(refused(Runtimes::no_worker(entry.runtime))),
        };
        // Policies see the request as the function would: no platform credentials.
        {
            let _policy = reactor_service::trace_span!("policy").entered();
            check_policies(&entry.policies, &parts, &grant, name).map_err(refused)?;
        }
        let limit = self.options.max_body_bytes;
        let declared = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(refused(body_too_large(name, limit)));
        }
        // Contracts: the body against each input schema, read whole first.
        let checks = Arc::new(crate::contract::Checks::new(via, entry.contract.clone()));
        let mut reported = crate::contract::Reported::default();
        let body = if checks.wants_input() && has_body(&parts, &body) {
            let read = checks.input(name, body, limit, &mut reported);
            let read = tokio::time::timeout_at(started + timeout, read)
                .await
                .map_err(|_| {
                    refused(ApiError::new(
                        ErrorCode::FunctionTimeout,
                        format!("the request body for function {name} did not arrive within {} ms, so it could not be checked against its contract", timeout.as_millis()),
                    ))
                })?
                .map_err(refused)?;
            // Whole now: sent on with its length, however it came.
            parts.headers.remove(axum::http::header::TRANSFER_ENCODING);
            parts.headers.insert(
                axum::http::header::CONTENT_LENGTH,
                HeaderValue::from(read.len()),
            );
            Body::from(read)
        } else {
            body
        };
        let (body, exceeded) = Counted::wrap(body, limit);
        let deadline = started + timeout;
        let interceptors = self.interceptors_for(index, entry, call.as_ref());
        let with_retry = interceptors.retry.is_some();
        let breaker = |i: usize| {
            interceptors
                .breakers
                .get(i)
                .map(|(key, policy)| BreakerLayer {
                    breaker: self.interceptors.breaker(key, policy),
                    function: name.to_string(),
                })
        };
        let custom = (!interceptors.custom.is_empty()).then(|| CustomLayer {
            functions: Arc::new(interceptors.custom.clone()),
            org: grant.org.clone(),
            nexts: self.nexts.clone(),
            invoke: self.interceptor_invoker(&spec, &grant, &request_id, &chain, deadline),
            spec: spec.clone(),
            started,
            request_id: request_id.clone(),
            limit,
            checks: checks.clone(),
        });
        let forward = Forwarder {
            spec: spec.clone(),
            target,
            deadline,
            request_id: request_id.clone(),
            chain,
        };
        let stack = ServiceBuilder::new()
            .layer(TimeoutLayer {
                deadline,
                timeout_ms: timeout.as_millis() as u64,
            })
            .option_layer(custom)
            .option_layer(interceptors.retry.map(|(key, policy)| RetryLayer {
                budget: self.interceptors.budget(&key, &policy),
                policy: Arc::new(policy),
                deadline,
                margin: Duration::from_millis(self.options.calls.deadline_margin_ms),
            }))
            .option_layer(breaker(0))
            .option_layer(breaker(1))
            .layer(AdmissionLayer {
                admission: self.options.admission.clone(),
                caps: Arc::new(self.caps(&grant.org, name, &spec, call.is_some())),
            })
            .option_layer(
                spec.pool
                    .as_ref()
                    .and_then(|pool| {
                        self.interceptors
                            .limiter(&format!("{}/{name}", grant.org), pool)
                    })
                    .map(|limiter| AdaptiveLayer {
                        limiter,
                        function: name.to_string(),
                    }),
            )
            .service(ForwardService(Arc::new(forward)));
        let head = parts.method == axum::http::Method::HEAD;
        let attempt = Attempt {
            parts,
            body,
            number: 1,
            avoid: Vec::new(),
        };
        let Ok(answer) = stack.oneshot(attempt).await;
        let attempts = answer.attempts;
        let mut refusal = None;
        let (mut response, cold, permit) = match answer.outcome {
            _ if exceeded.load(std::sync::atomic::Ordering::Acquire) => {
                (body_too_large(name, limit).into_response(), false, None)
            }
            Outcome::Response {
                response,
                cold,
                permit,
            } => {
                let response = match tokio::time::timeout_at(
                    deadline,
                    checks.output(name, head, response, limit, &mut reported),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => ApiError::new(
                        ErrorCode::FunctionTimeout,
                        format!("function {name} did not finish its answer within {} ms, so it could not be checked against its contract", timeout.as_millis()),
                    )
                    .into_response(),
                };
                (response, cold, permit)
            }
            Outcome::Refused(e) => {
                refusal = Some(e.message.clone());
                (e.into_response(), false, None)
            }
            Outcome::Failed(failure) => {
                self.log_failure(&spec, &failure.error);
                let error = match (&failure.error, &call) {
                    // Cut short by the caller's deadline, not the function's own limit.
                    (InvokeError::Timeout { .. }, Some(context)) if clamped => ApiError::new(
                        ErrorCode::DeadlineExceeded,
                        format!(
                            "function {name} did not answer within the {} ms its call from {} allowed (the caller's remaining time, or its alias's timeout_ms)",
                            timeout.as_millis(),
                            context.caller_function
                        ),
                    )
                    .with_detail("deadline_ms", timeout.as_millis() as u64)
                    .with_detail("deployment_id", spec.deployment_id.clone()),
                    _ => failure.error.to_api_error(&spec, started.elapsed()),
                };
                (error.into_response(), failure.cold_start, None)
            }
        };
        let mut entry = LogEntry::invocation(
            &spec.org,
            &spec.function,
            Some(&spec.deployment_id),
            &request_id,
            response.status().as_u16(),
            started.elapsed(),
            cold,
        );
        if let Some(context) = &call {
            entry.message = format!(
                "call from {} ({}){}, depth {}",
                context.caller_function,
                context.caller_deployment,
                context
                    .target
                    .alias
                    .as_ref()
                    .map(|a| format!(" as {a}"))
                    .unwrap_or_default(),
                context.chain.len() + 1
            );
        }
        if let Some(why) = refusal {
            entry.message = format!("refused: {why}");
        }
        for note in &reported.notes {
            entry.message = format!("{} {note}", entry.message).trim_start().to_string();
        }
        if attempts > 1 {
            entry.message = format!("{} ({attempts} attempts)", entry.message)
                .trim_start()
                .to_string();
        }
        let tail = Tail::new(permit, self.options.logs.clone(), entry, started);
        response = tail.attach(response);
        let h = response.headers_mut();
        if with_retry {
            h.insert(headers::ATTEMPTS, HeaderValue::from(attempts));
        }
        h.remove(headers::CONTRACT_VIOLATIONS);
        if !reported.parts.is_empty()
            && let Ok(v) = HeaderValue::from_str(&reported.parts.join(", "))
        {
            h.insert(headers::CONTRACT_VIOLATIONS, v);
        }
        h.insert(
            headers::COLD_START,
            HeaderValue::from_static(if cold { "true" } else { "false" }),
        );
        set_duration(h, started);
        reactor_service::metrics::get().invoked(
            &spec.org,
            &spec.function,
            response.status().as_u16(),
            cold,
            started.elapsed(),
        );
        Ok(response)
    }
}

/// A request on its way to a function, authenticated.
struct Routed<'a> {
    name: &'a str,
    grant: crate::Grant,
    parts: axum::http::request::Parts,
    body: Body,
    request_id: String,
    started: Instant,
    /// Set for a call between functions.
    call: Option<CallContext>,
    /// The named contract a call addressed, which its body is held to.
    via: Option<(String, Arc<crate::table::Contract>)>,
}

impl DataPlane {
    /// This router as where in-process workers send calls, without keeping it alive (the
    /// router holds the workers): a call after it is gone is refused.
    pub fn call_forwarder(self: &Arc<Self>) -> Arc<dyn CallForwarder> {
        Arc::new(WeakRouter(Arc::downgrade(self)))
    }
}

struct WeakRouter(std::sync::Weak<DataPlane>);

#[async_trait::async_trait]
impl CallForwarder for WeakRouter {
    async fn forward_call(&self, context: CallContext, request: http::Request<Body>) -> Response {
        match self.0.upgrade() {
            Some(dp) => dp.forward_call(context, request).await,
            None => ApiError::new(ErrorCode::NoWorkerAvailable, "the router has stopped")
                .into_response(),
        }
    }
}

#[async_trait::async_trait]
impl CallForwarder for DataPlane {
    async fn forward_call(&self, context: CallContext, request: http::Request<Body>) -> Response {
        let started = Instant::now();
        let name = context.target.function.clone();
        let mut context = context;
        // The caller's call span is this span's parent; the callee sees this one.
        let (span, trace) = invocation_span(
            &name,
            &context.request_id,
            TraceParent::parse(&context.traceparent),
        );
        context.traceparent = trace.to_string();
        let mut response = match self
            .call(context, request, started)
            .instrument(span.clone())
            .await
        {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        if let Ok(v) = HeaderValue::from_str(&name) {
            response.headers_mut().insert(headers::FUNCTION, v);
        }
        record_outcome(&span, &response);
        log_invoked(&span, &response, started);
        response
    }
}

impl DataPlane {
    /// The concurrency caps a request passes ([`AdmissionLayer`]): the live deployment's
    /// `max_concurrency`, if it has one, and for a call one of the org's calls in flight
    /// (`functions.calls.max_in_flight_per_org`): what a tree of calls can hold at once,
    /// however it branches. Both are counted across routers with Redis.
    fn caps(&self, org: &str, name: &str, spec: &DeploymentSpec, is_call: bool) -> Vec<Cap> {
        let mut caps = Vec::new();
        if let Some(limit) = spec.max_concurrency {
            let f = reactor_service::metrics::get().function(org, name);
            caps.push(Cap {
                labels: reactor_service::metrics::ConcurrencyLabels {
                    org: f.org,
                    function: f.function,
                    cap: "function",
                },
                key: format!("{org}/{name}"),
                limit,
                refusal: ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "function {name} is at its concurrency cap ({limit} requests at once, concurrency.max_concurrency)"
                    ),
                )
                .with_detail("max_concurrency", limit),
            });
        }
        if is_call {
            let limit = self.options.calls.max_in_flight_per_org;
            // The org's series takes one of the bounded slots too.
            let f = reactor_service::metrics::get().function(org, "");
            caps.push(Cap {
                labels: reactor_service::metrics::ConcurrencyLabels {
                    org: f.org,
                    function: String::new(),
                    cap: "calls",
                },
                key: format!("calls:{org}"),
                limit,
                refusal: ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!(
                        "org {org} has {limit} calls between functions running (functions.calls.max_in_flight_per_org)"
                    ),
                )
                .with_detail("max_in_flight_per_org", limit),
            });
        }
        caps
    }

    /// The interceptors of this request, each with the key of its state. A call through
    /// an alias with a `retry` of its own retries by it (the callee's `idempotent` still
    /// decides whether a POST may repeat: only the callee knows whether it deduplicates);
    /// the budget is always the callee's, so that callers cannot multiply its load. An
    /// alias's `circuit_breaker` runs before the callee's, never in its place.
    fn interceptors_for(
        &self,
        index: &RouteIndex,
        callee: &crate::table::FunctionEntry,
        call: Option<&CallContext>,
    ) -> Chosen {
        let function = callee.interceptors.as_deref();
        let org_fn = callee
            .live
            .as_ref()
            .map(|s| format!("{}/{}", s.org, s.function))
            .unwrap_or_default();
        let alias = call.and_then(|c| {
            let name = c.target.alias.as_ref()?;
            let caller = index.function(&c.org, &c.caller_function)?;
            let live = caller.live.as_ref()?;
            let own = live.calls.as_ref()?.get(name)?.interceptors.clone()?;
            Some((format!("{}/{}@{name}", c.org, c.caller_function), own))
        });
        let own_retry = function.and_then(|f| f.retry.clone());
        let retry = match alias.as_ref().and_then(|(_, i)| i.retry.clone()) {
            Some(r) => Some(match &own_retry {
                Some(own) => Retry {
                    idempotent: own.idempotent,
                    budget_ratio: own.budget_ratio,
                    budget_min_per_sec: own.budget_min_per_sec,
                    ..r
                },
                None => Retry {
                    idempotent: false,
                    budget_ratio: Retry::default().budget_ratio,
                    budget_min_per_sec: Retry::default().budget_min_per_sec,
                    ..r
                },
            }),
            None => own_retry,
        };
        let mut breakers = Vec::new();
        if let Some((key, i)) = &alias
            && let Some(b) = &i.circuit_breaker
        {
            breakers.push((format!("alias:{key}"), b.clone()));
        }
        if let Some(b) = function.and_then(|f| f.circuit_breaker.clone()) {
            breakers.push((format!("fn:{org_fn}"), b));
        }
        let custom = alias
            .iter()
            .flat_map(|(_, i)| i.custom.iter())
            .chain(function.iter().flat_map(|f| f.custom.iter()))
            .map(|c| c.function.clone())
            .collect();
        Chosen {
            retry: retry.map(|r| (format!("fn:{org_fn}"), r)),
            breakers,
            custom,
        }
    }

    /// Logs a request refused before it reached the function (policy, cap, body limit).
    fn log_refusal(
        &self,
        spec: &DeploymentSpec,
        request_id: &str,
        started: Instant,
        e: ApiError,
    ) -> ApiError {
        let mut entry = LogEntry::invocation(
            &spec.org,
            &spec.function,
            Some(&spec.deployment_id),
            request_id,
            e.code.status().as_u16(),
            started.elapsed(),
            false,
        );
        entry.message = format!("refused: {}", e.message);
        self.options.logs.emit(entry);
        reactor_service::metrics::get().invoked(
            &spec.org,
            &spec.function,
            e.code.status().as_u16(),
            false,
            started.elapsed(),
        );
        e
    }

    /// Crashes and timeouts are events of the function's log too.
    fn log_failure(&self, spec: &DeploymentSpec, error: &InvokeError) {
        let message = match error {
            InvokeError::Crashed { message } => format!("crashed: {message}"),
            InvokeError::Timeout { timeout_ms } => {
                format!("timed out: no response within limits.timeout_ms ({timeout_ms} ms)")
            }
            _ => return,
        };
        self.options.logs.emit(LogEntry::event(
            &spec.org,
            &spec.function,
            Some(&spec.deployment_id),
            message,
        ));
    }
}

/// A call's target is one its caller's `calls` allows (any, without `calls`).
fn check_target(
    calls: Option<&reactor_api::manifest::Calls>,
    target: &calls::CallTarget,
) -> Result<(), ApiError> {
    let Some(calls) = calls else {
        return Ok(());
    };
    let allowed = target
        .alias
        .as_ref()
        .and_then(|alias| calls.get(alias))
        .is_some_and(|call| match &call.contract {
            Some(contract) => target.contract.as_ref() == Some(contract),
            None => target.contract.is_none() && call.function.as_ref() == Some(&target.function),
        });
    if allowed {
        return Ok(());
    }
    Err(calls::CallError::NotAllowed {
        target: target
            .alias
            .clone()
            .unwrap_or_else(|| target.function.clone()),
        reason: "the caller's manifest has no such alias in calls",
    }
    .into())
}

/// A request whose body a contract checks: POST, PUT and PATCH, and any other that has
/// one (whatever its method or framing). A GET without a body is not held to the input
/// schema.
fn has_body(parts: &http::request::Parts, body: &Body) -> bool {
    use axum::http::{Method, header};
    use http_body::Body as _;
    matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
        || !body.is_end_stream()
        || parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn body_too_large(name: &str, limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body for function {name} is larger than {limit} bytes (functions.invoke_max_body_bytes)"),
    )
    .with_detail("max_body_bytes", limit)
}

/// Every policy of the function must allow the request.
fn check_policies(
    policies: &[Arc<Policy>],
    req: &axum::http::request::Parts,
    grant: &crate::Grant,
    name: &str,
) -> Result<(), ApiError> {
    if policies.is_empty() {
        return Ok(());
    }
    let path = policy_path(req.uri.path());
    let facts = reactor_policy::RequestFacts {
        method: req.method.as_str(),
        path: &path,
        query: req.uri.query(),
        headers: &req.headers,
        caller_org: &grant.org,
        caller_role: grant.role.as_str(),
        caller_token_id: &grant.token_id,
        now: std::time::SystemTime::now(),
    };
    for policy in policies {
        let (rule, reason) = match policy.as_ref() {
            Policy::Compiled(p) => match p.evaluate(&facts) {
                reactor_policy::Decision::Allow => continue,
                reactor_policy::Decision::Deny { rule, reason } => (rule, reason),
            },
            Policy::Broken(e) => (
                "invalid-policy".to_string(),
                format!("the policy does not compile here: {e}"),
            ),
        };
        return Err(ApiError::new(
            ErrorCode::PolicyDenied,
            format!("function {name} refused this request: {reason}"),
        )
        .with_detail("rule", rule));
    }
    Ok(())
}

/// The path policies match: percent-escapes of unreserved characters decoded, empty
/// and `.` segments dropped, `..` resolved, so that `/%61dmin//./x` is `/admin/x` as most
/// frameworks would route it. Other escapes (`%2F` among them) stay as they are.
fn policy_path(raw: &str) -> String {
    let mut decoded = String::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            && (b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            decoded.push(b as char);
            i += 3;
            continue;
        }
        decoded.push(bytes[i] as char);
        i += 1;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || (decoded.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
}

/// The interceptors a request runs through, each with the key of its state.
struct Chosen {
    retry: Option<(String, Retry)>,
    /// Outermost first: an alias's, then the callee's.
    breakers: Vec<(String, CircuitBreaker)>,
    /// Interceptor functions, outermost first: an alias's, then the callee's.
    custom: Vec<String>,
}

/// Where an invocation runs.
enum Target {
    Local(Arc<dyn RuntimeWorker>),
    /// The chosen worker, then others to fall back to.
    Remote(RemoteWorkers, Vec<Arc<str>>),
}

/// The forward step of one request: each attempt as an [`Invocation`] of the live
/// deployment, on the in-process worker or on the first remote one no earlier attempt
/// failed on.
struct Forwarder {
    spec: Arc<DeploymentSpec>,
    target: Target,
    deadline: Instant,
    request_id: String,
    chain: Vec<String>,
}

impl Forward for Forwarder {
    fn forward(&self, attempt: Attempt) -> BoxFuture<'static, Answer> {
        let mut parts = attempt.parts;
        if attempt.number > 1
            && let Ok(v) = HeaderValue::from_str(&calls::deadline_header(
                self.deadline.saturating_duration_since(Instant::now()),
            ))
        {
            // What a retry has left, not what the first attempt had.
            parts.headers.insert(headers::DEADLINE_MS, v);
        }
        // The hop to the worker; a remote worker's span is its child.
        let remote = matches!(self.target, Target::Remote(..));
        let span = reactor_service::trace_span!(
            "worker",
            otel.kind = if remote { "client" } else { "internal" },
            reactor.attempt = attempt.number,
        );
        if remote && reactor_service::telemetry::tracing_on() {
            let trace = reactor_service::telemetry::traceparent_of(&span, None);
            if let Ok(v) = HeaderValue::from_str(&trace.to_string()) {
                parts.headers.insert(headers::TRACEPARENT, v);
            }
        }
        let invocation = Invocation {
            spec: self.spec.clone(),
            request: axum::http::Request::from_parts(parts, attempt.body),
            deadline: self.deadline,
            request_id: self.request_id.clone(),
            chain: self.chain.clone(),
        };
        let answer = |result: Result<reactor_api::InvokeOutcome, reactor_api::InvokeFailure>,
                      instance: Option<Arc<str>>| {
            let outcome = match result {
                Ok(o) => Outcome::Response {
                    response: o.response,
                    cold: o.cold_start,
                    permit: None,
                },
                Err(f) => Outcome::Failed(f),
            };
            Answer::new(outcome, instance)
        };
        match &self.target {
            Target::Local(worker) => {
                let worker = worker.clone();
                Box::pin(
                    async move { answer(worker.invoke(invocation).await, None) }.instrument(span),
                )
            }
            Target::Remote(remote, urls) => {
                let remote = remote.clone();
                // Workers an earlier attempt failed on only when there is no other.
                let (fresh, failed): (Vec<_>, Vec<_>) = urls
                    .iter()
                    .cloned()
                    .partition(|u| !attempt.avoid.contains(u));
                let order: Vec<Arc<str>> = if fresh.is_empty() { failed } else { fresh };
                Box::pin(
                    async move {
                        let (instance, result) = remote.invoke_reporting(&order, invocation).await;
                        answer(result, instance)
                    }
                    .instrument(span),
                )
            }
        }
    }
}

/// The grant of the request's bearer token, checked against `X-Reactor-Org`.
fn authenticate(index: &RouteIndex, h: &HeaderMap) -> Result<crate::Grant, ApiError> {
    let hdr = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    let unauthorized =
        || ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required");
    let token = hdr(headers::AUTHORIZATION)
        .and_then(bearer)
        .ok_or_else(unauthorized)?;
    if access::is_access_token(token) {
        // A signed-in user: the signature from the table's keys, the role from the
        // table's memberships (no call to the control plane).
        let claims = access::verify(token, |kid| index.signing_key(kid), access::now_secs())
            .map_err(|_| unauthorized())?;
        return member_grant(index.memberships(&claims.sub), hdr(headers::ORG));
    }
    let grant = index.grant(&token_hash(token)).ok_or_else(unauthorized)?;
    if let Some(org) = hdr(headers::ORG)
        && org != grant.org
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this token belongs to another org than {org:?}"),
        ));
    }
    Ok(grant.clone())
}

/// A signed-in user's grant in the org `X-Reactor-Org` names, else in their only org.
fn member_grant(members: &[crate::Grant], org: Option<&str>) -> Result<crate::Grant, ApiError> {
    let found = match org {
        Some(org) => members.iter().find(|g| g.org == org),
        None if members.len() == 1 => members.first(),
        None if members.is_empty() => None,
        None => {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                "you are a member of several orgs: name one with X-Reactor-Org",
            ));
        }
    };
    found.cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Forbidden,
            match org {
                Some(org) => format!("you are not a member of org {org:?}"),
                None => "you are not a member of any org".to_string(),
            },
        )
    })
}

/// What reaches the function: no platform credentials, the caller as the router saw it,
/// and its own span of the caller's trace (a new trace when none came).
fn rewrite_headers(
    h: &mut HeaderMap,
    name: &str,
    grant: &crate::Grant,
    request_id: &str,
    trace: TraceParent,
) {
    h.remove(headers::AUTHORIZATION);
    headers::strip_reserved(h);
    let mut set = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(k), v);
        }
    };
    set(headers::CALLER_ORG, &grant.org);
    set(headers::CALLER_TOKEN, &grant.token_id);
    set(headers::CALLER_ROLE, grant.role.as_str());
    set(headers::REQUEST_ID, request_id);
    set(headers::FORWARDED_PREFIX, &format!("{INVOKE_PREFIX}{name}"));
    set(headers::TRACEPARENT, &trace.to_string());
}

fn set_duration(h: &mut HeaderMap, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if let Ok(v) = HeaderValue::from_str(&format!("{ms:.3}")) {
        h.insert(headers::DURATION_MS, v);
    }
}

/// Splits `/fn/v1/{name}{sub}` of the raw (still percent-encoded) path.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(INVOKE_PREFIX)?;
    let (name, sub) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!name.is_empty()).then_some((name, sub))
}

/// The caller's trace context, when it sent a valid one.
fn incoming_trace(h: &HeaderMap) -> Option<TraceParent> {
    h.get(headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
}

async fn invoke(State(dp): State<Arc<DataPlane>>, req: Request) -> Response {
    let started = Instant::now();
    let Some((name, sub)) =
        split_path(req.uri().path()).map(|(n, s)| (n.to_string(), s.to_string()))
    else {
        return ApiError::new(ErrorCode::NotFound, "no function in the path").into_response();
    };
    // The invocation's span: the caller's trace continued (else a new one), its id the
    // parent the function sees in `traceparent`; every log line of the invocation carries
    // them (`--log-format json`).
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| format!("req_{}", ulid::Ulid::new()));
    let (span, trace) = invocation_span(&name, &request_id, incoming_trace(req.headers()));
    let routed = dp
        .route(&name, &sub, req, started, request_id, trace)
        .instrument(span.clone())
        .await;
    let mut response = match routed {
        Ok(r) => r,
        Err(e) => {
            let mut r = e.into_response();
            let h = r.headers_mut();
            h.insert(headers::COLD_START, HeaderValue::from_static("false"));
            set_duration(h, started);
            r
        }
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        response.headers_mut().insert(headers::FUNCTION, v);
    }
    record_outcome(&span, &response);
    log_invoked(&span, &response, started);
    response
}

/// The span of one invocation (an outside request or a call between functions), under
/// the caller's trace `parent` when there is one, and the trace context the function is
/// given: this span's. The lines written in it carry the trace and span ids
/// (`--log-format json`); with traces on it is the trace's server span, with the FaaS
/// attributes. A name that cannot be a function's came from the URL unchecked and is not
/// recorded.
fn invocation_span(
    name: &str,
    request_id: &str,
    parent: Option<TraceParent>,
) -> (tracing::Span, TraceParent) {
    let function = reactor_api::manifest::valid_function_name(name).then_some(name);
    let empty = tracing::field::Empty;
    let span = if reactor_service::telemetry::tracing_on() {
        tracing::info_span!(
            "invoke",
            otel.name = "invoke",
            otel.kind = "server",
            otel.status_code = empty,
            faas.trigger = "http",
            faas.invoked_name = function,
            faas.invocation_id = request_id,
            faas.coldstart = empty,
            reactor.org = empty,
            reactor.deployment = empty,
            http.response.status_code = empty,
            function,
            request_id,
            trace_id = empty,
            span_id = empty,
        )
    } else {
        tracing::info_span!(
            "invoke",
            function,
            request_id,
            trace_id = empty,
            span_id = empty
        )
    };
    let trace = reactor_service::telemetry::traceparent_recorded(&span, parent);
    (span, trace)
}

/// The answer on the invocation's span: its status, cold start, and an error status
/// (always exported) when the platform or the function failed.
fn record_outcome(span: &tracing::Span, response: &Response) {
    if !reactor_service::telemetry::tracing_on() {
        return;
    }
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if let Some(cold) = response.headers().get(headers::COLD_START) {
        span.record("faas.coldstart", cold.as_bytes() == b"true");
    }
    if status.is_server_error() {
        let code = response
            .headers()
            .get(headers::ERROR)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("the function answered with a server error")
            .to_string();
        reactor_service::telemetry::set_error(span, code);
    }
}

/// The `debug` line of an invocation: its status and the time to the response's head
/// (a streamed body may go on; the function's log entry has the whole duration).
fn log_invoked(span: &tracing::Span, response: &Response, started: Instant) {
    tracing::debug!(
        parent: span,
        status = response.status().as_u16(),
        head_ms = started.elapsed().as_secs_f64() * 1e3,
        "invoked"
    );
}

/// The invoke routes, to be merged into a server.
pub fn invoke_router(dp: Arc<DataPlane>) -> Router {
    Router::new()
        .route("/fn/v1/{name}", axum::routing::any(invoke))
        .route("/fn/v1/{name}/", axum::routing::any(invoke))
        .route("/fn/v1/{name}/{*sub}", axum::routing::any(invoke))
        .with_state(dp)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_relative_to_the_mount() {
        assert_eq!(split_path("/fn/v1/hello"), Some(("hello", "/")));
        assert_eq!(split_path("/fn/v1/hello/"), Some(("hello", "/")));
        assert_eq!(split_path("/fn/v1/hello/a/b"), Some(("hello", "/a/b")));
        assert_eq!(
            split_path("/fn/v1/hello/a%20b/%2F"),
            Some(("hello", "/a%20b/%2F"))
        );
        assert_eq!(split_path("/fn/v1/"), None);
    }

    #[test]
    fn policy_paths_are_normalised() {
        assert_eq!(policy_path("/admin/x"), "/admin/x");
        assert_eq!(policy_path("/%61dmin/x"), "/admin/x");
        assert_eq!(policy_path("//admin/./x"), "/admin/x");
        assert_eq!(policy_path("/a/../admin/x"), "/admin/x");
        assert_eq!(policy_path("/../../admin"), "/admin");
        assert_eq!(policy_path("/"), "/");
        assert_eq!(policy_path("/admin/"), "/admin/");
        assert_eq!(policy_path("/a%2Fb"), "/a%2Fb");
        assert_eq!(policy_path("/%"), "/%");
    }

    #[test]
    fn router_strips_credentials_and_sets_caller() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert("x-reactor-org", HeaderValue::from_static("acme"));
        h.insert("x-reactor-caller-role", HeaderValue::from_static("admin"));
        h.insert("x-reactor-internal-call", HeaderValue::from_static("e30"));
        h.insert("x-reactor-internal-spec", HeaderValue::from_static("e30"));
        h.insert(
            "x-reactor-call-url",
            HeaderValue::from_static("http://evil"),
        );
        h.insert(
            "x-reactor-call-capability",
            HeaderValue::from_static("forged"),
        );
        let grant = crate::Grant {
            token_id: "tok_1".into(),
            org: "acme".into(),
            role: reactor_api::model::Role::Invoker,
        };
        let (_, trace) = invocation_span("hello", "req_1", incoming_trace(&h));
        rewrite_headers(&mut h, "hello", &grant, "req_1", trace);
        assert!(h.get("authorization").is_none());
        assert!(h.get("x-reactor-org").is_none());
        assert!(h.get("x-reactor-internal-call").is_none());
        assert!(h.get("x-reactor-internal-spec").is_none());
        assert!(h.get("x-reactor-call-url").is_none());
        assert!(h.get("x-reactor-call-capability").is_none());
        assert_eq!(h["x-reactor-caller-role"], "invoker");
        assert_eq!(h["x-reactor-caller-token"], "tok_1");
        assert_eq!(h["x-forwarded-prefix"], "/fn/v1/hello");
        assert!(TraceParent::parse(h["traceparent"].to_str().expect("ascii")).is_some());
        // A caller's trace goes on, in a span of its own.
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        h.insert("traceparent", HeaderValue::from_static(tp));
        let (_, trace) = invocation_span("hello", "req_1", incoming_trace(&h));
        rewrite_headers(&mut h, "hello", &grant, "req_1", trace);
        let child = TraceParent::parse(h["traceparent"].to_str().expect("ascii")).expect("valid");
        assert_eq!(child.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(child.parent_id, 0x00f067aa0ba902b7);
        // The invocation's span, computed once by the handler, is what the function gets.
        let span = TraceParent::root(7, 9);
        rewrite_headers(&mut h, "hello", &grant, "req_1", span);
        assert_eq!(h["traceparent"], span.to_string().as_str());
    }

    #[test]
    fn the_router_checks_the_target_against_the_callers_calls() {
        let target = |function: &str, alias: Option<&str>| calls::CallTarget {
            function: function.into(),
            contract: None,
            alias: alias.map(str::to_string),
            timeout_ms: None,
        };
        assert!(check_target(None, &target("anything", None)).is_ok());
        let declared: reactor_api::manifest::Calls = [
            (
                "users".to_string(),
                reactor_api::manifest::CallAlias {
                    function: Some("get-user".into()),
                    contract: None,
                    timeout_ms: None,
                    interceptors: None,
                },
            ),
            (
                "mail".to_string(),
                reactor_api::manifest::CallAlias {
                    function: None,
                    contract: Some("email.sender@1".into()),
                    timeout_ms: None,
                    interceptors: None,
                },
            ),
        ]
        .into_iter()
        .collect();
        assert!(check_target(Some(&declared), &target("get-user", Some("users"))).is_ok());
        let contract = |c: &str, alias: &str| calls::CallTarget {
            contract: Some(c.into()),
            ..target(c, Some(alias))
        };
        assert!(check_target(Some(&declared), &contract("email.sender@1", "mail")).is_ok());
        for bad in [
            target("get-user", None),
            target("admin", Some("users")),
            target("get-user", Some("other")),
            // A worker may not turn a contract alias into a function, nor the reverse.
            target("smtp", Some("mail")),
            contract("email.sender@2", "mail"),
            contract("get-user", "users"),
        ] {
            let err = check_target(Some(&declared), &bad).expect_err("not declared");
            assert_eq!(err.code, ErrorCode::CallNotAllowed, "{bad:?}");
        }
    }

    #[test]
    fn a_call_carries_the_context_its_worker_stamped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-reactor-caller-org", "evil"),
            ("x-reactor-caller-function", "forged"),
            ("x-reactor-call-depth", "1"),
            ("baggage", "forged=1"),
            ("x-request-id", "req_forged"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let context = CallContext {
            org: "acme".into(),
            token_id: "tok_1".into(),
            role: reactor_api::model::Role::Developer,
            caller_function: "front".into(),
            caller_deployment: "dep_1".into(),
            request_id: "req_root".into(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01".into(),
            tracestate: None,
            baggage: Some("user=alice".into()),
            chain: vec!["front".into()],
            target: calls::CallTarget {
                function: "users".into(),
                contract: None,
                alias: None,
                timeout_ms: None,
            },
            remaining_ms: 500,
            next: None,
        };
        calls::stamp_call_headers(&mut h, &context);
        assert_eq!(h["x-reactor-caller-org"], "acme");
        assert_eq!(h["x-reactor-caller-function"], "front");
        assert_eq!(h["x-reactor-caller-deployment"], "dep_1");
        assert_eq!(h["x-request-id"], "req_root");
        assert_eq!(h["baggage"], "user=alice");
        assert!(h.get("x-reactor-call-depth").is_none(), "set by dispatch");
        assert!(h.get("x-forwarded-prefix").is_none());
    }

    #[tokio::test]
    async fn a_lookup_sees_the_newest_in_process_table_at_once() {
        let (tx, rx) = watch::channel(Arc::new(RoutingTable {
            version: 1,
            ..Default::default()
        }));
        let dp = DataPlane::new(Runtimes::new());
        let follower = dp.follow(rx);
        // Published, and looked up before the follower task could run.
        tx.send_replace(Arc::new(RoutingTable {
            version: 2,
            ..Default::default()
        }));
        dp.catch_up();
        assert_eq!(dp.version(), 2);
        follower.abort();
    }

    #[test]
    fn older_tables_are_ignored() {
        let dp = DataPlane::new(Runtimes::new());
        assert!(dp.apply(&RoutingTable {
            version: 3,
            ..Default::default()
        }));
        assert!(!dp.apply(&RoutingTable {
            version: 2,
            ..Default::default()
        }));
        assert!(!dp.apply(&RoutingTable {
            version: 3,
            ..Default::default()
        }));
        assert_eq!(dp.version(), 3);
    }
}
