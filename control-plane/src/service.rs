//! The control plane's state and construction: [`ControlPlane`] and its options, start-up
//! and background tasks, and the helpers its operations share. The operations themselves
//! live in `crate::ops`, one module per concern.

use crate::auth::Caller;
use crate::build::{Build, RuntimeRoles};
use crate::env::StoreEnv;
use crate::logs::LogHub;
use crate::routing::RoutingPublisher;
use crate::store::{Entity, Store, StoreError};
use crate::workers::{WorkerRegistry, WorkerTiming};
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::{LogEntry, LogSink};
use reactor_api::{ApiError, ErrorCode, Runtimes};
use reactor_storage::Storage;
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
    pub(crate) config: FunctionsConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) build: Build,
    pub(crate) releases: reactor_api::Releases,
    pub(crate) local_workers: Runtimes,
    pub(crate) routing: RoutingPublisher,
    pub(crate) workers: Arc<WorkerRegistry>,
    pub(crate) tmp_dir: PathBuf,
    pub(crate) unpack_slots: tokio::sync::Semaphore,
    /// One promote or rollback at a time per function (org, name), handed out by
    /// `ControlPlane::lock_function`; an entry lives while someone holds or awaits it.
    pub(crate) promote_locks: std::sync::Mutex<PromoteLocks>,
    started_at: std::time::Instant,
    pub(crate) remote_workers: Option<reactor_worker_link::RemoteWorkers>,
    closing: tokio::sync::watch::Sender<bool>,
    pub(crate) env: Arc<StoreEnv>,
    pub(crate) logs: Arc<LogHub>,
    /// Token hashes that matched no valid token, and when that was seen (see
    /// `ControlPlane::authenticate`).
    pub(crate) bad_tokens: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Uploads being received or unpacked, per org.
    pub(crate) uploads: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Signing in: the access-token signer and the sign-in backoff.
    pub(crate) sign_in: crate::auth::SignIn,
}

/// The per-function promote locks, by (org, function).
pub(crate) type PromoteLocks =
    std::collections::HashMap<(String, String), std::sync::Weak<tokio::sync::Mutex<()>>>;

/// The org and admin token the server starts with.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub org: String,
    pub token: String,
    /// The token was generated now (not given by the operator or reused).
    pub generated: bool,
}

/// Uploads unpacked at once.
const UNPACK_SLOTS: usize = 2;

/// The current time, as the store records it (RFC 3339, milliseconds).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists { entity, .. } => {
                let code = match entity {
                    Entity::Org => ErrorCode::OrgExists,
                    Entity::Function => ErrorCode::FunctionExists,
                    Entity::User => ErrorCode::UserExists,
                    Entity::Token
                    | Entity::Deployment
                    | Entity::Contract
                    | Entity::Session
                    | Entity::SigningKey => ErrorCode::InvalidInput,
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

pub(crate) fn storage_error(e: reactor_storage::StorageError) -> ApiError {
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

/// Refuses the caller unless `allowed`, naming its role and `what` it may not do.
pub(crate) fn need(caller: &Caller, allowed: bool, what: &str) -> Result<(), ApiError> {
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
        reactor_service::metrics::register(crate::workers::RegisteredWorkers(Arc::downgrade(
            &workers,
        )));
        let build = Build::new(
            options.runtimes.builders,
            options.remote_workers.clone(),
            workers.clone(),
        );
        let sign_in = crate::auth::SignIn::load(&*options.store, options.env.keyring()).await?;
        let cp = Arc::new(Self {
            sign_in,
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
            promote_locks: Default::default(),
            started_at: std::time::Instant::now(),
            closing: tokio::sync::watch::channel(false).0,
            env: options.env,
            logs: options.logs,
            bad_tokens: Default::default(),
            uploads: Default::default(),
        });
        cp.routing.publish().await?;
        tokio::spawn(follow_routing(
            Arc::downgrade(&cp),
            cp.store.listen_routing().await,
            cp.closed(),
        ));
        for d in cp.store.list_materializing().await? {
            let cp = cp.clone();
            tokio::spawn(async move { cp.rematerialize(d).await });
        }
        // Removes workers that stopped heartbeating, for as long as the control plane lives.
        let weak = Arc::downgrade(&cp);
        let every = cp.workers.timing().heartbeat_interval / 2;
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(every).await;
                let Some(cp) = weak.upgrade() else { return };
                if cp.is_closing() {
                    return;
                }
                // The database's registry when there is one (PostgreSQL): every replica
                // reads the same workers; else this process's own.
                let changed = match cp.store.live_workers(cp.workers.timing().ttl).await {
                    Ok(Some(rows)) => {
                        if std::mem::take(&mut failing) {
                            tracing::info!("reading the registered workers again");
                            // No heartbeat landed while it was away.
                            cp.workers.hold_removals();
                        }
                        cp.workers.replace(&rows)
                    }
                    Ok(None) => cp.workers.expire(),
                    Err(e) => {
                        // Routers keep the workers they have until the database answers.
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(error = %e, "reading the registered workers; keeping the ones known");
                        }
                        false
                    }
                };
                if changed && let Err(e) = cp.routing.publish().await {
                    tracing::error!(error = %e, "publishing the routing table after the workers changed");
                }
            }
        });
        crate::gc::spawn(&cp).await;
        Ok(cp)
    }

    pub fn routing(&self) -> &RoutingPublisher {
        &self.routing
    }

    pub fn workers(&self) -> &WorkerRegistry {
        &self.workers
    }

    /// Registers (or re-registers) a worker with the secret it chose: in the database's
    /// registry when there is one, which every replica reads, and in this replica's copy.
    /// `Ok(Err)`: the id is live with another secret. `Ok(Ok(true))`: the table must change.
    pub async fn register_worker(
        &self,
        id: &str,
        runtime: reactor_api::Runtime,
        url: &str,
        secret: &str,
    ) -> Result<Result<bool, crate::workers::IdTaken>, crate::store::StoreError> {
        let row = crate::store::WorkerRow {
            id: id.to_string(),
            runtime: runtime.as_str().to_string(),
            url: url.to_string(),
            secret_sha256: crate::workers::secret_hex(secret),
        };
        Ok(
            match self
                .store
                .put_worker(&row, self.workers.timing().ttl)
                .await?
            {
                Some(crate::store::PutWorker::Put) => {
                    Ok(self.workers.put(id, runtime, url, secret))
                }
                Some(crate::store::PutWorker::Taken) => {
                    Err(crate::workers::IdTaken(id.to_string()))
                }
                None => self.workers.register_with_secret(id, runtime, url, secret),
            },
        )
    }

    /// A heartbeat of the worker that registered `id` with `secret` (through any replica,
    /// where the database keeps the registry): whether it is known.
    pub async fn worker_heartbeat(
        &self,
        id: &str,
        secret: &str,
    ) -> Result<bool, crate::store::StoreError> {
        let local = self.workers.heartbeat(id, secret);
        Ok(
            match self
                .store
                .touch_worker(id, &crate::workers::secret_hex(secret))
                .await?
            {
                Some(known) => known,
                None => local,
            },
        )
    }

    /// Removes a draining worker registered with `secret`: whether it was registered.
    pub async fn deregister_worker(
        &self,
        id: &str,
        secret: &str,
    ) -> Result<bool, crate::store::StoreError> {
        let shared = self
            .store
            .remove_worker(id, &crate::workers::secret_hex(secret))
            .await?;
        let local = self.workers.deregister(id, secret);
        Ok(shared.unwrap_or(false) || local)
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

    /// Emits a platform event to the function's log.
    pub(crate) fn event(
        &self,
        org: &str,
        function: &str,
        deployment_id: Option<&str>,
        message: String,
    ) {
        self.logs
            .emit(LogEntry::event(org, function, deployment_id, message));
    }
}

/// How often a control plane asks the database for the routing version, besides hearing
/// of it (PostgreSQL's LISTEN can miss one while its connection is down).
const ROUTING_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps this control plane's routing table level with the database's version, which
/// other control planes on the same database move (see [`RoutingPublisher::follow`]).
async fn follow_routing(
    cp: std::sync::Weak<ControlPlane>,
    mut notes: Option<tokio::sync::mpsc::Receiver<u64>>,
    closed: impl std::future::Future<Output = ()>,
) {
    let mut poll = tokio::time::interval(ROUTING_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(closed);
    loop {
        let mut seen = tokio::select! {
            Some(v) = async { match notes.as_mut() { Some(n) => n.recv().await, None => None } } => v,
            _ = poll.tick() => u64::MAX,
            () = &mut closed => return,
        };
        // A burst of versions is one catch-up.
        if let Some(n) = notes.as_mut() {
            while let Ok(v) = n.try_recv() {
                seen = seen.max(v);
            }
        }
        let Some(cp) = cp.upgrade() else {
            return;
        };
        if let Err(e) = cp.routing.follow(seen).await {
            tracing::warn!("catching up with the routing version: {e}");
        }
    }
}
