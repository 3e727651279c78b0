//! The manifest's `interceptors`, end to end through the real `reactor dev` and a Bun
//! function that fails on request (`/flaky?fail=N&status=S`: the first N attempts of each
//! Idempotency-Key answer S): retry counts, backoff timing, what is never retried, the
//! retry budget, per-alias retry, and the circuit breaker opening, answering 503,
//! half-opening and closing. Unknown interceptor types are refused at deploy.

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
