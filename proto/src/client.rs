//! Clients of the control plane's internal services, shared by routers and workers:
//! following `RoutingService.Watch` with reconnection and backoff, and the internal token
//! on every call.

use crate::routing::routing_service_client::RoutingServiceClient;
use crate::routing::{RoutingTable, WatchRequest};
use std::time::Duration;
use tokio::task::JoinHandle;

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where and how to reach the control plane's gRPC services.
#[derive(Clone, Debug)]
pub struct ControlPlaneEndpoint {
    /// e.g. `http://127.0.0.1:7071`
    pub url: String,
    pub internal_token: String,
    /// Names the router (or worker) in the control plane's logs.
    pub router_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the internal token is not a valid header value")]
    Token,
}

impl ControlPlaneEndpoint {
    /// A channel that connects on first use and reconnects after failures.
    pub fn channel(&self) -> Result<tonic::transport::Channel, ClientError> {
        Ok(tonic::transport::Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect_lazy())
    }

    /// `msg` with `authorization: Bearer <internal token>`.
    pub fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, ClientError> {
        let mut req = tonic::Request::new(msg);
        let bearer = format!("Bearer {}", self.internal_token)
            .parse()
            .map_err(|_| ClientError::Token)?;
        req.metadata_mut().insert("authorization", bearer);
        Ok(req)
    }
}

/// Follows the routing table until the returned task is aborted: `on_table` gets every
/// table newer than `known()`, the version the caller holds. While the stream is down,
/// the caller keeps what it has; reconnection backs off from 100 ms to 5 s, with jitter.
pub fn watch_routing<K, F>(
    endpoint: ControlPlaneEndpoint,
    known: K,
    mut on_table: F,
) -> JoinHandle<()>
where
    K: Fn() -> u64 + Send + Sync + 'static,
    F: FnMut(RoutingTable) + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            match watch_once(&endpoint, &known, &mut on_table).await {
                Ok(received) => {
                    tracing::warn!(url = %endpoint.url, version = known(), "routing stream ended; keeping the last table");
                    if received {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %endpoint.url, version = known(), error = %e, "control plane unreachable; keeping the last table");
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

/// One connection: hands over every table received. Returns whether any arrived.
async fn watch_once<K, F>(
    endpoint: &ControlPlaneEndpoint,
    known: &K,
    on_table: &mut F,
) -> Result<bool, ClientError>
where
    K: Fn() -> u64,
    F: FnMut(RoutingTable),
{
    // Keepalive: a control plane that vanishes without closing (host down, partition)
    // is noticed within ~15 s and the stream reconnects.
    let channel = tonic::transport::Endpoint::from_shared(endpoint.url.clone())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut client = RoutingServiceClient::new(channel);
    let req = endpoint.request(WatchRequest {
        router_id: endpoint.router_id.clone(),
        known_version: known(),
    })?;
    let mut stream = client.watch(req).await?.into_inner();
    let mut received = false;
    while let Some(table) = stream.message().await? {
        received = true;
        on_table(table);
    }
    Ok(received)
}
