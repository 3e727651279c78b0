//! `reactor-bench telemetry`: what metrics and traces cost per request. The embedded
//! default serves the hello component four ways, alternating rounds, best of them: `off,
//! metrics off` (`telemetry.metrics = false`), `off` (no OTLP endpoint: the default),
//! `ratio-0.01` (traces on, 1 % of new traces kept) and `on` (traces on, every invocation
//! exported). The OTLP/gRPC receiver is this process: it
//! counts the spans it gets and drops them (a real Collector runs elsewhere; here it shares
//! the two cores with the load and the server, so the figures are an upper bound).
//! Metrics are on in all but the first.

use crate::load::{Target, concurrent, percentile, sequential};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use reactor_tests::{Server, build_component, bundle, read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct TelemetryArgs {
    /// Sequential requests per round for the concurrency-1 latency.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds over the settings (alternating); the best is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Counts the spans it receives.
#[derive(Clone, Default)]
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub async fn run(a: TelemetryArgs) -> anyhow::Result<()> {
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let service = TraceServiceServer::new(sink.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    eprintln!("building the hello component and starting reactor dev four times ...");
    let wasm = read(&build_component("examples/hello-wasm", true));
    let settings: [(&'static str, Vec<(&str, &str)>); 4] = [
        (
            "off, metrics off",
            vec![("REACTOR_TELEMETRY_METRICS", "false")],
        ),
        ("off", vec![]),
        (
            "ratio-0.01",
            vec![
                ("REACTOR_TELEMETRY_OTLP_ENDPOINT", endpoint.as_str()),
                ("REACTOR_TELEMETRY_SAMPLE_RATIO", "0.01"),
            ],
        ),
        (
            "on",
            vec![("REACTOR_TELEMETRY_OTLP_ENDPOINT", endpoint.as_str())],
        ),
    ];
    let mut servers = Vec::new();
    for (name, env) in &settings {
        let s = Server::start_with(env);
        s.deploy_live("hello", bundle(&[("hello.wasm", &wasm)]))
            .await;
        servers.push((*name, s));
    }
    let targets: Vec<Target> = servers
        .iter()
        .map(|(name, s)| Target {
            name,
            addr: s.url.trim_start_matches("http://").to_string(),
            path: "/fn/v1/hello".into(),
            token: Some(s.token.clone()),
            body: None,
        })
        .collect();
    let mut best = vec![(f64::MAX, f64::MAX, 0.0f64); targets.len()];
    let mut spans = vec![0u64; targets.len()];
    let mut requests = vec![0u64; targets.len()];
    for round in 0..a.rounds {
        for (i, t) in targets.iter().enumerate() {
            eprintln!("round {}: {}", round + 1, t.name);
            let before = sink.0.load(Ordering::Relaxed);
            let lat = sequential(t, a.requests).await?;
            let (rps, all) = concurrent(t, a.concurrency, a.seconds).await?;
            // Let the last batch arrive (the batch delay is 5 s by default).
            tokio::time::sleep(Duration::from_millis(5500)).await;
            spans[i] += sink.0.load(Ordering::Relaxed) - before;
            requests[i] += (a.requests + 200 + all.len()) as u64;
            let b = &mut best[i];
            b.0 = b.0.min(percentile(&lat, 0.5));
            b.1 = b.1.min(percentile(&lat, 0.99));
            b.2 = b.2.max(rps);
        }
    }
    println!(
        "\nEmbedded default, hello (WASM), best of {} rounds (compared with the first):\n",
        a.rounds
    );
    println!(
        "| telemetry | p50 ms (c=1) | added p50 µs | p99 ms (c=1) | req/s (c={c}) | req/s vs first | spans exported per request |",
        c = a.concurrency
    );
    println!("|---|---|---|---|---|---|---|");
    let off = best[0];
    for (i, t) in targets.iter().enumerate() {
        let b = best[i];
        println!(
            "| {} | {:.3} | {:+.1} | {:.3} | {:.0} | {:+.1} % | {:.2} |",
            t.name,
            b.0,
            (b.0 - off.0) * 1e3,
            b.1,
            b.2,
            (b.2 / off.2 - 1.0) * 100.0,
            spans[i] as f64 / requests[i].max(1) as f64
        );
    }
    Ok(())
}
