//! `reactor-bench composition`: what each interceptor and a contract cost per request.
//! Two parts: schema validation alone (in process, µs per 1 KiB body: parse and check),
//! and the embedded default serving the hello component as one function per setting,
//! every request a 1 KiB JSON body, alternating rounds, best of them: `bare` (nothing),
//! `retry` (a retry that never fires: the body kept, the budget counted), `breaker` (a
//! closed circuit breaker), `adaptive` (an adaptive pool's limiter), `contract` (the body
//! checked against an input schema), and `custom` (a pass-through interceptor function,
//! Bun, in front: two invocations per request).

use crate::load::{Target, concurrent, percentile, sequential};
use bytes::Bytes;
use reactor_tests::{Server, build_component, bundle, read, root};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct CompositionArgs {
    /// Validations in the in-process part.
    #[arg(long, default_value_t = 50_000)]
    validations: u32,
    /// Sequential requests per round for the concurrency-1 latency.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Rounds over the functions (alternating); the best is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// A 1 KiB request body the hello component answers (it reads `name`).
fn body() -> Bytes {
    let mut v = json!({"name": "Reactor", "to": "ada@example.com", "tags": ["a", "b", "c"]});
    let pad = 1024 - v.to_string().len() - r#","note":"""#.len();
    v["note"] = Value::String("x".repeat(pad));
    let text = v.to_string();
    debug_assert_eq!(text.len(), 1024);
    Bytes::from(text)
}

/// The input schema `contract` checks the body against.
fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["name", "to"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "to": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 16},
            "note": {"type": "string", "maxLength": 4096}
        },
        "additionalProperties": false
    })
}

fn validation_cost(n: u32) -> anyhow::Result<f64> {
    let compiled = reactor_contract::Schema::compile(&schema(), "contract.input")?;
    let body = body();
    for _ in 0..1000 {
        anyhow::ensure!(reactor_contract::check_body(&compiled, &body).is_ok());
    }
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(reactor_contract::check_body(
            &compiled,
            std::hint::black_box(&body),
        ))
        .map_err(|v| anyhow::anyhow!("{v:?}"))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

pub async fn run(a: CompositionArgs) -> anyhow::Result<()> {
    let us = validation_cost(a.validations)?;
    println!(
        "Schema validation in process (parse and check a 1 KiB body, {} times): {us:.2} µs per request",
        a.validations
    );

    eprintln!("building the hello component and starting reactor dev ...");
    let wasm = read(&build_component("examples/hello-wasm", true));
    let with = |manifest: Option<Value>| match manifest {
        Some(m) => bundle(&[
            ("hello.wasm", &wasm),
            ("manifest.json", m.to_string().as_bytes()),
        ]),
        None => bundle(&[("hello.wasm", &wasm)]),
    };
    let s = Server::start();
    let mut functions: Vec<(&'static str, Option<Value>)> = vec![
        ("bare", None),
        ("retry", Some(json!({"interceptors": {"retry": {}}}))),
        (
            "breaker",
            Some(json!({"interceptors": {"circuit_breaker": {}}})),
        ),
        (
            "adaptive",
            Some(json!({"pool": {"type": "adaptive", "max_size": 1000, "min_size": 1000}})),
        ),
        ("contract", Some(json!({"contract": {"input": schema()}}))),
    ];
    // A pass-through interceptor in Bun, when this machine runs Bun functions.
    let audit = std::fs::read_to_string(root().join("tests/fixtures/interceptor-bun/index.ts"))?
        .replace("__MODE__", "audit");
    s.create("audit", "bun").await;
    let up = s
        .upload("audit", bundle(&[("index.ts", audit.as_bytes())]))
        .await;
    if up.status() == 202 {
        let d: Value = up.json().await?;
        let id = d["id"].as_str().unwrap_or_default().to_string();
        if s.wait_deployment("audit", &id).await["status"] == "ready" {
            s.promote("audit", &id).await;
            functions.push((
                "custom",
                Some(json!({"interceptors": {"custom": [{"function": "audit"}]}})),
            ));
        }
    } else {
        eprintln!("no Bun functions here: the custom interceptor is left out");
    }
    for (name, manifest) in &functions {
        s.deploy_live(name, with(manifest.clone())).await;
    }
    let target = |name: &'static str| Target {
        name,
        addr: s.url.trim_start_matches("http://").to_string(),
        path: format!("/fn/v1/{name}"),
        token: Some(s.token.clone()),
        body: Some(body()),
    };
    let targets: Vec<Target> = functions.iter().map(|(n, _)| target(n)).collect();
    let mut best = vec![(f64::MAX, f64::MAX, 0.0f64); targets.len()];
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
        "\nEmbedded default, hello (WASM), 1 KiB JSON bodies, best of {} rounds:\n",
        a.rounds
    );
    println!(
        "| function | p50 ms | added p50 ms | p99 ms | req/s (c={c}) | req/s vs bare |",
        c = a.concurrency
    );
    println!("|---|---|---|---|---|---|");
    let bare = best[0];
    for (t, b) in targets.iter().zip(&best) {
        println!(
            "| {} | {:.3} | {:+.3} | {:.3} | {:.0} | {:+.1} % |",
            t.name,
            b.0,
            b.0 - bare.0,
            b.1,
            b.2,
            (b.2 / bare.2 - 1.0) * 100.0
        );
    }
    Ok(())
}
