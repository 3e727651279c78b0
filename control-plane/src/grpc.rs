//! The gRPC services routers use: `RoutingService.Watch` streams the routing table (the
//! full table on connect, then every newer version). Calls must carry the internal token.

use crate::ControlPlane;
use futures::Stream;
use reactor_proto::routing::routing_service_server::{RoutingService, RoutingServiceServer};
use reactor_proto::routing::{RoutingTable, WatchRequest};
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
        .and_then(|v| v.strip_prefix("Bearer "))
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
