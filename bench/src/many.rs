//! `reactor-bench many`: the platform with many functions. The hello component deployed
//! under 10,000 names across 100 orgs on the split topology with one WASM worker, then:
//! memory of the worker, the routers and the control plane; the routing table's size and
//! the time 10 routers take to get it (new routers, and one promote reaching all of
//! them); the first request of functions never invoked on a fresh worker that loads
//! lazily (prewarm off); requests/s when the load spreads over all of them.

use crate::load::{Answer, Conn, Target, percentile};
use anyhow::{Context, bail};
use reactor_tests::split::{INTERNAL_TOKEN, Service, Split};
use reactor_tests::{Api, build_component, bundle, read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The services' `/metrics` token in this bench.
const METRICS_TOKEN: &str = "4e9a1c7d2b8f0e3a6c5d9b1f7e2a4c8d0b3f6e9a1d5c7b2e8f0a4d6c9b3e1f75";

#[derive(clap::Args, Debug)]
pub struct ManyArgs {
    /// Functions deployed (the hello component under as many names).
    #[arg(long, default_value_t = 10_000)]
    functions: usize,
    /// Orgs they are spread across.
    #[arg(long, default_value_t = 100)]
    orgs: usize,
    /// Routers following the control plane.
    #[arg(long, default_value_t = 10)]
    routers: usize,
    /// Deploys at once (each: create, upload, wait until ready, promote).
    #[arg(long, default_value_t = 8)]
    deploy_concurrency: usize,
    /// Functions never invoked that get a first request (sequential).
    #[arg(long, default_value_t = 500)]
    first: usize,
    /// Connections of the load spread over every function.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of that load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// `[worker] loaded_budget_mb` of the worker (default: the worker's default).
    #[arg(long)]
    loaded_budget_mb: Option<u64>,
}

/// Resident and peak memory of a process, in MiB (`/proc/{pid}/status`).
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn rss(s: &Service) -> f64 {
    memory(s.pid()).0
}

/// `org` index and function name of function `i`.
fn name(i: usize, orgs: usize, functions: usize) -> (usize, String) {
    let per_org = functions.div_ceil(orgs);
    (i / per_org, format!("f{i:05}"))
}

fn org_name(o: usize) -> String {
    format!("o{o:03}")
}

/// Creates the function, uploads `bundle`, waits until it is ready and promotes it.
async fn deploy(api: &Api, function: &str, bundle: Vec<u8>) -> anyhow::Result<String> {
    let r = api
        .request(reqwest::Method::POST, "/fn/v1/_admin/functions")
        .json(&serde_json::json!({ "name": function, "runtime": "wasm" }))
        .send()
        .await?;
    if r.status() != 201 && r.status() != 409 {
        bail!("create {function}: {}", r.text().await.unwrap_or_default());
    }
    let up = api.upload(function, bundle).await;
    if up.status() != 202 {
        bail!("upload {function}: {}", up.text().await.unwrap_or_default());
    }
    let dep: serde_json::Value = up.json().await?;
    let id = dep["id"].as_str().context("deployment id")?.to_string();
    let path = format!("/fn/v1/_admin/functions/{function}/deployments/{id}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d: serde_json::Value = api
            .request(reqwest::Method::GET, &path)
            .send()
            .await?
            .json()
            .await?;
        match d["status"].as_str() {
            Some("ready") => break,
            Some("materializing") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            _ => bail!("deployment of {function}: {d}"),
        }
    }
    crate::promote(api, function, &id).await?;
    Ok(id)
}

/// A target for function `function` of the org whose token is `token`, on `addr`.
fn target(addr: &str, function: &str, token: &str) -> Target {
    Target {
        name: "many",
        addr: addr.to_string(),
        path: format!("/fn/v1/{function}"),
        token: Some(token.to_string()),
        body: None,
    }
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// xorshift64: which function each request of the spread load goes to.
struct Pick(u64);

impl Pick {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

pub async fn run(a: ManyArgs) -> anyhow::Result<()> {
    if a.orgs == 0 || a.functions < a.orgs || a.routers == 0 {
        bail!("--functions must be at least --orgs, and both and --routers positive");
    }
    eprintln!("building the hello and probe components ...");
    let hello = bundle(&[(
        "hello.wasm",
        &read(&build_component("examples/hello-wasm", true)),
    )]);
    let probe = bundle(&[(
        "probe.wasm",
        &read(&build_component("tests/fixtures/probe-wasm", true)),
    )]);

    let mut env = vec![
        ("RUST_LOG", "warn".to_string()),
        ("REACTOR_TELEMETRY_METRICS_TOKEN", METRICS_TOKEN.to_string()),
    ];
    if let Some(mb) = a.loaded_budget_mb {
        env.push(("REACTOR_WORKER_LOADED_BUDGET_MB", mb.to_string()));
    }
    eprintln!("starting the split topology (one router, one worker) ...");
    let mut split = Split::start_env(&env);
    let started_rss = (
        rss(split.cp.as_ref().context("control plane")?),
        rss(split.router.as_ref().context("router")?),
        rss(split.worker.as_ref().context("worker")?),
    );

    // Orgs, each with its admin token.
    let mut tokens = Vec::with_capacity(a.orgs);
    for o in 0..a.orgs {
        let r = split
            .admin
            .request(reqwest::Method::POST, "/fn/v1/_admin/orgs")
            .json(&serde_json::json!({ "name": org_name(o) }))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("creating org {}: {}", org_name(o), r.text().await?);
        }
        let created: serde_json::Value = r.json().await?;
        tokens.push(
            created["admin_token"]["token"]
                .as_str()
                .context("the org's admin token")?
                .to_string(),
        );
    }
    let apis: Vec<Api> = tokens
        .iter()
        .enumerate()
        .map(|(o, token)| Api {
            url: split.admin.url.clone(),
            token: token.clone(),
            org: org_name(o),
            http: reqwest::Client::new(),
        })
        .collect();

    // Deploy: each task takes the next org and deploys its functions one after the
    // other (an org may have only `functions.uploads_per_org` uploads at once).
    eprintln!(
        "deploying {} functions across {} orgs ({} at once) ...",
        a.functions, a.orgs, a.deploy_concurrency
    );
    let next_org = Arc::new(AtomicUsize::new(0));
    let deployed = Arc::new(AtomicUsize::new(0));
    let apis = Arc::new(apis);
    let deploy_started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.deploy_concurrency {
        let (next_org, deployed, apis, hello) = (
            next_org.clone(),
            deployed.clone(),
            apis.clone(),
            hello.clone(),
        );
        let (n, orgs) = (a.functions, a.orgs);
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let per_org = n.div_ceil(orgs);
            loop {
                let o = next_org.fetch_add(1, Ordering::Relaxed);
                if o >= orgs {
                    return anyhow::Ok(took);
                }
                for i in (o * per_org..(o + 1) * per_org).take_while(|i| *i < n) {
                    let (_, function) = name(i, orgs, n);
                    let t = Instant::now();
                    deploy(&apis[o], &function, hello.clone()).await?;
                    took.push(t.elapsed());
                    let done = deployed.fetch_add(1, Ordering::Relaxed) + 1;
                    if done % 500 == 0 {
                        eprintln!(
                            "  {done} deployed ({:.0} s)",
                            deploy_started.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        }));
    }
    let mut deploy_times = Vec::new();
    for t in tasks {
        deploy_times.extend(t.await??);
    }
    let deploy_secs = deploy_started.elapsed().as_secs_f64();
    deploy_times.sort();
    let cp = split.cp.as_ref().context("control plane")?;
    let deployed_rss = (
        rss(cp),
        rss(split.router.as_ref().context("router")?),
        rss(split.worker.as_ref().context("worker")?),
    );
    let (_, cp_peak) = memory(cp.pid());

    // The table as a router gets it: its encoded size, and the time to receive it.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = Instant::now();
    let watch = reactor_proto::client::watch_routing(
        reactor_proto::client::ControlPlaneEndpoint {
            url: split.grpc_url.clone(),
            internal_token: INTERNAL_TOKEN.into(),
            router_id: "bench".into(),
            tls: None,
        },
        move |table| {
            let _ = tx.send((
                watching.elapsed(),
                table.functions.len(),
                prost::Message::encoded_len(table),
            ));
        },
    );
    let (table_in, table_functions, table_bytes) = loop {
        let got = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .context("the routing table never came")?
            .context("the routing watch ended")?;
        if got.1 >= a.functions {
            break got;
        }
    };
    watch.abort();

    // Routers: all of them started at once; each is ready when it serves the last function.
    let (last_org, last) = name(a.functions - 1, a.orgs, a.functions);
    eprintln!("starting {} more routers ...", a.routers - 1);
    let routers_started = Instant::now();
    let mut routers = Vec::new();
    for r in 1..a.routers {
        routers.push(split.start_router(&format!("router-{r}")));
    }
    let mut router_ready = Vec::new();
    for r in &routers {
        let t = target(&addr(&r.url_after("invoke ")), &last, &tokens[last_org]);
        let ready = reactor_tests::wait_until(Duration::from_secs(60), || async {
            let mut c = Conn::open(&t).await.ok()?;
            c.call(&t).await.ok().map(|_| routers_started.elapsed())
        })
        .await
        .context("a new router never served the last function")?;
        router_ready.push(ready);
    }
    router_ready.sort();

    // One promote reaching every router: function 0 gets the probe.
    let (first_org, first) = name(0, a.orgs, a.functions);
    let api0 = &apis[first_org];
    let up = api0.upload(&first, probe.clone()).await;
    let id: serde_json::Value = up.json().await?;
    let id = id["id"].as_str().context("deployment id")?.to_string();
    let ready = api0.wait_deployment(&first, &id).await;
    if ready["status"] != "ready" {
        bail!("the probe deployment: {ready}");
    }
    let mut all_routers: Vec<String> = vec![addr(&split.invoke_url)];
    all_routers.extend(routers.iter().map(|r| addr(&r.url_after("invoke "))));
    let promoted = Instant::now();
    crate::promote(api0, &first, &id).await?;
    let promote_returned = promoted.elapsed();
    let mut seen = Vec::new();
    for r in &all_routers {
        let t = target(r, &first, &tokens[first_org]);
        let mut c = Conn::open(&t).await?;
        loop {
            if c.call(&t).await?.answer == Answer::Probe {
                seen.push(promoted.elapsed());
                break;
            }
            if promoted.elapsed() > Duration::from_secs(30) {
                bail!("router {r} never served the promoted deployment");
            }
        }
    }
    let all_seen = seen.iter().max().copied().unwrap_or_default();
    let routers_rss: Vec<f64> = routers.iter().map(rss).collect();

    // A fresh worker that loads lazily (prewarm off, an empty local cache): the old one
    // leaves, and every function's first request on it loads the deployment.
    eprintln!("replacing the worker with one that loads lazily ...");
    let lazy = split.start_worker("lazy", &[("REACTOR_WORKER_PREWARM", "false".into())]);
    if let Some(old) = split.worker.replace(lazy) {
        tokio::task::spawn_blocking(move || old.stop()).await?;
    }
    let lazy = split.worker.as_ref().context("worker")?;
    let router = addr(&split.invoke_url);
    // Until the router sends to the new worker (a request the old one would have
    // answered warm is cold on the new one): function 1's first request.
    let (o1, f1) = name(1.min(a.functions - 1), a.orgs, a.functions);
    reactor_tests::wait_until(Duration::from_secs(30), || async {
        let t = target(&router, &f1, &tokens[o1]);
        let mut c = Conn::open(&t).await.ok()?;
        c.call(&t).await.ok().filter(|r| r.cold).map(|_| ())
    })
    .await
    .context("the router never sent to the new worker")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss(lazy);

    // First requests: functions spread over the orgs, none invoked on this worker yet.
    let step = (a.functions / a.first.max(1)).max(1);
    let mut firsts = Vec::new();
    let mut firsts_cold = 0;
    for i in (2..a.functions).step_by(step).take(a.first) {
        let (o, f) = name(i, a.orgs, a.functions);
        let t = target(&router, &f, &tokens[o]);
        let mut c = Conn::open(&t).await?;
        let r = c.call(&t).await?;
        firsts.push(r.latency);
        firsts_cold += usize::from(r.cold);
    }
    firsts.sort();
    let after_firsts_rss = rss(lazy);

    // The load spread over every function (function 0 answers the probe).
    eprintln!(
        "load over all {} functions: {} connections, {} s ...",
        a.functions, a.concurrency, a.seconds
    );
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let tokens = Arc::new(tokens);
    let mut tasks = Vec::new();
    for c in 0..a.concurrency {
        let (tokens, router) = (tokens.clone(), router.clone());
        let (n, orgs) = (a.functions, a.orgs);
        tasks.push(tokio::spawn(async move {
            let mut pick = Pick(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
            let mut conn = Conn::open(&target(&router, "f00000", &tokens[0])).await?;
            let (mut lat, mut cold) = (Vec::new(), 0usize);
            while Instant::now() < until {
                let (o, f) = name(pick.next(n), orgs, n);
                let r = conn.call(&target(&router, &f, &tokens[o])).await?;
                lat.push(r.latency);
                cold += usize::from(r.cold);
            }
            anyhow::Ok((lat, cold))
        }));
    }
    let spread_started = Instant::now();
    let (mut spread, mut spread_cold) = (Vec::new(), 0);
    for t in tasks {
        let (lat, cold) = t.await??;
        spread.extend(lat);
        spread_cold += cold;
    }
    let spread_rps = spread.len() as f64 / spread_started.elapsed().as_secs_f64();
    spread.sort();
    let after_spread_rss = rss(lazy);
    let loaded = worker_metric(lazy, "reactor_wasm_loaded_deployments").await;
    let unloaded = worker_metric(lazy, "reactor_wasm_unloaded_for_budget_total").await;

    let pct = |v: &[Duration], p| percentile(v, p);
    println!(
        "| {} WASM functions, {} orgs, 1 worker, {} routers | |",
        a.functions, a.orgs, a.routers
    );
    println!("|---|---|");
    println!(
        "| deploy (create, upload, ready, promote), {} at once | {:.1} s, {:.0} functions/s; each p50 {:.1} / p99 {:.1} ms |",
        a.deploy_concurrency,
        deploy_secs,
        a.functions as f64 / deploy_secs,
        pct(&deploy_times, 0.5),
        pct(&deploy_times, 0.99)
    );
    println!(
        "| RSS at start: control plane / router / worker | {:.0} / {:.0} / {:.0} MiB |",
        started_rss.0, started_rss.1, started_rss.2
    );
    println!(
        "| RSS after the deploys: control plane (peak) / router / worker | {:.0} ({:.0}) / {:.0} / {:.0} MiB |",
        deployed_rss.0, cp_peak, deployed_rss.1, deployed_rss.2
    );
    println!(
        "| routing table: functions, encoded size | {table_functions}, {:.2} MiB |",
        table_bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "| routing table to a new gRPC subscriber | {:.0} ms |",
        table_in.as_secs_f64() * 1e3
    );
    println!(
        "| {} new routers started at once: serving the whole table, first / last | {:.0} / {:.0} ms |",
        routers.len(),
        pct(&router_ready, 0.0),
        pct(&router_ready, 1.0)
    );
    println!(
        "| a promote: returned / served by all {} routers | {:.1} / {:.1} ms |",
        all_routers.len(),
        promote_returned.as_secs_f64() * 1e3,
        all_seen.as_secs_f64() * 1e3
    );
    println!(
        "| RSS of each new router (min / max) | {:.0} / {:.0} MiB |",
        routers_rss.iter().copied().fold(f64::INFINITY, f64::min),
        routers_rss.iter().copied().fold(0.0, f64::max)
    );
    println!("| lazy worker: RSS idle (nothing loaded) | {idle_rss:.0} MiB |");
    println!(
        "| first request of a function never invoked ({} functions, {} reported cold), p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        firsts.len(),
        firsts_cold,
        pct(&firsts, 0.5),
        pct(&firsts, 0.99),
        pct(&firsts, 1.0)
    );
    println!("| lazy worker: RSS after those | {after_firsts_rss:.0} MiB |");
    println!(
        "| load over all functions, c={}: requests/s, p50 / p99 | {:.0}, {:.2} / {:.2} ms ({} of {} cold) |",
        a.concurrency,
        spread_rps,
        pct(&spread, 0.5),
        pct(&spread, 0.99),
        spread_cold,
        spread.len()
    );
    println!(
        "| lazy worker after that load: RSS, deployments loaded, unloaded for the budget | {after_spread_rss:.0} MiB, {loaded}, {unloaded} |"
    );
    for r in routers {
        tokio::task::spawn_blocking(move || r.stop()).await?;
    }
    Ok(())
}

/// A value of the worker's `/metrics` (the split test services take the metrics token).
async fn worker_metric(worker: &Service, name: &str) -> String {
    let url = worker.url_after("listening: ");
    let text = async {
        reqwest::Client::new()
            .get(format!("{url}/metrics"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }
    .await
    .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or("?")
        .to_string()
}
