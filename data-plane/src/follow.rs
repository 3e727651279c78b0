//! Following the control plane over gRPC: `RoutingService.Watch`, reconnecting with
//! backoff. While the stream is down the router keeps serving the last table it holds.

use crate::DataPlane;
use reactor_proto::routing::WatchRequest;
use reactor_proto::routing::routing_service_client::RoutingServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where and how to reach the control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneEndpoint {
    /// e.g. `http://127.0.0.1:7001`
    pub url: String,
    pub internal_token: String,
    pub router_id: String,
}

/// Follows the control plane until the returned task is aborted.
pub fn follow_control_plane(dp: Arc<DataPlane>, endpoint: ControlPlaneEndpoint) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            match watch_once(&dp, &endpoint).await {
                Ok(received) => {
                    tracing::warn!(url = %endpoint.url, version = dp.version(), "routing stream ended; serving the last table");
                    if received {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %endpoint.url, version = dp.version(), error = %e, "control plane unreachable; serving the last table");
                }
            }
            // Jitter, so that many routers do not reconnect in step.
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the internal token is not a valid header value")]
    Token,
}

/// One connection: applies every table received. Returns whether any arrived.
async fn watch_once(dp: &DataPlane, endpoint: &ControlPlaneEndpoint) -> Result<bool, WatchError> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.url.clone())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = RoutingServiceClient::new(channel);
    let mut req = tonic::Request::new(WatchRequest {
        router_id: endpoint.router_id.clone(),
        known_version: dp.version(),
    });
    let bearer = format!("Bearer {}", endpoint.internal_token)
        .parse()
        .map_err(|_| WatchError::Token)?;
    req.metadata_mut().insert("authorization", bearer);
    let mut stream = client.watch(req).await?.into_inner();
    let mut received = false;
    while let Some(table) = stream.message().await? {
        received = true;
        if dp.apply(&table) {
            tracing::debug!(version = table.version, "routing table applied");
        }
    }
    Ok(received)
}
