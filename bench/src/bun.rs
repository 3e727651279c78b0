//! `reactor-bench bun`: the Bun runtime against bare `Bun.serve`, in the same run.
//!
//! The seed's hello handler (`examples/hello-bun`) is deployed on the embedded default and
//! served by a bare `Bun.serve` (same Bun, same handler, no sandbox, no router); rounds
//! alternate between the two: warm p50/p99 at concurrency 1 and requests/s at concurrency
//! 32. Then cold starts: the idle TTL is set to 1 s, and each sample waits until the pool
//! has been reaped, so every measured request starts a process (sandboxed, and again with
//! the sandbox off).

use crate::load::{Target, concurrent, percentile, sequential};
use anyhow::{Context, bail};
use reactor_tests::{Server, bun_bin, bundle, read, root, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct BunArgs {
    /// Sequential requests for the concurrency-1 latency.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds over the targets (alternating); the best of them is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Cold starts measured per sandbox setting.
    #[arg(long, default_value_t = 10)]
    colds: usize,
}

pub(crate) struct BareBun(Child);

impl Drop for BareBun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn hello_bundle() -> Vec<u8> {
    bundle(&[(
        "code/index.ts",
        &read(&root().join("examples/hello-bun/code/index.ts")),
    )])
}

/// `Bun.serve` of the same handler on a free port.
pub(crate) async fn start_bare(dir: &std::path::Path) -> anyhow::Result<(BareBun, Target)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let script = dir.join("bare.ts");
    let handler = root().join("examples/hello-bun/code/index.ts");
    std::fs::write(
        &script,
        format!(
            "import app from {:?};\nBun.serve({{ hostname: \"127.0.0.1\", port: {port}, fetch: (r) => app.fetch(r) }});\n",
            handler.display().to_string()
        ),
    )?;
    let child = Command::new(bun_bin())
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting bare Bun.serve")?;
    let target = Target {
        name: "bare Bun.serve",
        addr: format!("127.0.0.1:{port}"),
        path: "/".into(),
        token: None,
        body: None,
    };
    let up = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&target.addr).await.ok()
    })
    .await;
    if up.is_none() {
        bail!("bare Bun.serve did not start");
    }
    Ok((BareBun(child), target))
}

#[derive(Clone, Copy, Default)]
struct Load {
    p50: f64,
    p99: f64,
    rps: f64,
}

/// Cold starts: each sample waits for the pool to be reaped (TTL 1 s), then times one
/// request that starts a process.
async fn colds(sandbox: bool, n: usize) -> anyhow::Result<Vec<Duration>> {
    let s = Server::start_with(&[
        ("REACTOR_FUNCTIONS_BUN_IDLE_TTL_SECS", "1"),
        (
            "REACTOR_FUNCTIONS_BUN_SANDBOX",
            if sandbox { "true" } else { "false" },
        ),
    ]);
    s.deploy_live_runtime("hello", "bun", hello_bundle()).await;
    let target = Target {
        name: if sandbox {
            "cold, sandboxed"
        } else {
            "cold, no sandbox"
        },
        addr: s.url.trim_start_matches("http://").to_string(),
        path: "/fn/v1/hello".into(),
        token: Some(s.token.clone()),
        body: None,
    };
    let mut out = Vec::new();
    let mut reaped = 0;
    while out.len() < n {
        // Wait for the reaper (a log line per stopped process), then one request.
        let stopped = wait_until(Duration::from_secs(10), || async {
            let count = s.logs().matches("stopping a bun process: idle").count();
            (count > reaped).then_some(count)
        })
        .await
        .context("the idle process was never reaped")?;
        reaped = stopped;
        let mut conn = crate::load::Conn::open(&target).await?;
        let reply = conn.call(&target).await?;
        if !reply.cold {
            bail!("{}: the request was not cold", target.name);
        }
        out.push(reply.latency);
    }
    out.sort();
    Ok(out)
}

pub async fn run(a: BunArgs) -> anyhow::Result<()> {
    eprintln!("starting reactor dev (embedded) with the hello handler on Bun ...");
    let s = Server::start();
    s.deploy_live_runtime("hello", "bun", hello_bundle()).await;
    let reactor = Target {
        name: "reactor (embedded, bun)",
        addr: s.url.trim_start_matches("http://").to_string(),
        path: "/fn/v1/hello".into(),
        token: Some(s.token.clone()),
        body: None,
    };
    let dir = tempfile::tempdir()?;
    let (_bare, bare) = start_bare(dir.path()).await?;
    let targets = [reactor, bare];
    let mut best = [Load::default(); 2];
    for round in 1..=a.rounds {
        eprintln!("round {round}/{}", a.rounds);
        for (i, t) in targets.iter().enumerate() {
            eprintln!("  {}: concurrency 1, {} requests", t.name, a.requests);
            let lat = sequential(t, a.requests).await?;
            eprintln!(
                "  {}: concurrency {}, {} s",
                t.name, a.concurrency, a.seconds
            );
            let (rps, _) = concurrent(t, a.concurrency, a.seconds).await?;
            let l = Load {
                p50: percentile(&lat, 0.5),
                p99: percentile(&lat, 0.99),
                rps,
            };
            let b = &mut best[i];
            if b.rps == 0.0 {
                *b = l;
            } else {
                b.p50 = b.p50.min(l.p50);
                b.p99 = b.p99.min(l.p99);
                b.rps = b.rps.max(l.rps);
            }
        }
    }
    drop(s);
    eprintln!("cold starts, sandboxed ...");
    let sandboxed = colds(true, a.colds).await?;
    eprintln!("cold starts, sandbox off ...");
    let open = colds(false, a.colds).await?;

    println!("\n## Bun runtime (best of {} rounds)\n", a.rounds);
    println!(
        "| target | warm p50 ms | warm p99 ms | req/s at c={} |",
        a.concurrency
    );
    println!("|---|---|---|---|");
    for (t, l) in targets.iter().zip(best) {
        println!(
            "| {} | {:.3} | {:.3} | {:.0} |",
            t.name, l.p50, l.p99, l.rps
        );
    }
    println!(
        "\nreactor / bare Bun.serve: {:.2}x requests/s",
        best[0].rps / best[1].rps
    );
    println!("\n| cold start (through the router) | p50 ms | min ms | max ms |");
    println!("|---|---|---|---|");
    for (name, c) in [
        ("sandboxed (bubblewrap + cgroup)", &sandboxed),
        ("sandbox off", &open),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            percentile(c, 0.5),
            percentile(c, 0.0),
            percentile(c, 1.0)
        );
    }
    Ok(())
}
