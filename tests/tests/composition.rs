//! Composition settings of the manifest, end to end through the real `reactor dev`:
//! - `interceptors`, with a Bun function that fails on request (`/flaky?fail=N&status=S`:
//!   the first N attempts of each Idempotency-Key answer S): retry counts, backoff timing,
//!   what is never retried, the retry budget, per-alias retry, and the circuit breaker
//!   opening, answering 503, half-opening and closing; unknown types refused at deploy;
//! - custom interceptors (functions): one that answers in the target's place, one that
//!   rewrites the request and the answer around `next.reactor.internal`;
//! - `pool`: a static pool queueing then refusing, a lazy one growing and reaping, an
//!   adaptive one whose limit falls when latency rises and recovers, bounded throughout.

use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn send(s: &Server, method: Method, path: &str) -> (u16, Option<u32>, Value) {
    let resp = s
        .request(method, path)
        .body("the payload")
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let attempts = resp
        .headers()
        .get("x-reactor-attempts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, attempts, value)
}

fn with_interceptors(interceptors: Value) -> Vec<u8> {
    bun_probe_bundle("v1", Some(&json!({ "interceptors": interceptors })))
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_follow_the_manifest_and_never_repeat_what_they_must_not() {
    let s = Server::start();
    let retry = json!({"retry": {"max_attempts": 3, "initial_delay": 200, "backoff_factor": 2.0, "jitter": 0}});
    s.deploy_live_runtime("flaky", "bun", with_interceptors(retry.clone()))
        .await;

    // Two 503s, then 200: three attempts, 200 then 400 ms apart, one key, the same body.
    let (status, attempts, v) = send(&s, Method::PUT, "/fn/v1/flaky/flaky?fail=2").await;
    assert_eq!((status, attempts), (200, Some(3)), "{v}");
    assert_eq!(v["attempt"], 3, "{v}");
    assert_eq!(v["body"], "the payload", "the body is sent again");
    assert!(
        v["key"].as_str().is_some_and(|k| k.starts_with("idem_")),
        "{v}"
    );
    let times: Vec<i64> = serde_json::from_value(v["times"].clone()).expect("times");
    let gaps = [times[1] - times[0], times[2] - times[1]];
    assert!(
        (190..450).contains(&gaps[0]),
        "first wait ~200 ms: {gaps:?}"
    );
    assert!(
        (390..700).contains(&gaps[1]),
        "second wait ~400 ms: {gaps:?}"
    );

    // A key the client sent is kept across attempts.
    let resp = s
        .request(Method::GET, "/fn/v1/flaky/flaky?fail=1")
        .header("idempotency-key", "order-42")
        .send()
        .await
        .expect("send");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(
        (v["key"].as_str(), v["attempt"].as_i64()),
        (Some("order-42"), Some(2))
    );

    // Connection-level 502s, 429 and 504 are retried; 4xx and 500 are not; nor is a POST.
    for status in [429, 502, 504] {
        let (got, attempts, v) = send(
            &s,
            Method::GET,
            &format!("/fn/v1/flaky/flaky?fail=1&status={status}"),
        )
        .await;
        assert_eq!((got, attempts), (200, Some(2)), "{status}: {v}");
    }
    for status in [400, 404, 409, 500] {
        let (got, attempts, _) = send(
            &s,
            Method::GET,
            &format!("/fn/v1/flaky/flaky?fail=1&status={status}"),
        )
        .await;
        assert_eq!(
            (got, attempts),
            (status, Some(1)),
            "{status} is not retried"
        );
    }
    let (got, attempts, v) = send(&s, Method::POST, "/fn/v1/flaky/flaky?fail=1").await;
    assert_eq!((got, attempts), (503, Some(1)), "a POST runs once: {v}");
    // It gives up after max_attempts with the last answer.
    let (got, attempts, v) = send(&s, Method::GET, "/fn/v1/flaky/flaky?fail=9").await;
    assert_eq!(
        (got, attempts, v["attempt"].as_i64()),
        (503, Some(3), Some(3))
    );

    // Marked idempotent, a POST is retried.
    let marked = json!({"retry": {"max_attempts": 2, "initial_delay": 10, "idempotent": true}});
    s.deploy_live_runtime("dedup", "bun", with_interceptors(marked))
        .await;
    let (got, attempts, v) = send(&s, Method::POST, "/fn/v1/dedup/flaky?fail=1").await;
    assert_eq!((got, attempts), (200, Some(2)), "{v}");

    // The budget: 10 retries (1 a second over 10 s) whatever the failures, then none.
    let budgeted = json!({"retry": {"max_attempts": 2, "initial_delay": 1, "budget_ratio": 0, "budget_min_per_sec": 1}});
    s.deploy_live_runtime("budget", "bun", with_interceptors(budgeted))
        .await;
    let started = Instant::now();
    let mut retries = 0;
    for _ in 0..30 {
        let (got, attempts, _) = send(&s, Method::GET, "/fn/v1/budget/flaky?fail=9").await;
        assert_eq!(got, 503);
        retries += attempts.expect("attempts") - 1;
    }
    if started.elapsed() < Duration::from_secs(9) {
        assert_eq!(
            retries, 10,
            "the budget caps retries of 30 failing requests"
        );
    }
    let (_, _, v) = send(&s, Method::GET, "/fn/v1/budget/flaky-total").await;
    assert_eq!(v["total"].as_u64(), Some(30 + u64::from(retries)));

    // An alias's own retry applies to calls through it, not the callee's.
    let caller = json!({"calls": {"twice": {"function": "flaky", "interceptors": {"retry": {"max_attempts": 2, "initial_delay": 10}}}}});
    s.deploy_live_runtime("caller", "bun", bun_probe_bundle("v1", Some(&caller)))
        .await;
    let (got, _, v) = send(
        &s,
        Method::GET,
        "/fn/v1/caller/call?to=twice.reactor.internal&path=%2Fflaky%3Ffail%3D1",
    )
    .await;
    assert_eq!((got, v["attempt"].as_i64()), (200, Some(2)), "{v}");
    let (got, _, v) = send(
        &s,
        Method::GET,
        "/fn/v1/caller/call?to=twice.reactor.internal&path=%2Fflaky%3Ffail%3D2",
    )
    .await;
    assert_eq!(
        (got, v["attempt"].as_i64()),
        (503, Some(2)),
        "the alias allows 2: {v}"
    );
    let (got, _, v) = send(
        &s,
        Method::GET,
        "/fn/v1/caller/call?to=flaky.reactor.internal&path=%2Fflaky%3Ffail%3D2",
    )
    .await;
    assert_eq!(
        (got, v["attempt"].as_i64()),
        (403, None),
        "only the alias may be called: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_answers_503_half_opens_and_closes() {
    let s = Server::start();
    let breaker = json!({"circuit_breaker": {"consecutive_failures": 3, "open_secs": 2, "half_open_probes": 1}});
    s.deploy_live_runtime("fragile", "bun", with_interceptors(breaker))
        .await;
    let fail = "/fn/v1/fragile/flaky?fail=1000&status=500";
    for _ in 0..3 {
        assert_eq!(send(&s, Method::GET, fail).await.0, 500);
    }
    // Open: 503 circuit_open with Retry-After, and the function is not reached.
    let resp = s
        .request(Method::GET, "/fn/v1/fragile/flaky")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 503);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "circuit_open", "{v}");
    // Half-open after open_secs: a failed probe opens it again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(send(&s, Method::GET, fail).await.0, 500, "the probe");
    assert_eq!(send(&s, Method::GET, "/fn/v1/fragile/flaky").await.0, 503);
    // A successful probe closes it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(send(&s, Method::GET, "/fn/v1/fragile/flaky").await.0, 200);
    assert_eq!(send(&s, Method::GET, "/fn/v1/fragile/flaky").await.0, 200);
    let (_, _, v) = send(&s, Method::GET, "/fn/v1/fragile/flaky-total").await;
    assert_eq!(
        v["total"], 6,
        "3 failures, the failed probe, 2 successes: {v}"
    );
    assert!(s.logs().contains("circuit breaker opened"));

    // A 4xx is not a failure.
    for _ in 0..5 {
        assert_eq!(
            send(&s, Method::GET, "/fn/v1/fragile/flaky?fail=1000&status=404")
                .await
                .0,
            404
        );
    }
    assert_eq!(send(&s, Method::GET, "/fn/v1/fragile/flaky").await.0, 200);
}

fn interceptor(mode: &str) -> Vec<u8> {
    let source = String::from_utf8(read(
        &root().join("tests/fixtures/interceptor-bun/index.ts"),
    ))
    .expect("utf-8")
    .replace("__MODE__", mode);
    bundle(&[("index.ts", source.as_bytes())])
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_interceptors_short_circuit_or_rewrite_around_next() {
    let s = Server::start();
    s.deploy_live_runtime("guard", "bun", interceptor("guard"))
        .await;
    s.deploy_live_runtime("audit", "bun", interceptor("audit"))
        .await;
    let custom = json!({"custom": [{"function": "audit"}, {"function": "guard"}]});
    s.deploy_live_runtime("app", "bun", with_interceptors(custom))
        .await;

    // The guard answers in the target's place; the audit, outermost, still wraps it.
    let resp = s
        .request(Method::GET, "/fn/v1/app/flaky")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["x-audited-by"], "audit");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["refused_by"], "guard");

    // Let through: the target sees the audit's header and the platform's own, never the
    // interceptor's handle; the answer comes back with the audit's header.
    let resp = s
        .request(Method::GET, "/fn/v1/app/headers")
        .header("x-api-key", "let-me-in")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-audited-by"], "audit");
    let seen: Value = resp.json().await.expect("json");
    assert_eq!(seen["x-intercepted"], "yes", "{seen}");
    assert_eq!(seen["x-reactor-caller-org"], s.org.as_str(), "{seen}");
    assert_eq!(
        seen["x-reactor-call-depth"], "1",
        "the target keeps its depth: {seen}"
    );
    assert!(seen.get("x-reactor-next").is_none(), "{seen}");

    // Only the request let through reached the target; a POST body passes both ways.
    let total: Value = s
        .request(Method::GET, "/fn/v1/app/flaky-total")
        .header("x-api-key", "let-me-in")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(total["total"], 0, "the refused request never reached it");
    let resp = s
        .request(Method::POST, "/fn/v1/app/echo")
        .header("x-api-key", "let-me-in")
        .body("through two interceptors")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "through two interceptors");

    // A handle is only good inside its interceptor's own invocation.
    let resp = s
        .request(
            Method::GET,
            "/fn/v1/app/call?to=next.reactor.internal&path=/",
        )
        .header("x-api-key", "let-me-in")
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    assert!(
        status == 403 || status == 404,
        "the target has no next: {status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_interceptors_and_bad_settings_are_refused_at_deploy() {
    let s = Server::start();
    s.create("strict", "bun").await;
    for (interceptors, expect) in [
        (json!({"cache": {}}), "unknown field `cache`"),
        (
            json!({"retry": {"max_attempts": 0}}),
            "interceptors.retry.max_attempts",
        ),
        (
            json!({"circuit_breaker": {"failure_ratio": 2}}),
            "interceptors.circuit_breaker.failure_ratio",
        ),
    ] {
        let resp = s.upload("strict", with_interceptors(interceptors)).await;
        assert_eq!(resp.status(), 422);
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["error"]["code"], "manifest_invalid");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expect), "{message}");
    }
}

/// A slow request's status, instance and cold flag.
async fn slow(s: &Server, function: &str, ms: u64) -> (u16, String, bool, Option<u32>) {
    let resp = s
        .request(Method::GET, &format!("/fn/v1/{function}/slow?ms={ms}"))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let cold = resp.headers()["x-reactor-cold-start"] == "true";
    let limit = resp
        .headers()
        .get("x-reactor-pool-limit")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    let instance = v["instance"].as_str().unwrap_or_default().to_string();
    // A refusal by the adaptive pool names its limit in the error's details.
    let limit = limit.or_else(|| {
        v["error"]["details"]["pool_limit"]
            .as_u64()
            .map(|l| l as u32)
    });
    (status, instance, cold, limit)
}

#[tokio::test(flavor = "multi_thread")]
async fn static_pools_queue_then_refuse_and_lazy_pools_grow_and_reap() {
    // One request per Bun process, so that a pool's size is its processes.
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_BUN_CONCURRENCY_PER_PROCESS", "1")]);
    let fixed = json!({"pool": {"type": "static", "workers": 1, "buffer": 1}});
    s.deploy_live_runtime("fixed", "bun", bun_probe_bundle("v1", Some(&fixed)))
        .await;
    // Warm it: the first start is not what this measures.
    assert_eq!(slow(&s, "fixed", 1).await.0, 200);
    let (a, b, c) = tokio::join!(
        slow(&s, "fixed", 1500),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            slow(&s, "fixed", 10).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let started = Instant::now();
            (slow(&s, "fixed", 10).await, started.elapsed())
        },
    );
    assert_eq!(a.0, 200);
    assert_eq!(b.0, 200, "the second waits in the buffer");
    assert_eq!(a.1, b.1, "on the one worker");
    assert_eq!(c.0.0, 429, "the third finds the buffer full");
    assert!(
        c.1 < Duration::from_millis(500),
        "refused at once: {:?}",
        c.1
    );

    let lazy = json!({"pool": {"type": "lazy", "max_size": 2, "idle_ttl_secs": 1}});
    s.deploy_live_runtime("grows", "bun", bun_probe_bundle("v1", Some(&lazy)))
        .await;
    let (a, b, c) = tokio::join!(slow(&s, "grows", 800), slow(&s, "grows", 800), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow(&s, "grows", 10).await
    },);
    // (The promote started one process; the second request started another.)
    assert!(a.2 || b.2, "a process started for the second request");
    assert_ne!(a.1, b.1, "grown to max_size 2");
    assert_eq!(c.0, 200);
    assert!(
        !c.2 && (c.1 == a.1 || c.1 == b.1),
        "the third waited for one of the two"
    );
    // Idle past idle_ttl_secs (and the reaper's half second): stopped, the next is cold.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let again = slow(&s, "grows", 10).await;
    assert!(again.2, "cold after reaping");
    assert!(again.1 != a.1 && again.1 != b.1);
    assert!(s.logs().contains("idle past its idle TTL"), "{}", s.logs());
}

/// `total` requests of `ms` each from `concurrency` clients at once: each response's
/// status and pool limit.
async fn load(
    s: &Server,
    function: &str,
    ms: u64,
    total: usize,
    concurrency: usize,
) -> Vec<(u16, u32)> {
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(total));
    let clients = (0..concurrency).map(|_| {
        let left = left.clone();
        async move {
            let mut seen = Vec::new();
            while left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let (status, _, _, limit) = slow(s, function, ms).await;
                seen.push((status, limit.expect("x-reactor-pool-limit on every answer")));
                if status == 429 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            seen
        }
    });
    futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adaptive_pool_follows_latency_and_stays_bounded() {
    let s = Server::start();
    let adaptive = json!({"pool": {"type": "adaptive", "min_size": 2, "max_size": 24}});
    s.deploy_live_runtime("elastic", "bun", bun_probe_bundle("v1", Some(&adaptive)))
        .await;
    let limits = |seen: &[(u16, u32)]| seen.iter().map(|(_, l)| *l).collect::<Vec<_>>();
    // Fast under load: the limit grows from its start of 10.
    let fast = limits(&load(&s, "elastic", 20, 300, 12).await);
    let high = *fast[fast.len() - 20..].iter().max().expect("samples");
    assert!(high > 10, "grew under load: {fast:?}");
    // Ten times slower: it falls.
    let slowed = load(&s, "elastic", 200, 60, 12).await;
    let low = limits(&slowed).into_iter().min().expect("samples");
    assert!(low <= high / 2, "fell from {high} to {low}");
    // Fast again: it recovers.
    let recovered = limits(&load(&s, "elastic", 20, 400, 12).await);
    let back = *recovered.iter().max().expect("samples");
    assert!(back >= low + 4, "recovered from {low} to {back}");
    // Overloaded (far more clients than max_size): never above max_size, the rest 429.
    let flood = load(&s, "elastic", 300, 120, 60).await;
    assert!(
        limits(&flood).iter().all(|l| (2..=24).contains(l)),
        "{flood:?}"
    );
    assert!(
        flood.iter().any(|(status, _)| *status == 429),
        "the excess is refused"
    );
    assert!(
        flood
            .iter()
            .all(|(status, _)| *status == 200 || *status == 429)
    );
}
