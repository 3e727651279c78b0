//! The control plane's routing stream over real gRPC, followed by a real router.

use reactor_api::config::FunctionsConfig;
use reactor_api::model::{DeploymentStatus, SetEnv};
use reactor_api::{Runtime, Runtimes};
use reactor_control_plane::backends::Backends;
use reactor_control_plane::store::DeploymentRecord;
use reactor_control_plane::workers::WorkerTiming;
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, grpc};
use reactor_data_plane::{ControlPlaneEndpoint, DataPlane, follow_control_plane};
use reactor_proto::routing::WatchRequest;
use reactor_proto::routing::routing_service_client::RoutingServiceClient;
use reactor_proto::routing::worker_registry_client::WorkerRegistryClient;
use reactor_proto::routing::{
    DeploymentEnvRequest, DeregisterRequest, HeartbeatRequest, RegisterRequest,
};
use reactor_worker_link::rendezvous::{ENV_CANDIDATES, rank};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::TcpListenerStream;

const TOKEN: &str = "internal-token-for-tests";
/// The workers' credential: routers (holding TOKEN) must not be able to act as workers.
const WORKER_TOKEN: &str = "worker-token-for-tests";
const W1_SECRET: &str = "w1-secret-0123456789abcdef0123456789";
const GUESSED: &str = "guessed-secret-0123456789abcdef01234567";

fn timing() -> WorkerTiming {
    WorkerTiming {
        heartbeat_interval: Duration::from_millis(100),
        ttl: Duration::from_millis(400),
    }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    bearer(msg, WORKER_TOKEN)
}

/// With the routers' token: what a router (or anyone who took one) holds.
fn as_router<T>(msg: T) -> tonic::Request<T> {
    bearer(msg, TOKEN)
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_a_router_over_grpc_and_strangers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let b = Backends::open(&config).await.expect("backends");
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store: b.store,
        storage: b.storage,
        runtimes: Default::default(),
        worker_timing: timing(),
        remote_workers: None,
        env: b.env,
        logs: b.logs,
    })
    .await
    .expect("control plane");
    let boot = cp.bootstrap("acme", None, None).await.expect("bootstrap");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = grpc::routing_service(cp.clone(), TOKEN.into());
    let registry = grpc::worker_registry(cp.clone(), TOKEN.into(), WORKER_TOKEN.into());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(registry)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let dp = DataPlane::new(Runtimes::new());
    let follower = follow_control_plane(
        dp.clone(),
        ControlPlaneEndpoint {
            url: format!("http://{addr}"),
            internal_token: TOKEN.into(),
            router_id: "r1".into(),
            tls: None,
        },
    );
    let caught_up = |want: u64| {
        let dp = dp.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if dp.version() >= want {
                    return Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        }
    };
    assert!(
        caught_up(cp.routing().current().version).await.is_some(),
        "snapshot on connect"
    );

    let caller = cp
        .authenticate(Some(&format!("Bearer {}", boot.token)), Some("acme"))
        .await
        .expect("caller");
    let before = Instant::now();
    cp.create_function(&caller, "hello", Runtime::Wasm)
        .await
        .expect("create");
    let arrived = caught_up(cp.routing().current().version)
        .await
        .expect("the change reached the router");
    assert!(
        arrived - before < Duration::from_secs(1),
        "{:?}",
        arrived - before
    );

    // A worker registers: the table lists it and the router gets that version.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut registry = WorkerRegistryClient::new(channel.clone());
    let reg = registry
        .register(authed(RegisterRequest {
            worker_id: "w1".into(),
            runtime: "wasm".into(),
            url: "http://127.0.0.1:7101".into(),
            worker_secret: W1_SECRET.into(),
        }))
        .await
        .expect("register")
        .into_inner();
    assert_eq!((reg.heartbeat_interval_ms, reg.ttl_ms), (100, 400));
    let listed = |cp: &ControlPlane| {
        cp.routing()
            .current()
            .workers
            .iter()
            .map(|w| w.worker_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&cp), ["w1"]);
    // Its id cannot be taken over with another secret while it lives, and only its own
    // secret gets a deployment's env (routers hold the token and see ids, not secrets).
    let takeover = registry
        .register(authed(RegisterRequest {
            worker_id: "w1".into(),
            runtime: "wasm".into(),
            url: "http://127.0.0.1:9999".into(),
            worker_secret: GUESSED.into(),
        }))
        .await;
    assert_eq!(
        takeover.expect_err("taken id").code(),
        tonic::Code::AlreadyExists
    );
    for (secret, code) in [
        (GUESSED, tonic::Code::PermissionDenied),
        ("", tonic::Code::PermissionDenied),
        (W1_SECRET, tonic::Code::NotFound),
    ] {
        let env = registry
            .deployment_env(authed(DeploymentEnvRequest {
                worker_id: "w1".into(),
                org: "acme".into(),
                function: "hello".into(),
                deployment_id: "dep_none".into(),
                worker_secret: secret.into(),
            }))
            .await;
        assert_eq!(env.expect_err("refused").code(), code, "secret {secret:?}");
    }
    // A router posing as a worker: its token registers nothing and gets no env, and
    // without the worker's secret nobody heartbeats or deregisters it.
    let posing = registry
        .register(as_router(RegisterRequest {
            worker_id: "w9".into(),
            runtime: "wasm".into(),
            url: "http://127.0.0.1:7109".into(),
            worker_secret: GUESSED.into(),
        }))
        .await;
    assert_eq!(
        posing.expect_err("a router is not a worker").code(),
        tonic::Code::Unauthenticated
    );
    let env = registry
        .deployment_env(as_router(DeploymentEnvRequest {
            worker_id: "w1".into(),
            org: "acme".into(),
            function: "hello".into(),
            deployment_id: "dep_none".into(),
            worker_secret: W1_SECRET.into(),
        }))
        .await;
    assert_eq!(
        env.expect_err("a router gets no env").code(),
        tonic::Code::Unauthenticated
    );
    let forged = registry
        .heartbeat(authed(HeartbeatRequest {
            worker_id: "w1".into(),
            worker_secret: GUESSED.into(),
        }))
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!forged.known, "a heartbeat with another secret is not w1's");
    registry
        .deregister(authed(DeregisterRequest {
            worker_id: "w1".into(),
            worker_secret: GUESSED.into(),
        }))
        .await
        .expect("deregister answers");
    assert_eq!(listed(&cp), ["w1"], "a stranger cannot take w1 out");
    let short = registry
        .register(authed(RegisterRequest {
            worker_id: "w8".into(),
            runtime: "wasm".into(),
            url: "http://127.0.0.1:7108".into(),
            worker_secret: "short".into(),
        }))
        .await;
    assert_eq!(
        short.expect_err("a short secret").code(),
        tonic::Code::InvalidArgument
    );

    let want = cp.routing().current().version;
    assert!(
        caught_up(want).await.is_some(),
        "router at {} of {want}",
        dp.version()
    );
    // Heartbeats keep it; silence removes it within the TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            registry
                .heartbeat(authed(HeartbeatRequest {
                    worker_id: "w1".into(),
                    worker_secret: W1_SECRET.into(),
                }))
                .await
                .expect("heartbeat")
                .into_inner()
                .known
        );
    }
    assert_eq!(listed(&cp), ["w1"]);
    let silent = Instant::now();
    while !listed(&cp).is_empty() {
        assert!(
            silent.elapsed() < Duration::from_secs(2),
            "a silent worker stayed in the table"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        silent.elapsed() >= Duration::from_millis(300),
        "removed before its TTL: {:?}",
        silent.elapsed()
    );
    assert!(
        !registry
            .heartbeat(authed(HeartbeatRequest {
                worker_id: "w1".into(),
                worker_secret: W1_SECRET.into(),
            }))
            .await
            .expect("heartbeat")
            .into_inner()
            .known
    );
    // Bad registrations and strangers are refused.
    let bad = registry
        .register(authed(RegisterRequest {
            worker_id: "w2".into(),
            runtime: "cobol".into(),
            url: "http://x:1".into(),
            worker_secret: String::new(),
        }))
        .await;
    assert_eq!(
        bad.expect_err("unknown runtime").code(),
        tonic::Code::InvalidArgument
    );
    let bad = registry
        .register(authed(RegisterRequest {
            worker_id: "w2".into(),
            runtime: "wasm".into(),
            url: "not a url".into(),
            worker_secret: String::new(),
        }))
        .await;
    assert_eq!(
        bad.expect_err("bad url").code(),
        tonic::Code::InvalidArgument
    );
    let stranger = registry
        .register(RegisterRequest {
            worker_id: "w3".into(),
            runtime: "wasm".into(),
            url: "http://127.0.0.1:1".into(),
            worker_secret: String::new(),
        })
        .await;
    assert_eq!(
        stranger.expect_err("no token").code(),
        tonic::Code::Unauthenticated
    );
    follower.abort();

    // Without the internal token, no table.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let status = RoutingServiceClient::new(channel)
        .watch(WatchRequest {
            router_id: "stranger".into(),
            known_version: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

/// A deployment's env (its decrypted secrets) goes only to the workers it is routed to:
/// the first ENV_CANDIDATES of its runtime in rendezvous order, not to every registered
/// worker; one of them leaving lets the next one in.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployments_env_goes_only_to_the_workers_it_is_routed_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let b = Backends::open(&config).await.expect("backends");
    let store = b.store.clone();
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store: b.store,
        storage: b.storage,
        runtimes: Default::default(),
        // No worker expires during the test.
        worker_timing: WorkerTiming {
            heartbeat_interval: Duration::from_secs(1),
            ttl: Duration::from_secs(600),
        },
        remote_workers: None,
        env: b.env,
        logs: b.logs,
    })
    .await
    .expect("control plane");
    let boot = cp.bootstrap("acme", None, None).await.expect("bootstrap");
    let caller = cp
        .authenticate(Some(&format!("Bearer {}", boot.token)), Some("acme"))
        .await
        .expect("caller");
    cp.create_function(&caller, "hello", Runtime::Wasm)
        .await
        .expect("create");
    cp.set_env(
        &caller,
        "hello",
        "API_KEY",
        SetEnv {
            value: "sk_routed_only".into(),
            secret: true,
        },
    )
    .await
    .expect("set env");
    // A deployment as a finished build records it; it pins the function's env.
    let deployment_id = "dep_routed";
    store
        .insert_deployment(&DeploymentRecord {
            id: deployment_id.into(),
            org: "acme".into(),
            function: "hello".into(),
            status: DeploymentStatus::Ready,
            error: None,
            sha256: "0".repeat(64),
            size_bytes: 1,
            entrypoint: "main.wasm".into(),
            bundle_key: format!("acme/hello/{deployment_id}.tar.gz"),
            timeout_ms: 1000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
            created_at: "2026-12-06T00:00:00.000Z".into(),
            policy: None,
            calls: None,
            interceptors: None,
            pool: None,
            contract: None,
        })
        .await
        .expect("deployment");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::worker_registry(
                cp.clone(),
                TOKEN.into(),
                WORKER_TOKEN.into(),
            ))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut registry = WorkerRegistryClient::new(channel);
    let workers: Vec<String> = (0..12).map(|i| format!("w{i:02}")).collect();
    let secret = |id: &str| format!("{id}-secret-0123456789abcdef0123456789");
    for (i, id) in workers.iter().enumerate() {
        registry
            .register(authed(RegisterRequest {
                worker_id: id.clone(),
                runtime: "wasm".into(),
                url: format!("http://127.0.0.1:{}", 7200 + i),
                worker_secret: secret(id),
            }))
            .await
            .expect("register");
    }
    let ask = |id: &str| {
        let mut registry = registry.clone();
        let req = authed(DeploymentEnvRequest {
            worker_id: id.into(),
            org: "acme".into(),
            function: "hello".into(),
            deployment_id: deployment_id.into(),
            worker_secret: secret(id),
        });
        async move { registry.deployment_env(req).await }
    };

    let ranked = rank(&workers, |id| id.as_str(), deployment_id);
    let routed = &ranked[..ENV_CANDIDATES];
    assert!(routed.len() < workers.len());
    for id in &workers {
        let answer = ask(id).await;
        if routed.contains(&id) {
            let env = answer
                .unwrap_or_else(|e| panic!("{id} is one it is routed to: {e}"))
                .into_inner();
            assert_eq!(
                env.env.get("API_KEY").map(String::as_str),
                Some("sk_routed_only"),
                "{id}"
            );
        } else {
            let status = answer.expect_err("not one it is routed to");
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{id}: {status:?}"
            );
            assert!(
                status.message().contains("not among the workers")
                    && status.message().contains(deployment_id),
                "{id}: {status:?}"
            );
        }
    }

    // Its home worker leaves: the next one in order is let in, the others stay as they were.
    let home = ranked[0];
    let next = ranked[ENV_CANDIDATES];
    assert_eq!(
        ask(next).await.expect_err("not yet").code(),
        tonic::Code::PermissionDenied
    );
    registry
        .clone()
        .deregister(authed(DeregisterRequest {
            worker_id: home.clone(),
            worker_secret: secret(home),
        }))
        .await
        .expect("deregister");
    let env = ask(next).await.expect("next in order").into_inner();
    assert_eq!(
        env.env.get("API_KEY").map(String::as_str),
        Some("sk_routed_only")
    );
    assert_eq!(
        ask(home).await.expect_err("gone").code(),
        tonic::Code::PermissionDenied
    );
    for id in &ranked[1..ENV_CANDIDATES] {
        ask(id).await.expect("still routed to");
    }
    for id in &ranked[ENV_CANDIDATES + 1..] {
        assert_eq!(
            ask(id).await.expect_err("still not routed to").code(),
            tonic::Code::PermissionDenied,
            "{id}"
        );
    }
    server.abort();
}
