//! The forward step of an invocation as a stack of tower layers, outermost first:
//!
//! timeout → custom → retry → breaker → admission → forward
//!
//! - **timeout** bounds the whole stack, retries and their waits included, by the
//!   invocation's deadline;
//! - **custom** ([`custom`], only when the manifest names interceptor functions) invokes
//!   each interceptor function, which answers in the target's place or sends the request
//!   on to the rest of the chain through `next.reactor.internal`;
//! - **retry** ([`retry`], only when the manifest asks) sends the request again after a
//!   connection failure or a retryable status, with backoff, a budget and a margin of the
//!   deadline, and never to the instance that just failed;
//! - **breaker** ([`breaker`], only when the manifest asks) answers 503 `circuit_open`
//!   without forwarding while the function keeps failing; every attempt passes it, so an
//!   open breaker also stops retries;
//! - **admission** takes the concurrency permits (the function's cap, the org's calls in
//!   flight), held until the response body ends, then for an adaptive pool a slot under
//!   the limit [`limit`] sizes from the latency it measures;
//! - **forward** runs the attempt on the in-process worker or on a remote one.
//!
//! Each attempt is an [`Attempt`]; what it comes to is an [`Answer`]. The stack is built per
//! request from the function's interceptors; the breakers and retry budgets it uses live as
//! long as the router ([`Registry`]), one per function or call alias.

pub mod breaker;
pub mod custom;
pub mod limit;
pub mod retry;

use crate::admission::{Admission, Permit};
use axum::body::Body;
use axum::response::Response;
use futures::future::BoxFuture;
use reactor_api::interceptors::{CircuitBreaker, Retry};
use reactor_api::pool::Pool;
use reactor_api::{ApiError, ErrorCode, InvokeError, InvokeFailure};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

/// One attempt at running the request.
pub struct Attempt {
    pub parts: http::request::Parts,
    pub body: Body,
    /// 1 for the first.
    pub number: u32,
    /// Instances (worker addresses) earlier attempts failed on: tried last, if at all.
    pub avoid: Vec<Arc<str>>,
}

/// What an attempt came to.
pub struct Answer {
    pub outcome: Outcome,
    /// Attempts made in all (set by the retry layer).
    pub attempts: u32,
    /// The instance that answered or failed, when the forward step knows it.
    pub instance: Option<Arc<str>>,
}

pub enum Outcome {
    /// The function answered (any status); the permit is held until the body ends.
    Response {
        response: Response,
        cold: bool,
        permit: Option<Permit>,
    },
    /// The worker failed before the function answered.
    Failed(InvokeFailure),
    /// The router refused before forwarding (an open breaker, a concurrency cap).
    Refused(ApiError),
}

impl Answer {
    pub fn new(outcome: Outcome, instance: Option<Arc<str>>) -> Self {
        Self {
            outcome,
            attempts: 1,
            instance,
        }
    }

    pub fn refused(e: ApiError) -> Self {
        Self::new(Outcome::Refused(e), None)
    }

    /// The status the client would see.
    pub fn status(&self) -> u16 {
        match &self.outcome {
            Outcome::Response { response, .. } => response.status().as_u16(),
            Outcome::Failed(f) => failure_status(&f.error),
            Outcome::Refused(e) => e.status().as_u16(),
        }
    }

    /// A failure of the function or of its instance, as the breaker counts them: 5xx
    /// answers (other than the router's own refusals), timeouts, crashes, a worker that
    /// could not answer. 4xx and 429 are not.
    pub fn is_failure(&self) -> bool {
        match &self.outcome {
            Outcome::Response { response, .. } => response.status().is_server_error(),
            Outcome::Failed(f) => !matches!(
                f.error,
                InvokeError::InvalidRequest { .. }
                    | InvokeError::PayloadTooLarge { .. }
                    | InvokeError::TooManyRequests { .. }
            ),
            Outcome::Refused(_) => false,
        }
    }
}

/// The HTTP status an invocation error is answered with (as `InvokeError::to_api_error`).
fn failure_status(e: &InvokeError) -> u16 {
    match e {
        InvokeError::Timeout { .. } => 408,
        InvokeError::Crashed { .. } => 500,
        InvokeError::NotReady { .. } => 503,
        InvokeError::Unavailable { .. } => 502,
        InvokeError::InvalidRequest { .. } => 400,
        InvokeError::TooManyRequests { .. } => 429,
        InvokeError::PayloadTooLarge { .. } => 413,
    }
}

/// Breakers and retry budgets of this router, by function or alias, each kept while its
/// settings stay the same (a new deployment with other settings starts afresh).
#[derive(Default)]
pub struct Registry {
    breakers: Mutex<HashMap<String, (CircuitBreaker, Arc<breaker::Breaker>)>>,
    budgets: Mutex<HashMap<String, (BudgetSettings, Arc<retry::Budget>)>>,
    limiters: Mutex<HashMap<String, (Pool, Arc<limit::Limiter>)>>,
}

/// A budget's ratio (per mille) and minimum per second, compared exactly.
type BudgetSettings = (u32, u32);

impl Registry {
    pub fn breaker(&self, key: &str, policy: &CircuitBreaker) -> Arc<breaker::Breaker> {
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((p, b)) if p == policy => b.clone(),
            _ => {
                let b = Arc::new(breaker::Breaker::new(policy.clone(), key));
                map.insert(key.to_string(), (policy.clone(), b.clone()));
                b
            }
        }
    }

    /// The limiter of an adaptive pool (`None` for another pool).
    pub fn limiter(&self, key: &str, pool: &Pool) -> Option<Arc<limit::Limiter>> {
        let Pool::Adaptive {
            min_size,
            max_size,
            algorithm,
        } = *pool
        else {
            return None;
        };
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((p, l)) if p == pool => Some(l.clone()),
            _ => {
                let l = Arc::new(limit::Limiter::new(algorithm, min_size, max_size));
                map.insert(key.to_string(), (*pool, l.clone()));
                Some(l)
            }
        }
    }

    pub fn budget(&self, key: &str, policy: &Retry) -> Arc<retry::Budget> {
        // The ratio as a whole per mille, so that the settings compare exactly.
        let settings = (
            (policy.budget_ratio * 1000.0).round() as u32,
            policy.budget_min_per_sec,
        );
        let mut map = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some((s, b)) if *s == settings => b.clone(),
            _ => {
                let b = Arc::new(retry::Budget::new(
                    policy.budget_ratio,
                    policy.budget_min_per_sec,
                ));
                map.insert(key.to_string(), (settings, b.clone()));
                b
            }
        }
    }
}

/// The innermost step: runs one attempt (`crate::router` implements it for the local and
/// remote workers).
pub trait Forward: Send + Sync + 'static {
    fn forward(&self, attempt: Attempt) -> BoxFuture<'static, Answer>;
}

/// A [`Forward`] as a tower service.
#[derive(Clone)]
pub struct ForwardService(pub Arc<dyn Forward>);

impl Service<Attempt> for ForwardService {
    type Response = Answer;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Answer, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let f = self.0.forward(attempt);
        Box::pin(async move { Ok(f.await) })
    }
}

/// One concurrency cap to pass: permits of `key` under `limit`, and what a refusal says.
#[derive(Clone)]
pub struct Cap {
    pub key: String,
    pub limit: u32,
    pub refusal: ApiError,
    /// Its series in `reactor_concurrency_in_use` and `reactor_concurrency_limit`.
    pub labels: reactor_service::metrics::ConcurrencyLabels,
}

/// Counts a permit in `reactor_concurrency_in_use` while it is held.
struct InUse(reactor_service::metrics::prometheus_client::metrics::gauge::Gauge);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Takes a permit under each cap (across routers when the admission counts in Redis); a
/// counter that cannot be reached lets the request through (the workers' bounds hold).
#[derive(Clone)]
pub struct AdmissionLayer {
    pub admission: Arc<dyn Admission>,
    pub caps: Arc<Vec<Cap>>,
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admit<S>;
    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            gate: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Admit<S> {
    gate: AdmissionLayer,
    inner: S,
}

impl<S> Service<Attempt> for Admit<S>
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
        let gate = self.gate.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let mut permits = Vec::new();
            let span = reactor_service::trace_span!("admission");
            let metrics = reactor_service::metrics::get();
            let recording = metrics.recording();
            for cap in gate.caps.iter() {
                if recording {
                    metrics
                        .concurrency_limit
                        .get_or_create(&cap.labels)
                        .set(i64::from(cap.limit));
                }
                match gate
                    .admission
                    .try_acquire(&cap.key, cap.limit)
                    .instrument(span.clone())
                    .await
                {
                    Ok(Some(p)) if recording => {
                        let gauge = metrics
                            .concurrency_in_use
                            .get_or_create(&cap.labels)
                            .clone();
                        gauge.inc();
                        permits.push(Permit::new((p, InUse(gauge))));
                    }
                    Ok(Some(p)) => permits.push(p),
                    Ok(None) => return Ok(Answer::refused(cap.refusal.clone())),
                    Err(e) => {
                        tracing::warn!(error = %e, key = %cap.key, "admission unavailable: letting the request through");
                    }
                }
            }
            drop(span);
            let mut answer = inner.call(attempt).await?;
            if let Outcome::Response { permit, .. } = &mut answer.outcome
                && !permits.is_empty()
            {
                permits.extend(permit.take());
                *permit = Some(Permit::new(permits));
            }
            Ok(answer)
        })
    }
}

/// An adaptive pool: a slot under the limiter's current limit (429 over it), held until
/// the response body ends; each warm answer is a latency sample. The limit is on every
/// response (`X-Reactor-Pool-Limit`).
#[derive(Clone)]
pub struct AdaptiveLayer {
    pub limiter: Arc<limit::Limiter>,
    /// Named in the refusal.
    pub function: String,
}

impl<S> Layer<S> for AdaptiveLayer {
    type Service = Adaptive<S>;
    fn layer(&self, inner: S) -> Adaptive<S> {
        Adaptive {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct Adaptive<S> {
    layer: AdaptiveLayer,
    inner: S,
}

impl<S> Service<Attempt> for Adaptive<S>
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
        let layer = self.layer.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let limiter = layer.limiter;
            let Some(slot) = limiter.try_acquire() else {
                let limit = limiter.limit();
                return Ok(Answer::refused(
                    ApiError::new(
                        ErrorCode::TooManyRequests,
                        format!(
                            "function {} is at its adaptive pool's limit ({limit} requests at once on this router, sized from its latency)",
                            layer.function
                        ),
                    )
                    .with_detail("pool_limit", limit),
                ));
            };
            let started = Instant::now();
            let mut answer = inner.call(attempt).await?;
            // A worker's 429 (its queue full) is overload too, however fast it came.
            let failed = answer.is_failure() || answer.status() == 429;
            let cold = match &answer.outcome {
                Outcome::Response { cold, .. } => Some(*cold),
                Outcome::Failed(f) => Some(f.cold_start),
                Outcome::Refused(_) => None,
            };
            // Cold starts measure the start, not the load: no sample.
            if cold == Some(false) {
                limiter.sample(started.elapsed(), slot.in_flight, failed);
            }
            if let Outcome::Response {
                response, permit, ..
            } = &mut answer.outcome
            {
                response.headers_mut().insert(
                    reactor_api::headers::POOL_LIMIT,
                    http::HeaderValue::from(limiter.limit()),
                );
                let held = permit.take();
                *permit = Some(Permit::new((held, slot)));
            }
            Ok(answer)
        })
    }
}

/// Answers 503 `circuit_open` while the breaker is open; tells it how each attempt went.
#[derive(Clone)]
pub struct BreakerLayer {
    pub breaker: Arc<breaker::Breaker>,
    /// Named in the refusal.
    pub function: String,
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;
    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct BreakerService<S> {
    layer: BreakerLayer,
    inner: S,
}

impl<S> Service<Attempt> for BreakerService<S>
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
        let layer = self.layer.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let breaker = layer.breaker;
            let pass = match breaker.try_pass(Instant::now()) {
                Ok(pass) => pass,
                Err(wait) => return Ok(Answer::refused(circuit_open(&layer.function, wait))),
            };
            let answer = inner.call(attempt).await?;
            if !matches!(answer.outcome, Outcome::Refused(_)) {
                pass.record(answer.is_failure(), Instant::now());
            }
            Ok(answer)
        })
    }
}

/// 503 `circuit_open`, with `Retry-After` (whole seconds, rounded up) in its details.
pub fn circuit_open(function: &str, wait: std::time::Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        ErrorCode::CircuitOpen,
        format!(
            "function {function} is failing: its circuit breaker is open for {secs} s more (interceptors.circuit_breaker)"
        ),
    )
    .with_detail("function", function)
    .with_detail("retry_after_secs", secs.max(1))
}

/// Bounds the stack by the invocation's deadline: past it (and a little slack for the
/// worker to say so itself), the attempt in flight is dropped and the answer is a timeout.
#[derive(Clone)]
pub struct TimeoutLayer {
    pub deadline: Instant,
    /// What the timeout says it was (the function's limit or the call's deadline).
    pub timeout_ms: u64,
}

/// Slack after the deadline for a worker to answer with its own timeout (which knows
/// whether the start was cold).
const TIMEOUT_SLACK: std::time::Duration = std::time::Duration::from_secs(3);

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;
    fn layer(&self, inner: S) -> TimeoutService<S> {
        TimeoutService {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct TimeoutService<S> {
    layer: TimeoutLayer,
    inner: S,
}

impl<S> Service<Attempt> for TimeoutService<S>
where
    S: Service<Attempt, Response = Answer, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Answer, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, attempt: Attempt) -> Self::Future {
        let TimeoutLayer {
            deadline,
            timeout_ms,
        } = self.layer;
        let fut = self.inner.call(attempt);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline + TIMEOUT_SLACK, fut).await {
                Ok(answer) => answer,
                Err(_) => Ok(Answer::new(
                    Outcome::Failed(InvokeError::Timeout { timeout_ms }.into()),
                    None,
                )),
            }
        })
    }
}
