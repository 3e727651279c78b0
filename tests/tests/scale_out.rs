//! The scale-out topology of `docker-compose.yml` (control plane, two routers, two WASM
//! workers, one Bun worker; PostgreSQL, Redis and an S3-compatible server), started as
//! processes on loopback with the compose file's commands and environment. Under a steady
//! load through both routers it loses a worker, a router and the control plane in turn
//! (SIGKILL, as a dying machine) and brings each back, and checks what the platform
//! promises: only requests in flight at a kill fail, each with a clear code; routers
//! serve while the control plane is away; a promote made after it returns reaches every
//! router; the global `max_concurrency` holds across routers. Figures are printed
//! (`cargo test --release -p reactor-tests --test scale_out -- --nocapture`).

use reactor_tests::topology::Topology;
use reactor_tests::{bun_probe_bundle, wasm_probe_bundle};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    /// An answer other than 200, with its error code.
    Http {
        status: u16,
        code: String,
    },
    /// Sent, then the connection broke (the router died with it in flight).
    Broken(String),
}

#[derive(Clone, Debug)]
struct Sample {
    started: Instant,
    ended: Instant,
    path: String,
    outcome: Outcome,
}

/// Bounded steady load: `tasks` loops, each sending one request at a time and pausing
/// `pause` between, alternating the two routers as a round-robin balancer would. A
/// connection refused (nothing sent) goes to the other router, as the balancer's
/// `proxy_next_upstream error` does.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    rerouted: Arc<AtomicUsize>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        routers: [String; 2],
        token: &str,
        org: &str,
        paths: Vec<String>,
        tasks: usize,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let rerouted = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (stop, samples, rerouted) = (stop.clone(), samples.clone(), rerouted.clone());
            let (routers, paths) = (routers.clone(), paths.clone());
            let (token, org) = (token.to_string(), org.to_string());
            handles.push(tokio::spawn(async move {
                // No idle connections: each request opens its own, so a dead router shows
                // as a refused connection rather than a stale pooled one.
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("client");
                let mut n = t;
                while !stop.load(Ordering::Acquire) {
                    let path = paths[n % paths.len()].clone();
                    let first = n % 2;
                    n += 1;
                    let started = Instant::now();
                    let mut outcome = None;
                    for attempt in 0..2 {
                        let router = &routers[(first + attempt) % 2];
                        let sent = client
                            .get(format!("{router}{path}"))
                            .bearer_auth(&token)
                            .header("X-Reactor-Org", &org)
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status() == 200 => {
                                outcome = Some(match r.bytes().await {
                                    Ok(_) => Outcome::Ok,
                                    Err(e) => Outcome::Broken(format!("body: {e}")),
                                });
                            }
                            Ok(r) => {
                                let status = r.status().as_u16();
                                let body: serde_json::Value = r.json().await.unwrap_or_default();
                                let code = body["error"]["code"].as_str().unwrap_or("").to_string();
                                outcome = Some(Outcome::Http { status, code });
                            }
                            Err(e) if e.is_connect() && attempt == 0 => {
                                rerouted.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Err(e) => outcome = Some(Outcome::Broken(format!("{e:?}"))),
                        }
                        break;
                    }
                    let outcome = outcome.unwrap_or(Outcome::Broken("no attempt".into()));
                    if let Ok(mut s) = samples.lock() {
                        s.push(Sample {
                            started,
                            ended: Instant::now(),
                            path,
                            outcome,
                        });
                    }
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        Load {
            stop,
            samples,
            rerouted,
            handles,
        }
    }

    async fn finish(self) -> (Vec<Sample>, usize) {
        self.stop.store(true, Ordering::Release);
        for h in self.handles {
            let _ = h.await;
        }
        let samples = self.samples.lock().expect("samples").clone();
        (samples, self.rerouted.load(Ordering::Relaxed))
    }
}

fn version_of(body: &serde_json::Value) -> String {
    body["version"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_survives_losing_a_worker_a_router_and_the_control_plane() {
    let t0 = Instant::now();
    let phase = |what: &str| println!("scale-out: {what} at {} ms", t0.elapsed().as_millis());
    let mut topo = Topology::start().await;
    phase("topology started");
    let admin = &topo.admin;
    let (token, org) = (admin.token.clone(), admin.org.clone());
    let routers = [topo.router_url("router-1"), topo.router_url("router-2")];
    let suffix = std::process::id();

    // Four WASM functions (so that both WASM workers are home to some), a Bun function
    // and a Bun function capped at 2 concurrent requests.
    let wasm = wasm_probe_bundle(None);
    phase("probe component built");
    let wasm_fns: Vec<String> = (0..4).map(|i| format!("wasm-{i}")).collect();
    for f in &wasm_fns {
        admin.deploy_live_runtime(f, "wasm", wasm.clone()).await;
    }
    admin
        .deploy_live_runtime("bun-a", "bun", bun_probe_bundle("v1", None))
        .await;
    let capped = format!("capped-{suffix}");
    let manifest = serde_json::json!({"concurrency": {"max_concurrency": 2}});
    admin
        .deploy_live_runtime(&capped, "bun", bun_probe_bundle("cap", Some(&manifest)))
        .await;

    phase("functions deployed");
    let http = reqwest::Client::new();
    let get = |router: &str, path: &str| {
        http.get(format!("{router}{path}"))
            .bearer_auth(&token)
            .header("X-Reactor-Org", &org)
    };

    // Every function answers through both routers.
    for router in &routers {
        for f in wasm_fns.iter().chain([&"bun-a".to_string()]) {
            let r = get(router, &format!("/fn/v1/{f}/"))
                .send()
                .await
                .expect("invoke");
            assert_eq!(
                r.status(),
                200,
                "{f} via {router}: {}\n{}",
                r.status(),
                topo.logs()
            );
            assert_eq!(r.headers()["x-reactor-function"], f.as_str());
        }
    }

    // The global cap: 8 at once, 4 through each router, against max_concurrency 2.
    let burst: Vec<_> = (0..8)
        .map(|i| get(&routers[i % 2], &format!("/fn/v1/{capped}/slow?ms=1500")).send())
        .collect();
    let answers = futures::future::join_all(burst).await;
    let mut ok = 0;
    let mut limited = 0;
    for a in answers {
        let a = a.expect("burst request");
        match a.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(a.headers()["retry-after"], "1");
                limited += 1;
            }
            other => panic!("unexpected {other} in the burst\n{}", topo.logs()),
        }
    }
    assert_eq!(
        (ok, limited),
        (2, 6),
        "the cap must hold across both routers"
    );
    println!(
        "global cap: 8 concurrent through 2 routers against max_concurrency 2: {ok} served, {limited} × 429"
    );

    // Steady load through both routers.
    let mut paths: Vec<String> = wasm_fns.iter().map(|f| format!("/fn/v1/{f}/")).collect();
    paths.push("/fn/v1/bun-a/".into());
    let load = Load::start(
        routers.clone(),
        &token,
        &org,
        paths,
        4,
        Duration::from_millis(20),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase("load running");

    // 1. A WASM worker dies, and comes back.
    let worker_killed = Instant::now();
    topo.kill("worker-wasm-1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    topo.start_service("worker-wasm-1");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. A router dies, and comes back.
    let router_killed = Instant::now();
    topo.kill("router-1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    topo.start_service("router-1");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. The control plane dies; routers serve on with the table they hold.
    let cp_killed = Instant::now();
    topo.kill("control-plane");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cp_back = Instant::now();
    topo.start_service("control-plane");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. A promote made after it returned reaches every router.
    let admin = &topo.admin;
    let v2 = admin
        .deploy_ready("bun-a", bun_probe_bundle("v2", None))
        .await;
    let promoted = Instant::now();
    admin.promote("bun-a", &v2).await;
    let promote_answered = promoted.elapsed();
    let mut reached = Vec::new();
    for router in &routers {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = get(router, "/fn/v1/bun-a/").send().await;
            if let Ok(r) = r
                && r.status() == 200
                && version_of(&r.json().await.unwrap_or_default()) == "v2"
            {
                reached.push(promoted.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the promote did not reach {router}\n{}",
                topo.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (samples, rerouted) = load.finish().await;
    phase("load finished");

    // The cap still holds after every restart.
    let burst: Vec<_> = (0..6)
        .map(|i| get(&routers[i % 2], &format!("/fn/v1/{capped}/slow?ms=1000")).send())
        .collect();
    let served = futures::future::join_all(burst)
        .await
        .into_iter()
        .filter(|a| a.as_ref().is_ok_and(|a| a.status() == 200))
        .count();
    assert_eq!(served, 2, "the cap after the restarts");

    // Only requests in flight at a kill may fail, and each says why.
    let kills = [
        ("worker-wasm-1", worker_killed),
        ("router-1", router_killed),
        ("control-plane", cp_killed),
    ];
    let slack = Duration::from_millis(250);
    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::Ok))
        .collect();
    for f in &failed {
        let in_flight = kills
            .iter()
            .any(|(_, at)| f.started <= *at + slack && f.ended >= *at);
        assert!(
            in_flight,
            "{} failed ({:?}) {} ms after the start of the run, not in flight at a kill\n{}",
            f.path,
            f.outcome,
            (f.started - samples[0].started).as_millis(),
            topo.logs()
        );
        match &f.outcome {
            Outcome::Http { status, code } => assert!(
                matches!(
                    (*status, code.as_str()),
                    (502, "worker_unavailable") | (503, "no_worker_available")
                ),
                "{} failed with {status} {code:?}: not a clear 502/503",
                f.path
            ),
            Outcome::Broken(reason) => {
                println!("scale-out: in flight at a kill, the connection broke: {reason}")
            }
            Outcome::Ok => unreachable!(),
        }
    }
    // While the control plane was away, every request was served.
    let cp_window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started > cp_killed + slack && s.ended < cp_back)
        .collect();
    assert!(
        cp_window.len() > 20,
        "the load ran while the control plane was away"
    );
    assert!(
        cp_window.iter().all(|s| matches!(s.outcome, Outcome::Ok)),
        "a request failed while the control plane was away"
    );
    // Requests that started after the worker's kill were served elsewhere: how long the
    // slowest of them took is the failover time seen by a client.
    let failover = samples
        .iter()
        .filter(|s| {
            s.started >= worker_killed && s.started < worker_killed + Duration::from_secs(1)
        })
        .map(|s| s.ended - s.started)
        .max()
        .unwrap_or_default();

    let per_kill: Vec<String> = kills
        .iter()
        .map(|(name, at)| {
            let n = failed
                .iter()
                .filter(|f| f.started <= *at + slack && f.ended >= *at)
                .count();
            format!("{name}: {n}")
        })
        .collect();
    println!(
        "scale-out: {} requests sent, {} failed ({}), {} rerouted by the client after a refused connection",
        samples.len(),
        failed.len(),
        per_kill.join(", "),
        rerouted
    );
    println!(
        "scale-out: slowest request in the second after the worker kill: {} ms; {} requests served while the control plane was away",
        failover.as_millis(),
        cp_window.len()
    );
    println!(
        "scale-out: promote answered in {} ms; v2 served by router-1 after {} ms, router-2 after {} ms",
        promote_answered.as_millis(),
        reached[0].as_millis(),
        reached[1].as_millis()
    );
    topo.shutdown().await;
    phase("topology stopped");
}
