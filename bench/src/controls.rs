//! `reactor-bench controls`: what invoke policies, the concurrency cap and invocation logs
//! cost. Two parts: policy evaluation alone (in process, ns per request) and the embedded
//! default serving the same hello component as two functions, one bare and one with a
//! function policy (method, path and CEL rules) and a `max_concurrency` cap, alternating.

use crate::load::{Target, concurrent, percentile, sequential};
use reactor_policy::{Policy, RequestFacts};
use reactor_tests::{Server, build_component, bundle, read};
use std::time::{Duration, Instant, SystemTime};

#[derive(clap::Args, Debug)]
pub struct ControlsArgs {
    /// Evaluations per policy in the in-process part.
    #[arg(long, default_value_t = 200_000)]
    evaluations: u32,
    /// Sequential requests per round for the concurrency-1 latency.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds (alternating between the two functions); the best is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// The guarded function's policy: every rule is reached by an allowed POST to `/`.
const POLICY: &str = r#"{
  "default": "allow",
  "rules": [
    {"name": "no-deletes", "effect": "deny", "methods": ["DELETE"]},
    {"name": "admin-area", "effect": "deny", "paths": ["/admin/**"]},
    {"name": "invokers-json-only", "effect": "deny",
     "when": "request.caller.role == 'invoker' && request.headers['content-type'] != 'application/json'"}
  ]
}"#;

fn evaluate_cost(name: &str, json: &str, n: u32) -> anyhow::Result<f64> {
    let policy = Policy::from_json(json)?.compile()?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert("user-agent", http::HeaderValue::from_static("bench"));
    let facts = RequestFacts {
        method: "POST",
        path: "/",
        query: Some("a=1"),
        headers: &headers,
        caller_org: "acme",
        caller_role: "admin",
        caller_token_id: "tok_1",
        now: SystemTime::now(),
    };
    for _ in 0..1000 {
        std::hint::black_box(policy.evaluate(&facts));
    }
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(policy.evaluate(std::hint::black_box(&facts)));
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(n);
    println!("  {name:<34} {ns:>9.0} ns per request");
    Ok(ns)
}

pub async fn run(a: ControlsArgs) -> anyhow::Result<()> {
    println!(
        "Policy evaluation, in process ({} evaluations each):",
        a.evaluations
    );
    evaluate_cost(
        "methods rule",
        r#"{"rules":[{"name":"m","effect":"deny","methods":["DELETE"]}]}"#,
        a.evaluations,
    )?;
    evaluate_cost(
        "path glob rule",
        r#"{"rules":[{"name":"p","effect":"deny","paths":["/admin/**","/internal/*"]}]}"#,
        a.evaluations,
    )?;
    evaluate_cost(
        "time window rule",
        r#"{"rules":[{"name":"w","effect":"deny","days":["sat","sun"],"hours":{"from":1,"to":2}}]}"#,
        a.evaluations,
    )?;
    evaluate_cost(
        "CEL rule (headers, caller)",
        r#"{"rules":[{"name":"c","effect":"deny","when":"request.caller.role == 'invoker' && request.headers['content-type'] != 'application/json'"}]}"#,
        a.evaluations,
    )?;
    evaluate_cost("the guarded function's policy", POLICY, a.evaluations)?;

    eprintln!("building the hello component and starting reactor dev ...");
    let hello = bundle(&[(
        "hello.wasm",
        &read(&build_component("examples/hello-wasm", true)),
    )]);
    let s = Server::start();
    s.deploy_live("bare", hello.clone()).await;
    let capped = bundle(&[
        (
            "hello.wasm",
            &read(&build_component("examples/hello-wasm", true)),
        ),
        (
            "manifest.json",
            br#"{"concurrency":{"max_concurrency":1000}}"#,
        ),
    ]);
    s.deploy_live("capped", capped.clone()).await;
    s.deploy_live("policed", hello.clone()).await;
    s.deploy_live("guarded", capped).await;
    for function in ["policed", "guarded"] {
        let put = s
            .request(
                reqwest::Method::PUT,
                &format!("/fn/v1/_admin/functions/{function}/policy"),
            )
            .body(POLICY)
            .send()
            .await?;
        anyhow::ensure!(put.status() == 200, "setting the policy: {}", put.status());
    }
    let target = |name: &'static str| Target {
        name,
        addr: s.url.trim_start_matches("http://").to_string(),
        path: format!("/fn/v1/{name}"),
        token: Some(s.token.clone()),
        body: None,
    };
    let targets = [
        target("bare"),
        target("capped"),
        target("policed"),
        target("guarded"),
    ];
    let mut best = [(f64::MAX, f64::MAX, 0.0f64); 4];
    for round in 0..a.rounds {
        for (i, t) in targets.iter().enumerate() {
            eprintln!("round {}: {}", round + 1, t.name);
            let lat = sequential(t, a.requests).await?;
            let (rps, _) = concurrent(t, a.concurrency, a.seconds).await?;
            let b = &mut best[i];
            b.0 = b.0.min(percentile(&lat, 0.5));
            b.1 = b.1.min(percentile(&lat, 0.99));
            b.2 = b.2.max(rps);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "Embedded default, hello (WASM), best of {} rounds. capped: max_concurrency 1000; policed: a policy of 3 rules (methods, path glob, CEL); guarded: both",
        a.rounds
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>14}",
        "function",
        "p50 (ms)",
        "p99 (ms)",
        format!("req/s c={}", a.concurrency)
    );
    for (t, b) in targets.iter().zip(best) {
        println!("  {:<10} {:>12.3} {:>12.3} {:>14.0}", t.name, b.0, b.1, b.2);
    }
    let (bare, guarded) = (best[0], best[3]);
    println!(
        "  overhead: p50 {:+.3} ms, req/s {:+.1} %",
        guarded.0 - bare.0,
        (guarded.2 / bare.2 - 1.0) * 100.0
    );
    Ok(())
}
