//! What bounds the admin API's cost, in process (SQLite, local storage, no worker): a
//! repeated bad token is looked up once; an upload has a deadline and an org a bounded
//! number of uploads in progress (over real HTTP, the admin router driven with `oneshot`);
//! garbage collection keeps live deployments and rollback targets and deletes the rest.

use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use reactor_api::config::FunctionsConfig;
use reactor_api::model::{DeploymentStatus, Role};
use reactor_api::{ErrorCode, Runtime};
use reactor_control_plane::auth::Caller;
use reactor_control_plane::backends::Backends;
use reactor_control_plane::secrets::Sealed;
use reactor_control_plane::store::{
    ContractRecord, DeploymentRecord, EnvRecord, EnvValue, FunctionRecord, OrgRecord, SecretRow,
    Store, StoreError, TokenRecord,
};
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, gc, http::admin_router};
use reactor_storage::keys;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceExt;

/// The bootstrap admin's token, as an operator gives it.
const TOKEN: &str = "rct_AdminLimitsTestTokenAdminLimitsTestToken01";

/// The real store, counting token lookups.
struct Counting {
    inner: Arc<dyn Store>,
    token_lookups: AtomicUsize,
}

#[async_trait]
impl Store for Counting {
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
        self.token_lookups.fetch_add(1, Ordering::SeqCst);
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

/// A control plane on its own workdir (no runtime roles: nothing is built), with the
/// bootstrap org `acme` whose admin holds [`TOKEN`].
struct Harness {
    cp: Arc<ControlPlane>,
    store: Arc<Counting>,
    backends: (Arc<dyn Store>, Arc<dyn reactor_storage::Storage>),
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(tune: impl FnOnce(&mut FunctionsConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = FunctionsConfig {
            workdir: dir.path().to_path_buf(),
            ..Default::default()
        };
        tune(&mut config);
        let b = Backends::open(&config).await.expect("backends");
        let store = Arc::new(Counting {
            inner: b.store.clone(),
            token_lookups: AtomicUsize::new(0),
        });
        let cp = ControlPlane::start(ControlPlaneOptions {
            config,
            store: store.clone(),
            storage: b.storage.clone(),
            runtimes: Default::default(),
            worker_timing: Default::default(),
            remote_workers: None,
            env: b.env,
            logs: b.logs,
        })
        .await
        .expect("control plane");
        cp.bootstrap("acme", Some(TOKEN), None)
            .await
            .expect("bootstrap");
        Self {
            cp,
            store,
            backends: (b.store, b.storage),
            _dir: dir,
        }
    }

    async fn caller(&self, token: &str) -> Caller {
        self.cp
            .authenticate(Some(&format!("Bearer {token}")), None)
            .await
            .expect("a valid token")
    }

    fn lookups(&self) -> usize {
        self.store.token_lookups.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_repeated_bad_token_is_looked_up_once_and_revocation_still_applies_at_once() {
    let h = Harness::start(|_| {}).await;
    let bad = "Bearer rct_NotAValidTokenNotAValidTokenNotAValidTok";
    let before = h.lookups();
    for _ in 0..100 {
        let e =
            h.cp.authenticate(Some(bad), Some("acme"))
                .await
                .expect_err("a bad token is refused");
        assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
    }
    let spent = h.lookups() - before;
    assert!(
        spent <= 1,
        "100 tries of one bad token cost {spent} token lookups"
    );

    // Valid tokens are not cached: a revoked one is refused on its next request.
    let admin = h.caller(TOKEN).await;
    let dev =
        h.cp.create_token(&admin, Role::Developer, Some("dev"))
            .await
            .expect("create token");
    h.caller(&dev.token).await;
    h.cp.revoke_token(&admin, &dev.id).await.expect("revoke");
    let e =
        h.cp.authenticate(Some(&format!("Bearer {}", dev.token)), None)
            .await
            .expect_err("a revoked token is refused at once");
    assert_eq!(e.code, ErrorCode::Unauthorized);

    // A chosen token refused before it existed is accepted once it is inserted.
    let chosen = "rct_ChosenLaterChosenLaterChosenLaterChosenLat";
    let e =
        h.cp.authenticate(Some(&format!("Bearer {chosen}")), None)
            .await
            .expect_err("not a token yet");
    assert_eq!(e.code, ErrorCode::Unauthorized);
    h.cp.bootstrap("acme", Some(chosen), None)
        .await
        .expect("bootstrap with the chosen token");
    assert_eq!(h.caller(chosen).await.org, "acme");
}

/// A request to the admin router as `token`, served on a task of its own.
fn send(
    app: &axum::Router,
    token: &str,
    method: &str,
    path: &str,
    body: Body,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .expect("request");
    let app = app.clone();
    tokio::spawn(async move {
        let resp = app.oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

/// The response of `call`, which must come within `limit`.
async fn answer(
    call: tokio::task::JoinHandle<(StatusCode, Value)>,
    limit: Duration,
) -> (StatusCode, Value) {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| panic!("no response within {limit:?}"))
        .expect("request task")
}

type Chunks = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// An upload of function `name` whose body never ends, returned once the server has read
/// its first chunk (so it holds its upload slot). Dropping the sender ends the body.
async fn stalled_upload(
    app: &axum::Router,
    token: &str,
    name: &str,
) -> (tokio::task::JoinHandle<(StatusCode, Value)>, Chunks) {
    let (tx, rx) = mpsc::channel(1);
    let call = send(
        app,
        token,
        "POST",
        &format!("/fn/v1/_admin/functions/{name}/deployments"),
        Body::from_stream(ReceiverStream::new(rx)),
    );
    // With room for one chunk, the second is accepted once the first was read.
    for part in ["first", "second"] {
        tokio::time::timeout(
            Duration::from_secs(10),
            tx.send(Ok(Bytes::from_static(part.as_bytes()))),
        )
        .await
        .expect("the server reads the upload")
        .expect("the body is open");
    }
    (call, tx)
}

/// A small WASM bundle: accepted (202) and then fails to build, there being no worker.
fn wasm_bundle() -> Body {
    Body::from(reactor_tests::bundle(&[(
        "app.wasm",
        &b"\0asm\x01\0\0\0"[..],
    )]))
}

async fn create_function(cp: &ControlPlane, caller: &Caller, name: &str) {
    cp.create_function(caller, name, Runtime::Wasm)
        .await
        .expect("create function");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_does_not_complete_in_time_is_refused_and_frees_its_slot() {
    let h = Harness::start(|c| {
        c.upload_timeout_secs = 1;
        c.uploads_per_org = 1;
    })
    .await;
    let admin = h.caller(TOKEN).await;
    create_function(&h.cp, &admin, "slow").await;
    let app = admin_router(h.cp.clone());

    let started = Instant::now();
    let (call, _held_open) = stalled_upload(&app, TOKEN, "slow").await;
    let (status, body) = answer(call, Duration::from_secs(10)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the upload did not complete within 1 s"),
        "{message}"
    );
    // Answered at the deadline, not after draining the stalled body.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered after {:?}",
        started.elapsed()
    );
    assert!(
        h.cp.list_deployments(&admin, "slow")
            .await
            .expect("list")
            .is_empty()
    );

    // Its slot (the org's only one) is free again.
    let call = send(
        &app,
        TOKEN,
        "POST",
        "/fn/v1/_admin/functions/slow/deployments",
        wasm_bundle(),
    );
    let (status, body) = answer(call, Duration::from_secs(10)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_has_at_most_uploads_per_org_uploads_in_progress() {
    let h = Harness::start(|c| {
        c.upload_timeout_secs = 60;
        c.uploads_per_org = 2;
    })
    .await;
    let admin = h.caller(TOKEN).await;
    create_function(&h.cp, &admin, "app").await;
    let beta = h.cp.create_org(&admin, "beta").await.expect("create org");
    let beta_admin = h.caller(&beta.admin_token.token).await;
    create_function(&h.cp, &beta_admin, "app").await;
    let app = admin_router(h.cp.clone());
    let path = "/fn/v1/_admin/functions/app/deployments";

    let (first, first_body) = stalled_upload(&app, TOKEN, "app").await;
    let (_second, _second_body) = stalled_upload(&app, TOKEN, "app").await;

    // A third upload of acme is refused whole, and nothing is recorded.
    let (status, body) = answer(
        send(&app, TOKEN, "POST", path, wasm_bundle()),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_requests")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("uploads_per_org"), "{message}");
    assert!(
        h.cp.list_deployments(&admin, "app")
            .await
            .expect("list")
            .is_empty()
    );

    // Another org's upload goes through.
    let (status, body) = answer(
        send(&app, &beta.admin_token.token, "POST", path, wasm_bundle()),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Once an upload of acme ends (its body is not a bundle), its slot is free again.
    drop(first_body);
    let (status, body) = answer(first, Duration::from_secs(10)).await;
    assert!(status.is_client_error(), "{status} {body}");
    let (status, body) = answer(
        send(&app, TOKEN, "POST", path, wasm_bundle()),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_keeps_the_live_deployment_and_rollback_targets() {
    let h = Harness::start(|_| {}).await;
    let admin = h.caller(TOKEN).await;
    create_function(&h.cp, &admin, "gc").await;
    let (store, storage) = &h.backends;
    store
        .set_env(
            "acme",
            "gc",
            &EnvRecord {
                key: "GREETING".into(),
                value: EnvValue::Plain("hello".into()),
                updated_at: "2020-01-01T00:00:00.000Z".into(),
            },
        )
        .await
        .expect("set env");

    // Eight ready deployments uploaded in 2020 and one failed, each with its bundle and
    // an artifact; the second is live.
    let mut ids: Vec<String> = (0..8).map(|i| format!("dep_{i}")).collect();
    ids.push("dep_failed".into());
    let artifact = |id: &str| keys::artifact("acme", "gc", id, "component.cwasm");
    for (i, id) in ids.iter().enumerate() {
        let d = DeploymentRecord {
            id: id.clone(),
            org: "acme".into(),
            function: "gc".into(),
            status: if i < 8 {
                DeploymentStatus::Ready
            } else {
                DeploymentStatus::Failed
            },
            error: None,
            sha256: "ab".repeat(32),
            size_bytes: 5,
            entrypoint: "app.wasm".into(),
            bundle_key: keys::bundle("acme", "gc", id),
            timeout_ms: 30_000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
            created_at: format!("2020-01-01T00:00:0{i}.000Z"),
            policy: None,
            calls: None,
            interceptors: None,
            pool: None,
            contract: None,
        };
        storage
            .put_bytes(&d.bundle_key, Bytes::from_static(b"tar.gz"))
            .await
            .expect("put bundle");
        storage
            .put_bytes(&artifact(id), Bytes::from_static(b"cwasm"))
            .await
            .expect("put artifact");
        store
            .insert_deployment(&d)
            .await
            .expect("insert deployment");
    }
    store.set_live("acme", "gc", "dep_1").await.expect("live");

    // Within the retention (7 days by default), nothing goes.
    let soon = humantime::parse_rfc3339("2020-01-05T00:00:00Z").expect("time");
    let collected = gc::run_once(&h.cp, soon).await.expect("gc");
    assert_eq!(collected, gc::Collected::default());

    // Past it: the live one and the 5 newest ready ones stay.
    let collected = gc::run_once(&h.cp, SystemTime::now()).await.expect("gc");
    let gone = ["dep_0", "dep_2", "dep_failed"];
    assert_eq!(
        (collected.deployments.as_slice(), collected.failed),
        (&gone.map(String::from)[..], 0)
    );
    for id in &ids {
        let kept = !gone.contains(&id.as_str());
        let bundle = keys::bundle("acme", "gc", id);
        assert_eq!(
            storage.exists(&bundle).await.expect("exists"),
            kept,
            "bundle of {id}"
        );
        assert_eq!(
            storage.exists(&artifact(id)).await.expect("exists"),
            kept,
            "artifact of {id}"
        );
        assert_eq!(
            store
                .get_deployment("acme", "gc", id)
                .await
                .expect("get")
                .is_some(),
            kept,
            "row of {id}"
        );
        assert_eq!(
            store.deployment_env(id).await.expect("pinned env").len(),
            usize::from(kept),
            "pinned env of {id}"
        );
    }

    // A collected deployment cannot be rolled back to, and says so.
    let e =
        h.cp.rollback(&admin, "gc", "dep_0")
            .await
            .expect_err("collected");
    assert_eq!(e.code, ErrorCode::DeploymentNotFound, "{e:?}");
    // A second run finds nothing more.
    let again = gc::run_once(&h.cp, SystemTime::now()).await.expect("gc");
    assert_eq!(again, gc::Collected::default());
}
