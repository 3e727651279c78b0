//! Promote's safety, in process (SQLite, a test release step in place of Lambda's): one
//! function's stalled release holds up no other function's promote; a live deployment the
//! store fails to record moves the release back; deployments are not read by invokers.

use async_trait::async_trait;
use reactor_api::config::FunctionsConfig;
use reactor_api::model::{DeploymentStatus, Role};
use reactor_api::{
    Builder, Builders, DeploymentSpec, ErrorCode, Release, Releases, Runtime, RuntimeRole, Runtimes,
};
use reactor_control_plane::auth::Caller;
use reactor_control_plane::backends::Backends;
use reactor_control_plane::secrets::Sealed;
use reactor_control_plane::store::{
    ContractRecord, DeploymentRecord, EnvRecord, FunctionRecord, OrgRecord, SecretRow, Store,
    StoreError, TokenRecord,
};
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, RuntimeRoles};
use reactor_tests::wait_until;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The release step under test: records every `go_live` (deployment ids, in order) and
/// holds those of function `stall` until [`Gate::open`].
struct Gate {
    calls: Mutex<Vec<String>>,
    stall: String,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    fn new(stall: &str) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            stall: stall.to_string(),
            open: tokio::sync::watch::channel(false).0,
        })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    fn count(&self, deployment_id: &str) -> usize {
        self.calls().iter().filter(|c| *c == deployment_id).count()
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

impl RuntimeRole for Gate {
    fn runtime(&self) -> Runtime {
        Runtime::Wasm
    }
}

#[async_trait]
impl Release for Gate {
    async fn go_live(&self, spec: &DeploymentSpec) -> Result<(), String> {
        self.calls
            .lock()
            .expect("calls")
            .push(spec.deployment_id.clone());
        if spec.function == self.stall {
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
        }
        Ok(())
    }
}

/// Promote needs a builder for the runtime; the deployments here are recorded ready.
struct NoBuild;

impl RuntimeRole for NoBuild {
    fn runtime(&self) -> Runtime {
        Runtime::Wasm
    }
}

#[async_trait]
impl Builder for NoBuild {
    async fn build(&self, _spec: &DeploymentSpec, _dir: &Path) -> Result<(), String> {
        Err("nothing is built in this test".into())
    }
}

/// The real store, whose `set_live` fails while `fail_set_live` is set.
struct Flaky {
    inner: Arc<dyn Store>,
    fail_set_live: AtomicBool,
}

#[async_trait]
impl Store for Flaky {
    async fn create_org(&self, org: &OrgRecord) -> Result<(), StoreError> {
        self.inner.create_org(org).await
    }
    async fn get_org(&self, name: &str) -> Result<Option<OrgRecord>, StoreError> {
        self.inner.get_org(name).await
    }
    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.inner.insert_token(token).await
    }
    async fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token_by_hash(sha256).await
    }
    async fn list_tokens(&self, org: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.list_tokens(org).await
    }
    async fn revoke_token(&self, org: &str, id: &str, at: &str) -> Result<bool, StoreError> {
        self.inner.revoke_token(org, id, at).await
    }
    async fn create_function(&self, f: &FunctionRecord) -> Result<(), StoreError> {
        self.inner.create_function(f).await
    }
    async fn get_function(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        self.inner.get_function(org, name).await
    }
    async fn list_functions(&self, org: &str) -> Result<Vec<FunctionRecord>, StoreError> {
        self.inner.list_functions(org).await
    }
    async fn delete_function(&self, org: &str, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_function(org, name).await
    }
    async fn set_live(&self, org: &str, name: &str, deployment_id: &str) -> Result<(), StoreError> {
        if self.fail_set_live.load(Ordering::SeqCst) {
            return Err(StoreError::Database(
                "injected: the database went away".into(),
            ));
        }
        self.inner.set_live(org, name, deployment_id).await
    }
    async fn insert_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError> {
        self.inner.insert_deployment(d).await
    }
    async fn get_deployment(
        &self,
        org: &str,
        function: &str,
        id: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        self.inner.get_deployment(org, function, id).await
    }
    async fn list_deployments(
        &self,
        org: &str,
        function: &str,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.inner.list_deployments(org, function).await
    }
    async fn set_deployment_status(
        &self,
        id: &str,
        status: DeploymentStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.inner.set_deployment_status(id, status, error).await
    }
    async fn list_materializing(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.inner.list_materializing().await
    }
    async fn collectable_deployments(
        &self,
        before: &str,
        keep_ready: u32,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        self.inner.collectable_deployments(before, keep_ready).await
    }
    async fn delete_deployment(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.delete_deployment(id).await
    }
    async fn set_env(&self, org: &str, function: &str, e: &EnvRecord) -> Result<(), StoreError> {
        self.inner.set_env(org, function, e).await
    }
    async fn list_env(&self, org: &str, function: &str) -> Result<Vec<EnvRecord>, StoreError> {
        self.inner.list_env(org, function).await
    }
    async fn delete_env(&self, org: &str, function: &str, key: &str) -> Result<bool, StoreError> {
        self.inner.delete_env(org, function, key).await
    }
    async fn deployment_env(&self, deployment_id: &str) -> Result<Vec<EnvRecord>, StoreError> {
        self.inner.deployment_env(deployment_id).await
    }
    async fn secrets(&self) -> Result<Vec<(SecretRow, Sealed)>, StoreError> {
        self.inner.secrets().await
    }
    async fn replace_secret(
        &self,
        row: &SecretRow,
        old: &Sealed,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        self.inner.replace_secret(row, old, sealed).await
    }
    async fn set_function_policy(
        &self,
        org: &str,
        function: &str,
        policy: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.inner.set_function_policy(org, function, policy).await
    }
    async fn create_contract(&self, c: &ContractRecord) -> Result<(), StoreError> {
        self.inner.create_contract(c).await
    }
    async fn get_contract(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<ContractRecord>, StoreError> {
        self.inner.get_contract(org, name).await
    }
    async fn list_contracts(&self, org: &str) -> Result<Vec<ContractRecord>, StoreError> {
        self.inner.list_contracts(org).await
    }
    async fn delete_contract(&self, org: &str, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_contract(org, name).await
    }
    async fn bind_contract(
        &self,
        org: &str,
        name: &str,
        function: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.inner.bind_contract(org, name, function).await
    }
    async fn bound_contracts(&self) -> Result<Vec<ContractRecord>, StoreError> {
        self.inner.bound_contracts().await
    }
    fn accounts(&self) -> &dyn reactor_control_plane::store::Accounts {
        self.inner.accounts()
    }
    async fn next_routing_version(&self) -> Result<u64, StoreError> {
        self.inner.next_routing_version().await
    }
    async fn routing_snapshot(
        &self,
    ) -> Result<
        (
            Vec<(FunctionRecord, Option<DeploymentRecord>)>,
            Vec<TokenRecord>,
        ),
        StoreError,
    > {
        self.inner.routing_snapshot().await
    }
}

/// A control plane over SQLite in `dir`, with `gate` as wasm's release step; and the
/// admin of its bootstrap org, acme.
async fn start(dir: &Path, gate: Arc<Gate>) -> (Arc<ControlPlane>, Arc<Flaky>, Caller) {
    let config = FunctionsConfig {
        workdir: dir.to_path_buf(),
        ..Default::default()
    };
    let b = Backends::open(&config).await.expect("backends");
    let store = Arc::new(Flaky {
        inner: b.store,
        fail_set_live: AtomicBool::new(false),
    });
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store: store.clone(),
        storage: b.storage,
        runtimes: RuntimeRoles {
            builders: Builders::new().with(Arc::new(NoBuild)),
            releases: Releases::new().with(gate),
            workers: Runtimes::new(),
        },
        worker_timing: Default::default(),
        remote_workers: None,
        env: b.env,
        logs: b.logs,
    })
    .await
    .expect("control plane");
    let boot = cp.bootstrap("acme", None, None).await.expect("bootstrap");
    let admin = caller(&cp, &boot.token, "acme").await;
    (cp, store, admin)
}

async fn caller(cp: &ControlPlane, token: &str, org: &str) -> Caller {
    cp.authenticate(Some(&format!("Bearer {token}")), Some(org))
        .await
        .expect("caller")
}

/// Records a ready deployment `id` of `function`, as a finished build would.
async fn ready(store: &dyn Store, org: &str, function: &str, id: &str) {
    store
        .insert_deployment(&DeploymentRecord {
            id: id.into(),
            org: org.into(),
            function: function.into(),
            status: DeploymentStatus::Ready,
            error: None,
            sha256: "0".repeat(64),
            size_bytes: 1,
            entrypoint: "main.wasm".into(),
            bundle_key: format!("{org}/{function}/{id}.tar.gz"),
            timeout_ms: 1000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
            created_at: "2026-12-06T00:00:00.000Z".into(),
            policy: None,
            calls: None,
            interceptors: None,
            pool: None,
            contract: None,
        })
        .await
        .expect("deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_release_holds_up_only_its_own_function() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Gate::new("slow");
    let (cp, store, acme) = start(dir.path(), gate.clone()).await;
    let beta = cp.create_org(&acme, "beta").await.expect("org beta");
    let beta = caller(&cp, &beta.admin_token.token, "beta").await;
    cp.create_function(&acme, "slow", Runtime::Wasm)
        .await
        .expect("create slow");
    cp.create_function(&beta, "fast", Runtime::Wasm)
        .await
        .expect("create fast");
    ready(store.as_ref(), "acme", "slow", "dep_slow").await;
    ready(store.as_ref(), "beta", "fast", "dep_fast").await;

    let promote = |caller: &Caller, name: &'static str| {
        let (cp, caller) = (cp.clone(), caller.clone());
        tokio::spawn(async move { cp.promote(&caller, name, None).await })
    };
    let slow = promote(&acme, "slow");
    wait_until(Duration::from_secs(10), || {
        let gate = gate.clone();
        async move { (gate.count("dep_slow") == 1).then_some(()) }
    })
    .await
    .expect("acme's promote reached its release step");
    // A second promote of the same function queues behind the first.
    let again = promote(&acme, "slow");

    let fast = tokio::time::timeout(Duration::from_secs(5), cp.promote(&beta, "fast", None))
        .await
        .expect("beta's promote does not wait for acme's stalled release")
        .expect("promote fast");
    assert!(fast.live, "{fast:?}");
    assert!(!slow.is_finished(), "acme's release is still held");
    assert_eq!(
        gate.count("dep_slow"),
        1,
        "the second promote of slow waits for the first"
    );

    gate.open();
    let slow = slow.await.expect("task").expect("promote slow");
    assert!(slow.live, "{slow:?}");
    again.await.expect("task").expect("second promote of slow");
    assert_eq!(gate.calls(), ["dep_slow", "dep_fast", "dep_slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_deployment_the_store_cannot_record_moves_the_release_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Gate::new("");
    let (cp, store, acme) = start(dir.path(), gate.clone()).await;
    cp.create_function(&acme, "api", Runtime::Wasm)
        .await
        .expect("create");
    ready(store.as_ref(), "acme", "api", "dep_1").await;
    cp.promote(&acme, "api", Some("dep_1"))
        .await
        .expect("promote dep_1");
    ready(store.as_ref(), "acme", "api", "dep_2").await;

    store.fail_set_live.store(true, Ordering::SeqCst);
    let err = cp
        .promote(&acme, "api", Some("dep_2"))
        .await
        .expect_err("the store fails");
    assert_eq!(err.code, ErrorCode::Internal, "{err:?}");
    assert_eq!(
        gate.calls(),
        ["dep_1", "dep_2", "dep_1"],
        "the release moved back to the live deployment"
    );
    store.fail_set_live.store(false, Ordering::SeqCst);
    let f = cp.get_function(&acme, "api").await.expect("function");
    assert_eq!(f.live_deployment_id.as_deref(), Some("dep_1"));

    // A retry sets both.
    cp.promote(&acme, "api", Some("dep_2"))
        .await
        .expect("promote dep_2");
    assert_eq!(gate.calls(), ["dep_1", "dep_2", "dep_1", "dep_2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_are_read_by_developers_not_invokers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cp, store, acme) = start(dir.path(), Gate::new("")).await;
    cp.create_function(&acme, "api", Runtime::Wasm)
        .await
        .expect("create");
    ready(store.as_ref(), "acme", "api", "dep_1").await;
    let token = |role| {
        let (cp, acme) = (cp.clone(), acme.clone());
        async move {
            let t = cp.create_token(&acme, role, None).await.expect("token");
            caller(&cp, &t.token, "acme").await
        }
    };
    let developer = token(Role::Developer).await;
    let invoker = token(Role::Invoker).await;

    let listed = cp
        .list_deployments(&developer, "api")
        .await
        .expect("a developer lists deployments");
    assert_eq!(
        listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["dep_1"]
    );
    cp.get_deployment(&developer, "api", "dep_1")
        .await
        .expect("a developer reads a deployment");

    let err = cp
        .list_deployments(&invoker, "api")
        .await
        .expect_err("an invoker may not list deployments");
    assert_eq!(err.code, ErrorCode::Forbidden, "{err:?}");
    let err = cp
        .get_deployment(&invoker, "api", "dep_1")
        .await
        .expect_err("an invoker may not read a deployment");
    assert_eq!(err.code, ErrorCode::Forbidden, "{err:?}");
}
