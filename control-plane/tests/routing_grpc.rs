//! The control plane's routing stream over real gRPC, followed by a real router.

use reactor_api::config::FunctionsConfig;
use reactor_api::{Runtime, Runtimes};
use reactor_control_plane::store::SqliteStore;
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, grpc};
use reactor_data_plane::{ControlPlaneEndpoint, DataPlane, follow_control_plane};
use reactor_proto::routing::WatchRequest;
use reactor_proto::routing::routing_service_client::RoutingServiceClient;
use reactor_storage::LocalStorage;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::wrappers::TcpListenerStream;

const TOKEN: &str = "internal-token-for-tests";

#[tokio::test(flavor = "multi_thread")]
async fn changes_reach_a_router_over_grpc_and_strangers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("reactor.db"))
            .await
            .expect("store"),
    );
    let storage = Arc::new(
        LocalStorage::open(dir.path().join("storage"))
            .await
            .expect("storage"),
    );
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store,
        storage,
        runtimes: Runtimes::new(),
    })
    .await
    .expect("control plane");
    let boot = cp.bootstrap("acme", None, None).await.expect("bootstrap");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = grpc::routing_service(cp.clone(), TOKEN.into());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
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
