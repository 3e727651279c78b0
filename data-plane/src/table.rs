//! The routing table as a router looks it up: indexed once per version, never locked
//! across an await.

use reactor_api::interceptors::Interceptors;
use reactor_api::model::Role;
use reactor_api::{DeploymentSpec, Runtime};
use reactor_policy::CompiledPolicy;
use reactor_proto::routing::RoutingTable;
use reactor_worker_link::rendezvous;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub token_id: String,
    pub org: String,
    pub role: Role,
}

#[derive(Clone)]
pub struct FunctionEntry {
    pub runtime: Runtime,
    pub live: Option<Arc<DeploymentSpec>>,
    /// The function's policy, then the live deployment's: a request must pass both.
    pub policies: Vec<Arc<Policy>>,
    /// The live deployment's `interceptors`.
    pub interceptors: Option<Arc<Interceptors>>,
    /// The live deployment's `contract`, compiled.
    pub contract: Option<Arc<Contract>>,
}

/// A contract's schemas as a router checks bodies against them (compiled once per JSON,
/// reused by the next table); `Err`: they do not compile here (checked when they were
/// set, so routers and control plane disagree), and every request is refused.
pub type Contract = Result<reactor_contract::Compiled, String>;

/// A named contract (`email.sender@1`) and the function bound to it.
#[derive(Clone)]
pub struct BoundContract {
    pub function: String,
    pub contract: Arc<Contract>,
}

/// An invoke policy as the router checks it.
pub enum Policy {
    Compiled(CompiledPolicy),
    /// A policy in the table that does not compile here (it was checked when it was set,
    /// so this means routers and control plane disagree): everything is refused.
    Broken(String),
}

impl Policy {
    fn compile(json: &str) -> Policy {
        match reactor_policy::Policy::from_json(json).and_then(|p| p.compile()) {
            Ok(c) => Policy::Compiled(c),
            Err(e) => {
                tracing::error!(error = %e, "an invoke policy in the routing table does not compile: refusing its requests");
                Policy::Broken(e.to_string())
            }
        }
    }
}

#[derive(Clone, Default)]
pub struct RouteIndex {
    pub version: u64,
    tokens: HashMap<String, Grant>,
    /// Signed-in users' memberships: by user id, their role in each org.
    members: HashMap<String, Vec<Grant>>,
    /// The public keys that verify access tokens, by key id.
    signing_keys: HashMap<String, Vec<u8>>,
    functions: HashMap<(String, String), FunctionEntry>,
    workers: HashMap<Runtime, Vec<WorkerRef>>,
    /// Compiled policies by their JSON, reused by the next version.
    policies: HashMap<String, Arc<Policy>>,
    /// Named contracts by org and name.
    contracts: HashMap<(String, String), BoundContract>,
    /// Compiled contracts by their JSON, reused by the next version.
    compiled: HashMap<String, Arc<Contract>>,
}

/// How many workers a request may try, in rendezvous order.
pub use reactor_worker_link::rendezvous::MAX_CANDIDATES;

/// A registered worker service.
#[derive(Clone, Debug)]
pub struct WorkerRef {
    pub id: String,
    pub url: Arc<str>,
    /// [`rendezvous::worker_seed`] of its id, computed once per table.
    seed: u64,
}

impl WorkerRef {
    /// How `self` and `other` compare for the deployment whose key is `key` (`Less`: `self`
    /// comes first): the order of [`rendezvous::rank`], from the seeds computed once.
    fn rank_cmp(&self, other: &WorkerRef, key: u64) -> std::cmp::Ordering {
        rendezvous::score(other.seed, key)
            .cmp(&rendezvous::score(self.seed, key))
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl RouteIndex {
    pub fn build(table: &RoutingTable) -> Self {
        Self::build_from(table, &RouteIndex::default())
    }

    /// Like [`RouteIndex::build`], reusing the policies `previous` already compiled.
    pub fn build_from(table: &RoutingTable, previous: &RouteIndex) -> Self {
        let mut policies: HashMap<String, Arc<Policy>> = HashMap::new();
        let mut policy = |json: &str| -> Arc<Policy> {
            policies
                .entry(json.to_string())
                .or_insert_with(|| {
                    previous
                        .policies
                        .get(json)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Policy::compile(json)))
                })
                .clone()
        };
        let mut compiled: HashMap<String, Arc<Contract>> = HashMap::new();
        let mut contract = |spec: &reactor_api::contract::ContractSpec| -> Arc<Contract> {
            let key = serde_json::to_string(spec).unwrap_or_default();
            compiled
                .entry(key.clone())
                .or_insert_with(|| {
                    previous.compiled.get(&key).cloned().unwrap_or_else(|| {
                        Arc::new(
                            reactor_contract::Compiled::from_spec(spec, "contract").map_err(|e| {
                                tracing::error!(error = %e, "a contract in the routing table does not compile: refusing its requests");
                                e.to_string()
                            }),
                        )
                    })
                })
                .clone()
        };
        let mut contracts = HashMap::new();
        let mut members: HashMap<String, Vec<Grant>> = HashMap::new();
        for m in table.tokens.iter().filter(|t| !t.user_id.is_empty()) {
            if let Some(role) = Role::parse(&m.role) {
                members.entry(m.user_id.clone()).or_default().push(Grant {
                    token_id: m.token_id.clone(),
                    org: m.org.clone(),
                    role,
                });
            }
        }
        let signing_keys = table
            .signing_keys
            .iter()
            .map(|k| (k.kid.clone(), k.public_key.clone()))
            .collect();
        let tokens = table
            .tokens
            .iter()
            // A membership is no token: no bearer may match it.
            .filter(|t| t.user_id.is_empty() && !t.sha256.is_empty())
            .filter_map(|t| {
                let role = Role::parse(&t.role)?;
                Some((
                    t.sha256.clone(),
                    Grant {
                        token_id: t.token_id.clone(),
                        org: t.org.clone(),
                        role,
                    },
                ))
            })
            .collect();
        let functions = table
            .functions
            .iter()
            .filter_map(|f| {
                let runtime = Runtime::from_str(&f.runtime).ok()?;
                let live = reactor_worker_link::protocol::live_spec(f, runtime).map(Arc::new);
                let policies = [
                    f.policy.as_deref(),
                    f.live.as_ref().and_then(|d| d.policy.as_deref()),
                ]
                .into_iter()
                .flatten()
                .map(&mut policy)
                .collect();
                let interceptors = f
                    .live
                    .as_ref()
                    .and_then(|d| d.interceptors.as_deref())
                    .and_then(|json| match serde_json::from_str::<Interceptors>(json)
                        .map_err(|e| e.to_string())
                        .and_then(|i| i.check("interceptors").map(|()| i))
                    {
                        Ok(i) => Some(Arc::new(i)),
                        Err(e) => {
                            // Checked at deploy: routers and control plane disagree. Without
                            // them requests are sent once and never refused by a breaker.
                            tracing::error!(org = %f.org, function = %f.name, error = %e, "unreadable interceptors in the routing table: running without them");
                            None
                        }
                    });
                let own = f.live.as_ref().and_then(|d| d.contract.as_deref()).map(|json| {
                    match serde_json::from_str::<reactor_api::contract::ContractSpec>(json) {
                        Ok(spec) => contract(&spec),
                        Err(e) => Arc::new(Err(format!("unreadable contract: {e}"))),
                    }
                });
                for bound in &f.contracts {
                    let parse = |s: &Option<String>| {
                        s.as_deref().map(|s| {
                            serde_json::from_str(s).unwrap_or(serde_json::Value::Bool(false))
                        })
                    };
                    let spec = reactor_api::contract::ContractSpec {
                        input: parse(&bound.input),
                        output: parse(&bound.output),
                        validate_output: bound.validate_output,
                        mode: Default::default(),
                    };
                    contracts.insert(
                        (f.org.clone(), bound.name.clone()),
                        BoundContract {
                            function: f.name.clone(),
                            contract: contract(&spec),
                        },
                    );
                }
                Some((
                    (f.org.clone(), f.name.clone()),
                    FunctionEntry {
                        runtime,
                        live,
                        policies,
                        interceptors,
                        contract: own,
                    },
                ))
            })
            .collect();
        let mut workers: HashMap<Runtime, Vec<WorkerRef>> = HashMap::new();
        for w in &table.workers {
            if let Ok(runtime) = Runtime::from_str(&w.runtime) {
                workers.entry(runtime).or_default().push(WorkerRef {
                    id: w.worker_id.clone(),
                    url: Arc::from(w.url.as_str()),
                    seed: rendezvous::worker_seed(&w.worker_id),
                });
            }
        }
        Self {
            version: table.version,
            tokens,
            members,
            signing_keys,
            functions,
            workers,
            policies,
            contracts,
            compiled,
        }
    }

    /// The worker for `deployment_id` among the registered workers of `runtime`:
    /// rendezvous hashing, so that a deployment keeps going to the same worker (its warm
    /// instance and cache) and only moves when that worker leaves.
    pub fn pick_worker(&self, runtime: Runtime, deployment_id: &str) -> Option<&WorkerRef> {
        self.pick_worker_where(runtime, deployment_id, |_| true)
    }

    /// Like [`RouteIndex::pick_worker`] among the workers that are `usable` (the next in
    /// rendezvous order when the first is down), else the first anyway.
    pub fn pick_worker_where(
        &self,
        runtime: Runtime,
        deployment_id: &str,
        usable: impl Fn(&WorkerRef) -> bool,
    ) -> Option<&WorkerRef> {
        let key = rendezvous::deployment_key(deployment_id);
        let workers = self.workers.get(&runtime)?;
        let first = |a: &&WorkerRef, b: &&WorkerRef| a.rank_cmp(b, key);
        workers
            .iter()
            .filter(|w| usable(w))
            .min_by(first)
            .or_else(|| workers.iter().min_by(first))
    }

    /// The usable workers of `runtime` in rendezvous order for `deployment_id` (at most
    /// [`MAX_CANDIDATES`], from its first `ENV_CANDIDATES`): the first is its home, the
    /// others where it spills under load or fails over. None usable: the home worker
    /// anyway.
    pub fn pick_workers(
        &self,
        runtime: Runtime,
        deployment_id: &str,
        usable: impl Fn(&WorkerRef) -> bool,
    ) -> Vec<Arc<str>> {
        let Some(workers) = self.workers.get(&runtime) else {
            return Vec::new();
        };
        let key = rendezvous::deployment_key(deployment_id);
        // Among the workers the control plane gives the deployment's env to (its first
        // ENV_CANDIDATES): one further down would be refused it.
        let mut ranked: Vec<&WorkerRef> = workers.iter().collect();
        ranked.sort_unstable_by(|a, b| a.rank_cmp(b, key));
        let usable: Vec<Arc<str>> = ranked
            .iter()
            .take(rendezvous::ENV_CANDIDATES)
            .filter(|w| usable(w))
            .take(MAX_CANDIDATES)
            .map(|w| w.url.clone())
            .collect();
        if usable.is_empty() {
            // None usable: the home worker anyway.
            return ranked
                .first()
                .map(|w| vec![w.url.clone()])
                .unwrap_or_default();
        }
        usable
    }

    pub fn worker_count(&self, runtime: Runtime) -> usize {
        self.workers.get(&runtime).map_or(0, Vec::len)
    }

    /// The grant of the token whose SHA-256 is `sha256`.
    pub fn grant(&self, sha256: &str) -> Option<&Grant> {
        self.tokens.get(sha256)
    }

    /// The memberships of signed-in user `user_id` (none: not a member anywhere, or no
    /// such user any more).
    pub fn memberships(&self, user_id: &str) -> &[Grant] {
        self.members.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// The public key `kid` names.
    pub fn signing_key(&self, kid: &str) -> Option<&[u8]> {
        self.signing_keys.get(kid).map(Vec::as_slice)
    }

    pub fn function(&self, org: &str, name: &str) -> Option<&FunctionEntry> {
        self.functions.get(&(org.to_string(), name.to_string()))
    }

    /// The function bound to contract `name` (`email.sender@1`) in `org`.
    pub fn contract(&self, org: &str, name: &str) -> Option<&BoundContract> {
        self.contracts.get(&(org.to_string(), name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_proto::routing::WorkerEndpoint;

    fn table(workers: &[&str]) -> RoutingTable {
        RoutingTable {
            version: 1,
            workers: workers
                .iter()
                .map(|id| WorkerEndpoint {
                    worker_id: id.to_string(),
                    runtime: "wasm".into(),
                    url: format!("http://{id}:7080"),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_deployment_sticks_to_its_worker_and_moves_only_when_it_leaves() {
        let three = RouteIndex::build(&table(&["w1", "w2", "w3"]));
        let deployments: Vec<String> = (0..300).map(|i| format!("dep_{i}")).collect();
        let picked: Vec<String> = deployments
            .iter()
            .map(|d| {
                three
                    .pick_worker(Runtime::Wasm, d)
                    .expect("a worker")
                    .id
                    .clone()
            })
            .collect();
        for w in ["w1", "w2", "w3"] {
            let n = picked.iter().filter(|p| *p == w).count();
            assert!((50..=150).contains(&n), "{w} got {n} of 300");
        }
        let two = RouteIndex::build(&table(&["w1", "w3"]));
        for (d, before) in deployments.iter().zip(&picked) {
            let after = &two.pick_worker(Runtime::Wasm, d).expect("a worker").id;
            if before != "w2" {
                assert_eq!(after, before, "{d} moved although its worker stayed");
            }
        }
        assert!(two.pick_worker(Runtime::Bun, "dep_1").is_none());
        // A worker that is down is skipped for the next one, unless none is left.
        let d = &deployments[0];
        let first = three
            .pick_worker(Runtime::Wasm, d)
            .expect("a worker")
            .id
            .clone();
        let next = three
            .pick_worker_where(Runtime::Wasm, d, |w| w.id != first)
            .expect("another worker");
        assert_ne!(next.id, first);
        let any = three
            .pick_worker_where(Runtime::Wasm, d, |_| false)
            .expect("fallback");
        assert_eq!(any.id, first);
    }

    #[test]
    fn candidates_come_in_rendezvous_order_home_first() {
        let three = RouteIndex::build(&table(&["w1", "w2", "w3"]));
        for d in ["dep_a", "dep_b", "dep_c", "dep_d"] {
            let home = three.pick_worker(Runtime::Wasm, d).expect("a worker");
            let order = three.pick_workers(Runtime::Wasm, d, |_| true);
            assert_eq!(order.len(), 3);
            assert_eq!(order[0], home.url, "{d}: the home worker comes first");
            let skipping = three.pick_workers(Runtime::Wasm, d, |w| w.url != home.url);
            assert_eq!(
                skipping,
                order[1..].to_vec(),
                "{d}: the rest keep their order"
            );
        }
        // None usable: the home worker alone.
        let none = three.pick_workers(Runtime::Wasm, "dep_a", |_| false);
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn routers_rank_workers_as_the_control_plane_does() {
        let ids: Vec<String> = (0..12).map(|i| format!("w{i:02}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let index = RouteIndex::build(&table(&refs));
        for i in 0..50 {
            let d = format!("dep_{i}");
            let shared: Vec<String> = rendezvous::rank(&ids, |id| id.as_str(), &d)
                .into_iter()
                .take(MAX_CANDIDATES)
                .map(|id| format!("http://{id}:7080"))
                .collect();
            let picked: Vec<String> = index
                .pick_workers(Runtime::Wasm, &d, |_| true)
                .iter()
                .map(|u| u.to_string())
                .collect();
            assert_eq!(picked, shared, "{d}");
            let home = index.pick_worker(Runtime::Wasm, &d).expect("a worker");
            assert_eq!(&*home.url, shared[0].as_str(), "{d}");
        }
    }
}
