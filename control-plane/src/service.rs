//! The control plane's operations, shared by every API that exposes them.

use crate::auth::{self, Caller};
use crate::build::{Build, RuntimeRoles};
use crate::bundle::{self, BundleError};
use crate::convert::{deployment_info, function_info, spec};
use crate::env::StoreEnv;
use crate::logs::LogHub;
use crate::routing::RoutingPublisher;
use crate::store::{
    DeploymentRecord, Entity, EnvRecord, EnvValue, FunctionRecord, OrgRecord, Store, StoreError,
    TokenRecord,
};
use crate::workers::{WorkerRegistry, WorkerTiming};
use bytes::Bytes;
use futures::Stream;
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::{LogEntry, LogSink};
use reactor_api::manifest::{MANIFEST_FILE, Manifest};
use reactor_api::model::{
    DeploymentInfo, DeploymentStatus, EnvVarInfo, FunctionInfo, OrgCreated, Role, SetEnv,
    TokenCreated, TokenInfo,
};
use reactor_api::{ApiError, DeploymentSpec, ErrorCode, Runtime, Runtimes};
use reactor_storage::{Storage, keys};
use std::path::PathBuf;
use std::sync::Arc;

pub struct ControlPlaneOptions {
    pub config: FunctionsConfig,
    pub store: Arc<dyn Store>,
    pub storage: Arc<dyn Storage>,
    /// Builders, release steps and workers in this process.
    pub runtimes: RuntimeRoles,
    pub worker_timing: WorkerTiming,
    /// Worker services (the split topology): they build the deployments of their runtime
    /// that no builder here builds, and on promote every registered worker of the runtime
    /// loads the deployment before the routing table changes.
    pub remote_workers: Option<reactor_worker_link::RemoteWorkers>,
    /// Env and secrets: the keyring and the deployment env workers receive.
    pub env: Arc<StoreEnv>,
    /// Function logs: platform events go here, the admin API streams them.
    pub logs: Arc<LogHub>,
}

pub struct ControlPlane {
    config: FunctionsConfig,
    store: Arc<dyn Store>,
    storage: Arc<dyn Storage>,
    build: Build,
    releases: reactor_api::Releases,
    local_workers: Runtimes,
    routing: RoutingPublisher,
    workers: Arc<WorkerRegistry>,
    tmp_dir: PathBuf,
    unpack_slots: tokio::sync::Semaphore,
    promote_lock: tokio::sync::Mutex<()>,
    started_at: std::time::Instant,
    remote_workers: Option<reactor_worker_link::RemoteWorkers>,
    closing: tokio::sync::watch::Sender<bool>,
    env: Arc<StoreEnv>,
    logs: Arc<LogHub>,
}

/// The org and admin token the server starts with.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub org: String,
    pub token: String,
    /// The token was generated now (not given by the operator or reused).
    pub generated: bool,
}

/// Names inside an upload's work directory.
const ARCHIVE_FILE: &str = "bundle.tar.gz";
const BUNDLE_DIR: &str = "bundle";
/// Largest manifest.json read.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;
/// Uploads unpacked at once.
const UNPACK_SLOTS: usize = 2;

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists { entity, .. } => {
                let code = match entity {
                    Entity::Org => ErrorCode::OrgExists,
                    Entity::Function => ErrorCode::FunctionExists,
                    Entity::Token | Entity::Deployment => ErrorCode::InvalidInput,
                };
                ApiError::new(code, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::internal(other.to_string())
            }
        }
    }
}

fn storage_error(e: reactor_storage::StorageError) -> ApiError {
    tracing::error!(error = %e, "storage failure");
    ApiError::internal(e.to_string())
}

/// Function names: lowercase letters, digits and dashes, starting with a letter.
pub fn valid_function_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=63).contains(&name.len())
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn need(caller: &Caller, allowed: bool, what: &str) -> Result<(), ApiError> {
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("a {} token may not {what}", caller.role.as_str()),
        ))
    }
}

impl ControlPlane {
    /// Builds the control plane, publishes a first routing table and resumes the
    /// materializations a previous run left unfinished.
    pub async fn start(options: ControlPlaneOptions) -> anyhow::Result<Arc<Self>> {
        let tmp_dir = options.config.workdir.join("tmp");
        // Anything left here belongs to a previous run.
        let _ = tokio::fs::remove_dir_all(&tmp_dir).await;
        tokio::fs::create_dir_all(&tmp_dir).await?;
        let workers = Arc::new(WorkerRegistry::new(options.worker_timing));
        let build = Build::new(
            options.runtimes.builders,
            options.remote_workers.clone(),
            workers.clone(),
        );
        let cp = Arc::new(Self {
            routing: RoutingPublisher::new(options.store.clone(), workers.clone()),
            workers,
            config: options.config,
            store: options.store,
            storage: options.storage,
            build,
            releases: options.runtimes.releases,
            local_workers: options.runtimes.workers,
            remote_workers: options.remote_workers,
            tmp_dir,
            unpack_slots: tokio::sync::Semaphore::new(UNPACK_SLOTS),
            promote_lock: tokio::sync::Mutex::new(()),
            started_at: std::time::Instant::now(),
            closing: tokio::sync::watch::channel(false).0,
            env: options.env,
            logs: options.logs,
        });
        cp.routing.publish().await?;
        for d in cp.store.list_materializing().await? {
            let cp = cp.clone();
            tokio::spawn(async move { cp.rematerialize(d).await });
        }
        // Removes workers that stopped heartbeating, for as long as the control plane lives.
        let weak = Arc::downgrade(&cp);
        let every = cp.workers.timing().heartbeat_interval / 2;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cp) = weak.upgrade() else { return };
                if cp.is_closing() {
                    return;
                }
                if cp.workers.expire()
                    && let Err(e) = cp.routing.publish().await
                {
                    tracing::error!(error = %e, "publishing the routing table after a worker expired");
                }
            }
        });
        Ok(cp)
    }

    pub fn routing(&self) -> &RoutingPublisher {
        &self.routing
    }

    pub fn workers(&self) -> &WorkerRegistry {
        &self.workers
    }

    /// Shutting down: routing streams end and workers are no longer expired (their
    /// heartbeats fail because this process goes away, not because they did).
    pub fn close(&self) {
        self.closing.send_replace(true);
        // Log followers would otherwise hold the drain for its whole grace period.
        self.logs.close();
    }

    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once [`ControlPlane::close`] was called.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Until workers that were registered with a previous run had the time to register
    /// again (two heartbeat intervals), a table would list fewer workers than there are.
    pub fn workers_settled(&self) -> Option<std::time::Duration> {
        let settle = self.workers.timing().heartbeat_interval * 2;
        settle.checked_sub(self.started_at.elapsed())
    }

    pub fn config(&self) -> &FunctionsConfig {
        &self.config
    }

    pub fn logs(&self) -> &Arc<LogHub> {
        &self.logs
    }

    pub fn env_source(&self) -> &Arc<StoreEnv> {
        &self.env
    }

    fn event(&self, org: &str, function: &str, deployment_id: Option<&str>, message: String) {
        self.logs
            .emit(LogEntry::event(org, function, deployment_id, message));
    }

    /// Ensures the bootstrap org exists and has an admin token: `token` when the operator
    /// gave one, else `reuse` when it is still valid there, else a new one.
    pub async fn bootstrap(
        &self,
        org: &str,
        token: Option<&str>,
        reuse: Option<&str>,
    ) -> Result<Bootstrap, ApiError> {
        if self.store.get_org(org).await?.is_none() {
            self.store
                .create_org(&OrgRecord {
                    name: org.to_string(),
                    platform: true,
                    created_at: now(),
                })
                .await?;
        }
        let valid_here =
            |t: Option<TokenRecord>| t.is_some_and(|t| t.org == org && t.role == Role::Admin);
        if let Some(token) = token {
            let existing = self.store.token_by_hash(&auth::token_hash(token)).await?;
            if existing.is_some() && !valid_here(existing.clone()) {
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "REACTOR_ADMIN_TOKEN belongs to another org or role, not to the admin of {org}"
                    ),
                ));
            }
            if existing.is_none() {
                self.insert_token(org, Role::Admin, Some("bootstrap"), token)
                    .await
                    .map_err(|e| {
                        if e.code == ErrorCode::InvalidInput {
                            ApiError::new(
                                ErrorCode::InvalidInput,
                                "REACTOR_ADMIN_TOKEN was revoked; set another one",
                            )
                        } else {
                            e
                        }
                    })?;
                self.routing.publish().await?;
            }
            return Ok(Bootstrap {
                org: org.to_string(),
                token: token.to_string(),
                generated: false,
            });
        }
        if let Some(reuse) = reuse
            && valid_here(self.store.token_by_hash(&auth::token_hash(reuse)).await?)
        {
            return Ok(Bootstrap {
                org: org.to_string(),
                token: reuse.to_string(),
                generated: false,
            });
        }
        let token = auth::generate_token();
        self.insert_token(org, Role::Admin, Some("bootstrap"), &token)
            .await?;
        self.routing.publish().await?;
        Ok(Bootstrap {
            org: org.to_string(),
            token,
            generated: true,
        })
    }

    async fn insert_token(
        &self,
        org: &str,
        role: Role,
        name: Option<&str>,
        secret: &str,
    ) -> Result<TokenRecord, ApiError> {
        let record = TokenRecord {
            id: format!("tok_{}", ulid::Ulid::new()),
            org: org.to_string(),
            role,
            name: name.map(str::to_string),
            sha256: auth::token_hash(secret),
            created_at: now(),
        };
        self.store.insert_token(&record).await?;
        Ok(record)
    }

    /// Authenticates an admin request from its bearer token and `X-Reactor-Org`.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        org_header: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let unauthorized =
            || ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required");
        let token = authorization
            .and_then(auth::bearer)
            .ok_or_else(unauthorized)?;
        let record = self
            .store
            .token_by_hash(&auth::token_hash(token))
            .await?
            .ok_or_else(unauthorized)?;
        if let Some(org) = org_header
            && org != record.org
        {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this token belongs to another org than {org:?}"),
            ));
        }
        let platform = self
            .store
            .get_org(&record.org)
            .await?
            .is_some_and(|o| o.platform);
        Ok(Caller {
            org: record.org,
            role: record.role,
            token_id: record.id,
            platform,
        })
    }

    // --- orgs and tokens ---

    pub async fn create_org(&self, caller: &Caller, name: &str) -> Result<OrgCreated, ApiError> {
        need(
            caller,
            caller.role.is_admin() && caller.platform,
            "create orgs (only admins of the platform org can)",
        )?;
        if !valid_function_name(name) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "org name {name:?} is not valid (lowercase letters, digits and '-', starting with a letter, at most 63)"
                ),
            ));
        }
        let created_at = now();
        self.store
            .create_org(&OrgRecord {
                name: name.to_string(),
                platform: false,
                created_at: created_at.clone(),
            })
            .await?;
        let secret = auth::generate_token();
        let token = self
            .insert_token(name, Role::Admin, Some("org admin"), &secret)
            .await?;
        self.routing.publish().await?;
        Ok(OrgCreated {
            name: name.to_string(),
            created_at,
            admin_token: TokenCreated {
                id: token.id,
                org: token.org,
                role: token.role,
                name: token.name,
                token: secret,
            },
        })
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        role: Role,
        name: Option<&str>,
    ) -> Result<TokenCreated, ApiError> {
        need(caller, caller.role.is_admin(), "create tokens")?;
        let secret = auth::generate_token();
        let t = self.insert_token(&caller.org, role, name, &secret).await?;
        self.routing.publish().await?;
        Ok(TokenCreated {
            id: t.id,
            org: t.org,
            role: t.role,
            name: t.name,
            token: secret,
        })
    }

    pub async fn list_tokens(&self, caller: &Caller) -> Result<Vec<TokenInfo>, ApiError> {
        need(caller, caller.role.is_admin(), "list tokens")?;
        Ok(self
            .store
            .list_tokens(&caller.org)
            .await?
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                org: t.org,
                role: t.role,
                name: t.name,
                created_at: t.created_at,
            })
            .collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        need(caller, caller.role.is_admin(), "revoke tokens")?;
        if !self.store.revoke_token(&caller.org, id, &now()).await? {
            return Err(ApiError::new(
                ErrorCode::TokenNotFound,
                format!("token {id} not found"),
            ));
        }
        self.routing.publish().await?;
        Ok(())
    }

    // --- functions ---

    async fn function(&self, caller: &Caller, name: &str) -> Result<FunctionRecord, ApiError> {
        self.store
            .get_function(&caller.org, name)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::FunctionNotFound,
                    format!("function {name} not found"),
                )
                .with_detail("function", name)
            })
    }

    pub async fn create_function(
        &self,
        caller: &Caller,
        name: &str,
        runtime: Runtime,
    ) -> Result<FunctionInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "create functions")?;
        if !valid_function_name(name) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "function name {name:?} is not valid (lowercase letters, digits and '-', starting with a letter, at most 63)"
                ),
            ));
        }
        if !self.config.runtimes.contains(&runtime) {
            let enabled: Vec<&str> = self.config.runtimes.iter().map(|r| r.as_str()).collect();
            return Err(ApiError::new(
                ErrorCode::RuntimeDisabled,
                format!(
                    "runtime {runtime} is not enabled on this server (enabled: {})",
                    enabled.join(", ")
                ),
            ));
        }
        let record = FunctionRecord {
            org: caller.org.clone(),
            name: name.to_string(),
            runtime,
            live_deployment_id: None,
            created_at: now(),
            policy: None,
        };
        self.store
            .create_function(&record)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists { .. } => ApiError::new(
                    ErrorCode::FunctionExists,
                    format!("function {name} already exists"),
                )
                .with_detail("function", name),
                other => other.into(),
            })?;
        self.routing.publish().await?;
        tracing::info!(org = %caller.org, function = name, %runtime, "function created");
        Ok(function_info(&record))
    }

    pub async fn get_function(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<FunctionInfo, ApiError> {
        Ok(function_info(&self.function(caller, name).await?))
    }

    pub async fn list_functions(&self, caller: &Caller) -> Result<Vec<FunctionInfo>, ApiError> {
        Ok(self
            .store
            .list_functions(&caller.org)
            .await?
            .iter()
            .map(function_info)
            .collect())
    }

    pub async fn delete_function(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        need(caller, caller.role.is_admin(), "delete functions")?;
        if !self.store.delete_function(&caller.org, name).await? {
            return Err(ApiError::new(
                ErrorCode::FunctionNotFound,
                format!("function {name} not found"),
            ));
        }
        self.routing.publish().await?;
        self.logs.forget(&caller.org, name);
        for prefix in keys::function_prefix(&caller.org, name) {
            if let Err(e) = self.storage.delete_prefix(&prefix).await {
                tracing::warn!(error = %e, prefix, "leaving objects of a deleted function behind");
            }
        }
        tracing::info!(org = %caller.org, function = name, "function deleted");
        Ok(())
    }

    // --- deployments ---

    /// Receives a bundle, checks it and records a deployment that materializes in the
    /// background. Bad input (size, hash, archive, manifest) is refused and leaves nothing.
    pub async fn upload<S, E>(
        &self,
        caller: &Caller,
        name: &str,
        claimed_sha256: Option<&str>,
        content_length: Option<u64>,
        body: S,
    ) -> Result<DeploymentInfo, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        need(caller, caller.role.can_deploy(), "deploy")?;
        let function = self.function(caller, name).await?;
        let limit = self.config.bundle_max_bytes;
        if content_length.is_some_and(|n| n > limit) {
            return Err(BundleError::TooLarge { limit }.into());
        }
        let id = format!("dep_{}", ulid::Ulid::new());
        let work = Arc::new(
            tempfile::Builder::new()
                .prefix(&id)
                .tempdir_in(&self.tmp_dir)
                .map_err(|e| ApiError::internal(format!("creating a work directory: {e}")))?,
        );
        let archive = work.path().join(ARCHIVE_FILE);
        let received = bundle::receive(body, &archive, limit).await?;
        if let Some(claimed) = claimed_sha256
            && !claimed.trim().eq_ignore_ascii_case(&received.sha256)
        {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
                format!(
                    "bundle sha256 mismatch: the client sent {claimed}, the server computed {}",
                    received.sha256
                ),
            )
            .with_detail("expected", claimed.to_string())
            .with_detail("computed", received.sha256.clone()));
        }
        let unpacked_dir = work.path().join(BUNDLE_DIR);
        let resolved = self.check_bundle(&function, &work).await?;
        // Checked as late as possible before the insert pins the env (not in
        // check_bundle: a resumed materialization has its env pinned already).
        self.check_env_keys(&function, &resolved).await?;
        let record = DeploymentRecord {
            id: id.clone(),
            org: function.org.clone(),
            function: function.name.clone(),
            status: DeploymentStatus::Materializing,
            error: None,
            sha256: received.sha256,
            size_bytes: received.size_bytes,
            entrypoint: resolved.entrypoint,
            bundle_key: keys::bundle(&function.org, &function.name, &id),
            timeout_ms: resolved.timeout_ms,
            memory_mb: resolved.memory_mb,
            min_instances: resolved.min_instances,
            max_concurrency: resolved.max_concurrency,
            created_at: now(),
            policy: resolved.policy,
        };
        self.storage
            .put_file(&record.bundle_key, &archive)
            .await
            .map_err(storage_error)?;
        self.store.insert_deployment(&record).await?;
        tracing::info!(org = %function.org, function = %function.name, deployment_id = %id, size_bytes = record.size_bytes, "deployment received");
        self.event(
            &function.org,
            &function.name,
            Some(&id),
            format!(
                "deployment received ({} bytes, sha256 {}), materializing",
                record.size_bytes, record.sha256
            ),
        );
        let info = deployment_info(&record, function.live_deployment_id.as_deref());
        let spec = spec(&function, &record);
        let build = self.build.clone();
        let store = self.store.clone();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            materialize(store, logs, build, spec, unpacked_dir).await;
            drop(work);
        });
        Ok(info)
    }

    /// Unpacks into `dest` and validates the manifest against the function.
    async fn check_bundle(
        &self,
        function: &FunctionRecord,
        work: &Arc<tempfile::TempDir>,
    ) -> Result<reactor_api::manifest::Resolved, ApiError> {
        let dest = work.path().join(BUNDLE_DIR);
        // Bounds the disk and memory that unpacking uploads may hold at once.
        let _slot = self
            .unpack_slots
            .acquire()
            .await
            .map_err(|_| ApiError::internal("shutting down"))?;
        // The closure owns the work directory too: a client that goes away mid-unpack
        // must not have it removed under the unpacking thread.
        let held = work.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let dest = held.path().join(BUNDLE_DIR);
            std::fs::create_dir_all(&dest)?;
            bundle::unpack(&held.path().join(ARCHIVE_FILE), &dest)
        })
        .await
        .map_err(|e| ApiError::internal(format!("unpacking task: {e}")))??;
        let manifest = if unpacked.files.iter().any(|f| f == MANIFEST_FILE) {
            let path = dest.join(MANIFEST_FILE);
            let len = tokio::fs::metadata(&path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if len > MAX_MANIFEST_BYTES {
                return Err(ApiError::new(
                    ErrorCode::ManifestInvalid,
                    format!(
                        "manifest.json is {len} bytes; at most {MAX_MANIFEST_BYTES} are allowed"
                    ),
                ));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| ApiError::internal(format!("reading manifest.json: {e}")))?;
            Some(
                Manifest::parse(&bytes)
                    .map_err(|m| ApiError::new(ErrorCode::ManifestInvalid, m))?,
            )
        } else {
            None
        };
        let resolved = Manifest::resolve(
            manifest.as_ref(),
            &function.name,
            function.runtime,
            &unpacked.files,
            self.config.timeouts(),
        )
        .map_err(|m| ApiError::new(ErrorCode::ManifestInvalid, m))?;
        Ok(resolved)
    }

    /// Finishes a materialization that a previous run left, from the stored bundle.
    async fn rematerialize(self: Arc<Self>, d: DeploymentRecord) {
        let Ok(Some(function)) = self.store.get_function(&d.org, &d.function).await else {
            return;
        };
        let result: Result<Arc<tempfile::TempDir>, String> = async {
            let work = Arc::new(tempfile::tempdir_in(&self.tmp_dir).map_err(|e| e.to_string())?);
            self.storage
                .get_to_file(&d.bundle_key, &work.path().join(ARCHIVE_FILE))
                .await
                .map_err(|e| e.to_string())?;
            self.check_bundle(&function, &work)
                .await
                .map_err(|e: ApiError| e.message)?;
            Ok(work)
        }
        .await;
        match result {
            Ok(work) => {
                materialize(
                    self.store.clone(),
                    self.logs.clone(),
                    self.build.clone(),
                    spec(&function, &d),
                    work.path().join(BUNDLE_DIR),
                )
                .await;
            }
            Err(reason) => {
                let _ = self
                    .store
                    .set_deployment_status(&d.id, DeploymentStatus::Failed, Some(&reason))
                    .await;
            }
        }
    }

    pub async fn list_deployments(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<Vec<DeploymentInfo>, ApiError> {
        let f = self.function(caller, name).await?;
        let live = f.live_deployment_id.as_deref();
        Ok(self
            .store
            .list_deployments(&f.org, &f.name)
            .await?
            .iter()
            .map(|d| deployment_info(d, live))
            .collect())
    }

    pub async fn get_deployment(
        &self,
        caller: &Caller,
        name: &str,
        id: &str,
    ) -> Result<DeploymentInfo, ApiError> {
        let f = self.function(caller, name).await?;
        let d = self.deployment(&f, id).await?;
        Ok(deployment_info(&d, f.live_deployment_id.as_deref()))
    }

    async fn deployment(&self, f: &FunctionRecord, id: &str) -> Result<DeploymentRecord, ApiError> {
        self.store
            .get_deployment(&f.org, &f.name, id)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::DeploymentNotFound,
                    format!("deployment {id} of function {} not found", f.name),
                )
                .with_detail("deployment_id", id)
            })
    }

    /// Makes a ready deployment live (the newest when `id` is `None`): its worker loads it
    /// first, then the routing table changes.
    pub async fn promote(
        &self,
        caller: &Caller,
        name: &str,
        id: Option<&str>,
    ) -> Result<DeploymentInfo, ApiError> {
        self.make_live(caller, name, id, false).await
    }

    async fn make_live(
        &self,
        caller: &Caller,
        name: &str,
        id: Option<&str>,
        rollback: bool,
    ) -> Result<DeploymentInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "promote")?;
        // One promote at a time: the live pointer a caller is told about is the one that
        // the routers get, even when two promotes race.
        let _promoting = self.promote_lock.lock().await;
        let f = self.function(caller, name).await?;
        let d = match id {
            Some(id) => self.deployment(&f, id).await?,
            None => self
                .store
                .list_deployments(&f.org, &f.name)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::DeploymentNotReady,
                        format!("function {name} has no deployment to promote"),
                    )
                })?,
        };
        if d.status != DeploymentStatus::Ready {
            let reason = match (&d.status, &d.error) {
                (DeploymentStatus::Failed, Some(e)) => format!("it failed: {e}"),
                (s, _) => format!("it is {}", s.as_str()),
            };
            return Err(ApiError::new(
                ErrorCode::DeploymentNotReady,
                format!("deployment {} is not ready: {reason}", d.id),
            )
            .with_detail("deployment_id", d.id.clone())
            .with_detail("status", d.status.as_str()));
        }
        let spec = spec(&f, &d);
        if !self.build.can_build(f.runtime) {
            return Err(Runtimes::no_worker(f.runtime));
        }
        let not_loaded = |e: String| {
            ApiError::new(
                ErrorCode::DeploymentNotReady,
                format!("deployment {} could not be loaded: {e}", d.id),
            )
            .with_detail("deployment_id", d.id.clone())
        };
        if let Some(release) = self.releases.get(f.runtime) {
            release.go_live(&spec).await.map_err(not_loaded)?;
        }
        if let Some(worker) = self.local_workers.get(f.runtime) {
            worker
                .prepare(&spec)
                .await
                .map_err(|e| not_loaded(e.to_string()))?;
        }
        self.prepare_on_workers(&spec).await;
        self.store.set_live(&f.org, &f.name, &d.id).await?;
        let version = self.routing.publish().await?;
        tracing::info!(org = %f.org, function = %f.name, deployment_id = %d.id, version, rollback, "promoted");
        let previous = f.live_deployment_id.as_deref().unwrap_or("none");
        self.event(
            &f.org,
            &f.name,
            Some(&d.id),
            if rollback {
                format!("rolled back: {} is live again (was {previous})", d.id)
            } else {
                format!("promoted: {} is live (was {previous})", d.id)
            },
        );
        Ok(deployment_info(&d, Some(&d.id)))
    }

    /// Makes an earlier ready deployment live again, with the env it pinned.
    pub async fn rollback(
        &self,
        caller: &Caller,
        name: &str,
        to: &str,
    ) -> Result<DeploymentInfo, ApiError> {
        self.make_live(caller, name, Some(to), true).await
    }
}

// --- env, secrets and policies ---

fn env_info(e: &EnvRecord) -> EnvVarInfo {
    match &e.value {
        EnvValue::Plain(v) => EnvVarInfo {
            key: e.key.clone(),
            secret: false,
            value: Some(v.clone()),
            updated_at: e.updated_at.clone(),
        },
        EnvValue::Secret(_) => EnvVarInfo {
            key: e.key.clone(),
            secret: true,
            value: None,
            updated_at: e.updated_at.clone(),
        },
    }
}

fn invalid_env_key(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidInput,
        format!("env key {key:?} is not valid (letters, digits and _, not starting with a digit)"),
    )
    .with_detail("key", key)
}

impl ControlPlane {
    /// The function, for a caller that may read its logs (not invokers).
    pub async fn function_for_logs(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<FunctionInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "read logs")?;
        Ok(function_info(&self.function(caller, name).await?))
    }

    /// The env `deployment_id` pinned, decrypted: for a worker service that is about to
    /// start the deployment's instances.
    pub async fn deployment_env(
        &self,
        org: &str,
        function: &str,
        deployment_id: &str,
        runtime: Runtime,
    ) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
        let f = self.store.get_function(org, function).await?;
        let d = self
            .store
            .get_deployment(org, function, deployment_id)
            .await?;
        let (Some(f), Some(d)) = (f, d) else {
            return Err(ApiError::new(
                ErrorCode::DeploymentNotFound,
                format!("deployment {deployment_id} of {org}/{function} not found"),
            ));
        };
        if f.runtime != runtime {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("function {org}/{function} does not run on {runtime} workers"),
            ));
        }
        // Materializing: a worker of the runtime is building it, and the build's check
        // loads the module with its env (top-level code may read it), as in process.
        if !matches!(
            d.status,
            DeploymentStatus::Ready | DeploymentStatus::Materializing
        ) {
            return Err(ApiError::new(
                ErrorCode::DeploymentNotReady,
                format!("deployment {deployment_id} is {}", d.status.as_str()),
            ));
        }
        self.env
            .pinned(org, function, deployment_id)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))
    }

    /// Sets one env value of a function; a secret is sealed before it is stored. The
    /// next deployment pins it; live deployments keep the env they pinned.
    pub async fn set_env(
        &self,
        caller: &Caller,
        name: &str,
        key: &str,
        req: SetEnv,
    ) -> Result<EnvVarInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "set env")?;
        let f = self.function(caller, name).await?;
        if !reactor_api::manifest::valid_env_key(key) || key.len() > 256 {
            return Err(invalid_env_key(key));
        }
        if req.value.len() > crate::env::MAX_VALUE_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the value of {key} is {} bytes; at most {} are allowed",
                    req.value.len(),
                    crate::env::MAX_VALUE_BYTES
                ),
            ));
        }
        let existing = self.store.list_env(&f.org, &f.name).await?;
        // Secrets are counted at their sealed size, close enough to the plaintext's.
        let others: usize = existing
            .iter()
            .filter(|e| e.key != key)
            .map(|e| {
                e.key.len()
                    + match &e.value {
                        EnvValue::Plain(v) => v.len(),
                        EnvValue::Secret(s) => s.ciphertext.len(),
                    }
            })
            .sum();
        if others + key.len() + req.value.len() > crate::env::MAX_TOTAL_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the env of function {name} would exceed {} bytes of keys and values",
                    crate::env::MAX_TOTAL_BYTES
                ),
            ));
        }
        if existing.len() >= crate::env::MAX_KEYS && !existing.iter().any(|e| e.key == key) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "function {name} already has {} env keys, the most allowed",
                    crate::env::MAX_KEYS
                ),
            ));
        }
        let value = if req.secret {
            let sealed = self
                .env
                .keyring()
                .seal(&f.org, &f.name, key, req.value.as_bytes())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            EnvValue::Secret(sealed)
        } else {
            EnvValue::Plain(req.value)
        };
        let record = EnvRecord {
            key: key.to_string(),
            value,
            updated_at: now(),
        };
        self.store.set_env(&f.org, &f.name, &record).await?;
        tracing::info!(org = %f.org, function = %f.name, key, secret = req.secret, "env set");
        self.event(
            &f.org,
            &f.name,
            None,
            format!(
                "env {key} set{} (deploy to use it)",
                if req.secret { " as a secret" } else { "" }
            ),
        );
        Ok(env_info(&record))
    }

    /// The function's env keys: plain values shown, secrets never.
    pub async fn list_env(&self, caller: &Caller, name: &str) -> Result<Vec<EnvVarInfo>, ApiError> {
        need(caller, caller.role.can_deploy(), "read env")?;
        let f = self.function(caller, name).await?;
        Ok(self
            .store
            .list_env(&f.org, &f.name)
            .await?
            .iter()
            .map(env_info)
            .collect())
    }

    pub async fn unset_env(&self, caller: &Caller, name: &str, key: &str) -> Result<(), ApiError> {
        need(caller, caller.role.can_deploy(), "unset env")?;
        let f = self.function(caller, name).await?;
        if !self.store.delete_env(&f.org, &f.name, key).await? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("env key {key} is not set for function {name}"),
            )
            .with_detail("key", key));
        }
        tracing::info!(org = %f.org, function = %f.name, key, "env unset");
        self.event(&f.org, &f.name, None, format!("env {key} unset"));
        Ok(())
    }

    /// Refuses a manifest whose `env_keys`/`secret_keys` name keys the function lacks
    /// (or a secret key set as a plain value), naming each.
    async fn check_env_keys(
        &self,
        function: &FunctionRecord,
        resolved: &reactor_api::manifest::Resolved,
    ) -> Result<(), ApiError> {
        if resolved.env_keys.is_empty() && resolved.secret_keys.is_empty() {
            return Ok(());
        }
        let env = self.store.list_env(&function.org, &function.name).await?;
        let find = |k: &str| env.iter().find(|e| e.key == k);
        let missing: Vec<String> = resolved
            .env_keys
            .iter()
            .chain(&resolved.secret_keys)
            .filter(|k| find(k).is_none())
            .cloned()
            .collect();
        let not_secret: Vec<String> = resolved
            .secret_keys
            .iter()
            .filter(|k| {
                matches!(
                    find(k),
                    Some(EnvRecord {
                        value: EnvValue::Plain(_),
                        ..
                    })
                )
            })
            .cloned()
            .collect();
        if missing.is_empty() && not_secret.is_empty() {
            return Ok(());
        }
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!(
                "env keys not set for function {}: {} (set them with `reactor functions env set {} KEY`)",
                function.name,
                missing.join(", "),
                function.name
            ));
        }
        if !not_secret.is_empty() {
            problems.push(format!(
                "listed in secret_keys but set as plain values: {} (set them with --secret)",
                not_secret.join(", ")
            ));
        }
        Err(
            ApiError::new(ErrorCode::ManifestInvalid, problems.join("; "))
                .with_detail("missing_keys", missing)
                .with_detail("not_secret_keys", not_secret),
        )
    }

    /// The function's invoke policy (the default, allow everything, when none is set).
    pub async fn get_policy(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<reactor_policy::Policy, ApiError> {
        need(caller, caller.role.can_deploy(), "read policies")?;
        let f = self.function(caller, name).await?;
        match f.policy.as_deref() {
            Some(json) => reactor_policy::Policy::from_json(json)
                .map_err(|e| ApiError::internal(format!("stored policy of {name}: {e}"))),
            None => Ok(reactor_policy::Policy::default()),
        }
    }

    /// Sets (or with `None` clears) the function's invoke policy. It is compiled here, so
    /// an invalid rule is refused now rather than when a request meets it; routers get
    /// it with the next routing table.
    pub async fn set_policy(
        &self,
        caller: &Caller,
        name: &str,
        policy: Option<reactor_policy::Policy>,
    ) -> Result<reactor_policy::Policy, ApiError> {
        need(caller, caller.role.can_deploy(), "set policies")?;
        let f = self.function(caller, name).await?;
        let json = match &policy {
            Some(p) => {
                p.compile().map_err(|e| {
                    ApiError::new(ErrorCode::InvalidInput, format!("policy is not valid: {e}"))
                })?;
                Some(serde_json::to_string(p).map_err(|e| ApiError::internal(e.to_string()))?)
            }
            None => None,
        };
        self.store
            .set_function_policy(&f.org, &f.name, json.as_deref())
            .await?;
        let version = self.routing.publish().await?;
        tracing::info!(org = %f.org, function = %f.name, version, cleared = policy.is_none(), "policy set");
        let policy = policy.unwrap_or_default();
        self.event(
            &f.org,
            &f.name,
            None,
            format!("invoke policy set ({} rules)", policy.rules.len()),
        );
        Ok(policy)
    }
}

/// How long promote waits for a worker service to load a deployment.
const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl ControlPlane {
    /// Has every registered worker of the runtime load `spec`, so that the first request
    /// after the table changes is warm wherever it lands. Not fatal: a worker that fails
    /// (or takes longer than [`PREPARE_TIMEOUT`]) loads it on its first request instead.
    async fn prepare_on_workers(&self, spec: &DeploymentSpec) {
        let Some(remote) = &self.remote_workers else {
            return;
        };
        let runtime = spec.runtime.as_str();
        let urls: Vec<String> = self
            .workers
            .endpoints()
            .into_iter()
            .filter(|w| w.runtime == runtime)
            .map(|w| w.url)
            .collect();
        let started = std::time::Instant::now();
        let prepared = futures::future::join_all(
            urls.iter()
                .map(|url| tokio::time::timeout(PREPARE_TIMEOUT, remote.prepare(url, spec))),
        )
        .await;
        for (url, outcome) in urls.iter().zip(prepared) {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(worker = %url, deployment_id = %spec.deployment_id, error = %e, "worker could not prepare the deployment")
                }
                Err(_) => {
                    tracing::warn!(worker = %url, deployment_id = %spec.deployment_id, "worker took too long to prepare the deployment")
                }
            }
        }
        tracing::debug!(
            workers = urls.len(),
            ms = started.elapsed().as_millis() as u64,
            "prepared on workers"
        );
    }
}

/// Builds the deployment (here or on a worker of its runtime) and records the outcome.
async fn materialize(
    store: Arc<dyn Store>,
    logs: Arc<LogHub>,
    build: Build,
    spec: DeploymentSpec,
    dir: PathBuf,
) {
    let started = std::time::Instant::now();
    let outcome = build.run(&spec, &dir).await;
    let ms = started.elapsed().as_millis() as u64;
    let (status, error) = match &outcome {
        Ok(()) => {
            tracing::info!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id, ms, "materialized");
            logs.emit(LogEntry::event(
                &spec.org,
                &spec.function,
                Some(&spec.deployment_id),
                format!("materialized in {ms} ms: ready to promote"),
            ));
            (DeploymentStatus::Ready, None)
        }
        Err(reason) => {
            tracing::warn!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id, ms, reason, "materialization failed");
            logs.emit(LogEntry::event(
                &spec.org,
                &spec.function,
                Some(&spec.deployment_id),
                format!("materialization failed: {reason}"),
            ));
            (DeploymentStatus::Failed, Some(reason.as_str()))
        }
    };
    if let Err(e) = store
        .set_deployment_status(&spec.deployment_id, status, error)
        .await
    {
        tracing::error!(error = %e, deployment_id = %spec.deployment_id, "recording the materialization outcome");
    }
}
