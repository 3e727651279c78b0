//! Two control-plane replicas on one PostgreSQL database: a change made through one
//! reaches a router that follows the other (LISTEN/NOTIFY, with a poll behind it), both
//! stream the same versions, and promotes of one function through both take turns (the
//! database's lock).

use async_trait::async_trait;
use reactor_api::config::FunctionsConfig;
use reactor_api::model::DeploymentStatus;
use reactor_api::{
    Builder, Builders, DeploymentSpec, Release, Releases, Runtime, RuntimeRole, Runtimes,
};
use reactor_control_plane::backends::Backends;
use reactor_control_plane::store::{DeploymentRecord, Store};
use reactor_control_plane::test_support::TestDatabase;
use reactor_control_plane::workers::WorkerTiming;
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, RuntimeRoles, grpc};
use reactor_data_plane::{ControlPlaneEndpoint, DataPlane, follow_control_plane};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::TcpListenerStream;

const TOKEN: &str = "internal-token-for-tests";

fn admin_url() -> String {
    std::env::var("REACTOR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own on the test server, and the config every replica of a test
/// shares (one workdir: its local storage is the replicas' bundle store).
async fn shared() -> (TestDatabase, tempfile::TempDir, FunctionsConfig) {
    let db = TestDatabase::create(&admin_url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        database_url: Some(db.url.clone()),
        ..Default::default()
    };
    (db, dir, config)
}

async fn replica(config: &FunctionsConfig) -> Arc<ControlPlane> {
    replica_with(config, Default::default()).await.0
}

async fn replica_with(
    config: &FunctionsConfig,
    runtimes: RuntimeRoles,
) -> (Arc<ControlPlane>, Arc<dyn Store>) {
    let b = Backends::open(config).await.expect("backends");
    let cp = ControlPlane::start(ControlPlaneOptions {
        config: config.clone(),
        store: b.store.clone(),
        storage: b.storage,
        runtimes,
        worker_timing: WorkerTiming::default(),
        remote_workers: None,
        env: b.env,
        logs: b.logs,
    })
    .await
    .expect("control plane");
    (cp, b.store)
}

/// Serves the routing stream of `cp` on a loopback port; its URL.
async fn serve_routing(cp: &Arc<ControlPlane>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::routing_service(cp.clone(), TOKEN.into()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn router(url: String, id: &str) -> Arc<DataPlane> {
    let dp = DataPlane::new(Runtimes::new());
    follow_control_plane(
        dp.clone(),
        ControlPlaneEndpoint {
            url,
            internal_token: TOKEN.into(),
            router_id: id.into(),
            tls: None,
        },
    );
    dp
}

async fn reaches(dp: &DataPlane, version: u64, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if dp.version() >= version {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

fn has_function(cp: &ControlPlane, name: &str) -> bool {
    cp.routing()
        .current()
        .functions
        .iter()
        .any(|f| f.org == "acme" && f.name == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_through_one_replica_reaches_the_routers_of_another() {
    let (db, _dir, config) = shared().await;
    let a = replica(&config).await;
    let boot = a.bootstrap("acme", None, None).await.expect("bootstrap");
    let b = replica(&config).await;
    let on_a = router(serve_routing(&a).await, "r-a");
    let url_b = serve_routing(&b).await;
    let on_b = router(url_b.clone(), "r-b");
    let caller = b
        .authenticate(Some(&format!("Bearer {}", boot.token)), Some("acme"))
        .await
        .expect("the token made through a works on b");

    // Both routers hold a table first (a replica just started gives workers the time to
    // register again before it streams).
    for (dp, cp) in [(&on_a, &a), (&on_b, &b)] {
        let version = cp.routing().current().version;
        assert!(
            reaches(dp, version, Duration::from_secs(10))
                .await
                .is_some(),
            "a router got its first table"
        );
    }

    // Changes through b, each timed until the router following a holds its version.
    let mut took = Vec::new();
    for i in 0..20 {
        let name = format!("f{i}");
        b.create_function(&caller, &name, Runtime::Wasm)
            .await
            .expect("create");
        let version = b.routing().current().version;
        let arrived = reaches(&on_a, version, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("version {version} never reached the router on a"));
        took.push(arrived);
        assert!(has_function(&a, &name), "a's table holds {name}");
        assert!(
            reaches(&on_b, version, Duration::from_secs(5))
                .await
                .is_some(),
            "the router on b"
        );
    }
    took.sort();
    let p50 = took[took.len() / 2];
    let max = took[took.len() - 1];
    eprintln!("a change through b reached the router on a: p50 {p50:?}, max {max:?}");
    // Heard of (LISTEN), not found by the once-a-second poll.
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}");
    assert!(max < Duration::from_secs(1), "max {max:?}");

    // A change through a reaches b's router too, and both hold the same version after.
    b.delete_function(&caller, "f0")
        .await
        .expect("delete through b");
    let caller_a = a
        .authenticate(Some(&format!("Bearer {}", boot.token)), Some("acme"))
        .await
        .expect("caller on a");
    a.create_function(&caller_a, "from-a", Runtime::Wasm)
        .await
        .expect("create through a");
    let version = a.routing().current().version;
    assert!(
        reaches(&on_b, version, Duration::from_secs(5))
            .await
            .is_some(),
        "a's change reached the router on b"
    );
    assert!(has_function(&b, "from-a"));
    assert!(!has_function(&a, "f0") && !has_function(&b, "f0"));
    assert_eq!(
        a.routing().current().version,
        b.routing().current().version,
        "both replicas hold the database's version"
    );
    // A router that comes over from another replica with the version this one holds gets
    // this one's table whole (the same version may differ between replicas).
    let mut watch = reactor_proto::routing::routing_service_client::RoutingServiceClient::new(
        tonic::transport::Endpoint::from_shared(url_b.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    );
    let mut req = tonic::Request::new(reactor_proto::routing::WatchRequest {
        router_id: "r-moved".into(),
        known_version: b.routing().current().version,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    let first = watch
        .watch(req)
        .await
        .expect("watch")
        .into_inner()
        .message()
        .await
        .expect("message")
        .expect("an update");
    assert!(first.reset, "a snapshot first");
    assert_eq!(first.version, b.routing().current().version);
    a.close();
    b.close();
    db.drop_now().await;
}

/// The release step of both replicas: records every `go_live` and holds the first one
/// until opened, as a slow release (Lambda's AWS calls) would.
struct Gate {
    calls: Mutex<Vec<String>>,
    open: tokio::sync::watch::Sender<bool>,
}

impl RuntimeRole for Gate {
    fn runtime(&self) -> Runtime {
        Runtime::Wasm
    }
}

#[async_trait]
impl Release for Gate {
    async fn go_live(&self, spec: &DeploymentSpec) -> Result<(), String> {
        let first = {
            let mut calls = self.calls.lock().expect("calls");
            calls.push(spec.deployment_id.clone());
            calls.len() == 1
        };
        if first {
            let _ = self.open.subscribe().wait_for(|o| *o).await;
        }
        Ok(())
    }
}

/// Promote needs a builder for the runtime; the deployments here are recorded ready.
struct NoBuild;

impl RuntimeRole for NoBuild {
    fn runtime(&self) -> Runtime {
        Runtime::Wasm
    }
}

#[async_trait]
impl Builder for NoBuild {
    async fn build(&self, _spec: &DeploymentSpec, _dir: &Path) -> Result<(), String> {
        Err("nothing is built in this test".into())
    }
}

async fn ready(store: &dyn Store, function: &str, id: &str) {
    store
        .insert_deployment(&DeploymentRecord {
            id: id.into(),
            org: "acme".into(),
            function: function.into(),
            status: DeploymentStatus::Ready,
            error: None,
            sha256: "0".repeat(64),
            size_bytes: 1,
            entrypoint: "main.wasm".into(),
            bundle_key: format!("acme/{function}/{id}.tar.gz"),
            timeout_ms: 1000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
            created_at: "2026-12-08T00:00:00.000Z".into(),
            policy: None,
            calls: None,
            interceptors: None,
            pool: None,
            contract: None,
        })
        .await
        .expect("deployment");
}

/// Two promotes of one function through two replicas at once: the second waits for the
/// first (the database's lock, not a process's), one deployment ends live, and each
/// replica's record of its promote names the one before it.
#[tokio::test(flavor = "multi_thread")]
async fn promotes_of_one_function_through_two_replicas_take_turns() {
    let (db, _dir, config) = shared().await;
    let gate = Arc::new(Gate {
        calls: Mutex::new(Vec::new()),
        open: tokio::sync::watch::channel(false).0,
    });
    let roles = || RuntimeRoles {
        builders: Builders::new().with(Arc::new(NoBuild)),
        releases: Releases::new().with(gate.clone()),
        workers: Runtimes::new(),
    };
    let (a, store) = replica_with(&config, roles()).await;
    let boot = a.bootstrap("acme", None, None).await.expect("bootstrap");
    let (b, _) = replica_with(&config, roles()).await;
    let caller = |cp: Arc<ControlPlane>| {
        let token = boot.token.clone();
        async move {
            cp.authenticate(Some(&format!("Bearer {token}")), Some("acme"))
                .await
                .expect("caller")
        }
    };
    let (on_a, on_b) = (caller(a.clone()).await, caller(b.clone()).await);
    a.create_function(&on_a, "f", Runtime::Wasm)
        .await
        .expect("create");
    ready(&*store, "f", "dep_1").await;
    ready(&*store, "f", "dep_2").await;

    let first = tokio::spawn({
        let (a, on_a) = (a.clone(), on_a.clone());
        async move { a.promote(&on_a, "f", Some("dep_1")).await }
    });
    let calls = || gate.calls.lock().expect("calls").clone();
    let started = Instant::now();
    while calls().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no go_live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::spawn({
        let (b, on_b) = (b.clone(), on_b.clone());
        async move { b.promote(&on_b, "f", Some("dep_2")).await }
    });
    // b's promote waits for a's, held in its release step.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        calls(),
        ["dep_1"],
        "the second promote went on beside the first"
    );
    assert!(!second.is_finished());
    gate.open.send_replace(true);
    first.await.expect("join").expect("promote through a");
    second.await.expect("join").expect("promote through b");
    assert_eq!(calls(), ["dep_1", "dep_2"]);

    let live = store
        .get_function("acme", "f")
        .await
        .expect("read")
        .expect("function")
        .live_deployment_id;
    assert_eq!(live.as_deref(), Some("dep_2"));
    let said = |cp: &ControlPlane| {
        cp.logs()
            .history("acme", "f", None)
            .iter()
            .map(|e| e.message.clone())
            .filter(|m| m.starts_with("promoted"))
            .collect::<Vec<_>>()
    };
    assert_eq!(said(&a), ["promoted: dep_1 is live (was none)"]);
    assert_eq!(said(&b), ["promoted: dep_2 is live (was dep_1)"]);
    // Both replicas route to it.
    let started = Instant::now();
    while [&a, &b].iter().any(|cp| {
        cp.routing()
            .current()
            .functions
            .iter()
            .find(|f| f.name == "f")
            .and_then(|f| f.live.as_ref())
            .map(|l| l.deployment_id.as_str())
            != Some("dep_2")
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a replica's table"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    a.close();
    b.close();
    db.drop_now().await;
}

const WORKER_TOKEN: &str = "worker-token-for-tests";
const SECRET: &str = "w1-secret-0123456789abcdef0123456789";

fn as_worker<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {WORKER_TOKEN}").parse().expect("header"),
    );
    req
}

/// Serves the routing stream and the worker registry of `cp`; its URL.
async fn serve_all(cp: &Arc<ControlPlane>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::routing_service(cp.clone(), TOKEN.into()))
            .add_service(grpc::worker_registry(
                cp.clone(),
                TOKEN.into(),
                WORKER_TOKEN.into(),
            ))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// Waits until `listed` says `want` of the router's and the replica's workers.
async fn workers_become(cp: &ControlPlane, want: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let ids: Vec<String> = cp
            .routing()
            .current()
            .workers
            .iter()
            .map(|w| w.worker_id.clone())
            .collect();
        if ids == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "workers {ids:?}, not {want:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A worker registered through one replica is in every replica's table (and so every
/// router's), may heartbeat through another, keeps its id from a second worker whichever
/// replica that asks, and leaves every table when it stops heartbeating.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_registered_through_one_replica_is_in_every_table() {
    use reactor_proto::routing::worker_registry_client::WorkerRegistryClient;
    use reactor_proto::routing::{HeartbeatRequest, RegisterRequest};
    let (db, _dir, config) = shared().await;
    let a = replica(&config).await;
    let b = replica(&config).await;
    let (url_a, url_b) = (serve_all(&a).await, serve_all(&b).await);
    let on_b = router(url_b.clone(), "r-b");
    let client = |url: String| async move {
        WorkerRegistryClient::new(
            tonic::transport::Endpoint::from_shared(url)
                .expect("url")
                .connect()
                .await
                .expect("connect"),
        )
    };
    let (mut to_a, mut to_b) = (client(url_a).await, client(url_b).await);
    let register = |secret: &str| {
        as_worker(RegisterRequest {
            worker_id: "w1".into(),
            runtime: "wasm".into(),
            url: "http://127.0.0.1:7101".into(),
            worker_secret: secret.into(),
        })
    };
    to_a.register(register(SECRET)).await.expect("register");
    let took = workers_become(&b, &["w1"], Duration::from_secs(2)).await;
    eprintln!("a worker registered through a was in b's table after {took:?}");
    assert!(
        reaches(&on_b, b.routing().current().version, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert_eq!(
        on_b.version(),
        b.routing().current().version,
        "the router on b holds b's table"
    );
    // Its id is its own on b too.
    let taken = to_b
        .register(register("another-secret-0123456789abcdef0123"))
        .await;
    assert_eq!(
        taken.expect_err("taken id").code(),
        tonic::Code::AlreadyExists
    );

    // Heartbeats through b keep it in both tables past several TTLs.
    let beat = |secret: &str| {
        as_worker(HeartbeatRequest {
            worker_id: "w1".into(),
            worker_secret: secret.into(),
        })
    };
    let until = Instant::now() + WorkerTiming::default().ttl * 3;
    while Instant::now() < until {
        let known = to_b.heartbeat(beat(SECRET)).await.expect("heartbeat");
        assert!(known.into_inner().known, "b knows the worker");
        tokio::time::sleep(WorkerTiming::default().heartbeat_interval).await;
    }
    for cp in [&a, &b] {
        workers_become(cp, &["w1"], Duration::from_millis(1)).await;
    }
    assert!(
        !to_a
            .heartbeat(beat("guessed-secret-0123456789abcdef0123"))
            .await
            .expect("heartbeat")
            .into_inner()
            .known
    );

    // Silent: it leaves both tables.
    let started = Instant::now();
    for cp in [&a, &b] {
        workers_become(cp, &[], Duration::from_secs(3)).await;
    }
    eprintln!(
        "a silent worker left both tables after {:?}",
        started.elapsed()
    );
    a.close();
    b.close();
    db.drop_now().await;
}

/// A lease is held by one replica at a time; a holder that stops renewing (killed) is
/// taken over once the lease expires, one that shuts down hands it over at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_held_once_and_taken_over_when_its_holder_stops() {
    use reactor_control_plane::lease::Lease;
    let (db, _dir, config) = shared().await;
    let store = Backends::open(&config).await.expect("backends").store;
    let ttl = Duration::from_millis(600);
    // A holder that dies at once: it took the lease and never renews it.
    assert_eq!(
        store.take_lease("t", "ghost", ttl).await.expect("take"),
        Some(true)
    );
    let held_until = Instant::now() + ttl;
    let mut stops = Vec::new();
    let mut leases = Vec::new();
    for _ in 0..2 {
        let (stop, closed) = tokio::sync::oneshot::channel::<()>();
        stops.push(Some(stop));
        leases.push(
            Lease::spawn(store.clone(), "t", ttl, async move {
                let _ = closed.await;
            })
            .await,
        );
    }
    let holders = |leases: &[Lease]| leases.iter().filter(|l| l.held()).count();
    assert_eq!(holders(&leases), 0, "the ghost holds it");
    let started = Instant::now();
    while holders(&leases) == 0 {
        assert!(started.elapsed() < ttl * 3, "nobody took the lease over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(Instant::now() >= held_until, "taken before it expired");
    eprintln!(
        "a dead holder's lease was taken over {:?} after it expired (ttl {ttl:?})",
        Instant::now() - held_until
    );
    // Held once, over several renewals.
    let holder = leases.iter().position(Lease::held).expect("a holder");
    let until = Instant::now() + ttl * 3;
    while Instant::now() < until {
        assert!(leases[holder].held() && holders(&leases) == 1, "held once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The holder shuts down: the other takes it at its next try, not after the TTL.
    if let Some(stop) = stops[holder].take() {
        let _ = stop.send(());
    }
    let other = 1 - holder;
    let started = Instant::now();
    while !leases[other].held() {
        assert!(started.elapsed() < ttl, "not handed over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!leases[holder].held());
    db.drop_now().await;
}

/// Replicas starting together each bootstrap the same org with the operator's token:
/// all of them start (one creates, the others find what it created).
#[tokio::test(flavor = "multi_thread")]
async fn replicas_bootstrap_the_same_org_at_once() {
    let (db, _dir, config) = shared().await;
    let replicas = [
        replica(&config).await,
        replica(&config).await,
        replica(&config).await,
    ];
    let token = "rt_operator-token-0123456789abcdef0123456789";
    let started = replicas
        .iter()
        .map(|cp| cp.bootstrap("acme", Some(token), None));
    for result in futures::future::join_all(started).await {
        let boot = result.expect("every replica bootstraps");
        assert!(!boot.generated);
    }
    for cp in &replicas {
        cp.authenticate(Some(&format!("Bearer {token}")), Some("acme"))
            .await
            .expect("the token works on every replica");
        cp.close();
    }
    db.drop_now().await;
}
