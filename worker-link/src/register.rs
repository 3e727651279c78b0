//! A worker's side of the control plane: register, heartbeat (registering again when the
//! control plane no longer knows it), deregister when draining; and prewarm, which loads
//! the live deployments routers send to this worker as the routing table announces them
//! and retires those it no longer lists for it.

use crate::rendezvous::{self, MAX_CANDIDATES};
use reactor_api::{DeploymentSpec, Runtime, RuntimeWorker};
use reactor_proto::client::{ClientError, ControlPlaneEndpoint};
use reactor_proto::routing::worker_registry_client::WorkerRegistryClient;
use reactor_proto::routing::{DeregisterRequest, HeartbeatRequest, RegisterRequest, RoutingTable};
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
    /// The live deployments of the runtime in the last table, this worker's or not (a
    /// router may still have sent one here, which then loaded on its first request).
    live: HashSet<String>,
}

/// What a routing table asks of worker `me` of `runtime`.
struct Wanted {
    /// The live deployments of the runtime.
    live: HashSet<String>,
    /// Those it is among the first [`MAX_CANDIDATES`] workers for.
    mine_ids: HashSet<String>,
    /// Those of them not known yet (not prepared): to prepare.
    mine: Vec<DeploymentSpec>,
    /// Whether the table lists this worker (not yet while it registers, nor after a
    /// control plane restarted and forgot it).
    listed: bool,
}

impl Wanted {
    #[cfg(test)]
    fn of(table: &RoutingTable, runtime: Runtime, me: &str) -> Self {
        Self::of_skipping(table, runtime, me, |_| false)
    }

    /// What the table wants of this worker; the specs of deployments `known` says were
    /// prepared already are not built again (with 10,000 live deployments, every table
    /// would convert them all).
    fn of_skipping(
        table: &RoutingTable,
        runtime: Runtime,
        me: &str,
        known: impl Fn(&str) -> bool,
    ) -> Self {
        let ours = |r: &str| Runtime::from_str(r).ok() == Some(runtime);
        let peers: Vec<&str> = table
            .workers
            .iter()
            .filter(|w| ours(w.runtime.as_str()))
            .map(|w| w.worker_id.as_str())
            .collect();
        let listed = peers.contains(&me);
        let mut wanted = Self {
            live: HashSet::new(),
            mine_ids: HashSet::new(),
            mine: Vec::new(),
            listed,
        };
        for f in table.functions.iter().filter(|f| ours(f.runtime.as_str())) {
            let Some(id) = f.live.as_ref().map(|l| l.deployment_id.as_str()) else {
                continue;
            };
            wanted.live.insert(id.to_string());
            if listed && rendezvous::is_among_first(MAX_CANDIDATES, peers.iter().copied(), me, id) {
                wanted.mine_ids.insert(id.to_string());
                if !known(id)
                    && let Some(spec) = crate::protocol::live_spec(f, runtime)
                {
                    wanted.mine.push(spec);
                }
            }
        }
        wanted
    }

    /// What to retire, with why: prepared deployments no longer live, or no longer this
    /// worker's (it is listed and others now come first); and those that stopped being
    /// live since `was_live`, in case a request loaded them here.
    fn to_retire<T>(
        &self,
        prepared: &HashMap<String, T>,
        was_live: &HashSet<String>,
    ) -> Vec<(String, &'static str)> {
        let mine = &self.mine_ids;
        let reason = |id: &String| {
            if self.live.contains(id) {
                "no longer routed to this worker"
            } else {
                "no longer live"
            }
        };
        prepared
            .keys()
            .filter(|id| !self.live.contains(*id) || (self.listed && !mine.contains(id.as_str())))
            .chain(
                was_live
                    .iter()
                    .filter(|id| !self.live.contains(*id) && !prepared.contains_key(*id)),
            )
            .map(|id| (id.clone(), reason(id)))
            .collect()
    }
}

/// Follows the routing table: prepares the live deployments of `worker`'s runtime for
/// which it is among the first [`MAX_CANDIDATES`] workers of the runtime in rendezvous
/// order (those routers send them to: home, spill, failover), so that the first request
/// after a promote is warm; and retires every one it prepared that is no longer live
/// (deleted, or superseded) or no longer its own (workers joined), and every one that
/// stopped being live (a request may have loaded it), so that nothing of it (processes,
/// their env) stays loaded. Until the table lists this worker (`endpoint.router_id`:
/// registering, or a control plane that restarted and forgot it) it prepares nothing and
/// keeps what it prepared that is still live.
pub fn prewarm(endpoint: ControlPlaneEndpoint, worker: Arc<dyn RuntimeWorker>) -> JoinHandle<()> {
    follow(endpoint, Some(worker), None)
}

/// Follows the routing table: prewarms for `worker` when given, and publishes each table
/// on `tables` when given (what a WASM worker runs inline needs it).
pub fn follow(
    endpoint: ControlPlaneEndpoint,
    worker: Option<Arc<dyn RuntimeWorker>>,
    tables: Option<watch::Sender<Arc<RoutingTable>>>,
) -> JoinHandle<()> {
    let followed = Arc::new(Mutex::new(Followed::default()));
    let me = endpoint.router_id.clone();
    reactor_proto::client::watch_routing(endpoint, move |table| {
        if let Some(tables) = &tables {
            tables.send_replace(Arc::new(table.clone()));
        }
        let Some(worker) = &worker else {
            return;
        };
        let Ok(mut state) = followed.lock() else {
            return;
        };
        let wanted = Wanted::of_skipping(table, worker.runtime(), &me, |id| {
            state.prepared.contains_key(id)
        });
        let Followed {
            prepared,
            retiring,
            live,
        } = &mut *state;
        retiring.retain(|_, task| !task.is_finished());
        for (id, reason) in wanted.to_retire(prepared, live) {
            // After what was last started for it: its prepare, or a retire.
            let before = prepared.remove(&id).or_else(|| retiring.remove(&id));
            let worker = worker.clone();
            let deployment_id = id.clone();
            let task = tokio::spawn(async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                worker.retire(&deployment_id).await;
                tracing::info!(%deployment_id, reason, "retired");
            });
            retiring.insert(id, task);
        }
        *live = wanted.live;
        for spec in wanted.mine {
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
                match worker.prewarm(&spec).await {
                    Ok(true) => {
                        tracing::info!(deployment_id = %spec.deployment_id, function = %spec.function, ms = started.elapsed().as_millis() as u64, "prewarmed")
                    }
                    Ok(false) => {
                        tracing::debug!(deployment_id = %spec.deployment_id, function = %spec.function, "not prewarmed: the worker's loaded deployments are at its budget; the first request will load it")
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

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_proto::routing::{FunctionRoute, LiveDeployment, WorkerEndpoint};

    fn table(workers: &[String], deployments: &[String]) -> RoutingTable {
        let worker = |id: &str, runtime: &str| WorkerEndpoint {
            worker_id: id.into(),
            runtime: runtime.into(),
            url: format!("http://{id}:7080"),
        };
        let function = |name: &str, runtime: &str, deployment_id: &str| FunctionRoute {
            org: "acme".into(),
            name: name.into(),
            runtime: runtime.into(),
            live: Some(LiveDeployment {
                deployment_id: deployment_id.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut functions: Vec<FunctionRoute> = deployments
            .iter()
            .enumerate()
            .map(|(i, d)| function(&format!("f{i}"), "wasm", d))
            .collect();
        functions.push(function("b", "bun", "dep_bun"));
        functions.push(FunctionRoute {
            name: "never-deployed".into(),
            runtime: "wasm".into(),
            ..Default::default()
        });
        let mut workers: Vec<WorkerEndpoint> = workers.iter().map(|w| worker(w, "wasm")).collect();
        workers.push(worker("b1", "bun"));
        RoutingTable {
            version: 1,
            functions,
            workers,
            ..Default::default()
        }
    }

    fn ids(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:02}")).collect()
    }

    fn mine(w: &Wanted) -> HashSet<String> {
        w.mine.iter().map(|s| s.deployment_id.clone()).collect()
    }

    #[test]
    fn a_worker_prepares_the_deployments_routed_to_it() {
        let workers = ids(12, "w");
        let deployments = ids(60, "dep_");
        let t = table(&workers, &deployments);
        let mut holders: HashMap<String, usize> = HashMap::new();
        for w in &workers {
            let wanted = Wanted::of(&t, Runtime::Wasm, w);
            assert!(wanted.listed);
            assert_eq!(wanted.live.len(), deployments.len(), "live: wasm only");
            for d in &deployments {
                let first: Vec<&String> = rendezvous::rank(&workers, |id| id.as_str(), d)
                    .into_iter()
                    .take(MAX_CANDIDATES)
                    .collect();
                assert_eq!(mine(&wanted).contains(d), first.contains(&w), "{w}, {d}");
            }
            for d in mine(&wanted) {
                *holders.entry(d).or_default() += 1;
            }
        }
        // Each deployment is warm on as many workers as a router tries.
        assert_eq!(holders.len(), deployments.len());
        assert!(
            holders.values().all(|n| *n == MAX_CANDIDATES),
            "{holders:?}"
        );
        // Few workers: each holds everything of its runtime.
        let few = ids(3, "w");
        let t = table(&few, &deployments);
        assert_eq!(mine(&Wanted::of(&t, Runtime::Wasm, "w01")).len(), 60);
        assert_eq!(
            mine(&Wanted::of(&t, Runtime::Bun, "b1")),
            HashSet::from(["dep_bun".to_string()])
        );
        // Not in the table yet: nothing.
        let unlisted = Wanted::of(&t, Runtime::Wasm, "w99");
        assert!(!unlisted.listed && unlisted.mine.is_empty());
        assert_eq!(unlisted.live.len(), 60);
    }

    #[test]
    fn what_is_no_longer_live_or_no_longer_its_own_is_retired() {
        let deployments = ids(40, "dep_");
        let alone = table(&["w00".to_string()], &deployments);
        let before = Wanted::of(&alone, Runtime::Wasm, "w00");
        let prepared: HashMap<String, ()> = mine(&before).into_iter().map(|d| (d, ())).collect();
        assert_eq!(prepared.len(), 40);
        // Workers joined, and dep_00 was superseded by dep_new: it keeps only its own and
        // retires the rest.
        let mut now = deployments.clone();
        now[0] = "dep_new".into();
        let joined = table(&ids(12, "w"), &now);
        let after = Wanted::of(&joined, Runtime::Wasm, "w00");
        let retire: HashMap<String, &str> = after
            .to_retire(&prepared, &before.live)
            .into_iter()
            .collect();
        assert_eq!(retire.get("dep_00"), Some(&"no longer live"));
        let kept = mine(&after);
        assert!(!kept.is_empty() && kept.len() < 40, "{}", kept.len());
        for d in &now[1..] {
            let why = retire.get(d.as_str());
            if kept.contains(d) {
                assert_eq!(why, None, "{d} is still its own");
            } else {
                assert_eq!(why, Some(&"no longer routed to this worker"), "{d}");
            }
        }
        // A deployment that stopped being live is retired even if it was never prepared
        // here (a request may have loaded it).
        let gone = Wanted::of(&table(&ids(12, "w"), &now[1..]), Runtime::Wasm, "w00");
        let retire: HashMap<String, &str> = gone
            .to_retire(&HashMap::<String, ()>::new(), &after.live)
            .into_iter()
            .collect();
        assert_eq!(
            retire,
            HashMap::from([("dep_new".to_string(), "no longer live")])
        );
        // Unlisted (the control plane forgot it): what is still live stays.
        let forgotten = Wanted::of(&table(&[], &deployments), Runtime::Wasm, "w00");
        assert!(forgotten.to_retire(&prepared, &before.live).is_empty());
    }
}
