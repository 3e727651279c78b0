//! The control plane's routing stream over real gRPC, followed by a real router.

use reactor_api::config::FunctionsConfig;
use reactor_api::{Runtime, Runtimes};
use reactor_control_plane::backends::Backends;
use reactor_control_plane::workers::WorkerTiming;
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, grpc};
use reactor_data_plane::{ControlPlaneEndpoint, DataPlane, follow_control_plane};
use reactor_proto::routing::WatchRequest;
use reactor_proto::routing::routing_service_client::RoutingServiceClient;
use reactor_proto::routing::worker_registry_client::WorkerRegistryClient;
use reactor_proto::routing::{
    DeploymentEnvRequest, DeregisterRequest, HeartbeatRequest, RegisterRequest,
};
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
