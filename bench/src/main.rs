//! `reactor-bench`: starts the real `reactor dev`, deploys the hello example and measures
//! what `docs/benchmarks.md` reports: warm latency at concurrency 1 (p50/p99), requests/s
//! at concurrency 32, and the first request after a promote. The load comes from this
//! process over loopback, one HTTP/1.1 keep-alive connection per concurrent client (as
//! `wrk` does). Run: `cargo run --release -p reactor-bench`.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use reactor_tests::{Server, build_component, bundle, read};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Sequential requests for the concurrency-1 latency.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of the throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Promotes measured for the first request after promote.
    #[arg(long, default_value_t = 20)]
    promotes: usize,
}

struct Target {
    addr: String,
    path: String,
    token: String,
}

/// One keep-alive connection sending POSTs one after the other.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(t: &Target) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(&t.addr)
            .await
            .context("connecting")?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// Sends one request; returns its latency and the cold-start header.
    async fn call(&mut self, t: &Target) -> anyhow::Result<(Duration, bool)> {
        let req = http::Request::post(&t.path)
            .header("host", &t.addr)
            .header("authorization", format!("Bearer {}", t.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"name":"Reactor"}"#)))?;
        let started = Instant::now();
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let cold = resp
            .headers()
            .get("x-reactor-cold-start")
            .is_some_and(|v| v == "true");
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let elapsed = started.elapsed();
        if status != 200 || !body.starts_with(br#"{"message":"Hello, Reactor!"}"#) {
            bail!(
                "unexpected answer {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok((elapsed, cold))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!("building the hello component and starting reactor dev ...");
    let hello = read(&build_component("examples/hello-wasm", true));
    let server = Server::start();
    let hello_bundle = bundle(&[("hello.wasm", &hello)]);
    server.deploy_live("hello", hello_bundle.clone()).await;
    let target = Target {
        addr: server.url.trim_start_matches("http://").to_string(),
        path: "/fn/v1/hello".into(),
        token: server.token.clone(),
    };

    // First request after promote: a new deployment each time.
    eprintln!("first request after promote x{} ...", args.promotes);
    let mut firsts = Vec::new();
    let mut cold_firsts = 0;
    for _ in 0..args.promotes {
        server.deploy_live("hello", hello_bundle.clone()).await;
        let mut conn = Conn::open(&target).await?;
        let (d, cold) = conn.call(&target).await?;
        firsts.push(d);
        cold_firsts += usize::from(cold);
    }
    firsts.sort();

    // Warm, concurrency 1.
    eprintln!(
        "warm latency, concurrency 1, {} requests ...",
        args.requests
    );
    let mut conn = Conn::open(&target).await?;
    for _ in 0..200 {
        conn.call(&target).await?;
    }
    let mut lat = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        lat.push(conn.call(&target).await?.0);
    }
    lat.sort();

    // Throughput, concurrency N.
    eprintln!(
        "throughput, concurrency {}, {} s ...",
        args.concurrency, args.seconds
    );
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let target = std::sync::Arc::new(target);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let t = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&t).await?;
            let mut lat = Vec::new();
            while Instant::now() < until {
                lat.push(conn.call(&t).await?.0);
            }
            anyhow::Ok(lat)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| warm p50, concurrency 1 | {:.3} ms |",
        percentile(&lat, 0.50)
    );
    println!(
        "| warm p99, concurrency 1 | {:.3} ms |",
        percentile(&lat, 0.99)
    );
    println!(
        "| requests/s, concurrency {} | {:.0} |",
        args.concurrency,
        all.len() as f64 / secs
    );
    println!(
        "| p50 / p99 at concurrency {} | {:.3} / {:.3} ms |",
        args.concurrency,
        percentile(&all, 0.50),
        percentile(&all, 0.99)
    );
    println!(
        "| first request after promote, p50 (of {}) | {:.3} ms |",
        firsts.len(),
        percentile(&firsts, 0.50)
    );
    println!(
        "| first request after promote, max | {:.3} ms |",
        percentile(&firsts, 1.0)
    );
    println!(
        "| first requests after promote reported cold | {cold_firsts} of {} |",
        firsts.len()
    );
    Ok(())
}
