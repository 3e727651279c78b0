//! The engine, the artifact cache and the per-request instance.

use crate::body::GuestBody;
use crate::body::TaskEnd;
use crate::host::{Host, Limits, Outbound, resource_table};
use crate::logs::{LogStream, LogTarget};
use crate::outbound::OutboundPolicy;
use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use reactor_api::CallLink;
use reactor_api::logs::LogSink;
use reactor_api::pool::Pool;
use reactor_api::{
    Builder, DeploymentSpec, EnvSource, Invocation, InvokeError, InvokeFailure, InvokeOutcome,
    Runtime, RuntimeRole, RuntimeWorker,
};
use reactor_proto::routing::RoutingTable;
use reactor_storage::seal::ArtifactSeal;
use reactor_storage::{Storage, keys};
use reactor_worker_link::calls::{CallLimits, CallScope};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView};

/// How often the epoch advances: the granularity of deadlines inside wasm code, and how
/// often a busy guest yields its thread.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of an instance's linear memory kept resident between the instances that reuse its
/// pooling slot (reset by copy, not unmapped): a small function's whole working set.
const KEEP_RESIDENT: usize = 1 << 20;
/// The same for its tables.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// How long a request waits for an instance of its deployment when all its slots are
/// taken, before it is refused: enough for a burst, never a queue.
const INSTANCE_WAIT: Duration = Duration::from_millis(100);

/// The default most instances of one deployment alive at once on a worker: a quarter of
/// the pool, so that one function cannot take all of it.
fn default_instances_per_deployment(max_instances: u32) -> usize {
    (max_instances / 4).max(1) as usize
}

pub struct WasmWorkerOptions {
    pub storage: Arc<dyn Storage>,
    /// Local cache of precompiled artifacts.
    pub cache_dir: PathBuf,
    /// Instances that may exist at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Deployment env and secrets, handed to each instance as its WASI environment.
    pub env: Arc<dyn EnvSource>,
    /// Where guest stdout/stderr lines go besides the worker's own log.
    pub logs: Arc<dyn LogSink>,
}

type Loaded = ProxyPre<Host>;

/// A loaded deployment: its pre-instantiated component, the env it pinned and the slots
/// of its live instances.
#[derive(Clone)]
struct Deployment {
    pre: Loaded,
    env: Arc<Vec<(String, String)>>,
    instances: Arc<Semaphore>,
    /// Most instances at once: the manifest's pool size, else the worker's default.
    size: usize,
    /// A static pool's `buffer`: requests that may wait for an instance until their
    /// deadline, and how many wait. Without it a request waits [`INSTANCE_WAIT`] at most.
    buffer: Option<(usize, Arc<std::sync::atomic::AtomicUsize>)>,
    /// The compiled code it runs, shared with the deployments of the same artifact.
    code: Arc<Code>,
}

/// A loaded component and the cache file it maps.
struct Code {
    file: FileId,
    component: Component,
    bytes: u64,
}

/// A request waiting in a static pool's buffer; dropping it (a slot, a timeout, or the
/// request cancelled) frees its place.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What [`WasmWorker::loaded`] reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadedSummary {
    pub deployments: Vec<String>,
    pub codes: usize,
    pub charged: u64,
}

/// A deployment, loaded once by whoever asks first.
type LoadSlot = Arc<OnceCell<Deployment>>;

/// The default `[worker] loaded_budget_mb`.
pub const DEFAULT_LOADED_BUDGET_MB: u64 = 512;

/// What a loaded deployment costs besides its compiled code: its pre-instantiated
/// component (type information, the import table), its env and slots. Measured with
/// `reactor-bench many` (10,000 deployments sharing one component).
const DEPLOYMENT_OVERHEAD: u64 = 16 * 1024;

/// An artifact file in the local cache, by identity: deployments whose artifacts are the
/// same bytes of the same org share one file (hard links) and one loaded component. The
/// identity is safe to share by: a loaded component keeps its file mapped, so its inode
/// cannot be reused while the component is in [`LoadedSet`], and cache files are only
/// ever replaced whole (renamed over), never written in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// An identity no file has: code loaded from it is never shared.
    fn unique() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            dev: u64::MAX,
            ino: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One loaded deployment (or one being loaded).
struct Entry {
    /// `org/function`.
    function: String,
    slot: LoadSlot,
    /// When a request last asked for it (a tick of [`LoadedSet`]), for LRU eviction.
    last_used: u64,
    /// The compiled code it holds a share of, once loaded and counted in the budget.
    code: Option<FileId>,
}

/// Compiled code loaded once for every deployment that runs the same artifact.
struct SharedCode {
    component: Component,
    /// Loaded deployments holding it.
    users: usize,
    /// What it is charged in the budget: the size of its mapped artifact.
    bytes: u64,
}

/// Loaded deployments, the code they share, and what they are charged against
/// `[worker] loaded_budget_mb`.
#[derive(Default)]
struct LoadedSet {
    deployments: HashMap<String, Entry>,
    code: HashMap<FileId, SharedCode>,
    /// Bytes charged: each shared code once, plus [`DEPLOYMENT_OVERHEAD`] per deployment.
    charged: u64,
    /// Deployments loaded and charged (those of `deployments` with their `code`).
    count: usize,
    tick: u64,
}

impl LoadedSet {
    /// The load slot of `spec`'s deployment, marked as just used.
    fn slot(&mut self, spec: &DeploymentSpec) -> LoadSlot {
        self.tick += 1;
        let tick = self.tick;
        let entry = self
            .deployments
            .entry(spec.deployment_id.clone())
            .or_insert_with(|| Entry {
                function: function_key(spec),
                slot: Arc::default(),
                last_used: tick,
                code: None,
            });
        entry.last_used = tick;
        entry.slot.clone()
    }

    /// Counts a deployment that finished loading with `code` (its component, from the
    /// artifact file `file` of `bytes`). False when it was forgotten while it loaded.
    fn admit(
        &mut self,
        id: &str,
        slot: &LoadSlot,
        file: FileId,
        code: &Component,
        bytes: u64,
    ) -> bool {
        let Some(entry) = self.deployments.get_mut(id) else {
            return false;
        };
        if !Arc::ptr_eq(&entry.slot, slot) || entry.code.is_some() {
            return false;
        }
        entry.code = Some(file);
        let shared = self.code.entry(file).or_insert_with(|| SharedCode {
            component: code.clone(),
            users: 0,
            bytes,
        });
        if shared.users == 0 {
            self.charged += shared.bytes;
        }
        shared.users += 1;
        self.charged += DEPLOYMENT_OVERHEAD;
        self.count += 1;
        self.report();
        true
    }

    /// `reactor_wasm_loaded_deployments` and `reactor_wasm_loaded_bytes`.
    fn report(&self) {
        let metrics = reactor_service::metrics::get();
        if metrics.recording() {
            metrics.wasm_loaded.set(self.count as i64);
            metrics
                .wasm_loaded_bytes
                .set(i64::try_from(self.charged).unwrap_or(i64::MAX));
        }
    }

    /// Forgets a deployment and gives back what it was charged.
    fn forget(&mut self, id: &str) -> Option<Entry> {
        let entry = self.deployments.remove(id)?;
        if let Some(file) = entry.code {
            self.count = self.count.saturating_sub(1);
            self.charged = self.charged.saturating_sub(DEPLOYMENT_OVERHEAD);
            if let Some(shared) = self.code.get_mut(&file) {
                shared.users = shared.users.saturating_sub(1);
                if shared.users == 0 {
                    self.charged = self.charged.saturating_sub(shared.bytes);
                    self.code.remove(&file);
                }
            }
            self.report();
        }
        Some(entry)
    }

    /// The loaded component of an artifact file, when a deployment holds it already.
    fn shared(&self, file: FileId) -> Option<Component> {
        self.code.get(&file).map(|c| c.component.clone())
    }

    /// Unloads the least recently used deployments with no instance running, other than
    /// `keep`, until the charge is down to `target`; returns them (to be dropped once
    /// the lock is released: the last user of a component unmaps it).
    fn evict_to(&mut self, target: u64, keep: &str) -> Vec<Entry> {
        if self.charged <= target {
            return Vec::new();
        }
        let mut idle: Vec<(u64, String)> = self
            .deployments
            .iter()
            .filter(|(id, e)| {
                *id != keep
                    && e.code.is_some()
                    && e.slot.get().is_some_and(|d| {
                        // A static pool stays: its instances are meant to be ready.
                        d.buffer.is_none() && d.instances.available_permits() >= d.size
                    })
            })
            .map(|(id, e)| (e.last_used, id.clone()))
            .collect();
        idle.sort_unstable();
        let mut evicted = Vec::new();
        for (_, id) in idle {
            if self.charged <= target {
                break;
            }
            evicted.extend(self.forget(&id));
        }
        evicted
    }
}

pub struct WasmWorker {
    engine: Engine,
    linker: Linker<Host>,
    storage: Arc<dyn Storage>,
    cache_dir: PathBuf,
    engine_hash: String,
    /// Loaded deployments by id, and the compiled code they share.
    loaded: Mutex<LoadedSet>,
    /// Most bytes loaded deployments may be charged before the least recently used idle
    /// ones are unloaded (`[worker] loaded_budget_mb`).
    loaded_budget: u64,
    /// Artifacts this worker built lately, by org and the entrypoint's sha256, so that
    /// the same code deployed again is copied in storage, not compiled again.
    built: Mutex<BuiltArtifacts>,
    /// Prewarms run one at a time (each checks the budget the previous left).
    prewarming: tokio::sync::Mutex<()>,
    /// Components are deserialized one at a time, so that deployments of the same code
    /// loading at once map it once.
    deserializing: tokio::sync::Mutex<()>,
    env: Arc<dyn EnvSource>,
    logs: Arc<dyn LogSink>,
    /// Most instances of one deployment alive at once.
    instances_per_deployment: usize,
    /// Signs the artifacts this worker builds and verifies those it loads.
    seal: Arc<ArtifactSeal>,
    /// Where calls between functions go, and what bounds each invocation's.
    calls: CallLink,
    call_limits: CallLimits,
    /// Where invocations' calls go once inline calls are on: inline when they may be,
    /// else `calls` ([`crate::inline`]).
    inline: std::sync::OnceLock<CallLink>,
    _ticker: EpochTicker,
}

/// Advances the engine's epoch from a dedicated thread until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl WasmWorker {
    pub fn new(options: WasmWorkerOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&options.cache_dir)?;
        let engine = build_engine(options.max_instances)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking wasi: {e}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking wasi:http: {e}"))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());
        Ok(Self {
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            linker,
            storage: options.storage,
            cache_dir: options.cache_dir,
            engine_hash,
            loaded: Mutex::new(LoadedSet::default()),
            loaded_budget: DEFAULT_LOADED_BUDGET_MB * 1024 * 1024,
            built: Mutex::new(BuiltArtifacts::default()),
            prewarming: tokio::sync::Mutex::new(()),
            deserializing: tokio::sync::Mutex::new(()),
            env: options.env,
            logs: options.logs,
            instances_per_deployment: default_instances_per_deployment(options.max_instances),
            seal: Arc::new(ArtifactSeal::ephemeral()),
            calls: CallLink::new(),
            call_limits: CallLimits::default(),
            inline: std::sync::OnceLock::new(),
        })
    }

    /// Seals and verifies artifacts with `seal` (default: a key of this process only).
    pub fn with_seal(mut self, seal: ArtifactSeal) -> Self {
        self.seal = Arc::new(seal);
        self
    }

    /// Sends the calls functions make (`http://NAME.reactor.internal`) through `link`
    /// (default: nowhere, every call refused), each invocation's bounded by `limits`.
    pub fn with_calls(mut self, link: CallLink, limits: CallLimits) -> Self {
        self.calls = link;
        self.call_limits = limits;
        self
    }

    /// Reports this worker's pools in `reactor_pool_*` while it lives.
    pub fn report_pools(self: &Arc<Self>) {
        let me: Arc<dyn reactor_service::metrics::PoolSource> = self.clone();
        reactor_service::metrics::register_pools(Arc::downgrade(&me));
    }

    /// Runs calls to WASM functions with an inline pool here, in the caller's worker,
    /// knowing them from `table` (the routing table as this process follows it); other
    /// calls go on through the link of [`WasmWorker::with_calls`].
    pub fn enable_inline(self: &Arc<Self>, table: watch::Receiver<Arc<RoutingTable>>) {
        let inline = crate::inline::InlineCalls::new(
            Arc::downgrade(self),
            table,
            self.calls.clone(),
            self.call_limits,
            self.logs.clone(),
        );
        let _ = self.inline.set(CallLink::to(Arc::new(inline)));
    }

    /// Unloads the least recently used idle deployments when those loaded are charged
    /// more than `bytes` (`[worker] loaded_budget_mb`, default [`DEFAULT_LOADED_BUDGET_MB`]
    /// MiB); they load again on their next request (from the local cache: a cold start of
    /// a few milliseconds).
    pub fn with_loaded_budget(mut self, bytes: u64) -> Self {
        self.loaded_budget = bytes;
        self
    }

    /// What is loaded now: deployment ids (least recently used first), the distinct
    /// compiled codes they share, and the bytes charged against the budget.
    pub fn loaded(&self) -> LoadedSummary {
        let Ok(set) = self.loaded.lock() else {
            return LoadedSummary::default();
        };
        let mut deployments: Vec<(u64, String)> = set
            .deployments
            .iter()
            .filter(|(_, e)| e.code.is_some())
            .map(|(id, e)| (e.last_used, id.clone()))
            .collect();
        deployments.sort_unstable();
        LoadedSummary {
            deployments: deployments.into_iter().map(|(_, id)| id).collect(),
            codes: set.code.len(),
            charged: set.charged,
        }
    }

    /// Sets the most instances of one deployment alive at once (default: a quarter of
    /// `max_instances`); takes effect for deployments loaded after.
    pub fn with_instances_per_deployment(mut self, instances: u32) -> Self {
        self.instances_per_deployment = instances.max(1) as usize;
        self
    }

    fn artifact_name(&self) -> String {
        format!("wasm-{}.cwasm", self.engine_hash)
    }

    fn cache_path(&self, spec: &DeploymentSpec) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{}.cwasm", spec.deployment_id, self.engine_hash))
    }

    fn pre(&self, component: &Component) -> Result<Loaded, String> {
        proxy_pre(&self.linker, component)
    }

    /// Loads a deployment: local cache, else the stored artifact, else a compile from the
    /// bundle (an artifact of another engine build). Returns whether this call loaded it.
    /// A deployment this call loaded is charged against the budget, and may unload the
    /// least recently used idle ones.
    async fn load(&self, spec: &DeploymentSpec) -> Result<(Deployment, bool), InvokeError> {
        self.load_and(spec, true).await
    }

    /// [`WasmWorker::load`]; past the budget, unloads others only when `evict` (a
    /// prewarm never unloads what requests loaded).
    async fn load_and(
        &self,
        spec: &DeploymentSpec,
        evict: bool,
    ) -> Result<(Deployment, bool), InvokeError> {
        let poisoned = || InvokeError::Unavailable {
            message: "worker state poisoned".into(),
        };
        let cell = self.loaded.lock().map_err(|_| poisoned())?.slot(spec);
        if let Some(pre) = cell.get() {
            return Ok((pre.clone(), false));
        }
        let mut loaded_here = false;
        let pre = cell
            .get_or_try_init(|| {
                loaded_here = true;
                self.load_uncached(spec)
                    .instrument(reactor_service::trace_span!(
                        "cold_start",
                        reactor.deployment = %spec.deployment_id
                    ))
            })
            .await;
        let pre = match pre {
            Ok(pre) => pre,
            Err(message) => {
                // Nothing stays of a load that failed: the next request tries again.
                if let Ok(mut set) = self.loaded.lock()
                    && set
                        .deployments
                        .get(&spec.deployment_id)
                        .is_some_and(|e| Arc::ptr_eq(&e.slot, &cell) && e.slot.get().is_none())
                {
                    set.deployments.remove(&spec.deployment_id);
                }
                if let Ok(mut set) = self.loaded.lock() {
                    // Code a failed load mapped and no deployment holds.
                    set.code.retain(|_, c| c.users > 0);
                }
                return Err(InvokeError::NotReady { message });
            }
        };
        if loaded_here {
            let evicted = {
                let mut set = self.loaded.lock().map_err(|_| poisoned())?;
                let code = &pre.code;
                if set.admit(
                    &spec.deployment_id,
                    &cell,
                    code.file,
                    &code.component,
                    code.bytes,
                ) && evict
                    && set.charged > self.loaded_budget
                {
                    // Down to 90 % at once, so that a worker at its budget does not sort
                    // its deployments on every cold start.
                    set.evict_to(self.loaded_budget / 10 * 9, &spec.deployment_id)
                } else {
                    Vec::new()
                }
            };
            if !evicted.is_empty() {
                let metrics = reactor_service::metrics::get();
                if metrics.recording() {
                    metrics.wasm_unloaded.inc_by(evicted.len() as u64);
                }
                tracing::info!(
                    unloaded = evicted.len(),
                    budget_mb = self.loaded_budget as f64 / (1024.0 * 1024.0),
                    "unloaded the least recently used idle deployments (worker.loaded_budget_mb)"
                );
            }
        }
        // A request that waited for another's load was cold too: it found nothing warm.
        Ok((pre.clone(), true))
    }

    /// Forgets the other loaded deployments of `spec`'s function (superseded by it; their
    /// artifacts stay in the disk cache for a rollback).
    fn forget_others_of(&self, spec: &DeploymentSpec) {
        let key = function_key(spec);
        // Dropped after the lock: the last user of a component unmaps it.
        let _superseded: Vec<Entry> = match self.loaded.lock() {
            Ok(mut set) => {
                let ids: Vec<String> = set
                    .deployments
                    .iter()
                    .filter(|(id, e)| e.function == key && **id != spec.deployment_id)
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.iter().filter_map(|id| set.forget(id)).collect()
            }
            Err(_) => Vec::new(),
        };
    }

    /// Whether loaded deployments are charged their whole budget (prewarm stops there:
    /// only requests and promotes unload others).
    fn budget_full(&self) -> bool {
        self.loaded
            .lock()
            .map(|set| set.charged >= self.loaded_budget)
            .unwrap_or(true)
    }

    async fn load_uncached(&self, spec: &DeploymentSpec) -> Result<Deployment, String> {
        let whole = std::time::Instant::now();
        let env = phase("env", self.env.deployment_env(spec)).await?;
        let env = Arc::new(env.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let started = std::time::Instant::now();
        let path = self.cache_path(spec);
        let source = if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            "cache"
        } else {
            let key = keys::artifact(
                &spec.org,
                &spec.function,
                &spec.deployment_id,
                &self.artifact_name(),
            );
            // Only an artifact whose MAC verifies is deserialized (it is native code);
            // else it is rebuilt from the bundle, itself checked against its sha256.
            match phase("fetch", self.seal.get(&*self.storage, &key))
                .await
                .map_err(err)?
            {
                Some(bytes) => {
                    self.cache_artifact(spec, &path, &bytes)
                        .await
                        .map_err(err)?;
                    "storage"
                }
                None => {
                    let artifact = phase("compile", self.compile_from_bundle(spec)).await?;
                    let artifact = Bytes::from(artifact);
                    self.seal
                        .put(&*self.storage, &key, artifact.clone())
                        .await
                        .map_err(err)?;
                    self.cache_artifact(spec, &path, &artifact)
                        .await
                        .map_err(err)?;
                    "bundle"
                }
            }
        };
        let meta = tokio::fs::metadata(&path).await.map_err(err)?;
        let file = FileId::of(&meta);
        // The same artifact loaded for another deployment of the org: its code is shared
        // (looked up once the deserializations before this one are done).
        let one = self.deserializing.lock().await;
        let shared = self
            .loaded
            .lock()
            .map_err(|_| "worker state poisoned".to_string())?
            .shared(file);
        let (component, file) = match shared {
            Some(component) => (component, file),
            None => {
                let engine = self.engine.clone();
                phase(
                    "deserialize",
                    tokio::task::spawn_blocking(move || {
                        let component = deserialize(&engine, &path)?;
                        // Shared by its file's identity only if that file is still the
                        // one it mapped (the mapping keeps its inode from being reused).
                        let same = std::fs::metadata(&path).is_ok_and(|m| FileId::of(&m) == file);
                        Ok::<_, String>((component, if same { file } else { FileId::unique() }))
                    }),
                )
                .await
                .map_err(err)??
            }
        };
        // Known to the loads after this one at once (charged when a deployment holding it
        // is admitted; a failed load leaves it to the next clean-up).
        if let Ok(mut set) = self.loaded.lock() {
            set.code.entry(file).or_insert_with(|| SharedCode {
                component: component.clone(),
                users: 0,
                bytes: meta.len(),
            });
        }
        drop(one);
        let pre = phase("link", async { self.pre(&component) }).await?;
        reactor_service::metrics::get().cold_start("wasm", "total", whole.elapsed());
        tracing::info!(
            org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id,
            source, ms = started.elapsed().as_secs_f64() * 1e3, "deployment loaded"
        );
        // A pool's size bounds instances at once (an instance lives for one request, so a
        // lazy pool's idle TTL has nothing to reap); never more than the allocator holds.
        let (size, buffer) = match spec.pool {
            Some(Pool::Static { workers, buffer }) => (workers as usize, Some(buffer as usize)),
            Some(Pool::Lazy { max_size, .. }) => (max_size as usize, None),
            Some(Pool::Adaptive { .. } | Pool::Inline) | None => {
                (self.instances_per_deployment, None)
            }
        };
        // Never more than the per-deployment cap (a quarter of the allocator by default),
        // so that one tenant's pool cannot take a shared worker.
        if size > self.instances_per_deployment {
            tracing::warn!(deployment_id = %spec.deployment_id, asked = size, cap = self.instances_per_deployment,
                "pool size above this worker's instances per deployment: capped");
        }
        let size = size.clamp(1, self.instances_per_deployment.max(1));
        Ok(Deployment {
            pre,
            env,
            instances: Arc::new(Semaphore::new(size)),
            size,
            buffer: buffer.map(|b| (b, Arc::new(std::sync::atomic::AtomicUsize::new(0)))),
            code: Arc::new(Code {
                file,
                component,
                bytes: meta.len(),
            }),
        })
    }

    /// Writes a verified artifact into the local cache at `path`, as a hard link to one
    /// file per org and content, so that deployments of the same code share it (and so
    /// one loaded component); a plain file where links are not supported.
    async fn cache_artifact(
        &self,
        spec: &DeploymentSpec,
        path: &Path,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        use sha2::Digest;
        let mut org = sha2::Sha256::new();
        org.update(spec.org.as_bytes());
        let dir = self
            .cache_dir
            .join("code")
            .join(hex::encode(&org.finalize()[..8]));
        let content = dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(sha2::Sha256::digest(bytes)),
            self.engine_hash
        ));
        // A file of the wrong size (torn by a crash) is written again.
        let whole = tokio::fs::metadata(&content)
            .await
            .is_ok_and(|m| m.len() == bytes.len() as u64);
        if !whole {
            tokio::fs::create_dir_all(&dir).await?;
            write_atomic(&content, bytes).await?;
        }
        let tmp = temp_beside(path);
        match tokio::fs::hard_link(&content, &tmp).await {
            Ok(()) => tokio::fs::rename(&tmp, path).await,
            Err(_) => write_atomic(path, bytes).await,
        }
    }

    async fn compile_from_bundle(&self, spec: &DeploymentSpec) -> Result<Vec<u8>, String> {
        let archive = self
            .storage
            .get_bytes(&spec.bundle_key)
            .await
            .map_err(err)?;
        reactor_storage::seal::verify_bundle(&archive, &spec.sha256)?;
        let entry = spec.entrypoint.clone();
        let wasm = tokio::task::spawn_blocking(move || extract_entry(&archive, &entry))
            .await
            .map_err(err)??;
        self.compile(wasm).await
    }

    /// Compiles a component on a blocking thread and checks that it is a
    /// `wasi:http/proxy` this host can run; returns the serialized artifact.
    async fn compile(&self, wasm: Vec<u8>) -> Result<Vec<u8>, String> {
        let (engine, linker) = (self.engine.clone(), self.linker.clone());
        tokio::task::spawn_blocking(move || {
            let component = Component::new(&engine, &wasm)
                .map_err(|e| format!("not a valid WebAssembly component: {e:#}"))?;
            proxy_pre(&linker, &component)?;
            component.serialize().map_err(err)
        })
        .await
        .map_err(err)?
    }
}

fn function_key(spec: &DeploymentSpec) -> String {
    format!("{}/{}", spec.org, spec.function)
}

fn proxy_pre(linker: &Linker<Host>, component: &Component) -> Result<Loaded, String> {
    let pre = linker.instantiate_pre(component).map_err(|e| {
        format!("the component cannot run here (it must target wasi:http/proxy): {e:#}")
    })?;
    ProxyPre::new(pre)
        .map_err(|e| format!("the component does not export wasi:http/incoming-handler: {e:#}"))
}

fn build_engine(max_instances: u32) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(max_instances);
    pool.total_core_instances(max_instances.saturating_mul(4));
    pool.total_memories(max_instances.saturating_mul(2));
    pool.total_tables(max_instances.saturating_mul(4));
    pool.total_stacks(max_instances);
    pool.max_memory_size(1 << 30);
    // What one component may hold, so that one tenant cannot take the whole pool.
    pool.max_memories_per_component(16);
    pool.max_tables_per_component(64);
    pool.max_core_instances_per_component(128);
    // A fresh instance per request reuses a warm slot. Its dirty pages are reset in place
    // (found by the PAGEMAP_SCAN ioctl, Linux 6.7+) instead of handed back to the kernel
    // and faulted in again by the next request, only where nothing can be swapped out:
    // the scan sees present pages only, so a dirty page in swap would keep its contents
    // for the next instance of the slot, maybe another tenant's. Else, and where the
    // kernel lacks the ioctl, every page goes back to the kernel (`madvise`).
    let swap = swap_in_use();
    if swap.is_none() {
        let mut in_place = pool.clone();
        in_place.linear_memory_keep_resident(KEEP_RESIDENT);
        in_place.table_keep_resident(TABLE_KEEP_RESIDENT);
        in_place.pagemap_scan(wasmtime::Enabled::Yes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(in_place));
        match Engine::new(&config) {
            Ok(engine) => {
                tracing::info!(
                    keep_resident_kib = KEEP_RESIDENT >> 10,
                    "instance memory is reset in place between requests (PAGEMAP_SCAN, no swap)"
                );
                return Ok(engine);
            }
            Err(e) => {
                tracing::info!(error = %e, "instance memory goes back to the kernel between requests (no PAGEMAP_SCAN here)")
            }
        }
    } else if let Some(why) = swap {
        tracing::info!(swap = %why, "instance memory goes back to the kernel between requests (swap is on)");
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(e) => {
            tracing::warn!(error = %e, "the pooling allocator is unavailable here; allocating instances on demand");
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e}"))
        }
    }
}

/// Why memory of this host may be swapped out (`None`: it may not): a swap area listed in
/// `/proc/swaps`, or that file unreadable. Checked when the engine is built; a worker
/// must be restarted after swap is turned on (`docs/operations.md`).
fn swap_in_use() -> Option<String> {
    match std::fs::read_to_string("/proc/swaps") {
        Ok(text) => swap_areas(&text),
        Err(e) => Some(format!("/proc/swaps cannot be read: {e}")),
    }
}

/// The swap areas of a `/proc/swaps` text (its first line is a header), if any.
fn swap_areas(text: &str) -> Option<String> {
    let areas: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    (!areas.is_empty()).then(|| areas.join(", "))
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, path: &Path) -> Result<Component, String> {
    // SAFETY: the file is an artifact this worker (or another worker of the same engine
    // build, as its compatibility hash in the name says) wrote through `serialize`, into
    // the worker's own cache or the platform's storage, which user code cannot write.
    unsafe { Component::deserialize_file(engine, path) }
        .map_err(|e| format!("loading the precompiled artifact: {e:#}"))
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
    }
    tokio::fs::rename(&tmp, path).await
}

/// A name beside `path` no other write of this process uses (two loads of the same code
/// may write its file at once), nor one of another process.
fn temp_beside(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_extension(format!("tmp-{}-{n}", std::process::id()))
}

/// Reads one file of a bundle (tar.gz) already checked by the control plane.
fn extract_entry(archive: &[u8], entry: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for e in tar.entries().map_err(err)? {
        let mut e = e.map_err(err)?;
        let path = e.path().map_err(err)?;
        let normalized = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect::<PathBuf>();
        if normalized == Path::new(entry) {
            let mut out = Vec::new();
            e.read_to_end(&mut out).map_err(err)?;
            return Ok(out);
        }
    }
    Err(format!("entrypoint {entry} is not in the bundle"))
}

impl RuntimeRole for WasmWorker {
    fn runtime(&self) -> Runtime {
        Runtime::Wasm
    }
}

#[async_trait]
impl Builder for WasmWorker {
    /// Compiles the entrypoint (checking that it is a `wasi:http/proxy` component this
    /// host can run) and stores the artifact for every worker of this engine build. The
    /// same code built lately for the same org is copied in storage instead (a hard link
    /// or a server-side copy), sealed for this deployment.
    async fn build(&self, spec: &DeploymentSpec, bundle_dir: &Path) -> Result<(), String> {
        use sha2::Digest;
        let wasm = tokio::fs::read(bundle_dir.join(&spec.entrypoint))
            .await
            .map_err(|e| format!("reading entrypoint {}: {e}", spec.entrypoint))?;
        let key = keys::artifact(
            &spec.org,
            &spec.function,
            &spec.deployment_id,
            &self.artifact_name(),
        );
        let source: [u8; 32] = sha2::Sha256::digest(&wasm).into();
        let earlier = self
            .built
            .lock()
            .ok()
            .and_then(|b| b.get(&spec.org, &source));
        if let Some(earlier) = earlier {
            match self
                .seal
                .copy(&*self.storage, &earlier.key, &key, &earlier.sha256)
                .await
            {
                // Read back once: a source that changed since (tampered, or gone and
                // rebuilt) fails the seal here, not at every later deploy's first load.
                Ok(()) if matches!(self.seal.get(&*self.storage, &key).await, Ok(Some(_))) => {
                    tracing::info!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id, from = %earlier.key, "same code as an earlier build: artifact copied, not compiled");
                    return Ok(());
                }
                Ok(()) => {
                    tracing::warn!(from = %earlier.key, "an earlier artifact copied for the same code fails its seal; compiling");
                    if let Ok(mut built) = self.built.lock() {
                        built.forget(&spec.org, &source);
                    }
                }
                // Collected since, or storage trouble: compile as if it were new.
                Err(e) => {
                    tracing::debug!(from = %earlier.key, error = %e, "copying an earlier artifact failed; compiling")
                }
            }
        }
        let artifact = Bytes::from(self.compile(wasm).await?);
        let sha256: [u8; 32] = sha2::Sha256::digest(&artifact).into();
        self.seal
            .put(&*self.storage, &key, artifact)
            .await
            .map_err(err)?;
        if let Ok(mut built) = self.built.lock() {
            built.insert(&spec.org, source, BuiltArtifact { key, sha256 });
        }
        Ok(())
    }
}

/// Most artifacts [`BuiltArtifacts`] remembers.
const BUILT_REMEMBERED: usize = 1024;

/// Where this worker stored the artifact of a component lately, by org and the
/// component's SHA-256 (never across orgs: a tenant must not learn, from a fast deploy,
/// what another one runs). Bounded, oldest forgotten first.
#[derive(Default)]
struct BuiltArtifacts {
    by_source: HashMap<(String, [u8; 32]), BuiltArtifact>,
    order: std::collections::VecDeque<(String, [u8; 32])>,
}

#[derive(Clone)]
struct BuiltArtifact {
    /// Its storage key.
    key: String,
    /// The SHA-256 of the artifact's bytes, which its seal binds.
    sha256: [u8; 32],
}

impl BuiltArtifacts {
    fn get(&self, org: &str, source: &[u8; 32]) -> Option<BuiltArtifact> {
        self.by_source.get(&(org.to_string(), *source)).cloned()
    }

    fn forget(&mut self, org: &str, source: &[u8; 32]) {
        let id = (org.to_string(), *source);
        self.by_source.remove(&id);
        self.order.retain(|o| *o != id);
    }

    fn insert(&mut self, org: &str, source: [u8; 32], artifact: BuiltArtifact) {
        let id = (org.to_string(), source);
        if self.by_source.insert(id.clone(), artifact).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > BUILT_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.by_source.remove(&old);
            }
        }
    }
}

#[async_trait]
impl RuntimeWorker for WasmWorker {
    /// Loads the deployment going live and forgets the other loaded deployments of the
    /// same function (their artifacts stay in the disk cache for a rollback).
    async fn prepare(&self, spec: &DeploymentSpec) -> Result<(), InvokeError> {
        self.load(spec).await?;
        self.forget_others_of(spec);
        Ok(())
    }

    /// Like [`RuntimeWorker::prepare`] while the loaded deployments are charged less
    /// than `[worker] loaded_budget_mb`; past it, nothing (requests load on demand).
    async fn prewarm(&self, spec: &DeploymentSpec) -> Result<bool, InvokeError> {
        // One at a time, so that each sees what the ones before it were charged.
        let _one = self.prewarming.lock().await;
        if self.budget_full() {
            return Ok(false);
        }
        self.load_and(spec, false).await?;
        self.forget_others_of(spec);
        Ok(true)
    }

    /// Forgets the loaded deployment (its pre-instantiated component, env and slots);
    /// running instances hold their own and finish.
    async fn retire(&self, deployment_id: &str) {
        let removed = match self.loaded.lock() {
            Ok(mut set) => set.forget(deployment_id),
            Err(_) => None,
        };
        if removed.is_some() {
            tracing::info!(%deployment_id, "deployment unloaded: no longer live");
        }
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
        let link = self.inline.get().unwrap_or(&self.calls).clone();
        let calls = CallScope::for_invocation(link, self.call_limits, &invocation);
        let Invocation {
            spec,
            request,
            deadline,
            request_id,
            chain: _,
        } = invocation;
        let timeout_ms = spec.timeout_ms;
        let (deployment, cold) = match tokio::time::timeout_at(deadline, self.load(&spec)).await {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(error)) => {
                return Err(InvokeFailure {
                    error,
                    cold_start: true,
                });
            }
            Err(_) => {
                return Err(InvokeFailure {
                    error: InvokeError::Timeout { timeout_ms },
                    cold_start: true,
                });
            }
        };
        let fail = |error| InvokeFailure {
            error,
            cold_start: cold,
        };
        let Deployment {
            pre,
            env,
            instances,
            size,
            buffer,
            code: _,
        } = deployment;
        let busy = |queued: &str| {
            fail(InvokeError::TooManyRequests {
                message: format!(
                    "{size} instances of deployment {} are already running on this worker{queued}",
                    spec.deployment_id
                ),
            })
        };
        // The instance's slot, held by its task until the instance is dropped.
        let slot = match buffer {
            // A static pool: wait in its buffer until the deadline, if there is room.
            Some((room, waiting)) => match instances.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    use std::sync::atomic::Ordering::AcqRel;
                    if waiting
                        .fetch_update(AcqRel, std::sync::atomic::Ordering::Acquire, |n| {
                            (n < room).then_some(n + 1)
                        })
                        .is_err()
                    {
                        return Err(busy(&format!(" and {room} are waiting (pool.buffer)")));
                    }
                    // Counted until it has a slot or gives up, also when it is cancelled.
                    let counted = Waiting(waiting);
                    let got = tokio::time::timeout_at(deadline, instances.acquire_owned()).await;
                    drop(counted);
                    match got {
                        Ok(Ok(slot)) => slot,
                        _ => {
                            return Err(fail(InvokeError::Timeout {
                                timeout_ms: spec.timeout_ms,
                            }));
                        }
                    }
                }
            },
            None => {
                let wait = deadline.min(Instant::now() + INSTANCE_WAIT);
                let Ok(Ok(slot)) = tokio::time::timeout_at(wait, instances.acquire_owned()).await
                else {
                    return Err(busy(""));
                };
                slot
            }
        };
        let target = Arc::new(LogTarget::new(&spec, &request_id, self.logs.clone()));
        // Ends the invocation's calls when its instance goes.
        let call_guard = calls.guard();
        let wasi = WasiCtx::builder()
            .envs(env.as_slice())
            .stdout(LogStream::new(target.clone(), "stdout"))
            .stderr(LogStream::new(target, "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let host = Host {
            wasi,
            http: WasiHttpCtx::new(),
            table: resource_table(),
            limits: Limits::new(spec.memory_mb),
            outbound: Outbound::new(OutboundPolicy::default()).with_calls(calls),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        let deadline_std = deadline.into_std();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if std::time::Instant::now() >= deadline_std {
                Err(wasmtime::format_err!("deadline exceeded"))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let (mut parts, body) = request.into_parts();
        if parts.uri.authority().is_none() && !parts.headers.contains_key(http::header::HOST) {
            parts.headers.insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        let body = body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())));
        let request = hyper::Request::from_parts(parts, body);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let setup = (|| {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, request)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            Ok::<_, wasmtime::Error>((req, out))
        })();
        let (req, out) = setup.map_err(|e| {
            fail(InvokeError::InvalidRequest {
                message: format!("{e:#}"),
            })
        })?;

        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<TaskEnd>();
        let log_spec = spec.clone();
        let log_request_id = request_id.clone();
        let task = tokio::spawn(async move {
            let run = async {
                let proxy = pre
                    .instantiate_async(&mut store)
                    .instrument(reactor_service::trace_span!("instantiate"))
                    .await?;
                // The guest's run: until its handler returns (the body may stream on).
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .instrument(reactor_service::trace_span!("guest"))
                    .await
            };
            let end = match tokio::time::timeout_at(deadline, run).await {
                Ok(Ok(())) => TaskEnd::Done,
                Err(_) => TaskEnd::Timeout,
                Ok(Err(_)) if Instant::now() >= deadline => TaskEnd::Timeout,
                Ok(Err(e)) => TaskEnd::Trap(format!("{e:#}")),
            };
            let (org, function, deployment_id) =
                (&log_spec.org, &log_spec.function, &log_spec.deployment_id);
            match &end {
                TaskEnd::Done => {}
                TaskEnd::Timeout => {
                    tracing::warn!(%org, %function, %deployment_id, request_id = %log_request_id, timeout_ms, "invocation timed out")
                }
                TaskEnd::Trap(m) => {
                    tracing::warn!(%org, %function, %deployment_id, request_id = %log_request_id, error = %m, "function crashed")
                }
            }
            // The instance is torn down (its memory reset for the next one) and its slot
            // freed before the body's end is signalled: a client's next request never
            // finds the slot still taken.
            drop(store);
            drop(call_guard);
            drop(slot);
            let _ = end_tx.send(end);
        }
        .in_current_span());
        let task = AbortOnDropHandle::new(task);
        let mut cancel_log = CancelLog {
            request_id: request_id.clone(),
            armed: true,
        };
        let result = match rx.await {
            Ok(Ok(response)) => {
                let (parts, body) = response.into_parts();
                let body = Body::new(GuestBody::new(body, task, end_rx, request_id));
                Ok(InvokeOutcome {
                    response: http::Response::from_parts(parts, body),
                    cold_start: cold,
                })
            }
            Ok(Err(code)) => Err(fail(InvokeError::Crashed {
                message: format!("the handler answered with error {code:?}"),
            })),
            Err(_) => Err(fail(match end_rx.await {
                Ok(TaskEnd::Timeout) => InvokeError::Timeout { timeout_ms },
                Ok(TaskEnd::Trap(message)) => InvokeError::Crashed { message },
                Ok(TaskEnd::Done) => InvokeError::Crashed {
                    message: "the handler returned without setting a response".into(),
                },
                Err(_) => InvokeError::Crashed {
                    message: "the handler's task ended abruptly".into(),
                },
            })),
        };
        cancel_log.armed = false;
        result
    }
}

/// Logs when an invocation future is dropped before the response headers: the client
/// went away and the instance is dropped with it.
struct CancelLog {
    request_id: String,
    armed: bool,
}

impl Drop for CancelLog {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!(request_id = %self.request_id, "invocation cancelled: the client went away before the response");
        }
    }
}

/// One part of a cold start: a span (with traces on) and
/// `reactor_cold_start_duration_seconds{runtime="wasm"}`.
async fn phase<T>(name: &'static str, work: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = work
        .instrument(reactor_service::trace_span!("phase", otel.name = name))
        .await;
    reactor_service::metrics::get().cold_start("wasm", name, started.elapsed());
    out
}

/// Each loaded deployment: instances running now (an instance lives for one request, so
/// none idle), the deployment's cap, and requests waiting in a static pool's buffer.
impl reactor_service::metrics::PoolSource for WasmWorker {
    fn runtime(&self) -> &'static str {
        "wasm"
    }

    fn pools(&self) -> Vec<reactor_service::metrics::PoolStat> {
        let Ok(loaded) = self.loaded.lock() else {
            return Vec::new();
        };
        loaded
            .deployments
            .values()
            .filter_map(
                |Entry {
                     function: key,
                     slot,
                     ..
                 }| {
                    let d = slot.get()?;
                    let (org, function) = key.split_once('/').unwrap_or(("", key));
                    Some(reactor_service::metrics::PoolStat {
                        org: org.to_string(),
                        function: function.to_string(),
                        busy: d.size.saturating_sub(d.instances.available_permits()) as u64,
                        idle: 0,
                        capacity: d.size as u64,
                        queued: d
                            .buffer
                            .as_ref()
                            .map(|(_, waiting)| waiting.load(std::sync::atomic::Ordering::Relaxed))
                            .unwrap_or(0) as u64,
                    })
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::swap_areas;

    #[test]
    fn swap_areas_are_read_from_proc_swaps() {
        let none = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert_eq!(swap_areas(none), None);
        assert_eq!(swap_areas(""), None);
        let two = "Filename\tType\tSize\tUsed\tPriority\n/dev/zram0 partition 4194300 0 100\n/swapfile file 1048572 0 -2\n";
        assert_eq!(swap_areas(two).as_deref(), Some("/dev/zram0, /swapfile"));
    }
}
