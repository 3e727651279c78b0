//! The routing stream at scale and its bounds: a table of 100,000 functions and 100,000
//! tokens across 100 orgs (far past the 4 MiB a single gRPC message may carry) reaches a
//! router over real gRPC in bounded messages, and a change after it arrives as a delta;
//! what one org may add to the table is bounded at the admin API.

use reactor_api::config::FunctionsConfig;
use reactor_api::model::Role;
use reactor_api::{ErrorCode, Runtime, Runtimes};
use reactor_control_plane::backends::Backends;
use reactor_control_plane::store::{FunctionRecord, OrgRecord, TokenRecord};
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, grpc};
use reactor_data_plane::{ControlPlaneEndpoint, DataPlane, follow_control_plane};
use reactor_proto::routing::RoutingTable;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::TcpListenerStream;

const TOKEN: &str = "3f1c9a7be2d04856a1c3e5f7092b4d6e8a0c2e4f6b8d0f1a3c5e7092b4d6e8a0";
const ORGS: usize = 100;
const PER_ORG: usize = 1000;

async fn start(
    config: FunctionsConfig,
) -> (
    Arc<ControlPlane>,
    Arc<dyn reactor_control_plane::store::Store>,
) {
    let b = Backends::open(&config).await.expect("backends");
    let store = b.store.clone();
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store: b.store,
        storage: b.storage,
        runtimes: Default::default(),
        worker_timing: Default::default(),
        remote_workers: None,
        env: b.env,
        logs: b.logs,
    })
    .await
    .expect("control plane");
    (cp, store)
}

async fn serve(cp: &Arc<ControlPlane>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::routing_service(cp.clone(), TOKEN.into()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn endpoint(addr: std::net::SocketAddr, id: &str) -> ControlPlaneEndpoint {
    ControlPlaneEndpoint {
        url: format!("http://{addr}"),
        internal_token: TOKEN.into(),
        router_id: id.into(),
        tls: None,
    }
}

async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_100000_functions_and_tokens_streams_and_changes_arrive_as_deltas() {
    // 200,000 rows: in memory where the machine has a tmpfs, so the test is not a disk test.
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let (cp, store) = start(FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await;
    let boot = cp.bootstrap("acme", None, None).await.expect("bootstrap");

    let t0 = Instant::now();
    for o in 0..ORGS {
        let org = format!("org-{o}");
        store
            .create_org(&OrgRecord {
                name: org.clone(),
                platform: false,
                created_at: "2026-12-06T00:00:00Z".into(),
            })
            .await
            .expect("org");
        for i in 0..PER_ORG {
            store
                .create_function(&FunctionRecord {
                    org: org.clone(),
                    name: format!("function-{i}"),
                    runtime: Runtime::Wasm,
                    live_deployment_id: None,
                    created_at: "2026-12-06T00:00:00Z".into(),
                    policy: None,
                })
                .await
                .expect("function");
            store
                .insert_token(&TokenRecord {
                    id: format!("tok_{o}_{i}"),
                    org: org.clone(),
                    role: Role::Invoker,
                    name: None,
                    sha256: reactor_api::token::token_hash(&format!("secret-{o}-{i}")),
                    created_at: "2026-12-06T00:00:00Z".into(),
                })
                .await
                .expect("token");
        }
    }
    let inserted = t0.elapsed();
    let t1 = Instant::now();
    let version = cp.routing().publish().await.expect("publish");
    let published = t1.elapsed();
    let table = cp.routing().current();
    let bytes = prost::Message::encoded_len(&*table);
    assert!(
        bytes > 8 << 20,
        "the table is {bytes} bytes: past 4 MiB twice over"
    );

    let addr = serve(&cp).await;
    // A router, and a plain follower that shows what the stream assembled.
    let dp = DataPlane::new(Runtimes::new());
    let router = follow_control_plane(dp.clone(), endpoint(addr, "r1"));
    let seen: Arc<Mutex<Option<RoutingTable>>> = Arc::default();
    let keep = seen.clone();
    let follower = reactor_proto::client::watch_routing(endpoint(addr, "f1"), move |t| {
        if let Ok(mut s) = keep.lock() {
            *s = Some(t.clone());
        }
    });
    let snapshot = until(
        "the snapshot reached the router",
        Duration::from_secs(60),
        || dp.version() >= version,
    )
    .await;
    until(
        "the follower assembled the snapshot",
        Duration::from_secs(60),
        || seen.lock().ok().and_then(|s| s.as_ref().map(|t| t.version)) == Some(version),
    )
    .await;
    {
        let s = seen.lock().expect("lock");
        let t = s.as_ref().expect("a table");
        assert_eq!(t.functions.len(), ORGS * PER_ORG);
        assert_eq!(
            t.tokens.len(),
            ORGS * PER_ORG + 1,
            "and the bootstrap admin's"
        );
        assert!(
            t.functions
                .iter()
                .any(|f| f.org == "org-99" && f.name == "function-999")
        );
    }

    // A change: one function created by an org's admin arrives as a small delta.
    let caller = cp
        .authenticate(Some(&format!("Bearer {}", boot.token)), Some("acme"))
        .await
        .expect("caller");
    let before = Instant::now();
    cp.create_function(&caller, "late", Runtime::Wasm)
        .await
        .expect("create");
    let after = cp.routing().current().version;
    let delta = until(
        "the delta reached the router",
        Duration::from_secs(30),
        || dp.version() >= after,
    )
    .await
    .max(before.elapsed());
    until(
        "the follower applied the delta",
        Duration::from_secs(30),
        || seen.lock().ok().and_then(|s| s.as_ref().map(|t| t.version)) == Some(after),
    )
    .await;
    {
        let s = seen.lock().expect("lock");
        let t = s.as_ref().expect("a table");
        assert_eq!(t.functions.len(), ORGS * PER_ORG + 1);
        assert!(
            t.functions
                .iter()
                .any(|f| f.org == "acme" && f.name == "late")
        );
    }
    eprintln!(
        "routing at scale: {} functions, {} tokens, {:.1} MiB as one table; inserted in {:?}, \
         published in {:?}, snapshot to a router in {:?}, a change in {:?}",
        ORGS * PER_ORG,
        ORGS * PER_ORG + 1,
        bytes as f64 / (1 << 20) as f64,
        inserted,
        published,
        snapshot,
        delta
    );
    router.abort();
    follower.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_org_cannot_grow_the_table_past_its_quotas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cp, _) = start(FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        max_functions_per_org: 3,
        max_tokens_per_org: 2,
        ..Default::default()
    })
    .await;
    let boot = cp.bootstrap("acme", None, None).await.expect("bootstrap");
    let caller = cp
        .authenticate(Some(&format!("Bearer {}", boot.token)), Some("acme"))
        .await
        .expect("caller");

    // Policies: the reproduction's 1.87 MB policy is refused, the table unchanged.
    cp.create_function(&caller, "f1", Runtime::Wasm)
        .await
        .expect("create");
    let before = cp.routing().current().version;
    // 64 rules of 3,000-character conditions: valid, and about 190 KB as JSON.
    let rules: Vec<serde_json::Value> = (0..64)
        .map(|i| {
            serde_json::json!({
                "name": format!("r{i}"),
                "effect": "allow",
                "when": format!("request.method == '{}'", "A".repeat(3000)),
            })
        })
        .collect();
    let huge: reactor_policy::Policy =
        serde_json::from_value(serde_json::json!({"default": "deny", "rules": rules}))
            .expect("a policy");
    let err = cp
        .set_policy(&caller, "f1", Some(huge))
        .await
        .expect_err("too large");
    assert_eq!(err.code, ErrorCode::InvalidInput, "{}", err.message);
    assert!(err.message.contains("policy_max_bytes"), "{}", err.message);
    assert_eq!(cp.routing().current().version, before, "nothing published");

    // Functions: the fourth is refused with quota_exceeded, nothing created.
    cp.create_function(&caller, "f2", Runtime::Wasm)
        .await
        .expect("create");
    cp.create_function(&caller, "f3", Runtime::Wasm)
        .await
        .expect("create");
    let err = cp
        .create_function(&caller, "f4", Runtime::Wasm)
        .await
        .expect_err("over quota");
    assert_eq!(err.code, ErrorCode::QuotaExceeded, "{}", err.message);
    assert_eq!(err.code.status().as_u16(), 429);
    assert!(
        err.message.contains("max_functions_per_org"),
        "{}",
        err.message
    );
    assert_eq!(cp.list_functions(&caller).await.expect("list").len(), 3);

    // Tokens: the bootstrap admin's and one more, then quota_exceeded.
    cp.create_token(&caller, Role::Invoker, Some("one"))
        .await
        .expect("token");
    let err = cp
        .create_token(&caller, Role::Invoker, Some("two"))
        .await
        .expect_err("over quota");
    assert_eq!(err.code, ErrorCode::QuotaExceeded, "{}", err.message);
}
