//! [`BunWorker`]: bundles unpacked from storage into a local cache, one [`Pool`] of Bun
//! processes per deployment, invocations forwarded to a process over its socket.

use crate::host::{self, MemoryLimiter};
use crate::launcher::{Launcher, PREBUNDLED};
use crate::pool::{Lease, Pool, PoolLimits};
use async_trait::async_trait;
use axum::body::Body;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use reactor_api::config::FunctionsConfig;
use reactor_api::logs::LogSink;
use reactor_api::{
    Builder, DeploymentSpec, EnvSource, Invocation, InvokeError, InvokeFailure, InvokeOutcome,
    Runtime, RuntimeRole, RuntimeWorker,
};
use reactor_storage::{Storage, StorageError, keys};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use reactor_bun_dist::{HARNESS, HARNESS_MARK};
/// Most of a crash report read from the harness.
const MAX_CRASH_REPORT: usize = 8192;
/// How long materialization's check and `prepare` may take to start a process.
const START_TIMEOUT: Duration = Duration::from_secs(20);
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
    storage: Arc<dyn Storage>,
    bundles_dir: PathBuf,
    launcher: Launcher,
    env: Arc<dyn EnvSource>,
    limits: PoolLimits,
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
        let (version, bwrap, memory) = tokio::task::spawn_blocking(move || {
            let version = reactor_bun_dist::bun_version(&bun_path)?;
            let bwrap = if options.sandbox {
                Some(host::find_bwrap()?)
            } else {
                None
            };
            Ok::<_, String>((version, bwrap, MemoryLimiter::detect()))
        })
        .await?
        .map_err(anyhow::Error::msg)?;
        if version != reactor_bun_dist::PINNED_BUN {
            tracing::warn!(found = %version, pinned = reactor_bun_dist::PINNED_BUN, "this Bun is not the version the project pins");
        }
        match &bwrap {
            Some((path, v)) => {
                tracing::info!(bwrap = %path.display(), version = %v, "bun sandbox: bubblewrap (own mount, pid, ipc, network, uts and user namespaces; bundle read-only)")
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
                run_dir,
                options.logs,
            ),
            env: options.env,
            limits: options.limits,
            pools: Mutex::new(HashMap::new()),
        });
        tokio::spawn(reap(Arc::downgrade(&worker)));
        Ok(worker)
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
                let (bundle, entry) = self.unpack(spec).await?;
                let env = self
                    .env
                    .deployment_env(spec)
                    .await
                    .map_err(|message| InvokeError::NotReady { message })?;
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

    /// The deployment's bundle unpacked under the cache (kept for later pools), read-only,
    /// with its prebundled entrypoint beside the original when materialization made one.
    /// Returns the directory and the file processes import.
    async fn unpack(&self, spec: &DeploymentSpec) -> Result<(PathBuf, String), InvokeError> {
        let dir = self.bundles_dir.join(&spec.deployment_id);
        let prebundled = prebundled_path(&spec.entrypoint);
        let entry_in = |dir: &Path| {
            if dir.join(&prebundled).is_file() {
                prebundled.clone()
            } else {
                spec.entrypoint.clone()
            }
        };
        if tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Ok((dir.clone(), entry_in(&dir)));
        }
        let not_ready = |e: String| InvokeError::NotReady { message: e };
        let archive = self
            .storage
            .get_bytes(&spec.bundle_key)
            .await
            .map_err(|e| not_ready(format!("fetching the bundle: {e}")))?;
        let built = match self.storage.get_bytes(&prebundled_key(spec)).await {
            Ok(bytes) => Some(bytes),
            Err(StorageError::NotFound(_)) => None,
            Err(e) => {
                return Err(not_ready(format!(
                    "fetching the prebundled entrypoint: {e}"
                )));
            }
        };
        let tmp = tempfile::Builder::new()
            .prefix(".unpack-")
            .tempdir_in(&self.bundles_dir)
            .map_err(|e| not_ready(format!("unpacking the bundle: {e}")))?;
        let into = tmp.path().to_path_buf();
        let prebundled_file = built.map(|b| (into.join(&prebundled), b));
        tokio::task::spawn_blocking(move || unpack(&archive, &into, prebundled_file))
            .await
            .map_err(|e| not_ready(e.to_string()))?
            .map_err(|e| not_ready(format!("unpacking the bundle: {e}")))?;
        let unpacked = tmp.keep();
        if let Err(e) = tokio::fs::rename(&unpacked, &dir).await {
            let _ = tokio::fs::remove_dir_all(&unpacked).await;
            if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
                return Err(not_ready(format!("unpacking the bundle: {e}")));
            }
        }
        Ok((dir.clone(), entry_in(&dir)))
    }

    /// Runs the harness in `mode` on `entry` of an unpacked bundle, sandboxed and within
    /// the memory limit, and waits for it. `Ok(socket dir)` on success (where `build`
    /// wrote its output); `Err` is Bun's own error text.
    async fn run_once(
        &self,
        mode: &str,
        spec: &DeploymentSpec,
        entry: &str,
        bundle_dir: &Path,
    ) -> Result<tempfile::TempDir, String> {
        // Module top-level code may read the env, so checks see the deployment's too; the
        // build gets none, so that nothing can be inlined into the stored artifact.
        let env = if mode == "build" {
            Arc::default()
        } else {
            self.env.deployment_env(spec).await?
        };
        let socket_dir = tempfile::Builder::new()
            .prefix(&format!("{mode}-"))
            .tempdir_in(self.launcher.run_dir())
            .map_err(|e| format!("creating the {mode} directory: {e}"))?;
        let cgroup = self
            .launcher
            .memory()
            .create(
                &format!(
                    "reactor-bun-{}-{mode}-{}",
                    std::process::id(),
                    crate::process::next_id()
                ),
                spec.memory_mb,
            )
            .map_err(|e| format!("creating the memory group: {e}"))?;
        let launch = self.launcher.command(
            mode,
            spec,
            entry,
            bundle_dir,
            socket_dir.path(),
            cgroup.as_ref(),
            &env,
        );
        let mut child = launch.spawn().await?;
        // Output is read with a bound: a bundle printing without end must not fill memory.
        let stdout = child.stdout.take().map(|o| tokio::spawn(read_capped(o)));
        let stderr = child.stderr.take().map(|e| tokio::spawn(read_capped(e)));
        let status = tokio::time::timeout(START_TIMEOUT, child.wait()).await;
        let status = match status {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(format!("running bun: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                if let Some(group) = cgroup {
                    group.remove().await;
                }
                return Err(format!(
                    "loading {} took longer than {} s",
                    spec.entrypoint,
                    START_TIMEOUT.as_secs()
                ));
            }
        };
        if let Some(out) = stdout {
            let _ = out.await;
        }
        let err_text = match stderr {
            Some(e) => e.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let oom = cgroup.as_ref().is_some_and(|c| c.oom_killed());
        if let Some(group) = cgroup {
            group.remove().await;
        }
        if status.success() {
            return Ok(socket_dir);
        }
        if oom {
            return Err(format!(
                "loading {} exceeded the memory limit ({} MB)",
                spec.entrypoint, spec.memory_mb
            ));
        }
        let text = String::from_utf8_lossy(&err_text).trim().to_string();
        Err(if text.is_empty() {
            format!("bun could not load {} ({status})", spec.entrypoint)
        } else {
            text
        })
    }

    /// Bundles the entrypoint into one file with `bun build`, checks that it loads too,
    /// and stores it for the workers. Best effort: a bundle `bun build` cannot handle runs
    /// from its sources.
    async fn prebundle(&self, spec: &DeploymentSpec, bundle_dir: &Path) -> Result<(), String> {
        let out = self
            .run_once("build", spec, &spec.entrypoint, bundle_dir)
            .await?;
        let built = read_output(&out.path().join(PREBUNDLED))
            .map_err(|e| format!("reading the output: {e}"))?;
        let rel = prebundled_path(&spec.entrypoint);
        tokio::fs::write(bundle_dir.join(&rel), &built)
            .await
            .map_err(|e| format!("writing {rel}: {e}"))?;
        self.run_once("check", spec, &rel, bundle_dir).await?;
        self.storage
            .put_bytes(&prebundled_key(spec), Bytes::from(built))
            .await
            .map_err(|e| e.to_string())
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

/// Most of a check's output kept (the start of Bun's error text).
const MAX_OUTPUT: usize = 64 * 1024;
/// The largest prebundled file accepted.
const MAX_PREBUNDLED: u64 = 64 << 20;

/// Reads a stream to its end, keeping its first [`MAX_OUTPUT`] bytes.
async fn read_capped(mut stream: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Reads what `bun build` wrote in a directory the sandbox can write: only a regular file
/// (not a symlink to a file of the host, not a FIFO), of bounded size, and the very file
/// that was checked.
fn read_output(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_file() || meta.len() > MAX_PREBUNDLED {
        return Err(std::io::Error::other(
            "the output is not a regular file of at most 64 MiB",
        ));
    }
    let file = std::fs::File::open(path)?;
    let opened = file.metadata()?;
    if opened.ino() != meta.ino() || opened.dev() != meta.dev() {
        return Err(std::io::Error::other(
            "the output changed while it was read",
        ));
    }
    let mut out = Vec::new();
    file.take(MAX_PREBUNDLED).read_to_end(&mut out)?;
    Ok(out)
}

/// Where the prebundled entrypoint goes: beside the entrypoint, so that paths relative to
/// the module (`import.meta.dir`) stay the same.
fn prebundled_path(entrypoint: &str) -> String {
    match entrypoint.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/.reactor-prebundled.js"),
        None => ".reactor-prebundled.js".to_string(),
    }
}

fn prebundled_key(spec: &DeploymentSpec) -> String {
    keys::artifact(
        &spec.org,
        &spec.function,
        &spec.deployment_id,
        "bun-prebundled.js",
    )
}

/// Unpacks a bundle (already checked by the control plane), adds the prebundled
/// entrypoint when there is one, and makes it all read-only.
fn unpack(
    archive: &[u8],
    into: &Path,
    prebundled: Option<(PathBuf, Bytes)>,
) -> std::io::Result<()> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    tar.unpack(into)?;
    if let Some((path, bytes)) = prebundled {
        std::fs::write(path, bytes)?;
    }
    read_only(into)
}

fn read_only(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            read_only(&entry.path())?;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o555))?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444))?;
        }
    }
    Ok(())
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
impl Builder for BunWorker {
    /// Imports the entrypoint in Bun (sandboxed, within the memory limit) and checks that
    /// its default export has `fetch`; the error is Bun's own text. Then prebundles it.
    async fn build(&self, spec: &DeploymentSpec, bundle_dir: &Path) -> Result<(), String> {
        self.run_once("check", spec, &spec.entrypoint, bundle_dir)
            .await?;
        if let Err(e) = self.prebundle(spec, bundle_dir).await {
            tracing::info!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id,
                "not prebundled (it runs from its sources): {e}");
        }
        Ok(())
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
        let n = (spec.min_instances as usize).max(1);
        pool.ensure(&self.launcher, &pool.env, n, Instant::now() + START_TIMEOUT)
            .await?;
        for other in self.other_pools(spec) {
            other.retire();
        }
        Ok(())
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
        let Invocation {
            spec,
            request,
            deadline,
            request_id,
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
        let response = match tokio::time::timeout_at(deadline, process.send(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let message = process
                    .failure(&format!("the process failed the request ({e})"))
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

/// A process's response body, holding its slot until done and cut at the deadline.
struct LeasedBody {
    inner: hyper::body::Incoming,
    _lease: Lease,
    deadline: Pin<Box<tokio::time::Sleep>>,
    request_id: String,
    timed_out: bool,
}

impl http_body::Body for LeasedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.timed_out {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.timed_out = true;
            tracing::warn!(request_id = %self.request_id, "invocation timed out while streaming its response; aborting the stream");
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the function exceeded limits.timeout_ms while streaming",
            ))));
        }
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(std::io::Error::other)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;
