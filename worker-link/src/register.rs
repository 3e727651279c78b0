//! A worker's side of the control plane: register, heartbeat (registering again when the
//! control plane no longer knows it), deregister when draining; and prewarm, which loads
//! every live deployment of the worker's runtime as the routing table announces it and
//! retires those it no longer lists.

use reactor_api::{DeploymentSpec, Runtime, RuntimeWorker};
use reactor_proto::client::{ClientError, ControlPlaneEndpoint};
use reactor_proto::routing::worker_registry_client::WorkerRegistryClient;
use reactor_proto::routing::{DeregisterRequest, HeartbeatRequest, RegisterRequest};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// What a worker announces.
#[derive(Clone, Debug)]
pub struct Registration {
    pub worker_id: String,
    pub runtime: Runtime,
    /// Where routers reach this worker.
    pub url: String,
    /// Chosen at start; proves this worker's identity to the control plane.
    pub secret: String,
}

/// The running registration: `registered` turns true once the control plane took it.
pub struct Registered {
    pub task: JoinHandle<()>,
    pub registered: watch::Receiver<bool>,
    endpoint: ControlPlaneEndpoint,
    worker_id: String,
    secret: String,
}

impl Registered {
    /// Stops heartbeating and leaves the routing table at once (draining).
    pub async fn deregister(self) {
        self.task.abort();
        let result = async {
            let mut client = WorkerRegistryClient::new(self.endpoint.channel()?);
            let req = self.endpoint.request(DeregisterRequest {
                worker_id: self.worker_id.clone(),
                worker_secret: self.secret.clone(),
            })?;
            client.deregister(req).await?;
            Ok::<_, ClientError>(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!("deregistered from the control plane"),
            Err(e) => {
                tracing::warn!(error = %e, "could not deregister; the control plane will expire this worker")
            }
        }
    }
}

/// Registers and heartbeats until aborted; failures are retried every second (or every
/// heartbeat interval), so a control plane that restarts gets this worker back at once.
pub fn register(
    endpoint: ControlPlaneEndpoint,
    me: Registration,
) -> Result<Registered, ClientError> {
    let channel = endpoint.channel()?;
    let (tx, registered) = watch::channel(false);
    let ep = endpoint.clone();
    let worker_id = me.worker_id.clone();
    let secret = me.secret.clone();
    let task = tokio::spawn(async move {
        let mut client = WorkerRegistryClient::new(channel);
        let mut interval = Duration::from_secs(1);
        let mut known = false;
        let mut failing = false;
        loop {
            let step = if known {
                heartbeat(&ep, &mut client, &me).await
            } else {
                register_once(&ep, &mut client, &me).await.map(|i| {
                    interval = i;
                    true
                })
            };
            match step {
                Ok(k) => {
                    if !known && k {
                        tracing::info!(worker_id = %me.worker_id, url = %me.url, control_plane = %ep.url, "registered with the control plane");
                    }
                    known = k;
                    failing = false;
                    tx.send_replace(known);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(control_plane = %ep.url, error = %e, "control plane unreachable; retrying");
                    }
                    failing = true;
                    known = false;
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
    Ok(Registered {
        task,
        registered,
        endpoint,
        worker_id,
        secret,
    })
}

async fn register_once(
    ep: &ControlPlaneEndpoint,
    client: &mut WorkerRegistryClient<Channel>,
    me: &Registration,
) -> Result<Duration, ClientError> {
    let req = ep.request(RegisterRequest {
        worker_id: me.worker_id.clone(),
        runtime: me.runtime.as_str().to_string(),
        url: me.url.clone(),
        worker_secret: me.secret.clone(),
    })?;
    let r = client.register(req).await?.into_inner();
    Ok(Duration::from_millis(
        r.heartbeat_interval_ms.clamp(50, 60_000),
    ))
}

/// Ok(false) when the control plane no longer knows this worker.
async fn heartbeat(
    ep: &ControlPlaneEndpoint,
    client: &mut WorkerRegistryClient<Channel>,
    me: &Registration,
) -> Result<bool, ClientError> {
    let req = ep.request(HeartbeatRequest {
        worker_id: me.worker_id.clone(),
        worker_secret: me.secret.clone(),
    })?;
    let known = client.heartbeat(req).await?.into_inner().known;
    if !known {
        tracing::info!("the control plane forgot this worker (it restarted?); registering again");
    }
    Ok(known)
}

/// What [`prewarm`] did per deployment: each task of a deployment waits for the one
/// before it, so that a prepare never undoes a later retire, nor a retire a later prepare.
#[derive(Default)]
struct Followed {
    /// Prepared deployments, with their prepare task.
    prepared: HashMap<String, JoinHandle<()>>,
    /// Deployments being retired, with their retire task.
    retiring: HashMap<String, JoinHandle<()>>,
}

/// Follows the routing table: prepares every live deployment of `worker`'s runtime that
/// it has not prepared yet, so that the first request after a promote is warm, and
/// retires every one it prepared that is no longer live (deleted, or superseded), so
/// that nothing of it (processes, their env) stays loaded.
pub fn prewarm(endpoint: ControlPlaneEndpoint, worker: Arc<dyn RuntimeWorker>) -> JoinHandle<()> {
    let followed = Arc::new(Mutex::new(Followed::default()));
    reactor_proto::client::watch_routing(endpoint, move |table| {
        let runtime = worker.runtime();
        let live: Vec<DeploymentSpec> = table
            .functions
            .iter()
            .filter(|f| Runtime::from_str(&f.runtime).ok() == Some(runtime))
            .filter_map(|f| crate::protocol::live_spec(f, runtime))
            .collect();
        let Ok(mut state) = followed.lock() else {
            return;
        };
        let Followed { prepared, retiring } = &mut *state;
        retiring.retain(|_, task| !task.is_finished());
        let live_ids: HashSet<&str> = live.iter().map(|s| s.deployment_id.as_str()).collect();
        let gone: Vec<String> = prepared
            .keys()
            .filter(|id| !live_ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            let Some(preparing) = prepared.remove(&id) else {
                continue;
            };
            let worker = worker.clone();
            let deployment_id = id.clone();
            let task = tokio::spawn(async move {
                let _ = preparing.await;
                worker.retire(&deployment_id).await;
                tracing::info!(%deployment_id, "retired: no longer live");
            });
            retiring.insert(id, task);
        }
        for spec in live {
            if prepared.contains_key(&spec.deployment_id) {
                continue;
            }
            let retired = retiring.remove(&spec.deployment_id);
            let id = spec.deployment_id.clone();
            let worker = worker.clone();
            let task = tokio::spawn(async move {
                // Live again (a rollback) while being retired: after the retire.
                if let Some(retired) = retired {
                    let _ = retired.await;
                }
                let started = std::time::Instant::now();
                match worker.prepare(&spec).await {
                    Ok(()) => {
                        tracing::info!(deployment_id = %spec.deployment_id, function = %spec.function, ms = started.elapsed().as_millis() as u64, "prewarmed")
                    }
                    Err(e) => {
                        tracing::warn!(deployment_id = %spec.deployment_id, error = %e, "prewarm failed; the first request will load it")
                    }
                }
            });
            prepared.insert(id, task);
        }
    })
}
