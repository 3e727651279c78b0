//! The gRPC services routers use: `RoutingService.Watch` streams the routing table (a
//! snapshot in bounded messages on connect, then deltas). Calls must carry the internal token.

use crate::ControlPlane;
use futures::Stream;
use futures::StreamExt;
use reactor_api::token::InternalToken;
use reactor_proto::routing::routing_service_server::{RoutingService, RoutingServiceServer};
use reactor_proto::routing::worker_registry_server::{WorkerRegistry, WorkerRegistryServer};
use reactor_proto::routing::{
    DeploymentEnvRequest, DeploymentEnvResponse, DeregisterRequest, DeregisterResponse,
    HeartbeatRequest, HeartbeatResponse, PushLogsRequest, PushLogsResponse, RegisterRequest,
    RegisterResponse, RoutingUpdate, WatchRequest,
};
use reactor_service::tls::{Role, peer_role};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// How the internal services' callers reach them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP (`[internal] tls` off): tokens only; deployment env only to loopback.
    Plain,
    /// Mutual TLS: besides its token, a caller needs a certificate of an allowed role.
    MutualTls,
}

impl Transport {
    /// Over mutual TLS, the caller's certificate must name one of `allowed`.
    fn check<T>(self, req: &Request<T>, allowed: &[Role]) -> Result<(), Status> {
        if self == Transport::Plain {
            return Ok(());
        }
        match req.peer_certs().as_deref().and_then(|c| peer_role(c)) {
            Some(role) if allowed.contains(&role) => Ok(()),
            Some(role) => Err(Status::permission_denied(format!(
                "a {role} certificate may not call this"
            ))),
            None => Err(Status::unauthenticated(
                "a client certificate of this cluster's CA is required",
            )),
        }
    }

    /// Decrypted secrets cross the network only inside TLS: over plain TCP, only to a
    /// worker on this host.
    fn check_secrets_may_go<T>(self, req: &Request<T>) -> Result<(), Status> {
        self.secrets_may_go_to(req.remote_addr())
    }

    fn secrets_may_go_to(self, peer: Option<std::net::SocketAddr>) -> Result<(), Status> {
        if self == Transport::MutualTls {
            return Ok(());
        }
        match peer {
            Some(addr) if addr.ip().to_canonical().is_loopback() => Ok(()),
            peer => Err(Status::failed_precondition(format!(
                "deployment env (decrypted secrets) is not sent in clear to {}: turn on internal.tls (REACTOR_INTERNAL_TLS) on every service",
                peer.map_or_else(|| "an unknown peer".to_string(), |a| a.to_string())
            ))),
        }
    }
}

/// Checks `authorization: Bearer <token>` against the internal token.
pub fn check_internal<T>(req: &Request<T>, token: &InternalToken) -> Result<(), Status> {
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(reactor_api::token::bearer)
        .unwrap_or("");
    if token.matches(given.as_bytes()) {
        Ok(())
    } else {
        Err(Status::unauthenticated(
            "a valid internal token is required",
        ))
    }
}

pub struct Routing {
    cp: Arc<ControlPlane>,
    internal_token: InternalToken,
    transport: Transport,
}

/// The routing service over plain TCP, ready to add to a tonic server.
pub fn routing_service(
    cp: Arc<ControlPlane>,
    internal_token: String,
) -> RoutingServiceServer<Routing> {
    routing_service_over(cp, internal_token, Transport::Plain)
}

/// The routing service, for callers reaching it over `transport`.
pub fn routing_service_over(
    cp: Arc<ControlPlane>,
    internal_token: String,
    transport: Transport,
) -> RoutingServiceServer<Routing> {
    RoutingServiceServer::new(Routing {
        cp,
        internal_token: InternalToken::new(&internal_token),
        transport,
    })
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<RoutingUpdate, Status>> + Send>>;

/// How long a new stream waits for this replica to reach the version its router holds.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Messages queued per stream before the sender waits for the router to read.
const STREAM_BUFFER: usize = 8;

#[tonic::async_trait]
impl RoutingService for Routing {
    type WatchStream = UpdateStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<UpdateStream>, Status> {
        self.transport.check(&req, &[Role::Router, Role::Worker])?;
        check_internal(&req, &self.internal_token)?;
        let WatchRequest {
            router_id,
            known_version,
        } = req.into_inner();
        tracing::info!(
            client_id = router_id,
            known_version,
            "watching the routing table"
        );
        // Right after a restart, give workers the time to register again first: the
        // router keeps its last table meanwhile instead of getting one without workers.
        if let Some(wait) = self.cp.workers_settled() {
            tokio::time::sleep(wait).await;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        let cp = self.cp.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stream_updates(&cp, known_version, &tx) => {}
                // Ends when the control plane shuts down, so that it need not wait for routers.
                () = cp.closed() => {}
                // Or when the router went away, even with nothing to send it.
                () = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok),
        )))
    }
}

/// Feeds one stream: a snapshot (after waiting a little for this replica to reach the
/// version the caller holds), then every change as a delta; a snapshot again when the
/// stream fell too far behind. Returns when the caller goes away.
async fn stream_updates(
    cp: &ControlPlane,
    known_version: u64,
    tx: &tokio::sync::mpsc::Sender<RoutingUpdate>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let (mut changes, mut table) = cp.routing().subscribe_changes();
    // A router ahead of this table (it followed a replica further on) waits a little for
    // this one to catch up; then it gets this table whatever its version (it ignores an
    // older one, as after a database restored to an older version).
    let until = tokio::time::Instant::now() + CATCH_UP_WAIT;
    while table.version < known_version {
        match tokio::time::timeout_at(until, changes.recv()).await {
            Ok(Err(RecvError::Closed)) => return,
            Ok(_) => (changes, table) = cp.routing().subscribe_changes(),
            Err(_) => break,
        }
    }
    // Always a snapshot first, even of the version the router holds: with several
    // replicas, the same version may hold other content on another one (each reads the
    // state at its own moment), and the deltas that follow are on this one's table.
    let mut held = 0;
    loop {
        // Version 0 is the empty table before the first publication: nothing to send.
        if table.version > 0 && held != table.version {
            for u in crate::routing::snapshot(&table) {
                if tx.send(u).await.is_err() {
                    return;
                }
            }
            held = table.version;
        }
        loop {
            match changes.recv().await {
                Ok(change) if change.version <= held => {}
                Ok(change) if held > 0 && change.base_version == held => {
                    for u in crate::routing::delta(&change) {
                        if tx.send(u).await.is_err() {
                            return;
                        }
                    }
                    held = change.version;
                }
                // A change this stream cannot apply (it missed one): start over.
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    (changes, table) = cp.routing().subscribe_changes();
                    break;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

pub struct Registry {
    cp: Arc<ControlPlane>,
    /// Routers' credential: accepted for PushLogs only.
    internal_token: InternalToken,
    /// Workers' credential: everything else.
    worker_token: InternalToken,
    transport: Transport,
}

/// The worker registry service over plain TCP, ready to add to a tonic server.
pub fn worker_registry(
    cp: Arc<ControlPlane>,
    internal_token: String,
    worker_token: String,
) -> WorkerRegistryServer<Registry> {
    worker_registry_over(cp, internal_token, worker_token, Transport::Plain)
}

/// The worker registry service, for callers reaching it over `transport`.
pub fn worker_registry_over(
    cp: Arc<ControlPlane>,
    internal_token: String,
    worker_token: String,
    transport: Transport,
) -> WorkerRegistryServer<Registry> {
    WorkerRegistryServer::new(Registry {
        cp,
        internal_token: InternalToken::new(&internal_token),
        worker_token: InternalToken::new(&worker_token),
        transport,
    })
    // Log batches are capped at 1 MiB of messages; JSON framing adds to that.
    .max_decoding_message_size(8 << 20)
}

/// Longest a worker id may be, and the least a worker's secret must carry.
const MAX_WORKER_ID: usize = 128;
const MIN_WORKER_SECRET: usize = 32;

#[tonic::async_trait]
impl WorkerRegistry for Registry {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.transport.check(&req, &[Role::Worker])?;
        check_internal(&req, &self.worker_token)?;
        let RegisterRequest {
            worker_id,
            runtime,
            url,
            worker_secret,
        } = req.into_inner();
        let runtime: reactor_api::Runtime =
            runtime
                .parse()
                .map_err(|e: reactor_api::runtime::UnknownRuntime| {
                    Status::invalid_argument(e.to_string())
                })?;
        if worker_id.is_empty() || worker_id.len() > MAX_WORKER_ID {
            return Err(Status::invalid_argument(format!(
                "worker_id must have 1 to {MAX_WORKER_ID} characters"
            )));
        }
        if worker_secret.len() < MIN_WORKER_SECRET {
            return Err(Status::invalid_argument(format!(
                "worker_secret must have at least {MIN_WORKER_SECRET} characters"
            )));
        }
        let parsed: http::Uri = url
            .parse()
            .map_err(|_| Status::invalid_argument(format!("url {url:?} is not valid")))?;
        // The link is HTTP/2: cleartext (h2c) without internal TLS, over TLS with it. No path.
        let scheme = match self.transport {
            Transport::Plain => "http",
            Transport::MutualTls => "https",
        };
        if parsed.scheme_str() != Some(scheme)
            || parsed.authority().is_none()
            || !matches!(parsed.path(), "" | "/")
        {
            return Err(Status::invalid_argument(format!(
                "url {url:?} must be {scheme}://host:port"
            )));
        }
        let changed = self
            .cp
            .register_worker(&worker_id, runtime, &url, &worker_secret)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .map_err(|e| Status::already_exists(e.to_string()))?;
        if changed {
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
        self.transport.check(&req, &[Role::Worker])?;
        check_internal(&req, &self.worker_token)?;
        let r = req.get_ref();
        let known = self
            .cp
            .worker_heartbeat(&r.worker_id, &r.worker_secret)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(HeartbeatResponse { known }))
    }

    async fn deregister(
        &self,
        req: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        self.transport.check(&req, &[Role::Worker])?;
        check_internal(&req, &self.worker_token)?;
        let r = req.get_ref();
        let worker_id = &r.worker_id;
        if self
            .cp
            .deregister_worker(worker_id, &r.worker_secret)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            tracing::info!(worker_id, "worker deregistered (draining)");
            self.cp
                .routing()
                .publish()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn deployment_env(
        &self,
        req: Request<DeploymentEnvRequest>,
    ) -> Result<Response<DeploymentEnvResponse>, Status> {
        self.transport.check(&req, &[Role::Worker])?;
        check_internal(&req, &self.worker_token)?;
        self.transport.check_secrets_may_go(&req)?;
        let r = req.into_inner();
        // Only a registered worker, proven by the secret it registered with (routers
        // never see it), of the function's runtime.
        let Some(runtime) = self.cp.workers().authorize(&r.worker_id, &r.worker_secret) else {
            tracing::warn!(worker_id = %r.worker_id, org = %r.org, function = %r.function, "deployment env refused: not a registered worker with that secret");
            return Err(Status::permission_denied(format!(
                "worker {:?} is not registered with this secret",
                r.worker_id
            )));
        };
        // Only a worker the deployment is routed to (or built on): one that was asked to
        // load it. Another worker has no reason to hold its secrets.
        if !self
            .cp
            .workers()
            .is_candidate(&r.worker_id, runtime, &r.deployment_id)
        {
            tracing::warn!(worker_id = %r.worker_id, org = %r.org, function = %r.function, deployment_id = %r.deployment_id, "deployment env refused: the worker is not among those the deployment is routed to");
            return Err(Status::permission_denied(format!(
                "worker {:?} is not among the workers deployment {} is routed to; it was not asked to load it",
                r.worker_id, r.deployment_id
            )));
        }
        let (env, d) = self
            .cp
            .deployment_env(&r.org, &r.function, &r.deployment_id, runtime)
            .await
            .map_err(|e| crate::grpc_admin::status(&e, ""))?;
        tracing::info!(worker_id = %r.worker_id, org = %r.org, function = %r.function, deployment_id = %r.deployment_id, keys = env.len(), "deployment env sent to a worker");
        Ok(Response::new(DeploymentEnvResponse {
            env: env.into_iter().collect(),
            bundle_key: d.bundle_key,
            sha256: d.sha256,
            entrypoint: d.entrypoint,
        }))
    }

    async fn push_logs(
        &self,
        req: Request<PushLogsRequest>,
    ) -> Result<Response<PushLogsResponse>, Status> {
        use reactor_api::logs::{LogEntry, LogSink};
        // Routers and workers both send logs.
        self.transport.check(&req, &[Role::Router, Role::Worker])?;
        check_internal(&req, &self.internal_token)
            .or_else(|_| check_internal(&req, &self.worker_token))?;
        let r = req.into_inner();
        let mut bad = 0usize;
        for json in &r.entries {
            match serde_json::from_str::<LogEntry>(json) {
                Ok(entry) => self.cp.logs().emit(entry),
                Err(_) => bad += 1,
            }
        }
        if bad > 0 {
            tracing::warn!(sender = %r.sender_id, bad, "dropped log entries that are not valid");
        }
        Ok(Response::new(PushLogsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::Transport;

    #[test]
    fn secrets_go_in_clear_to_loopback_only() {
        let local: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let local6: std::net::SocketAddr = "[::1]:5000".parse().expect("addr");
        let mapped: std::net::SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("addr");
        assert!(Transport::Plain.secrets_may_go_to(Some(mapped)).is_ok());
        let remote: std::net::SocketAddr = "10.0.0.7:5000".parse().expect("addr");
        assert!(Transport::Plain.secrets_may_go_to(Some(local)).is_ok());
        assert!(Transport::Plain.secrets_may_go_to(Some(local6)).is_ok());
        let refused = Transport::Plain
            .secrets_may_go_to(Some(remote))
            .expect_err("in clear over the network");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("internal.tls"), "{refused}");
        assert!(Transport::Plain.secrets_may_go_to(None).is_err());
        assert!(Transport::MutualTls.secrets_may_go_to(Some(remote)).is_ok());
    }
}
