//! The bounds on warm instances, in process (SQLite): a manifest's
//! `concurrency.min_instances` past `max_min_instances` gets 422 `manifest_invalid`; an
//! upload whose `min_instances`, added to those of the org's other live deployments,
//! passes `max_warm_instances_per_org` gets 429 `quota_exceeded`. The function's own live
//! deployment is not counted (the upload would replace it), nor another org's.

use async_trait::async_trait;
use bytes::Bytes;
use reactor_api::config::FunctionsConfig;
use reactor_api::model::{DeploymentInfo, DeploymentStatus};
use reactor_api::{
    ApiError, Builder, Builders, DeploymentSpec, ErrorCode, Releases, Runtime, RuntimeRole,
    Runtimes,
};
use reactor_control_plane::auth::Caller;
use reactor_control_plane::backends::Backends;
use reactor_control_plane::store::{DeploymentRecord, Store};
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, RuntimeRoles};
use std::path::Path;
use std::sync::Arc;

/// Upload needs a builder for the runtime; nothing here is built.
struct NoBuild;

impl RuntimeRole for NoBuild {
    fn runtime(&self) -> Runtime {
        Runtime::Wasm
    }
}

#[async_trait]
impl Builder for NoBuild {
    async fn build(&self, _spec: &DeploymentSpec, _dir: &Path) -> Result<(), String> {
        // Nothing to build: the deployment is ready at once, so it can be promoted.
        Ok(())
    }
}

struct Harness {
    cp: Arc<ControlPlane>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn start() -> (Harness, Caller) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        max_min_instances: 8,
        max_warm_instances_per_org: 10,
        ..Default::default()
    };
    let b = Backends::open(&config).await.expect("backends");
    let store = b.store.clone();
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store: b.store,
        storage: b.storage,
        runtimes: RuntimeRoles {
            builders: Builders::new().with(Arc::new(NoBuild)),
            releases: Releases::new(),
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
    (
        Harness {
            cp,
            store,
            _dir: dir,
        },
        admin,
    )
}

async fn caller(cp: &ControlPlane, token: &str, org: &str) -> Caller {
    cp.authenticate(Some(&format!("Bearer {token}")), Some(org))
        .await
        .expect("caller")
}

impl Harness {
    /// Creates `function` with a live deployment keeping `min_instances` warm.
    async fn live(&self, caller: &Caller, function: &str, min_instances: u32) {
        self.cp
            .create_function(caller, function, Runtime::Wasm)
            .await
            .expect("create function");
        let id = format!("dep_{function}");
        self.store
            .insert_deployment(&DeploymentRecord {
                id: id.clone(),
                org: caller.org.clone(),
                function: function.into(),
                status: DeploymentStatus::Ready,
                error: None,
                sha256: "0".repeat(64),
                size_bytes: 1,
                entrypoint: "main.wasm".into(),
                bundle_key: format!("{}/{function}/{id}.tar.gz", caller.org),
                timeout_ms: 1000,
                memory_mb: 128,
                min_instances,
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
        self.store
            .set_live(&caller.org, function, &id)
            .await
            .expect("set live");
    }

    /// Waits (a bounded time) for deployment `id` of `function` to be ready.
    async fn ready(&self, caller: &Caller, function: &str, id: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let d = self
                .cp
                .get_deployment(caller, function, id)
                .await
                .expect("deployment");
            if d.status == DeploymentStatus::Ready {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} is {:?}",
                d.status
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Uploads a bundle whose manifest keeps `min_instances` warm.
    async fn upload(
        &self,
        caller: &Caller,
        function: &str,
        min_instances: u32,
    ) -> Result<DeploymentInfo, ApiError> {
        let manifest = format!(r#"{{"concurrency":{{"min_instances":{min_instances}}}}}"#);
        let archive = reactor_tests::bundle(&[
            ("main.wasm", b"\0asm".as_slice()),
            ("manifest.json", manifest.as_bytes()),
        ]);
        let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(archive))]);
        self.cp.upload(caller, function, None, None, body).await
    }
}

fn refused(result: Result<DeploymentInfo, ApiError>, code: ErrorCode, what: &str) -> String {
    match result {
        Ok(info) => panic!("{what} was accepted: {info:?}"),
        Err(e) => {
            assert_eq!(e.code, code, "{what}: {}", e.message);
            e.message
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_is_bounded_per_manifest_and_summed_per_org() {
    let (h, acme) = start().await;
    let beta = h.cp.create_org(&acme, "beta").await.expect("org beta");
    let beta = caller(&h.cp, &beta.admin_token.token, "beta").await;
    // acme keeps 4 + 3 warm; beta's 8 are its own.
    h.live(&acme, "a", 4).await;
    h.live(&acme, "b", 3).await;
    h.live(&beta, "z", 8).await;
    h.cp.create_function(&acme, "c", Runtime::Wasm)
        .await
        .expect("create c");

    let message = refused(
        h.upload(&acme, "c", 9).await,
        ErrorCode::ManifestInvalid,
        "min_instances past max_min_instances",
    );
    assert!(message.contains("0-8"), "{message}");

    let message = refused(
        h.upload(&acme, "c", 4).await,
        ErrorCode::QuotaExceeded,
        "4 + 3 + 4 warm instances past 10",
    );
    assert!(message.contains("max_warm_instances_per_org"), "{message}");
    let c3 = h
        .upload(&acme, "c", 3)
        .await
        .expect("4 + 3 + 3 is the quota: accepted");

    // A new deployment of `a` replaces its live one: 3 + 7 counts, not 4 + 3 + 7.
    let a7 = h
        .upload(&acme, "a", 7)
        .await
        .expect("a's own live deployment is not counted");
    // Each upload was within the quota alone; promoting both is not.
    for (f, d) in [("a", &a7.id), ("c", &c3.id)] {
        h.ready(&acme, f, d).await;
    }
    h.cp.promote(&acme, "a", Some(&a7.id))
        .await
        .expect("7 + 3 is the quota: promoted");
    let message = match h.cp.promote(&acme, "c", Some(&c3.id)).await {
        Ok(info) => panic!("7 + 3 + 3 warm instances were promoted: {info:?}"),
        Err(e) => {
            assert_eq!(e.code, ErrorCode::QuotaExceeded, "{}", e.message);
            e.message
        }
    };
    assert!(message.contains("13 instances warm"), "{message}");
    refused(
        h.upload(&acme, "a", 8).await,
        ErrorCode::QuotaExceeded,
        "3 + 8 warm instances past 10",
    );
    h.upload(&acme, "a", 0)
        .await
        .expect("no warm instance: always accepted");
    // beta's 8 are not acme's, and acme's not beta's.
    h.upload(&beta, "z", 8)
        .await
        .expect("beta alone is within its quota");
}
