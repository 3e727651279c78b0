//! `reactor-bench`: what `docs/benchmarks.md` reports, measured on the real binaries.
//!
//! `reactor-bench` (the default command) builds `examples/hello-wasm` and
//! `tests/fixtures/probe-wasm`, starts the embedded default (`reactor dev`), the split
//! topology (`reactor-control-plane`, `reactor-data-plane`, `reactor-worker-wasm`), the
//! split topology again with mutual TLS between its services (`[internal] tls`) and
//! `wasmtime serve -Scli` 48.0.8 on the same hello component, then measures, alternating
//! between them: warm latency at concurrency 1 (p50/p99) and requests/s at
//! concurrency 32. For both Reactor topologies it also measures the first request after a
//! promote, promote-to-router latency and a truly cold request (a worker that never saw
//! the deployment). `wasmtime` comes from `bench/scripts/wasmtime-cli.sh`, which builds it
//! into a cache outside the repo the first time (about 20 minutes).
//!
//! `reactor-bench hop` compares the router-to-worker protocols (HTTP/2 and gRPC).
//! `reactor-bench bun` measures the Bun runtime against bare `Bun.serve`.
//! `reactor-bench controls` measures invoke policies and the concurrency cap.
//! `reactor-bench lambda` measures the router's hashing and SigV4 signing per Lambda request.
//! `reactor-bench calls` measures calls between functions (one hop, a chain of three),
//! through the router and inline.
//! `reactor-bench composition` measures each interceptor and a contract per request.
//! `reactor-bench telemetry` measures what metrics and traces cost per request.
//! `reactor-bench many` deploys 10,000 functions on one worker and measures memory, the
//! routing table's push to 10 routers, first requests and a load spread over them all.
//! `reactor-bench upload` measures the control plane's memory during a 50 MiB upload.
//! `reactor-bench profile` records a CPU profile under load and splits it by stage.
//!
//! Run: `cargo run --release -p reactor-bench [-- --help]`.

mod bun;
mod bunhop;
mod calls;
mod composition;
mod controls;
mod hop;
mod lambda;
mod load;
mod many;
mod profile;
mod telemetry;
mod upload;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use load::{Answer, Conn, Target, concurrent, percentile, sequential};
use reactor_tests::split::Split;
use reactor_tests::{Api, Server, build_component, bundle, read, root, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "reactor-bench",
    about = "Reactor benchmarks (docs/benchmarks.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    invoke: InvokeArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Router-to-worker protocol: HTTP/2 against gRPC, in process over loopback.
    Hop(hop::HopArgs),
    /// The Bun runtime against bare `Bun.serve`, and Bun cold starts.
    Bun(bun::BunArgs),
    /// What each kind of hop in front of Bun can serve (nginx, a minimal proxy, a binary
    /// framing), against bare `Bun.serve` and Reactor, in the same run (needs wrk).
    BunHop(bunhop::BunHopArgs),
    /// What invoke policies and the concurrency cap cost per request.
    Controls(controls::ControlsArgs),
    /// What a router adds to a Lambda invocation: body hash and SigV4 signature.
    Lambda(lambda::LambdaArgs),
    /// Calls between functions: the cost of one hop, the throughput of a chain of three.
    Calls(calls::CallsArgs),
    /// What each interceptor and a contract's schema validation cost per request.
    Composition(composition::CompositionArgs),
    /// What traces cost per request: off, 1 % sampled, every invocation exported.
    Telemetry(telemetry::TelemetryArgs),
    /// 10,000 functions on one worker: memory, routing table to 10 routers, first
    /// requests, load spread over all of them (about 5 minutes).
    Many(many::ManyArgs),
    /// What a 50 MiB bundle upload costs the control plane in memory.
    Upload(upload::UploadArgs),
    /// Where each microsecond of a request goes: a CPU profile (perf) by stage.
    Profile(profile::ProfileArgs),
}

#[derive(clap::Args, Debug)]
struct InvokeArgs {
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
    /// Promotes measured (first request after promote, promote-to-router).
    #[arg(long, default_value_t = 20)]
    promotes: usize,
    /// Truly cold requests measured.
    #[arg(long, default_value_t = 5)]
    colds: usize,
    /// The `wasmtime` 48.0.8 binary (default: built or found by bench/scripts/wasmtime-cli.sh).
    #[arg(long)]
    wasmtime: Option<std::path::PathBuf>,
    /// Leave `wasmtime serve` out.
    #[arg(long)]
    no_wasmtime: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Hop(args)) => hop::run(args).await,
        Some(Cmd::Bun(args)) => bun::run(args).await,
        Some(Cmd::BunHop(args)) => bunhop::run(args).await,
        Some(Cmd::Controls(args)) => controls::run(args).await,
        Some(Cmd::Lambda(args)) => lambda::run(args).await,
        Some(Cmd::Calls(args)) => calls::run(args).await,
        Some(Cmd::Composition(args)) => composition::run(args).await,
        Some(Cmd::Telemetry(args)) => telemetry::run(args).await,
        Some(Cmd::Many(args)) => many::run(args).await,
        Some(Cmd::Upload(args)) => upload::run(args).await,
        Some(Cmd::Profile(args)) => profile::run(args).await,
        None => invoke(cli.invoke).await,
    }
}

/// Throughput and latency of one target in one round.
#[derive(Clone, Copy, Default)]
struct Load {
    p50: f64,
    p99: f64,
    rps: f64,
    p50_c: f64,
    p99_c: f64,
    /// Requests/s under `wrk -t2` at the same concurrency (when wrk is installed).
    rps_wrk: Option<f64>,
}

impl Load {
    /// The better of two rounds, measure by measure.
    fn best(self, o: Load) -> Load {
        if self.rps == 0.0 {
            return o;
        }
        Load {
            p50: self.p50.min(o.p50),
            p99: self.p99.min(o.p99),
            rps: self.rps.max(o.rps),
            p50_c: self.p50_c.min(o.p50_c),
            p99_c: self.p99_c.min(o.p99_c),
            rps_wrk: match (self.rps_wrk, o.rps_wrk) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

async fn measure(t: &Target, a: &InvokeArgs) -> anyhow::Result<Load> {
    eprintln!("  {}: concurrency 1, {} requests", t.name, a.requests);
    let lat = sequential(t, a.requests).await?;
    eprintln!(
        "  {}: concurrency {}, {} s",
        t.name, a.concurrency, a.seconds
    );
    let (rps, all) = concurrent(t, a.concurrency, a.seconds).await?;
    if load::has_wrk() {
        eprintln!("  {}: wrk -t2 -c{}, {} s", t.name, a.concurrency, a.seconds);
    }
    let rps_wrk = load::wrk(t, a.concurrency, a.seconds).await?;
    Ok(Load {
        rps_wrk,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        rps,
        p50_c: percentile(&all, 0.5),
        p99_c: percentile(&all, 0.99),
    })
}

/// Figures of promotes and cold starts on one topology.
#[derive(Default)]
struct Lifecycle {
    first: Vec<Duration>,
    first_cold: usize,
    to_router: Vec<Duration>,
    cold: Vec<Duration>,
    cold_reported: usize,
}

/// The two deployments promoted in turn: hello (the measured one) and the probe.
struct Deployments {
    hello: String,
    probe: String,
}

async fn upload_ready(api: &Api, function: &str, bundle: Vec<u8>) -> anyhow::Result<String> {
    let up = api.upload(function, bundle).await;
    if up.status() != 202 {
        bail!("upload: {}", up.text().await.unwrap_or_default());
    }
    let dep: serde_json::Value = up.json().await?;
    let id = dep["id"].as_str().context("deployment id")?.to_string();
    let d = api.wait_deployment(function, &id).await;
    if d["status"] != "ready" {
        bail!("deployment failed: {d}");
    }
    Ok(id)
}

async fn promote(api: &Api, function: &str, id: &str) -> anyhow::Result<()> {
    let r = api
        .request(
            reqwest::Method::POST,
            &format!("/fn/v1/_admin/functions/{function}/promote"),
        )
        .json(&serde_json::json!({ "deployment_id": id }))
        .send()
        .await?;
    if r.status() != 200 {
        bail!("promote: {}", r.text().await.unwrap_or_default());
    }
    Ok(())
}

/// Promotes hello and the probe in turn. Promote-to-router: from sending the promote
/// until a request to the router is answered by the new deployment (polled on one
/// keep-alive connection). First request after promote: that first answer.
async fn promotes(
    api: &Api,
    t: &Target,
    deps: &Deployments,
    n: usize,
    out: &mut Lifecycle,
) -> anyhow::Result<()> {
    let mut poll = Conn::open(t).await?;
    for i in 0..n {
        // Even: the probe goes live, odd: hello again (both loaded and evicted in turn).
        let (id, want) = if i % 2 == 0 {
            (&deps.probe, Answer::Probe)
        } else {
            (&deps.hello, Answer::Hello)
        };
        let started = Instant::now();
        let promoting = promote(api, "hello", id);
        let ((), (seen_at, first)) = tokio::try_join!(promoting, async {
            loop {
                let r = poll.call(t).await?;
                if r.answer == want {
                    return anyhow::Ok((started.elapsed(), r));
                }
            }
        })?;
        out.to_router.push(seen_at);
        out.first.push(first.latency);
        out.first_cold += usize::from(first.cold);
    }
    // End on hello, as the load measures expect.
    if n % 2 == 1 {
        promote(api, "hello", &deps.hello).await?;
    }
    Ok(())
}

async fn first_call(t: &Target) -> anyhow::Result<load::Reply> {
    let mut conn = Conn::open(t).await?;
    conn.call(t).await
}

/// A free loopback port (bound, then released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Wasmtime(Child);

impl Drop for Wasmtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wasmtime_bin(a: &InvokeArgs) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = &a.wasmtime {
        return Ok(p.clone());
    }
    let out = Command::new("bash")
        .arg(root().join("bench/scripts/wasmtime-cli.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running bench/scripts/wasmtime-cli.sh")?;
    if !out.status.success() {
        bail!("bench/scripts/wasmtime-cli.sh failed");
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    Ok(path.into())
}

async fn start_wasmtime(
    bin: &std::path::Path,
    component: &std::path::Path,
) -> anyhow::Result<(Wasmtime, Target)> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["serve", "-Scli", "--addr", &addr])
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let guard = Wasmtime(child);
    let t = Target {
        name: "wasmtime serve",
        addr,
        path: "/".into(),
        token: None,
        body: None,
    };
    let up = wait_until(Duration::from_secs(60), || async {
        first_call(&t).await.ok()
    })
    .await;
    if up.is_none() {
        bail!("wasmtime serve did not answer");
    }
    Ok((guard, t))
}

async fn invoke(a: InvokeArgs) -> anyhow::Result<()> {
    eprintln!("building the hello and probe components ...");
    let hello_path = build_component("examples/hello-wasm", true);
    let hello = bundle(&[("hello.wasm", &read(&hello_path))]);
    let probe = bundle(&[(
        "probe.wasm",
        &read(&build_component("tests/fixtures/probe-wasm", true)),
    )]);

    eprintln!("starting reactor dev (embedded) ...");
    let mut embedded = Server::start();
    embedded.deploy_live("hello", hello.clone()).await;
    let emb_deps = Deployments {
        hello: upload_ready(&embedded, "hello", hello.clone()).await?,
        probe: upload_ready(&embedded, "hello", probe.clone()).await?,
    };
    promote(&embedded, "hello", &emb_deps.hello).await?;
    let emb_target = |s: &Server| Target {
        name: "embedded",
        addr: s.url.trim_start_matches("http://").to_string(),
        path: "/fn/v1/hello".into(),
        token: Some(s.token.clone()),
        body: None,
    };

    eprintln!("starting the split topology ...");
    let mut split = Split::start();
    split.admin.deploy_live("hello", hello.clone()).await;
    let split_deps = Deployments {
        hello: upload_ready(&split.admin, "hello", hello.clone()).await?,
        probe: upload_ready(&split.admin, "hello", probe.clone()).await?,
    };
    promote(&split.admin, "hello", &split_deps.hello).await?;
    let split_target = Target {
        name: "split",
        addr: split.invoke_url.trim_start_matches("http://").to_string(),
        path: "/fn/v1/hello".into(),
        token: Some(split.admin.token.clone()),
        body: None,
    };
    wait_until(Duration::from_secs(20), || async {
        first_call(&split_target)
            .await
            .ok()
            .filter(|r| r.answer == Answer::Hello)
    })
    .await
    .context("the split router never served hello")?;

    // The same split topology with mutual TLS on every internal hop (`[internal] tls`):
    // the router-to-worker hop is what it changes on the invoke path.
    eprintln!("starting the split topology with internal TLS ...");
    let split_tls = Split::start_tls();
    split_tls.admin.deploy_live("hello", hello.clone()).await;
    let split_tls_target = Target {
        name: "split+tls",
        addr: split_tls
            .invoke_url
            .trim_start_matches("http://")
            .to_string(),
        path: "/fn/v1/hello".into(),
        token: Some(split_tls.admin.token.clone()),
        body: None,
    };
    wait_until(Duration::from_secs(20), || async {
        first_call(&split_tls_target)
            .await
            .ok()
            .filter(|r| r.answer == Answer::Hello)
    })
    .await
    .context("the split router with TLS never served hello")?;

    let wasmtime = if a.no_wasmtime {
        None
    } else {
        let bin = wasmtime_bin(&a)?;
        eprintln!("starting wasmtime serve -Scli ({}) ...", bin.display());
        Some(start_wasmtime(&bin, &hello_path).await?)
    };

    // Load, alternating between the targets.
    let mut targets = vec![
        emb_target(&embedded),
        split_target.clone(),
        split_tls_target.clone(),
    ];
    if let Some((_, t)) = &wasmtime {
        targets.push(t.clone());
    }
    let mut loads = vec![Load::default(); targets.len()];
    for round in 0..a.rounds {
        eprintln!("round {} of {}", round + 1, a.rounds);
        for (t, best) in targets.iter().zip(loads.iter_mut()) {
            *best = best.best(measure(t, &a).await?);
        }
    }

    // Promotes.
    let mut emb = Lifecycle::default();
    let mut spl = Lifecycle::default();
    eprintln!("promotes x{} on each topology ...", a.promotes);
    promotes(
        &embedded,
        &emb_target(&embedded),
        &emb_deps,
        a.promotes,
        &mut emb,
    )
    .await?;
    promotes(
        &split.admin,
        &split_target,
        &split_deps,
        a.promotes,
        &mut spl,
    )
    .await?;

    // Truly cold: nothing of the deployment in memory or in the worker's local cache.
    eprintln!("truly cold requests x{} on each topology ...", a.colds);
    for _ in 0..a.colds {
        let dir = embedded.stop();
        let _ = std::fs::remove_dir_all(dir.path().join("work/cache"));
        embedded = Server::start_in(dir, &[]);
        let r = first_call(&emb_target(&embedded)).await?;
        emb.cold.push(r.latency);
        emb.cold_reported += usize::from(r.cold);
    }
    for i in 0..a.colds {
        let fresh = split.start_worker(
            &format!("cold-{i}"),
            &[("REACTOR_WORKER_PREWARM", "false".into())],
        );
        if let Some(old) = split.worker.replace(fresh) {
            // Draining: it leaves the table, then stops.
            tokio::task::spawn_blocking(move || old.stop()).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = first_call(&split_target).await?;
        spl.cold.push(r.latency);
        spl.cold_reported += usize::from(r.cold);
    }
    for l in [&mut emb, &mut spl] {
        l.first.sort();
        l.to_router.sort();
        l.cold.sort();
    }
    report(&a, &targets, &loads, &emb, &spl);
    drop(wasmtime);
    drop(split_tls);
    Ok(())
}

fn report(a: &InvokeArgs, targets: &[Target], loads: &[Load], emb: &Lifecycle, spl: &Lifecycle) {
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    println!("| measure | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    let row = |label: String, f: &dyn Fn(&Load) -> String| {
        let cells: Vec<String> = loads.iter().map(f).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row("warm p50, concurrency 1".into(), &|l| {
        format!("{:.3} ms", l.p50)
    });
    row("warm p99, concurrency 1".into(), &|l| {
        format!("{:.3} ms", l.p99)
    });
    row(format!("requests/s, concurrency {}", a.concurrency), &|l| {
        format!("{:.0}", l.rps)
    });
    row(format!("p50 / p99, concurrency {}", a.concurrency), &|l| {
        format!("{:.2} / {:.2} ms", l.p50_c, l.p99_c)
    });
    let with_wrk = loads.iter().all(|l| l.rps_wrk.is_some());
    if with_wrk {
        row(format!("requests/s, wrk -t2 -c{}", a.concurrency), &|l| {
            format!("{:.0}", l.rps_wrk.unwrap_or_default())
        });
    }
    let wasmtime = targets.iter().position(|t| t.name == "wasmtime serve");
    if let Some(w) = wasmtime.and_then(|i| loads.get(i)) {
        row("requests/s ÷ wasmtime serve".into(), &|l| {
            format!("{:.2}x", l.rps / w.rps)
        });
        if with_wrk {
            row("wrk requests/s ÷ wasmtime serve".into(), &|l| {
                format!(
                    "{:.2}x",
                    l.rps_wrk.unwrap_or_default() / w.rps_wrk.unwrap_or(f64::NAN)
                )
            });
        }
        row("warm p50 ÷ wasmtime serve".into(), &|l| {
            format!("{:.2}x", l.p50 / w.p50)
        });
    }
    println!();
    println!("| measure | embedded | split |");
    println!("|---|---|---|");
    let both = |label: &str, f: &dyn Fn(&Lifecycle) -> String| {
        println!("| {label} | {} | {} |", f(emb), f(spl));
    };
    both("first request after promote, p50 / max", &|l| {
        format!(
            "{:.3} / {:.3} ms",
            percentile(&l.first, 0.5),
            percentile(&l.first, 1.0)
        )
    });
    both("first requests after promote reported cold", &|l| {
        format!("{} of {}", l.first_cold, l.first.len())
    });
    both("promote-to-router, p50 / max", &|l| {
        format!(
            "{:.2} / {:.2} ms",
            percentile(&l.to_router, 0.5),
            percentile(&l.to_router, 1.0)
        )
    });
    both("truly cold request, p50 / max", &|l| {
        format!(
            "{:.3} / {:.3} ms",
            percentile(&l.cold, 0.5),
            percentile(&l.cold, 1.0)
        )
    });
    both("truly cold requests reported cold", &|l| {
        format!("{} of {}", l.cold_reported, l.cold.len())
    });
}
