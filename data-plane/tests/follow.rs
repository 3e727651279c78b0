//! The router follows a control plane over gRPC. The control plane here is a fake peer
//! that is a real tonic server on an ephemeral port, whose stream the test drives.

use reactor_api::Runtimes;
use reactor_data_plane::{ControlPlaneEndpoint, DataPlane, follow_control_plane};
use reactor_proto::routing::routing_service_server::{RoutingService, RoutingServiceServer};
use reactor_proto::routing::{RoutingTable, RoutingUpdate, WatchRequest, WorkerSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, WatchStream};
use tonic::{Request, Response, Status};

const TOKEN: &str = "internal-test-token";

struct FakeControlPlane {
    tables: watch::Receiver<RoutingTable>,
}

type Tables = Pin<Box<dyn tokio_stream::Stream<Item = Result<RoutingUpdate, Status>> + Send>>;

/// Every table as a one-message snapshot.
fn snapshot(t: RoutingTable) -> RoutingUpdate {
    RoutingUpdate {
        version: t.version,
        reset: true,
        last: true,
        functions: t.functions,
        tokens: t.tokens,
        workers: Some(WorkerSet { workers: t.workers }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RoutingService for FakeControlPlane {
    type WatchStream = Tables;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<Tables>, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {TOKEN}")) {
            return Err(Status::unauthenticated("bad token"));
        }
        Ok(Response::new(Box::pin(
            WatchStream::new(self.tables.clone()).map(|t| Ok(snapshot(t))),
        )))
    }
}

/// Serves the fake on `addr` until the returned sender is dropped or sent to.
async fn serve(
    addr: SocketAddr,
    tables: watch::Receiver<RoutingTable>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RoutingServiceServer::new(FakeControlPlane { tables }))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
    });
    (addr, stop)
}

async fn wait_version(dp: &DataPlane, version: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if dp.version() == version {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn table(version: u64) -> RoutingTable {
    RoutingTable {
        version,
        ..Default::default()
    }
}

#[tokio::test]
async fn router_keeps_its_table_while_the_control_plane_is_away_and_catches_up() {
    let (tx, rx) = watch::channel(table(1));
    let (addr, stop) = serve("127.0.0.1:0".parse().expect("addr"), rx.clone()).await;
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
    assert!(wait_version(&dp, 1).await, "snapshot on connect");
    tx.send_replace(table(2));
    assert!(wait_version(&dp, 2).await, "changes follow");

    // The control plane goes away: the router keeps version 2.
    drop(stop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dp.version(), 2);

    // It comes back on the same address with newer tables: the router reconnects.
    tx.send_replace(table(5));
    let (_, _stop2) = serve(addr, rx).await;
    assert!(wait_version(&dp, 5).await, "reconnected with backoff");
    // An older version is never accepted.
    tx.send_replace(table(4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dp.version(), 5);
    follower.abort();
}

#[tokio::test]
async fn a_wrong_internal_token_gets_nothing() {
    let (_tx, rx) = watch::channel(table(1));
    let (addr, _stop) = serve("127.0.0.1:0".parse().expect("addr"), rx).await;
    let dp = DataPlane::new(Runtimes::new());
    let follower = follow_control_plane(
        dp.clone(),
        ControlPlaneEndpoint {
            url: format!("http://{addr}"),
            internal_token: "wrong".into(),
            router_id: "r1".into(),
            tls: None,
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dp.version(), 0);
    follower.abort();
}
