//! The retry layer. What it will not do, whatever the manifest says:
//! - repeat a POST or PATCH unless `retry.idempotent` marks the function as deduplicating
//!   (by the `Idempotency-Key` it stamps, one per logical request, kept across attempts);
//! - retry a 4xx other than 429 (the caller's mistake), or a timeout (it spent the
//!   deadline);
//! - retry once a response has been handed on: it decides on the status alone, before
//!   anything of the body reaches the client;
//! - retry when the wait and a margin would not fit before the deadline;
//! - retry past the budget: retries may add at most `budget_ratio` of the function's
//!   requests of the last 10 s, or `budget_min_per_sec`, whichever is more, so that a
//!   failing function does not see its load multiplied;
//! - replay a request body it could not keep: bodies of unknown length or over
//!   [`REPLAY_LIMIT`] are sent once;
//! - send the next attempt to the instance that just failed, when there is another.

use super::{Answer, Attempt, Outcome};
use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::HeaderValue;
use http_body_util::BodyExt;
use rand::Rng;
use reactor_api::interceptors::Retry;
use reactor_api::{InvokeError, headers};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// The retry budget of a function: over the last [`BUDGET_SECS`] seconds, retries may
/// number at most `ratio` × the requests plus `min_per_sec` × [`BUDGET_SECS`]. Counted
/// per second, so it costs the same whatever the rate.
pub struct Budget {
    ratio: f64,
    reserve: f64,
    window: Mutex<Window>,
}

/// Seconds a budget looks back.
pub const BUDGET_SECS: u64 = 10;

struct Window {
    epoch: Instant,
    /// (second since `epoch`, requests, retries), oldest first, at most BUDGET_SECS.
    seconds: VecDeque<(u64, u64, u64)>,
}

impl Budget {
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        Self {
            ratio: ratio.clamp(0.0, 1.0),
            reserve: f64::from(min_per_sec) * BUDGET_SECS as f64,
            window: Mutex::new(Window {
                epoch: Instant::now(),
                seconds: VecDeque::new(),
            }),
        }
    }

    /// The current second's counts (requests, retries), older seconds dropped.
    fn with_now<T>(&self, f: impl FnOnce(&mut (u64, u64, u64), (u64, u64)) -> T) -> T {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = w.epoch.elapsed().as_secs();
        while w.seconds.front().is_some_and(|s| s.0 + BUDGET_SECS <= now) {
            w.seconds.pop_front();
        }
        if w.seconds.back().is_none_or(|s| s.0 != now) {
            w.seconds.push_back((now, 0, 0));
        }
        let totals = w
            .seconds
            .iter()
            .fold((0, 0), |(r, t), s| (r + s.1, t + s.2));
        let current = w.seconds.back_mut().expect("pushed above");
        f(current, totals)
    }

    /// A request (its first attempt).
    pub fn deposit(&self) {
        self.with_now(|s, _| s.1 += 1);
    }

    /// Whether one more retry fits; if so it is counted.
    pub fn withdraw(&self) -> bool {
        self.with_now(|s, (requests, retries)| {
            let allowed = self.ratio * requests as f64 + self.reserve;
            let fits = (retries + 1) as f64 <= allowed;
            if fits {
                s.2 += 1;
            }
            fits
        })
    }
}

/// Request bodies up to this size are kept to be sent again.
pub const REPLAY_LIMIT: u64 = 1024 * 1024;

#[derive(Clone)]
pub struct RetryLayer {
    pub policy: Arc<Retry>,
    pub budget: Arc<Budget>,
    pub deadline: Instant,
    /// No retry with less than this left before the deadline after the wait.
    pub margin: Duration,
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;
    fn layer(&self, inner: S) -> RetryService<S> {
        RetryService {
            layer: self.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct RetryService<S> {
    layer: RetryLayer,
    inner: S,
}

/// Why an answer is not retried (logged at debug).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    Final(&'static str),
}

/// Whether `answer` calls for another attempt under `policy` (its status alone).
pub fn retryable(policy: &Retry, answer: &Answer) -> bool {
    match &answer.outcome {
        // The worker could not be reached, or failed before the function answered (the
        // function may have run: only requests that may be repeated get here). One that
        // gave no answer within the deadline is not retried: the margin stops it.
        Outcome::Failed(f) if matches!(f.error, InvokeError::Unavailable { .. }) => true,
        // A timeout spent the deadline; a crash is a 500 the function produced.
        Outcome::Failed(f) if matches!(f.error, InvokeError::Timeout { .. }) => false,
        Outcome::Failed(_) => policy.on_status.contains(&answer.status()),
        Outcome::Response { .. } => policy.on_status.contains(&answer.status()),
        // Only a concurrency cap is worth another try; an open breaker is not, nor an
        // adaptive pool shedding load (a retry would add what it sheds).
        Outcome::Refused(e) => {
            e.code == reactor_api::ErrorCode::TooManyRequests
                && !e.details.contains_key("pool_limit")
                && policy.on_status.contains(&429)
        }
    }
}

impl<S> Service<Attempt> for RetryService<S>
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
            let RetryLayer {
                policy,
                budget,
                deadline,
                margin,
            } = layer;
            let Attempt {
                mut parts, body, ..
            } = attempt;
            budget.deposit();
            if !parts.headers.contains_key(headers::IDEMPOTENCY_KEY)
                && let Ok(v) = HeaderValue::from_str(&format!("idem_{}", ulid::Ulid::new()))
            {
                parts.headers.insert(headers::IDEMPOTENCY_KEY, v);
            }
            let body = if policy.max_attempts > 1 && policy.may_repeat(&parts.method) {
                keep(body).await
            } else {
                Kept::Once(body)
            };
            let bytes = match body {
                Kept::Bytes(b) => b,
                // The body broke while being read (the client went away): nothing is sent.
                Kept::Broken(message) => {
                    return Ok(Answer::new(
                        Outcome::Failed(InvokeError::InvalidRequest { message }.into()),
                        None,
                    ));
                }
                Kept::Once(body) => {
                    let attempt = Attempt {
                        parts,
                        body,
                        number: 1,
                        avoid: Vec::new(),
                    };
                    return inner.call(attempt).await;
                }
            };
            let mut avoid: Vec<Arc<str>> = Vec::new();
            let mut number = 1;
            loop {
                let attempt = Attempt {
                    parts: clone_parts(&parts),
                    body: Body::from(bytes.clone()),
                    number,
                    avoid: avoid.clone(),
                };
                let mut answer = inner.call(attempt).await?;
                answer.attempts = number;
                let verdict = decide(&policy, &answer, number, deadline, margin, &budget);
                let Verdict::Retry = verdict else {
                    if let Verdict::Final(why) = verdict
                        && number > 1
                    {
                        tracing::debug!(attempts = number, why, "retry: last attempt");
                    }
                    return Ok(answer);
                };
                number += 1;
                tracing::info!(
                    attempt = number,
                    status = answer.status(),
                    instance = answer.instance.as_deref().unwrap_or("-"),
                    "retrying"
                );
                if let Some(i) = answer.instance.take()
                    && !avoid.contains(&i)
                {
                    avoid.push(i);
                }
                drop(answer);
                tokio::time::sleep(jittered(policy.backoff(number), policy.jitter)).await;
            }
        })
    }
}

/// Whether to make attempt `number + 1` after `answer`, and if not why.
fn decide(
    policy: &Retry,
    answer: &Answer,
    number: u32,
    deadline: Instant,
    margin: Duration,
    budget: &Budget,
) -> Verdict {
    if !retryable(policy, answer) {
        return Verdict::Final("not retryable");
    }
    if number >= policy.max_attempts {
        return Verdict::Final("max_attempts reached");
    }
    let wait = policy.backoff(number + 1);
    if Instant::now() + wait + margin > deadline {
        return Verdict::Final("too little of the deadline left");
    }
    // Last: a withdrawal is spent only on a retry that is made.
    if !budget.withdraw() {
        tracing::warn!("retry budget exhausted: not retrying");
        return Verdict::Final("retry budget exhausted");
    }
    Verdict::Retry
}

/// `wait` less a random part of at most `jitter` of it.
fn jittered(wait: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || wait.is_zero() {
        return wait;
    }
    let cut = rand::rng().random_range(0.0..=jitter);
    wait.mul_f64(1.0 - cut)
}

enum Kept {
    Bytes(Bytes),
    Once(Body),
    Broken(String),
}

/// The body in memory when its length is known and at most [`REPLAY_LIMIT`].
async fn keep(body: Body) -> Kept {
    let hint = http_body::Body::size_hint(&body);
    let known = hint.exact().filter(|n| *n <= REPLAY_LIMIT);
    if known.is_none() {
        return Kept::Once(body);
    }
    match body.collect().await {
        Ok(collected) => Kept::Bytes(collected.to_bytes()),
        Err(e) => Kept::Broken(format!("the request body could not be read: {e}")),
    }
}

fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    // Extensions are the router's own (request id, connection info): the ones it reads
    // again are cloned, none are needed by workers.
    let (mut fresh, ()) = req.into_parts();
    if let Some(id) = parts
        .extensions
        .get::<reactor_api::error::request_id::RequestId>()
    {
        fresh.extensions.insert(id.clone());
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interceptors::{Forward, ForwardService};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;

    type Seen = Vec<(u32, Vec<Arc<str>>, String, Bytes, Instant)>;

    /// Answers with the statuses given, in turn (0: the worker could not be reached), from
    /// instances `w0` and `w1` alternately, and records what each attempt saw.
    struct Script {
        statuses: Vec<u16>,
        seen: Arc<Mutex<Seen>>,
        calls: AtomicU32,
    }

    impl Forward for Script {
        fn forward(&self, attempt: Attempt) -> BoxFuture<'static, Answer> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
            let status = self.statuses.get(n).copied().unwrap_or(200);
            let key = attempt
                .parts
                .headers
                .get(headers::IDEMPOTENCY_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let seen = self.seen.clone();
            let at = Instant::now();
            Box::pin(async move {
                let bytes = attempt
                    .body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                seen.lock()
                    .expect("lock")
                    .push((attempt.number, attempt.avoid, key, bytes, at));
                let outcome = if status == 0 {
                    Outcome::Failed(
                        InvokeError::Unavailable {
                            message: "refused".into(),
                        }
                        .into(),
                    )
                } else {
                    let mut response = axum::response::Response::new(Body::empty());
                    *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
                    Outcome::Response {
                        response,
                        cold: false,
                        permit: None,
                    }
                };
                Answer::new(outcome, Some(Arc::from(format!("w{}", n % 2))))
            })
        }
    }

    fn script(statuses: &[u16]) -> Arc<Script> {
        Arc::new(Script {
            statuses: statuses.to_vec(),
            seen: Arc::new(Mutex::new(Vec::new())),
            calls: AtomicU32::new(0),
        })
    }

    async fn run(policy: Retry, script: &Arc<Script>, method: &str, body: &'static str) -> Answer {
        let layer = RetryLayer {
            budget: Arc::new(Budget::new(policy.budget_ratio, policy.budget_min_per_sec)),
            policy: Arc::new(policy),
            deadline: Instant::now() + Duration::from_secs(30),
            margin: Duration::from_millis(100),
        };
        let svc = layer.layer(ForwardService(script.clone()));
        let req = http::Request::builder()
            .method(method)
            .uri("/x")
            .body(Body::from(body))
            .expect("request");
        let (parts, body) = req.into_parts();
        let attempt = Attempt {
            parts,
            body,
            number: 1,
            avoid: Vec::new(),
        };
        svc.oneshot(attempt).await.expect("infallible")
    }

    fn quick() -> Retry {
        Retry {
            initial_delay: 20,
            jitter: 0.0,
            ..Retry::default()
        }
    }

    #[tokio::test]
    async fn retries_the_retryable_with_backoff_the_same_body_and_key_and_avoids_the_failed_instance()
     {
        let s = script(&[503, 0, 200]);
        let started = Instant::now();
        let answer = run(quick(), &s, "PUT", "payload").await;
        assert_eq!((answer.status(), answer.attempts), (200, 3));
        let seen = s.seen.lock().expect("lock");
        assert_eq!(seen.len(), 3);
        let keys: Vec<_> = seen.iter().map(|s| s.2.clone()).collect();
        assert!(
            keys[0].starts_with("idem_") && keys.iter().all(|k| *k == keys[0]),
            "{keys:?}"
        );
        assert!(seen.iter().all(|s| s.3 == "payload"));
        assert_eq!(seen[1].1, vec![Arc::<str>::from("w0")]);
        assert_eq!(seen[2].1, vec![Arc::<str>::from("w0"), Arc::from("w1")]);
        // Waits of 20 then 40 ms.
        let gap1 = seen[1].4 - seen[0].4;
        let gap2 = seen[2].4 - seen[1].4;
        assert!(
            gap1 >= Duration::from_millis(20) && gap1 < Duration::from_millis(200),
            "{gap1:?}"
        );
        assert!(
            gap2 >= Duration::from_millis(40) && gap2 < Duration::from_millis(220),
            "{gap2:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test]
    async fn a_post_a_4xx_and_a_500_are_not_retried_and_max_attempts_holds() {
        let s = script(&[503, 200]);
        assert_eq!(run(quick(), &s, "POST", "").await.attempts, 1, "POST");
        let s = script(&[503, 200]);
        let marked = Retry {
            idempotent: true,
            ..quick()
        };
        assert_eq!(run(marked, &s, "POST", "").await.attempts, 2, "marked");
        for status in [400, 404, 409, 500] {
            let s = script(&[status, 200]);
            assert_eq!(run(quick(), &s, "GET", "").await.attempts, 1, "{status}");
        }
        let s = script(&[503, 503, 503, 503]);
        let answer = run(quick(), &s, "GET", "").await;
        assert_eq!((answer.status(), answer.attempts), (503, 3));
    }

    #[tokio::test]
    async fn the_budget_caps_retries_and_the_deadline_margin_stops_them() {
        let policy = Retry {
            budget_ratio: 0.0,
            budget_min_per_sec: 1,
            max_attempts: 2,
            ..quick()
        };
        // A minimum of 1 per second over the 10 s window: 10 retries, then none.
        let budget = Arc::new(Budget::new(0.0, 1));
        let mut retried = 0;
        for _ in 0..30 {
            let s = script(&[503, 200]);
            let layer = RetryLayer {
                policy: Arc::new(policy.clone()),
                budget: budget.clone(),
                deadline: Instant::now() + Duration::from_secs(30),
                margin: Duration::from_millis(100),
            };
            let svc = layer.layer(ForwardService(s.clone()));
            let (parts, body) = http::Request::get("/")
                .body(Body::empty())
                .expect("req")
                .into_parts();
            let a = svc
                .oneshot(Attempt {
                    parts,
                    body,
                    number: 1,
                    avoid: Vec::new(),
                })
                .await
                .expect("infallible");
            retried += (a.attempts - 1) as usize;
        }
        assert!(
            (9..=11).contains(&retried),
            "{retried} retries of 30 failures"
        );

        let s = script(&[503, 200]);
        let layer = RetryLayer {
            policy: Arc::new(quick()),
            budget: Arc::new(Budget::new(0.2, 10)),
            deadline: Instant::now() + Duration::from_millis(110),
            margin: Duration::from_millis(100),
        };
        let (parts, body) = http::Request::get("/")
            .body(Body::empty())
            .expect("req")
            .into_parts();
        let a = layer
            .layer(ForwardService(s))
            .oneshot(Attempt {
                parts,
                body,
                number: 1,
                avoid: Vec::new(),
            })
            .await
            .expect("infallible");
        assert_eq!(
            a.attempts, 1,
            "20 ms of wait and 100 of margin do not fit in 110"
        );
    }
}
