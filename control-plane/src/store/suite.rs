//! The store suite: one named case per behaviour every [`Store`] must show, each run as a
//! test of its own on SQLite (`sqlite::<case>`, a fresh file) and on PostgreSQL
//! (`postgres::<case>`, a fresh database on the server at `REACTOR_TEST_POSTGRES_URL`,
//! by default the local one with trust auth, dropped at the end).

use super::{
    Accounts, ContractRecord, DeploymentRecord, Dialect, Entity, EnvRecord, EnvValue,
    FunctionRecord, MemberRecord, OrgRecord, SecretRow, SessionRecord, SigningKeyRecord, SqlStore,
    Store, StoreError, TokenRecord, UserRecord,
};
use crate::secrets::Sealed;
use reactor_api::Runtime;
use reactor_api::model::{DeploymentStatus, Role};
use std::path::PathBuf;

/// For each case, a test per backend: `sqlite::<case>` and `postgres::<case>`.
macro_rules! store_suite {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let location = super::Location::File(dir.path().join("reactor.db"));
                    let mut backend = super::Backend::open(location).await;
                    super::$case(&mut backend).await;
                    backend.store.close().await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let admin_url = super::postgres_admin_url();
                    let db = crate::test_support::TestDatabase::create(&admin_url).await;
                    let location = super::Location::Url(db.url.clone());
                    let mut backend = super::Backend::open(location).await;
                    super::$case(&mut backend).await;
                    backend.store.close().await;
                    db.drop_now().await;
                }
            )+
        }
    };
}

store_suite! {
    orgs_are_unique,
    tokens_are_found_by_hash_and_revoked,
    functions_are_unique_per_org,
    deployments_are_listed_newest_first,
    deployment_status_and_error_are_recorded,
    materializing_deployments_are_listed,
    routing_snapshot_has_live_deployments_and_valid_tokens,
    routing_versions_increase_and_survive_a_reopen,
    deleting_a_function_removes_its_deployments,
    env_values_are_pinned_per_deployment,
    secrets_are_resealed_only_under_their_old_key,
    function_policies_are_set_on_existing_functions,
    deleting_a_function_removes_its_env_and_pinned_copies,
    collectable_deployments_spare_live_recent_and_rollback_targets,
    contracts_are_unique_bound_and_unbound_with_their_function,
    users_memberships_and_sessions,
}

/// The PostgreSQL server the tests create their databases on.
fn postgres_admin_url() -> String {
    std::env::var("REACTOR_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Where a case's database lives.
enum Location {
    /// A SQLite file.
    File(PathBuf),
    /// A PostgreSQL database.
    Url(String),
}

impl Location {
    async fn open(&self) -> SqlStore {
        let (store, dialect) = match self {
            Location::File(path) => (SqlStore::open(path).await, Dialect::Sqlite),
            Location::Url(url) => (SqlStore::open_url(url).await, Dialect::Postgres),
        };
        let store = store.unwrap_or_else(|e| panic!("opening the store: {e}"));
        assert_eq!(store.dialect(), dialect);
        store
    }
}

/// The store a case runs on, and where it lives, so that the case can reopen it.
struct Backend {
    store: SqlStore,
    location: Location,
}

impl Backend {
    async fn open(location: Location) -> Self {
        let store = location.open().await;
        Self { store, location }
    }

    /// Closes the store and opens its database again.
    async fn reopen(&mut self) {
        self.store.close().await;
        self.store = self.location.open().await;
    }
}

fn org(name: &str) -> OrgRecord {
    OrgRecord {
        name: name.into(),
        platform: false,
        created_at: "2026-01-01T00:00:00.000Z".into(),
    }
}

fn token(id: &str, org: &str, sha: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        org: org.into(),
        role: Role::Developer,
        name: None,
        sha256: sha.into(),
        created_at: "t".into(),
    }
}

fn function(org: &str, name: &str) -> FunctionRecord {
    FunctionRecord {
        org: org.into(),
        name: name.into(),
        runtime: Runtime::Wasm,
        live_deployment_id: None,
        created_at: "t".into(),
        policy: None,
    }
}

fn deployment(id: &str, org: &str, f: &str) -> DeploymentRecord {
    DeploymentRecord {
        id: id.into(),
        org: org.into(),
        function: f.into(),
        status: DeploymentStatus::Materializing,
        error: None,
        sha256: "ab".repeat(32),
        size_bytes: 42,
        entrypoint: "a.wasm".into(),
        bundle_key: format!("bundles/{org}/{f}/{id}.tar.gz"),
        timeout_ms: 30_000,
        memory_mb: 128,
        min_instances: 1,
        max_concurrency: Some(50),
        created_at: "t".into(),
        policy: None,
        calls: None,
        interceptors: None,
        pool: None,
        contract: None,
    }
}

fn sealed(key_id: &str, byte: u8) -> Sealed {
    Sealed {
        key_id: key_id.into(),
        nonce: vec![byte; 12],
        ciphertext: vec![byte; 20],
    }
}

fn plain_env(key: &str, value: &str, at: &str) -> EnvRecord {
    EnvRecord {
        key: key.into(),
        value: EnvValue::Plain(value.into()),
        updated_at: at.into(),
    }
}

fn secret_env(key: &str, value: Sealed, at: &str) -> EnvRecord {
    EnvRecord {
        key: key.into(),
        value: EnvValue::Secret(value),
        updated_at: at.into(),
    }
}

/// Creates the org `name` with the functions named.
async fn org_with_functions(store: &dyn Store, name: &str, functions: &[&str]) {
    store.create_org(&org(name)).await.expect("create org");
    for f in functions {
        store
            .create_function(&function(name, f))
            .await
            .expect("create function");
    }
}

async fn deploy(store: &dyn Store, id: &str, org: &str, f: &str) {
    store
        .insert_deployment(&deployment(id, org, f))
        .await
        .expect("insert deployment");
}

async fn orgs_are_unique(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    store.create_org(&org("acme")).await.expect("create org");
    store.create_org(&org("beta")).await.expect("create org");
    assert!(matches!(
        store.create_org(&org("acme")).await,
        Err(StoreError::AlreadyExists {
            entity: Entity::Org,
            ..
        })
    ));
    assert_eq!(
        store.get_org("acme").await.expect("get").map(|o| o.name),
        Some("acme".into())
    );
    assert_eq!(store.get_org("nope").await.expect("get"), None);
}

/// Tokens: by hash, scoped by org, revocation.
async fn tokens_are_found_by_hash_and_revoked(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "tok-a", &[]).await;
    org_with_functions(store, "tok-b", &[]).await;
    store
        .insert_token(&token("tok_a", "tok-a", "h1"))
        .await
        .expect("token");
    store
        .insert_token(&token("tok_b", "tok-b", "h2"))
        .await
        .expect("token");
    assert!(matches!(
        store.insert_token(&token("tok_c", "tok-a", "h1")).await,
        Err(StoreError::AlreadyExists {
            entity: Entity::Token,
            ..
        })
    ));
    assert_eq!(
        store
            .token_by_hash("h1")
            .await
            .expect("by hash")
            .map(|t| t.org),
        Some("tok-a".into())
    );
    assert_eq!(store.list_tokens("tok-a").await.expect("list").len(), 1);
    assert!(
        !store
            .revoke_token("tok-b", "tok_a", "t")
            .await
            .expect("revoke"),
        "another org's token"
    );
    assert!(
        store
            .revoke_token("tok-a", "tok_a", "t")
            .await
            .expect("revoke")
    );
    assert_eq!(store.token_by_hash("h1").await.expect("by hash"), None);
    assert!(
        store.list_tokens("tok-a").await.expect("list").is_empty(),
        "revoked tokens are not listed"
    );
    assert!(
        !store
            .revoke_token("tok-a", "tok_a", "t")
            .await
            .expect("revoke twice")
    );
}

async fn functions_are_unique_per_org(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "fn-a", &[]).await;
    org_with_functions(store, "fn-b", &[]).await;
    store
        .create_function(&function("fn-a", "hello"))
        .await
        .expect("create fn");
    store
        .create_function(&function("fn-b", "hello"))
        .await
        .expect("same name, other org");
    assert!(matches!(
        store.create_function(&function("fn-a", "hello")).await,
        Err(StoreError::AlreadyExists {
            entity: Entity::Function,
            ..
        })
    ));
    assert_eq!(store.list_functions("fn-a").await.expect("list").len(), 1);
    assert_eq!(store.get_function("fn-b", "nope").await.expect("get"), None);
}

async fn deployments_are_listed_newest_first(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "dep-a", &["hello"]).await;
    org_with_functions(store, "dep-b", &["hello"]).await;
    for id in ["dep_1", "dep_2", "dep_3"] {
        deploy(store, id, "dep-a", "hello").await;
    }
    let ids: Vec<String> = store
        .list_deployments("dep-a", "hello")
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["dep_3", "dep_2", "dep_1"]);
    assert_eq!(
        store
            .get_deployment("dep-a", "hello", "dep_1")
            .await
            .expect("get"),
        Some(deployment("dep_1", "dep-a", "hello")),
        "a deployment reads back as it was written"
    );
    let mut manifest = deployment("dep_m", "dep-b", "hello");
    manifest.policy = Some(r#"{"allow":[]}"#.into());
    manifest.calls = Some(r#"{"users":{"function":"get-user","timeout_ms":500}}"#.into());
    manifest.interceptors = Some(r#"{"retry":{"max_attempts":2}}"#.into());
    manifest.pool = Some(r#"{"type":"lazy","max_size":4,"idle_ttl_secs":60}"#.into());
    manifest.contract = Some(r#"{"input":{"type":"object"}}"#.into());
    store.insert_deployment(&manifest).await.expect("insert");
    assert_eq!(
        store
            .get_deployment("dep-b", "hello", "dep_m")
            .await
            .expect("get"),
        Some(manifest),
        "policy, calls, interceptors, pool and contract read back as written"
    );
    assert_eq!(
        store
            .get_deployment("dep-b", "hello", "dep_1")
            .await
            .expect("get"),
        None,
        "another org"
    );
}

async fn deployment_status_and_error_are_recorded(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "status", &["hello"]).await;
    deploy(store, "st_1", "status", "hello").await;
    deploy(store, "st_2", "status", "hello").await;
    store
        .set_deployment_status("st_1", DeploymentStatus::Ready, None)
        .await
        .expect("status");
    store
        .set_deployment_status("st_2", DeploymentStatus::Failed, Some("bad"))
        .await
        .expect("status");
    let d1 = store
        .get_deployment("status", "hello", "st_1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((d1.status, d1.error), (DeploymentStatus::Ready, None));
    let d2 = store
        .get_deployment("status", "hello", "st_2")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (d2.status, d2.error.as_deref()),
        (DeploymentStatus::Failed, Some("bad"))
    );
    assert_eq!((d2.min_instances, d2.max_concurrency), (1, Some(50)));
}

async fn materializing_deployments_are_listed(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "mat", &["hello"]).await;
    for id in ["mat_1", "mat_2", "mat_3"] {
        deploy(store, id, "mat", "hello").await;
    }
    assert_eq!(store.list_materializing().await.expect("list").len(), 3);
    store
        .set_deployment_status("mat_1", DeploymentStatus::Ready, None)
        .await
        .expect("status");
    store
        .set_deployment_status("mat_2", DeploymentStatus::Failed, Some("bad"))
        .await
        .expect("status");
    let ids: Vec<String> = store
        .list_materializing()
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["mat_3"]);
}

async fn routing_snapshot_has_live_deployments_and_valid_tokens(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "snap-a", &["hello"]).await;
    org_with_functions(store, "snap-b", &["hello"]).await;
    store
        .insert_token(&token("tok_a", "snap-a", "h1"))
        .await
        .expect("token");
    store
        .insert_token(&token("tok_b", "snap-b", "h2"))
        .await
        .expect("token");
    assert!(
        store
            .revoke_token("snap-a", "tok_a", "t")
            .await
            .expect("revoke")
    );
    deploy(store, "snap_1", "snap-a", "hello").await;
    deploy(store, "snap_2", "snap-a", "hello").await;
    store
        .set_live("snap-a", "hello", "snap_1")
        .await
        .expect("live");
    let (functions, tokens) = store.routing_snapshot().await.expect("snapshot");
    assert_eq!(functions.len(), 2);
    let (f, live) = functions
        .iter()
        .find(|(f, _)| f.org == "snap-a")
        .expect("snap-a/hello");
    assert_eq!(f.live_deployment_id.as_deref(), Some("snap_1"));
    assert_eq!(live.as_ref().map(|d| d.id.as_str()), Some("snap_1"));
    assert!(
        functions
            .iter()
            .any(|(f, live)| f.org == "snap-b" && live.is_none())
    );
    assert_eq!(
        tokens.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["tok_b"],
        "revoked tokens are not pushed"
    );
}

/// The routing version only grows, across restarts too.
async fn routing_versions_increase_and_survive_a_reopen(backend: &mut Backend) {
    let v1 = backend.store.next_routing_version().await.expect("version");
    let v2 = backend.store.next_routing_version().await.expect("version");
    assert!(v2 > v1);
    backend.reopen().await;
    let v3 = backend.store.next_routing_version().await.expect("version");
    assert!(v3 > v2, "{v3} after a reopen, {v2} before");
}

/// Deleting a function deletes its deployments, not other orgs' functions.
async fn deleting_a_function_removes_its_deployments(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "del-a", &["hello"]).await;
    org_with_functions(store, "del-b", &["hello"]).await;
    deploy(store, "del_1", "del-a", "hello").await;
    deploy(store, "del_2", "del-b", "hello").await;
    assert!(
        store
            .delete_function("del-a", "hello")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_function("del-a", "hello")
            .await
            .expect("delete twice")
    );
    assert_eq!(
        store
            .get_deployment("del-a", "hello", "del_1")
            .await
            .expect("get"),
        None
    );
    assert!(
        store
            .get_function("del-b", "hello")
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        store
            .get_deployment("del-b", "hello", "del_2")
            .await
            .expect("get")
            .is_some()
    );
}

/// A deployment pins the env as it is when it is recorded; later changes do not reach it.
async fn env_values_are_pinned_per_deployment(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "env-pin", &["f"]).await;
    let plain = plain_env("PUBLIC", "pk_1", "t1");
    let secret = secret_env("SECRET", sealed("dk_a", 1), "t1");
    store.set_env("env-pin", "f", &plain).await.expect("set");
    store.set_env("env-pin", "f", &secret).await.expect("set");
    assert_eq!(
        store.list_env("env-pin", "f").await.expect("list"),
        vec![plain, secret]
    );
    deploy(store, "pin_1", "env-pin", "f").await;
    let changed = plain_env("PUBLIC", "pk_2", "t2");
    store
        .set_env("env-pin", "f", &changed)
        .await
        .expect("replace");
    assert!(
        store
            .delete_env("env-pin", "f", "SECRET")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_env("env-pin", "f", "SECRET")
            .await
            .expect("delete")
    );
    assert_eq!(
        store.list_env("env-pin", "f").await.expect("list"),
        vec![changed]
    );
    let pinned = store.deployment_env("pin_1").await.expect("pinned");
    assert_eq!(pinned.len(), 2);
    assert_eq!(pinned[0].value, EnvValue::Plain("pk_1".into()));
    assert_eq!(pinned[1].value, EnvValue::Secret(sealed("dk_a", 1)));
}

/// Rotation sees a pinned secret and replaces it only under the old key.
async fn secrets_are_resealed_only_under_their_old_key(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "env-seal", &["f"]).await;
    let plain = plain_env("PUBLIC", "pk_1", "t1");
    let secret = secret_env("SECRET", sealed("dk_a", 1), "t1");
    store.set_env("env-seal", "f", &plain).await.expect("set");
    store.set_env("env-seal", "f", &secret).await.expect("set");
    deploy(store, "seal_1", "env-seal", "f").await;
    // Only the deployment's pinned copy stays sealed.
    assert!(
        store
            .delete_env("env-seal", "f", "SECRET")
            .await
            .expect("delete")
    );
    let all = store.secrets().await.expect("secrets");
    assert_eq!(all.len(), 1);
    let (row, old) = &all[0];
    assert!(matches!(row, SecretRow::Deployment { .. }), "{row:?}");
    assert_eq!(row.binding(), ("env-seal", "f", "SECRET"));
    assert!(
        store
            .replace_secret(row, old, &sealed("dk_b", 2))
            .await
            .expect("replace")
    );
    assert!(
        !store
            .replace_secret(row, old, &sealed("dk_b", 3))
            .await
            .expect("replace")
    );
    // A value set again under the same key since it was read (another replica's
    // `env set` during a rotation) is not overwritten with the old value resealed.
    assert!(
        !store
            .replace_secret(row, &sealed("dk_b", 7), &sealed("dk_c", 4))
            .await
            .expect("replace")
    );
    assert_eq!(
        store.deployment_env("seal_1").await.expect("pinned")[1].value,
        EnvValue::Secret(sealed("dk_b", 2))
    );
}

async fn function_policies_are_set_on_existing_functions(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "policy", &["f"]).await;
    assert!(
        store
            .set_function_policy("policy", "f", Some("{}"))
            .await
            .expect("policy")
    );
    assert!(
        !store
            .set_function_policy("policy", "nope", Some("{}"))
            .await
            .expect("policy")
    );
    let policy = |f: Option<FunctionRecord>| f.and_then(|f| f.policy);
    assert_eq!(
        policy(store.get_function("policy", "f").await.expect("get")),
        Some("{}".into())
    );
    assert!(
        store
            .set_function_policy("policy", "f", None)
            .await
            .expect("clear policy")
    );
    assert_eq!(
        policy(store.get_function("policy", "f").await.expect("get")),
        None
    );
}

/// Deleting a function takes its env and the deployments' pinned copies with it.
async fn deleting_a_function_removes_its_env_and_pinned_copies(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "env-del", &["f"]).await;
    let plain = plain_env("PUBLIC", "pk_1", "t1");
    let secret = secret_env("SECRET", sealed("dk_a", 1), "t1");
    store.set_env("env-del", "f", &plain).await.expect("set");
    store.set_env("env-del", "f", &secret).await.expect("set");
    deploy(store, "envdel_1", "env-del", "f").await;
    assert_eq!(
        store.secrets().await.expect("secrets").len(),
        2,
        "the function's secret and the deployment's copy"
    );
    assert!(store.delete_function("env-del", "f").await.expect("delete"));
    assert!(store.secrets().await.expect("secrets").is_empty());
    assert!(
        store
            .list_env("env-del", "f")
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .deployment_env("envdel_1")
            .await
            .expect("pinned")
            .is_empty()
    );
}

/// Garbage collection's candidates: old, not live, not materializing, and failed or
/// behind `keep_ready` newer ready ones; deleting one takes its pinned env, never a live one.
async fn collectable_deployments_spare_live_recent_and_rollback_targets(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "gc", &["f", "g"]).await;
    store
        .set_env("gc", "f", &plain_env("K", "v", "t1"))
        .await
        .expect("set");
    // f: old_0..old_4 ready, old_5 failed, old_6 materializing, new_7 ready but recent.
    let old = |i: usize| format!("2020-01-01T00:00:0{i}.000Z");
    for i in 0..7 {
        let mut d = deployment(&format!("old_{i}"), "gc", "f");
        d.created_at = old(i);
        d.status = match i {
            5 => DeploymentStatus::Failed,
            6 => DeploymentStatus::Materializing,
            _ => DeploymentStatus::Ready,
        };
        store.insert_deployment(&d).await.expect("insert");
    }
    let mut recent = deployment("new_7", "gc", "f");
    recent.created_at = "2030-01-01T00:00:00.000Z".into();
    recent.status = DeploymentStatus::Ready;
    store.insert_deployment(&recent).await.expect("insert");
    store.set_live("gc", "f", "old_0").await.expect("live");
    // g: one old ready deployment, its only rollback target.
    let mut lone = deployment("lone", "gc", "g");
    lone.created_at = old(0);
    lone.status = DeploymentStatus::Ready;
    store.insert_deployment(&lone).await.expect("insert");

    let ids = |ds: Vec<DeploymentRecord>| ds.into_iter().map(|d| d.id).collect::<Vec<_>>();
    let before = "2025-01-01T00:00:00.000Z";
    // Keeping 2 ready (new_7, old_4), the live old_0 and g's lone one.
    assert_eq!(
        ids(store
            .collectable_deployments(before, 2)
            .await
            .expect("candidates")),
        vec!["old_1", "old_2", "old_3", "old_5"]
    );
    // Keeping 5: only the failed one.
    assert_eq!(
        ids(store
            .collectable_deployments(before, 5)
            .await
            .expect("candidates")),
        vec!["old_5"]
    );
    // Nothing is older than the oldest.
    assert!(
        store
            .collectable_deployments("2019-01-01T00:00:00.000Z", 0)
            .await
            .expect("candidates")
            .is_empty()
    );

    assert_eq!(
        store.deployment_env("old_1").await.expect("pinned").len(),
        1
    );
    assert!(store.delete_deployment("old_1").await.expect("delete"));
    assert!(
        !store
            .delete_deployment("old_1")
            .await
            .expect("delete again")
    );
    assert!(
        store
            .get_deployment("gc", "f", "old_1")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .deployment_env("old_1")
            .await
            .expect("pinned")
            .is_empty()
    );
    // The live one stays, with its env.
    assert!(!store.delete_deployment("old_0").await.expect("delete live"));
    assert!(
        store
            .get_deployment("gc", "f", "old_0")
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(
        store.deployment_env("old_0").await.expect("pinned").len(),
        1
    );
}

async fn contracts_are_unique_bound_and_unbound_with_their_function(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    org_with_functions(store, "ct-a", &["smtp", "ses"]).await;
    org_with_functions(store, "ct-b", &[]).await;
    let contract = |org: &str, name: &str| ContractRecord {
        org: org.into(),
        name: name.into(),
        description: Some("Sends mail".into()),
        input: Some(r#"{"type":"object"}"#.into()),
        output: None,
        validate_output: true,
        function: None,
        created_at: "2026-12-07T00:00:00.000Z".into(),
    };
    store
        .create_contract(&contract("ct-a", "email.sender@1"))
        .await
        .expect("create");
    store
        .create_contract(&contract("ct-a", "email.sender@2"))
        .await
        .expect("another version");
    store
        .create_contract(&contract("ct-b", "email.sender@1"))
        .await
        .expect("another org");
    assert!(matches!(
        store
            .create_contract(&contract("ct-a", "email.sender@1"))
            .await,
        Err(StoreError::AlreadyExists {
            entity: Entity::Contract,
            ..
        })
    ));
    assert_eq!(
        store
            .get_contract("ct-a", "email.sender@1")
            .await
            .expect("get"),
        Some(contract("ct-a", "email.sender@1")),
        "reads back as written"
    );
    let names: Vec<String> = store
        .list_contracts("ct-a")
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["email.sender@1", "email.sender@2"]);
    assert!(store.bound_contracts().await.expect("bound").is_empty());
    assert!(
        store
            .bind_contract("ct-a", "email.sender@1", Some("smtp"))
            .await
            .expect("bind")
    );
    assert!(
        !store
            .bind_contract("ct-a", "nothing@1", Some("smtp"))
            .await
            .expect("bind"),
        "no such contract"
    );
    let bound = store.bound_contracts().await.expect("bound");
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].function.as_deref(), Some("smtp"));
    // Rebinding moves it; deleting the function unbinds it, and the contract stays.
    store
        .bind_contract("ct-a", "email.sender@1", Some("ses"))
        .await
        .expect("rebind");
    assert!(store.delete_function("ct-a", "ses").await.expect("delete"));
    let after = store
        .get_contract("ct-a", "email.sender@1")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(after.function, None);
    assert!(store.bound_contracts().await.expect("bound").is_empty());
    assert!(
        store
            .delete_contract("ct-a", "email.sender@1")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_contract("ct-a", "email.sender@1")
            .await
            .expect("delete")
    );
}

/// Users: unique emails, memberships upserted and removed, sessions rotated only from
/// their current refresh token, revoked, and everything of a deleted user gone.
async fn users_memberships_and_sessions(backend: &mut Backend) {
    let store: &dyn Store = &backend.store;
    let accounts: &dyn Accounts = store.accounts();
    org_with_functions(store, "usr-a", &[]).await;
    org_with_functions(store, "usr-b", &[]).await;
    let user = |id: &str, email: &str| UserRecord {
        id: id.into(),
        email: email.into(),
        password_hash: "$argon2id$x".into(),
        created_at: "2026-01-01T00:00:00.000Z".into(),
    };
    accounts
        .create_user(&user("u1", "ada@x.io"))
        .await
        .expect("create");
    accounts
        .create_user(&user("u2", "bob@x.io"))
        .await
        .expect("create");
    assert!(matches!(
        accounts.create_user(&user("u3", "ada@x.io")).await,
        Err(StoreError::AlreadyExists {
            entity: Entity::User,
            ..
        })
    ));
    assert_eq!(
        accounts
            .user_by_email("ada@x.io")
            .await
            .expect("get")
            .map(|u| u.id),
        Some("u1".into())
    );
    let at = "2026-01-02T00:00:00.000Z";
    accounts
        .set_member("u1", "usr-a", Role::Developer, at)
        .await
        .expect("member");
    accounts
        .set_member("u1", "usr-a", Role::Admin, at)
        .await
        .expect("role changed");
    accounts
        .set_member("u1", "usr-b", Role::Invoker, at)
        .await
        .expect("member");
    accounts
        .set_member("u2", "usr-a", Role::Invoker, at)
        .await
        .expect("member");
    let roles = |ms: Vec<MemberRecord>| -> Vec<(String, String, Role)> {
        ms.into_iter().map(|m| (m.email, m.org, m.role)).collect()
    };
    assert_eq!(
        roles(accounts.memberships("u1").await.expect("of u1")),
        [
            ("ada@x.io".into(), "usr-a".into(), Role::Admin),
            ("ada@x.io".into(), "usr-b".into(), Role::Invoker)
        ]
    );
    assert_eq!(
        roles(accounts.members("usr-a").await.expect("of usr-a")),
        [
            ("ada@x.io".into(), "usr-a".into(), Role::Admin),
            ("bob@x.io".into(), "usr-a".into(), Role::Invoker)
        ]
    );
    assert!(accounts.remove_member("u1", "usr-b").await.expect("remove"));
    assert!(!accounts.remove_member("u1", "usr-b").await.expect("again"));
    assert_eq!(accounts.all_memberships().await.expect("all").len(), 2);

    let session = SessionRecord {
        id: "s1".into(),
        user_id: "u1".into(),
        refresh_sha256: "r1".into(),
        created_at: at.into(),
        expires_at: 2_000_000_000,
        rotated_at: None,
    };
    accounts.insert_session(&session).await.expect("session");
    assert_eq!(
        accounts.session_by_refresh("r1").await.expect("by refresh"),
        Some(session.clone())
    );
    assert!(
        accounts
            .rotate_session("s1", "r1", "r2", 2_000_000_100, 1_999_999_000)
            .await
            .expect("rotate")
    );
    assert_eq!(
        accounts
            .session_by_previous("r1")
            .await
            .expect("by previous")
            .map(|s| s.id),
        Some("s1".into())
    );
    assert!(accounts.session_active("s1").await.expect("active"));
    assert!(
        !accounts
            .rotate_session("s1", "r1", "r3", 2_000_000_100, 1_999_999_000)
            .await
            .expect("spent")
    );
    assert_eq!(accounts.session_by_refresh("r1").await.expect("old"), None);
    assert_eq!(
        accounts
            .session_by_refresh("r2")
            .await
            .expect("new")
            .map(|s| (s.expires_at, s.rotated_at)),
        Some((2_000_000_100, Some(1_999_999_000)))
    );
    assert!(accounts.revoke_session("s1", at).await.expect("revoke"));
    assert!(!accounts.revoke_session("s1", at).await.expect("again"));
    assert_eq!(
        accounts.session_by_refresh("r2").await.expect("revoked"),
        None
    );
    assert!(!accounts.session_active("s1").await.expect("revoked"));
    assert!(!accounts.session_active("nope").await.expect("unknown"));
    assert!(
        !accounts
            .rotate_session("s1", "r2", "r4", 1, 1)
            .await
            .expect("revoked")
    );

    // Deleting a user takes their memberships and sessions with them.
    accounts
        .insert_session(&SessionRecord {
            id: "s2".into(),
            refresh_sha256: "q1".into(),
            ..session
        })
        .await
        .expect("session");
    assert!(accounts.delete_user("u1").await.expect("delete"));
    assert!(!accounts.delete_user("u1").await.expect("again"));
    assert_eq!(accounts.session_by_refresh("q1").await.expect("gone"), None);
    assert_eq!(
        roles(accounts.all_memberships().await.expect("all")),
        [("bob@x.io".into(), "usr-a".into(), Role::Invoker)]
    );
    assert_eq!(accounts.list_users().await.expect("list").len(), 1);

    // Signing keys, oldest first.
    for (id, created) in [
        ("k2", "2026-01-02T00:00:00.000Z"),
        ("k1", "2026-01-01T00:00:00.000Z"),
    ] {
        accounts
            .insert_signing_key(&SigningKeyRecord {
                id: id.into(),
                public_key: vec![1; 32],
                private: Sealed {
                    key_id: "dk".into(),
                    nonce: vec![0; 12],
                    ciphertext: vec![9; 64],
                },
                created_at: created.into(),
            })
            .await
            .expect("key");
    }
    let keys = accounts.signing_keys().await.expect("keys");
    assert_eq!(
        keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["k1", "k2"]
    );
    assert_eq!(keys[0].private.ciphertext, vec![9; 64]);
}
