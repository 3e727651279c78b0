//! The gRPC services routers use: `RoutingService.Watch` streams the routing table (the
//! full table on connect, then every newer version). Calls must carry the internal token.

use crate::ControlPlane;
use futures::Stream;
use reactor_proto::routing::routing_service_server::{RoutingService, RoutingServiceServer};
use reactor_proto::routing::worker_registry_server::{WorkerRegistry, WorkerRegistryServer};
use reactor_proto::routing::{
    HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse, RoutingTable,
    WatchRequest,
};
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

/// Checks `authorization: Bearer <token>` against the internal token (compared by hash,
/// so the time taken says nothing about the token).
pub fn check_internal<T>(req: &Request<T>, token: &str) -> Result<(), Status> {
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(reactor_api::token::bearer)
        .unwrap_or("");
    if Sha256::digest(given.as_bytes()) == Sha256::digest(token.as_bytes()) {
        Ok(())
    } else {
        Err(Status::unauthenticated(
            "a valid internal token is required",
        ))
    }
}

pub struct Routing {
    cp: Arc<ControlPlane>,
    internal_token: String,
}

/// The routing service, ready to add to a tonic server.
pub fn routing_service(
    cp: Arc<ControlPlane>,
    internal_token: String,
) -> RoutingServiceServer<Routing> {
    RoutingServiceServer::new(Routing { cp, internal_token })
}

type TableStream = Pin<Box<dyn Stream<Item = Result<RoutingTable, Status>> + Send>>;

#[tonic::async_trait]
impl RoutingService for Routing {
    type WatchStream = TableStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<TableStream>, Status> {
        check_internal(&req, &self.internal_token)?;
        let WatchRequest {
            router_id,
            known_version,
        } = req.into_inner();
        tracing::info!(
            router_id,
            known_version,
            "router watching the routing table"
        );
        let mut last = known_version;
        let stream = WatchStream::new(self.cp.routing().subscribe()).filter_map(move |table| {
            // Only ever newer versions: a router never goes back.
            (table.version > last).then(|| {
                last = table.version;
                Ok(RoutingTable::clone(&table))
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

pub struct Registry {
    cp: Arc<ControlPlane>,
    internal_token: String,
}

/// The worker registry service, ready to add to a tonic server.
pub fn worker_registry(
    cp: Arc<ControlPlane>,
    internal_token: String,
) -> WorkerRegistryServer<Registry> {
    WorkerRegistryServer::new(Registry { cp, internal_token })
}

#[tonic::async_trait]
impl WorkerRegistry for Registry {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        check_internal(&req, &self.internal_token)?;
        let RegisterRequest {
            worker_id,
            runtime,
            url,
        } = req.into_inner();
        let runtime: reactor_api::Runtime =
            runtime
                .parse()
                .map_err(|e: reactor_api::runtime::UnknownRuntime| {
                    Status::invalid_argument(e.to_string())
                })?;
        if worker_id.is_empty() || worker_id.len() > 128 {
            return Err(Status::invalid_argument(
                "worker_id must have 1 to 128 characters",
            ));
        }
        let parsed: http::Uri = url
            .parse()
            .map_err(|_| Status::invalid_argument(format!("url {url:?} is not valid")))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
            return Err(Status::invalid_argument(format!(
                "url {url:?} must be http(s)://host:port"
            )));
        }
        if self.cp.workers().register(&worker_id, runtime, &url) {
            tracing::info!(worker_id, %runtime, url, "worker registered");
            self.cp
                .routing()
                .publish()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let timing = self.cp.workers().timing();
        Ok(Response::new(RegisterResponse {
            heartbeat_interval_ms: timing.heartbeat_interval.as_millis() as u64,
            ttl_ms: timing.ttl.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        check_internal(&req, &self.internal_token)?;
        let known = self.cp.workers().heartbeat(&req.get_ref().worker_id);
        Ok(Response::new(HeartbeatResponse { known }))
    }
}
