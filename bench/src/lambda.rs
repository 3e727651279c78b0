//! `reactor-bench lambda`: what a router adds to a Lambda invocation before sending it.
//!
//! Function URLs check a SigV4 signature over the payload's SHA-256, so the router buffers
//! the body, hashes it and signs the request (`reactor_lambda::invoke::signed_headers`, the
//! code the router runs). This measures that step for body sizes up to Lambda's 6 MB, on
//! one core; the network round trip to AWS comes on top and only real AWS can measure it.

use std::time::{Duration, Instant, SystemTime};

#[derive(clap::Args, Debug)]
pub struct LambdaArgs {
    /// Signatures per body size.
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
}

pub async fn run(args: LambdaArgs) -> anyhow::Result<()> {
    let credentials =
        aws_credential_types::Credentials::new("AKIDBENCH", "bench-secret", None, None, "bench");
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-reactor-caller-org", "acme"),
        ("x-reactor-caller-role", "admin"),
        ("x-request-id", "req_01JBENCHBENCHBENCHBENCHBENC"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    let url = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws/orders/42?expand=items";
    println!(
        "router-side cost of a Lambda invocation: buffer hash + SigV4 ({} iterations, median)",
        args.iterations
    );
    println!("{:>12} {:>12} {:>12}", "body", "median", "p99");
    for size in [0usize, 1024, 64 * 1024, 1024 * 1024, 6 * 1024 * 1024] {
        let body = vec![b'x'; size];
        let mut samples: Vec<Duration> = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            let signed = reactor_lambda::invoke::signed_headers(
                &http::Method::POST,
                url,
                &headers,
                &body,
                &credentials,
                "us-east-1",
                SystemTime::now(),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            samples.push(t.elapsed());
            std::hint::black_box(signed);
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "{:>12} {:>10.1}µs {:>10.1}µs",
            human(size),
            at(0.5).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6
        );
    }
    Ok(())
}

fn human(bytes: usize) -> String {
    match bytes {
        0 => "0".into(),
        b if b >= 1024 * 1024 => format!("{} MiB", b / (1024 * 1024)),
        b => format!("{} KiB", b / 1024),
    }
}
