//! `reactor-bench calls`: what a call between functions costs. Three WASM functions from
//! the probe fixture, `leaf`, `hop` and `head`: `leaf` answers its echo directly, `hop`
//! calls `leaf` (`http://leaf.reactor.internal/echo`) and passes its answer on, `head`
//! calls `hop`, which calls `leaf` (a chain of three). Measured on the embedded default
//! (the call in process) and on the split topology (the call from the worker to the
//! router's call listener and back to a worker), alternating, best of the rounds: latency
//! at concurrency 1 of the direct request and of one hop (the difference is the cost of
//! a hop), and requests/s of the chain at concurrency 32. The same shapes again with
//! `leaf-i` and `hop-i`, whose pool is `inline`: their calls run in the caller's worker,
//! without the router.

use crate::load::{Target, concurrent, percentile, sequential};
use reactor_tests::split::Split;
use reactor_tests::{Api, Server, wasm_probe_bundle};

#[derive(clap::Args, Debug)]
pub struct CallsArgs {
    /// Sequential requests per round for the concurrency-1 latency.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds over the targets (alternating); the best of them is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// The paths of the three shapes, relative to the invoke URL.
const DIRECT: &str = "/fn/v1/leaf/echo";
const ONE_HOP: &str = "/fn/v1/hop/call?to=leaf.reactor.internal&path=%2Fecho";
const CHAIN: &str = "/fn/v1/head/call?to=hop.reactor.internal&path=%2Fcall%3Fto%3Dleaf.reactor.internal%26path%3D%252Fecho";
/// The same through the inline callees.
const ONE_HOP_INLINE: &str = "/fn/v1/hop-i/call?to=leaf-i.reactor.internal&path=%2Fecho";
const CHAIN_INLINE: &str = "/fn/v1/head/call?to=hop-i.reactor.internal&path=%2Fcall%3Fto%3Dleaf-i.reactor.internal%26path%3D%252Fecho";

async fn deploy(api: &Api) {
    for name in ["leaf", "hop", "head"] {
        api.deploy_live(name, wasm_probe_bundle(None)).await;
    }
    let inline = serde_json::json!({"pool": {"type": "inline"}});
    for name in ["leaf-i", "hop-i"] {
        api.deploy_live(name, wasm_probe_bundle(Some(&inline)))
            .await;
    }
}

#[derive(Clone, Copy)]
struct Row {
    direct_p50: f64,
    direct_p99: f64,
    hop_p50: f64,
    hop_p99: f64,
    chain_rps: f64,
    direct_rps: f64,
    inline_hop_p50: f64,
    inline_hop_p99: f64,
    inline_chain_rps: f64,
}

impl Row {
    fn best(self, o: Row) -> Row {
        Row {
            direct_p50: self.direct_p50.min(o.direct_p50),
            direct_p99: self.direct_p99.min(o.direct_p99),
            hop_p50: self.hop_p50.min(o.hop_p50),
            hop_p99: self.hop_p99.min(o.hop_p99),
            chain_rps: self.chain_rps.max(o.chain_rps),
            direct_rps: self.direct_rps.max(o.direct_rps),
            inline_hop_p50: self.inline_hop_p50.min(o.inline_hop_p50),
            inline_hop_p99: self.inline_hop_p99.min(o.inline_hop_p99),
            inline_chain_rps: self.inline_chain_rps.max(o.inline_chain_rps),
        }
    }
}

async fn measure(
    name: &'static str,
    addr: &str,
    token: &str,
    a: &CallsArgs,
) -> anyhow::Result<Row> {
    let target = |path: &str| Target {
        name,
        addr: addr.to_string(),
        path: path.to_string(),
        token: Some(token.to_string()),
        body: None,
    };
    let (direct, hop, chain) = (target(DIRECT), target(ONE_HOP), target(CHAIN));
    let (inline_hop, inline_chain) = (target(ONE_HOP_INLINE), target(CHAIN_INLINE));
    eprintln!("  {name}: concurrency 1, {} requests each", a.requests);
    let d = sequential(&direct, a.requests).await?;
    let h = sequential(&hop, a.requests).await?;
    let ih = sequential(&inline_hop, a.requests).await?;
    eprintln!(
        "  {name}: concurrency {}, {} s each",
        a.concurrency, a.seconds
    );
    let (direct_rps, _) = concurrent(&direct, a.concurrency, a.seconds).await?;
    let (chain_rps, _) = concurrent(&chain, a.concurrency, a.seconds).await?;
    let (inline_chain_rps, _) = concurrent(&inline_chain, a.concurrency, a.seconds).await?;
    Ok(Row {
        inline_hop_p50: percentile(&ih, 0.5),
        inline_hop_p99: percentile(&ih, 0.99),
        inline_chain_rps,
        direct_p50: percentile(&d, 0.5),
        direct_p99: percentile(&d, 0.99),
        hop_p50: percentile(&h, 0.5),
        hop_p99: percentile(&h, 0.99),
        chain_rps,
        direct_rps,
    })
}

pub async fn run(a: CallsArgs) -> anyhow::Result<()> {
    eprintln!("building the probe component, starting reactor dev and the split topology ...");
    let dev = Server::start();
    deploy(&dev).await;
    let split = Split::start();
    deploy(&split.admin).await;
    let dev_addr = dev.url.trim_start_matches("http://").to_string();
    let split_addr = split.invoke_url.trim_start_matches("http://").to_string();
    let mut best: [Option<Row>; 2] = [None, None];
    for round in 0..a.rounds {
        eprintln!("round {}", round + 1);
        for (i, (name, addr, token)) in [
            ("embedded", &dev_addr, &dev.token),
            ("split", &split_addr, &split.admin.token),
        ]
        .into_iter()
        .enumerate()
        {
            let row = measure(name, addr, token, &a).await?;
            best[i] = Some(best[i].map_or(row, |b| b.best(row)));
        }
    }
    println!(
        "\n| topology | direct p50 ms | one hop p50 ms | added p50 ms | direct p99 ms | one hop p99 ms | direct req/s (c={c}) | chain of 3 req/s (c={c}) |",
        c = a.concurrency
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, row) in ["embedded", "split"].iter().zip(best) {
        let Some(r) = row else { continue };
        println!(
            "| {name} | {:.3} | {:.3} | {:+.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            r.direct_p50,
            r.hop_p50,
            r.hop_p50 - r.direct_p50,
            r.direct_p99,
            r.hop_p99,
            r.direct_rps,
            r.chain_rps
        );
    }
    println!(
        "\n| topology | one hop p50 ms, router | one hop p50 ms, inline | one hop p99 ms, router | one hop p99 ms, inline | chain of 3 req/s, router | chain of 3 req/s, inline |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, row) in ["embedded", "split"].iter().zip(best) {
        let Some(r) = row else { continue };
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            r.hop_p50,
            r.inline_hop_p50,
            r.hop_p99,
            r.inline_hop_p99,
            r.chain_rps,
            r.inline_chain_rps
        );
    }
    Ok(())
}
