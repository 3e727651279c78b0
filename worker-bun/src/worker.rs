//! [`BunWorker`] and its options: construction (the host checked, the harness written),
//! one [`Pool`] of Bun processes per deployment with the reaper of idle ones, and
//! `prepare`, `retire` and `invoke`, which forwards invocations to a process over its
//! socket. The bundle cache is in `bundles`, materialization's check in `build`, the
//! streamed response body in `body`.

use crate::body::LeasedBody;
use crate::host::{self, MemoryLimiter, TaskLimiter};
use crate::launcher::Launcher;
use crate::pool::{Pool, PoolLimits};
use async_trait::async_trait;
use axum::body::Body;
use http_body_util::BodyExt;
use reactor_api::CallLink;
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::LogSink;
use reactor_api::{
    DeploymentSpec, EnvSource, Invocation, InvokeError, InvokeFailure, InvokeOutcome, Runtime,
    RuntimeRole, RuntimeWorker,
};
use reactor_storage::Storage;
use reactor_worker_link::calls::{CallLimits, CallScope};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use reactor_bun_dist::{HARNESS, HARNESS_MARK};
use tracing::Instrument;
/// Most of a crash report read from the harness.
const MAX_CRASH_REPORT: usize = 8192;
/// How long materialization's check and `prepare` may take to start a process.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often idle processes are looked for.
const REAP_EVERY: Duration = Duration::from_millis(500);

pub struct BunWorkerOptions {
    pub storage: Arc<dyn Storage>,
    /// Where bundles are unpacked and process directories live.
    pub cache_dir: PathBuf,
    /// The Bun binary (see [`reactor_bun_dist::find_bun`]).
    pub bun: PathBuf,
    /// Run each process inside bubblewrap.
    pub sandbox: bool,
    pub limits: PoolLimits,
    /// Deployment env and secrets, given to each process as its environment.
    pub env: Arc<dyn EnvSource>,
    /// Where the lines processes print go besides the worker's own log.
    pub logs: Arc<dyn LogSink>,
    /// Where calls between functions go (default: nowhere, every call refused).
    pub calls: CallLink,
    /// `[functions.calls]`: what bounds each invocation's calls.
    pub call_limits: CallLimits,
}

impl BunWorkerOptions {
    /// Options from `[functions]`: finds Bun (failing with a clear message when it is
    /// missing) and takes the pool bounds.
    pub fn from_config(
        config: &FunctionsConfig,
        storage: Arc<dyn Storage>,
        cache_dir: PathBuf,
        env: Arc<dyn EnvSource>,
        logs: Arc<dyn LogSink>,
    ) -> anyhow::Result<Self> {
        let bun =
            reactor_bun_dist::find_bun(config.bun_path.as_deref()).map_err(anyhow::Error::msg)?;
        Ok(Self {
            env,
            logs,
            calls: CallLink::new(),
            call_limits: CallLimits::from(&config.calls),
            storage,
            cache_dir,
            bun,
            sandbox: config.bun_sandbox,
            limits: PoolLimits {
                max_processes: config.bun_max_instances_per_fn.max(1) as usize,
                per_process: config.bun_concurrency_per_process.max(1) as usize,
                queue: config.bun_queue_per_fn as usize,
                idle_ttl: Duration::from_secs(config.bun_idle_ttl_secs),
            },
        })
    }
}

/// A deployment's pool, created by whoever asks first.
type PoolSlot = Arc<OnceCell<Arc<Pool>>>;

pub struct BunWorker {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) bundles_dir: PathBuf,
    pub(crate) launcher: Launcher,
    pub(crate) env: Arc<dyn EnvSource>,
    limits: PoolLimits,
    calls: CallLink,
    call_limits: CallLimits,
    /// Pools by deployment id.
    pools: Mutex<HashMap<String, PoolSlot>>,
}

impl BunWorker {
    /// Checks the host (Bun runs; bubblewrap works unless the sandbox is off; which memory
    /// limit mechanism exists), says what it found, and starts the idle reaper.
    pub async fn new(options: BunWorkerOptions) -> anyhow::Result<Arc<Self>> {
        let cache = &options.cache_dir;
        let bundles_dir = cache.join("bundles");
        let run_dir = cache.join("run");
        for dir in [&bundles_dir, &run_dir] {
            tokio::fs::create_dir_all(dir).await?;
        }
        restrict(&run_dir)?;
        let harness = cache.join("harness.js");
        tokio::fs::write(&harness, HARNESS).await?;
        let bunfig = cache.join("bunfig.toml");
        tokio::fs::write(&bunfig, "").await?;
        let bun_path = options.bun.clone();
        let (version, bwrap, memory, tasks) = tokio::task::spawn_blocking(move || {
            let version = reactor_bun_dist::bun_version(&bun_path)?;
            let bwrap = if options.sandbox {
                Some(host::find_bwrap()?)
            } else {
                None
            };
            let memory = MemoryLimiter::detect();
            let tasks = TaskLimiter::detect(&memory);
            Ok::<_, String>((version, bwrap, memory, tasks))
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        if version != reactor_bun_dist::PINNED_BUN {
            tracing::warn!(found = %version, pinned = reactor_bun_dist::PINNED_BUN, "this Bun is not the version the project pins");
        }
        match &bwrap {
            Some((path, v)) => {
                tracing::info!(bwrap = %path.display(), version = %v, "bun sandbox: bubblewrap (own mount, pid, ipc, network, uts and user namespaces, none nested; bundle read-only; seccomp filter)")
            }
            None => tracing::warn!(
                "bun sandbox is OFF (functions.bun_sandbox = false): functions run as the worker's user and can read its files"
            ),
        }
        match &memory {
            MemoryLimiter::None { .. } => {
                tracing::warn!("bun memory limits: {}", memory.describe())
            }
            _ => tracing::info!("bun memory limits: {}", memory.describe()),
        }
        // Said once: without it a function can start processes and threads without end.
        if tasks.enforced() {
            tracing::info!("bun task limits: {}", tasks.describe());
        } else {
            tracing::warn!("bun task limits: {}", tasks.describe());
        }
        tracing::info!(bun = %options.bun.display(), %version, max_processes = options.limits.max_processes,
            per_process = options.limits.per_process, queue = options.limits.queue,
            idle_ttl_secs = options.limits.idle_ttl.as_secs(), "bun worker ready");
        let worker = Arc::new(Self {
            storage: options.storage,
            bundles_dir,
            launcher: Launcher::new(
                options.bun,
                harness,
                bunfig,
                bwrap.map(|(p, _)| p),
                memory,
                tasks,
                run_dir,
                options.logs,
            ),
            env: options.env,
            limits: options.limits,
            calls: options.calls,
            call_limits: options.call_limits,
            pools: Mutex::new(HashMap::new()),
        });
        tokio::spawn(reap(Arc::downgrade(&worker)));
        let source: Arc<dyn reactor_service::metrics::PoolSource> = worker.clone();
        reactor_service::metrics::register_pools(Arc::downgrade(&source));
        Ok(worker)
    }

    /// How this worker bounds each process's number of tasks (processes and threads).
    pub fn task_limit(&self) -> &TaskLimiter {
        self.launcher.tasks()
    }

    /// The pool of a deployment, unpacking its bundle first if needed. Returns whether
    /// this call had to create it.
    async fn pool(&self, spec: &DeploymentSpec) -> Result<(Arc<Pool>, bool), InvokeError> {
        let slot = {
            let mut pools = self.pools.lock().map_err(|_| poisoned())?;
            pools.entry(spec.deployment_id.clone()).or_default().clone()
        };
        if let Some(pool) = slot.get() {
            return Ok((pool.clone(), false));
        }
        let pool = slot
            .get_or_try_init(|| async {
                // The env first: the control plane refuses (and the source checks) a spec
                // that is not the recorded deployment, before anything is unpacked under
                // its id.
                let env = self
                    .env
                    .deployment_env(spec)
                    .await
                    .map_err(|message| InvokeError::NotReady { message })?;
                let started = std::time::Instant::now();
                let (bundle, entry) = self
                    .unpack(spec)
                    .instrument(reactor_service::trace_span!("phase", otel.name = "unpack"))
                    .await?;
                reactor_service::metrics::get().cold_start("bun", "unpack", started.elapsed());
                Ok::<_, InvokeError>(Pool::new(
                    Arc::new(spec.clone()),
                    bundle,
                    entry,
                    self.limits,
                    env,
                ))
            })
            .await?;
        Ok((pool.clone(), true))
    }

    /// The pools of a function other than `keep`.
    fn other_pools(&self, spec: &DeploymentSpec) -> Vec<Arc<Pool>> {
        let Ok(pools) = self.pools.lock() else {
            return Vec::new();
        };
        pools
            .iter()
            .filter(|(id, _)| **id != spec.deployment_id)
            .filter_map(|(_, slot)| slot.get().cloned())
            .filter(|p| p.spec.org == spec.org && p.spec.function == spec.function)
            .collect()
    }
}

fn poisoned() -> InvokeError {
    InvokeError::Unavailable {
        message: "worker state poisoned".into(),
    }
}

/// Only the worker's user may enter the directory of process sockets.
fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Stops idle processes and forgets retired, empty pools, until the worker is dropped.
async fn reap(worker: Weak<BunWorker>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(worker) = worker.upgrade() else {
            return;
        };
        let Ok(mut pools) = worker.pools.lock() else {
            return;
        };
        pools.retain(|_, slot| slot.get().is_none_or(|p| !p.reap()));
    }
}

impl RuntimeRole for BunWorker {
    fn runtime(&self) -> Runtime {
        Runtime::Bun
    }
}

#[async_trait]
impl RuntimeWorker for BunWorker {
    /// Starts the deployment's processes (`min_instances`, at least one) and retires
    /// the other deployments of the function: their processes exit once idle.
    async fn prepare(&self, spec: &DeploymentSpec) -> Result<(), InvokeError> {
        let (pool, _) = self.pool(spec).await?;
        pool.make_live();
        // The reaper may have dropped this pool from the map (retired and empty) between
        // the lookup and now: put it back so that it stays managed.
        if let Ok(mut pools) = self.pools.lock() {
            let slot = pools.entry(spec.deployment_id.clone()).or_default();
            if slot.get().is_none_or(|p| !Arc::ptr_eq(p, &pool)) {
                *slot = Arc::new(OnceCell::new_with(Some(pool.clone())));
            }
        }
        let n = pool.keep_started().max(1);
        pool.ensure(&self.launcher, &pool.env, n, Instant::now() + START_TIMEOUT)
            .await?;
        for other in self.other_pools(spec) {
            other.retire();
        }
        Ok(())
    }

    /// Stops the deployment's processes now (a busy one once its requests end), so that
    /// its env does not outlive it until the idle TTL. The reaper then drops the pool.
    async fn retire(&self, deployment_id: &str) {
        let pool = {
            let Ok(mut pools) = self.pools.lock() else {
                return;
            };
            let found = pools.get(deployment_id).map(|slot| slot.get().cloned());
            if let Some(None) = found {
                // Still being created: forgotten here; its requests hold it, and its
                // processes stop when the last of them drops it.
                pools.remove(deployment_id);
            }
            found.flatten()
        };
        if let Some(pool) = pool {
            pool.stop_all();
        }
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
        let call_scope =
            CallScope::for_invocation(self.calls.clone(), self.call_limits, &invocation);
        let Invocation {
            spec,
            request,
            deadline,
            request_id,
            chain: _,
        } = invocation;
        let timeout_ms = spec.timeout_ms;
        let timeout = || InvokeError::Timeout { timeout_ms };
        let acquired = tokio::time::timeout_at(deadline, async {
            let (pool, created) = self.pool(&spec).await?;
            let (lease, spawned) = pool.acquire(&self.launcher, &pool.env, deadline).await?;
            Ok::<_, InvokeError>((lease, created || spawned))
        })
        .await;
        let (lease, cold) = match acquired {
            Ok(Ok(acquired)) => acquired,
            Ok(Err(error)) => {
                return Err(InvokeFailure {
                    error,
                    cold_start: true,
                });
            }
            Err(_) => {
                return Err(InvokeFailure {
                    error: timeout(),
                    cold_start: true,
                });
            }
        };
        let fail = |error| InvokeFailure {
            error,
            cold_start: cold,
        };
        let process = lease.process.clone();
        // Held with the response body: the output tagged with its number is this request's.
        let scope = process.begin(&request_id);
        // Held with the response body too: the invocation's calls end with it.
        let calls = process.grant_calls(call_scope);
        let sent = process
            .send(request, &scope, &calls)
            .instrument(reactor_service::trace_span!("guest"));
        let response = match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let message = process
                    .failure(&format!("the process failed the request ({e})"), &scope)
                    .await;
                return Err(fail(InvokeError::Crashed { message }));
            }
            Err(_) => {
                // A stuck process is replaced: the next request starts a fresh one.
                tracing::warn!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id,
                    %request_id, timeout_ms, process = process.id, "invocation timed out; stopping its process");
                process.kill();
                return Err(fail(timeout()));
            }
        };
        if response.headers().contains_key(HARNESS_MARK) {
            let body = http_body_util::Limited::new(response.into_body(), MAX_CRASH_REPORT);
            let report = match tokio::time::timeout_at(deadline, body.collect()).await {
                Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
                _ => "the handler threw an exception".to_string(),
            };
            tracing::warn!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id,
                %request_id, "function crashed: {report}");
            return Err(fail(InvokeError::Crashed { message: report }));
        }
        let (parts, body) = response.into_parts();
        let body = LeasedBody {
            inner: body,
            _scope: scope,
            _calls: calls,
            _lease: lease,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            request_id,
            timed_out: false,
        };
        Ok(InvokeOutcome {
            response: http::Response::from_parts(parts, Body::new(body)),
            cold_start: cold,
        })
    }
}

/// Each function's processes, busy or idle, its cap and its queue.
impl reactor_service::metrics::PoolSource for BunWorker {
    fn runtime(&self) -> &'static str {
        "bun"
    }

    fn pools(&self) -> Vec<reactor_service::metrics::PoolStat> {
        let Ok(pools) = self.pools.lock() else {
            return Vec::new();
        };
        pools
            .values()
            .filter_map(|slot| slot.get().map(|p| p.stat()))
            .collect()
    }
}
