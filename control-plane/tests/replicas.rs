//! Two control-plane replicas on one PostgreSQL database: a change made through one
//! reaches a router that follows the other (LISTEN/NOTIFY, with a poll behind it), and
//! both stream the same versions.

use reactor_api::Runtime;
use reactor_api::Runtimes;
use reactor_api::config::FunctionsConfig;
use reactor_control_plane::backends::Backends;
use reactor_control_plane::test_support::TestDatabase;
use reactor_control_plane::workers::WorkerTiming;
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, grpc};
use reactor_data_plane::{ControlPlaneEndpoint, DataPlane, follow_control_plane};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::TcpListenerStream;

const TOKEN: &str = "internal-token-for-tests";

fn admin_url() -> String {
    std::env::var("REACTOR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn replica(config: &FunctionsConfig) -> Arc<ControlPlane> {
    let b = Backends::open(config).await.expect("backends");
    ControlPlane::start(ControlPlaneOptions {
        config: config.clone(),
        store: b.store,
        storage: b.storage,
        runtimes: Default::default(),
        worker_timing: WorkerTiming::default(),
        remote_workers: None,
        env: b.env,
        logs: b.logs,
    })
    .await
    .expect("control plane")
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
    let db = TestDatabase::create(&admin_url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        database_url: Some(db.url.clone()),
        ..Default::default()
    };
    let a = replica(&config).await;
    let boot = a.bootstrap("acme", None, None).await.expect("bootstrap");
    let b = replica(&config).await;
    let on_a = router(serve_routing(&a).await, "r-a");
    let on_b = router(serve_routing(&b).await, "r-b");
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
    assert!(max < Duration::from_millis(250), "max {max:?}");

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
    a.close();
    b.close();
    db.drop_now().await;
}
