//! One Bun process serving one deployment on a unix socket in a private directory:
//! spawned (inside bubblewrap unless switched off, in its own memory and task group),
//! configured over stdin, reached over HTTP/1.1 on the socket, its output turned into log
//! lines (see `logs`), its exit watched.
//!
//! A process serves many invocations at once: what a failed invocation is told is how the
//! process ended and the stderr lines attributed to that invocation, never the process's
//! stderr, which holds other requests' output.

use crate::calls::{CallDoor, CallGrant};
use crate::host::Cgroup;
use crate::launcher::Launcher;
use crate::logs::{InvocationScope, ProcessLogs, Stream};
use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reactor_api::DeploymentSpec;
use reactor_worker_link::calls::CallScope;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A number no other process (or check) of this worker has.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

type UnixClient = Client<
    tower::util::BoxCloneSyncService<http::Uri, TokioIo<tokio::net::UnixStream>, std::io::Error>,
    Body,
>;

/// How a process ended, without any of its output.
#[derive(Clone, Debug)]
pub struct Exit {
    pub message: String,
}

pub struct Process {
    pub id: u64,
    pub inflight: AtomicUsize,
    last_used: Mutex<Instant>,
    socket: PathBuf,
    /// One HTTP/1.1 client (with its pool of connections) per serving thread, so that a
    /// request and its connection stay on one runtime (no cross-thread wake-ups).
    clients: Mutex<HashMap<std::thread::ThreadId, UnixClient>>,
    kill: Arc<Notify>,
    /// Asked to stop: takes no new requests.
    stopping: AtomicBool,
    exit: watch::Receiver<Option<Exit>>,
    logs: Arc<ProcessLogs>,
    /// The socket its invocations' calls between functions come in on.
    calls: CallDoor,
}

/// What a process runs.
pub struct Start<'a> {
    pub spec: &'a DeploymentSpec,
    /// The unpacked bundle (mounted read-only).
    pub bundle: &'a Path,
    /// The file to import, inside the bundle.
    pub entry: &'a str,
    pub env: BTreeMap<String, String>,
    /// Until when it may take to answer on its socket.
    pub deadline: Instant,
}

impl Process {
    /// Spawns a process and waits until it serves (or fails, or the deadline passes).
    pub async fn spawn(launcher: &Launcher, start: Start<'_>) -> Result<Arc<Process>, String> {
        let id = next_id();
        let spec = start.spec;
        let socket_dir = tempfile::Builder::new()
            .prefix(&format!("p{id}-"))
            .tempdir_in(launcher.run_dir())
            .map_err(|e| format!("creating the process directory: {e}"))?;
        let cgroup = launcher
            .cgroup(
                &format!("reactor-bun-{}-{id}", std::process::id()),
                spec.memory_mb,
            )
            .map_err(|e| format!("creating the process's cgroups: {e}"))?;
        let tag = crate::logs::secret_tag().map_err(|e| format!("drawing the log tag: {e}"))?;
        let calls = CallDoor::open(&socket_dir.path().join(crate::launcher::CALL_SOCKET))
            .map_err(|e| format!("opening the process's call socket: {e}"))?;
        let launch = launcher.command(
            "serve",
            spec,
            start.entry,
            start.bundle,
            socket_dir.path(),
            cgroup.as_ref(),
            &start.env,
            Some(tag.as_str()),
        )?;
        let socket = launch.socket.clone();
        let spawn_started = std::time::Instant::now();
        let mut child = launch
            .spawn()
            .instrument(reactor_service::trace_span!("phase", otel.name = "spawn"))
            .await?;
        reactor_service::metrics::get().cold_start("bun", "spawn", spawn_started.elapsed());
        let logs = ProcessLogs::new(spec, id, launcher.logs().clone(), &tag);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(crate::logs::pump(out, logs.clone(), Stream::Stdout));
        }
        let stderr_done = child
            .stderr
            .take()
            .map(|err| tokio::spawn(crate::logs::pump(err, logs.clone(), Stream::Stderr)));
        let kill = Arc::new(Notify::new());
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(watch_exit(
            child,
            kill.clone(),
            exit_tx,
            cgroup,
            socket_dir,
            stderr_done,
            spec.memory_mb,
            logs.clone(),
        ));
        let process = Arc::new(Process {
            id,
            inflight: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            socket: launcher.run_dir().join(format!("p{id}.sock")),
            clients: Mutex::new(HashMap::new()),
            kill,
            stopping: AtomicBool::new(false),
            exit,
            logs,
            calls,
        });
        // Until the harness serves: Bun's start and the function module's import.
        let import_started = std::time::Instant::now();
        process
            .wait_serving(&socket, start.deadline)
            .instrument(reactor_service::trace_span!("phase", otel.name = "import"))
            .await?;
        reactor_service::metrics::get().cold_start("bun", "import", import_started.elapsed());
        // The socket's directory is writable from inside the sandbox: from now on the
        // worker connects through a hard link in its own directory, so that a function
        // replacing `fn.sock` (with a symlink to another socket, say) redirects nothing.
        if let Err(e) = link_socket(&socket, &process.socket) {
            process.kill();
            return Err(format!("the process's socket: {e}"));
        }
        Ok(process)
    }

    /// Polls the socket until the harness listens on it.
    async fn wait_serving(&self, socket: &Path, deadline: Instant) -> Result<(), String> {
        let mut exit = self.exit.clone();
        loop {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Ok(());
            }
            if let Some(e) = exit.borrow_and_update().clone() {
                return Err(format!(
                    "the process exited before serving: {}; see the function's logs",
                    e.message
                ));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err("the process did not start serving in time".into());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                _ = exit.changed() => {}
            }
        }
    }

    /// Registers an invocation of `request_id`, whose output is then told apart.
    pub fn begin(&self, request_id: &str) -> InvocationScope {
        self.logs.begin(request_id)
    }

    /// The right of an invocation on this process to make calls, until dropped.
    pub fn grant_calls(&self, scope: Arc<CallScope>) -> CallGrant {
        self.calls.grant(scope)
    }

    /// Sends one request of `invocation`; the URI is relative to the function's mount.
    pub async fn send(
        &self,
        request: http::Request<Body>,
        invocation: &InvocationScope,
        calls: &CallGrant,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        // The process speaks HTTP/1.1, whatever the router used to reach this worker.
        parts.version = http::Version::HTTP_11;
        parts.uri = http::Uri::builder()
            .scheme("http")
            .authority("localhost")
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| http::Uri::from_static("http://localhost/"));
        // Set here whatever the caller sent, so that nobody's output is tagged as another's.
        parts.headers.insert(
            http::header::HeaderName::from_static(reactor_bun_dist::INVOCATION_MARK),
            http::HeaderValue::from(invocation.id()),
        );
        match http::HeaderValue::from_str(calls.capability()) {
            Ok(v) => {
                parts.headers.insert(
                    http::header::HeaderName::from_static(reactor_bun_dist::CALL_CAPABILITY),
                    v,
                );
            }
            Err(_) => {
                parts.headers.remove(reactor_bun_dist::CALL_CAPABILITY);
            }
        }
        if !parts.headers.contains_key(http::header::HOST) {
            parts.headers.insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }
        self.client()
            .request(http::Request::from_parts(parts, body))
            .await
    }

    /// This thread's client to the process.
    fn client(&self) -> UnixClient {
        let thread = std::thread::current().id();
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(thread)
            .or_insert_with(|| {
                let socket = self.socket.clone();
                let connector = tower::util::BoxCloneSyncService::new(tower::service_fn(
                    move |_: http::Uri| {
                        let socket = socket.clone();
                        async move {
                            tokio::net::UnixStream::connect(socket)
                                .await
                                .map(TokioIo::new)
                        }
                    },
                ));
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(usize::MAX)
                    .build(connector)
            })
            .clone()
    }

    pub fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    pub fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Kills the process (its sandbox and everything in it).
    pub fn kill(&self) {
        self.stopping.store(true, Ordering::Release);
        self.kill.notify_one();
    }

    /// Takes no new requests and stops once the last running one ends (see
    /// [`Process::release`]): at once when none runs.
    pub fn drain(&self) {
        // SeqCst here and in `release`: one of the two sees the other's write, so the
        // process is stopped whichever comes last.
        self.stopping.store(true, Ordering::SeqCst);
        if self.inflight.load(Ordering::SeqCst) == 0 {
            self.kill();
        }
    }

    /// A request on this process ended: a draining process with none left stops.
    pub fn release(&self) {
        let last = self.inflight.fetch_sub(1, Ordering::SeqCst) == 1;
        if last && self.stopping.load(Ordering::SeqCst) {
            self.kill();
        }
    }

    /// Asked to stop (or gone): no new requests.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || self.exited()
    }

    /// Why the process failed `invocation`: its exit (waiting briefly for it) or
    /// `fallback`, then what this invocation itself wrote to stderr. Never the process's
    /// stderr: other invocations' output is in it.
    pub async fn failure(&self, fallback: &str, invocation: &InvocationScope) -> String {
        let mut exit = self.exit.clone();
        // A broken connection is nearly always a process ending: wait for it to say how
        // (a busy host may take a while to reap a sandbox with many tasks).
        let waited = exit.wait_for(|e| e.is_some());
        let how = match tokio::time::timeout(Duration::from_secs(1), waited).await {
            Ok(Ok(e)) => e.as_ref().map(|e| e.message.clone()),
            _ => None,
        }
        .unwrap_or_else(|| fallback.to_string());
        let own = invocation.own_stderr();
        if own.is_empty() {
            format!("{how}; see the function's logs")
        } else {
            format!("{how}; this invocation's last output on stderr: {own}")
        }
    }
}

impl Drop for Process {
    /// A process nobody holds any more (its start was cancelled, or its pool dropped)
    /// must not outlive its handle.
    fn drop(&mut self) {
        self.kill.notify_one();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Hard-links the socket the harness created to `private` (a hard link to a symlink is a
/// symlink, so this does not follow one) and checks that what was linked is a socket.
fn link_socket(socket: &Path, private: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::hard_link(socket, private)?;
    let kind = std::fs::symlink_metadata(private)?.file_type();
    if kind.is_socket() {
        Ok(())
    } else {
        let _ = std::fs::remove_file(private);
        Err(std::io::Error::other("fn.sock is not a socket"))
    }
}

/// Waits for the process to exit (or kills it when asked), then says how it ended and
/// removes its groups and socket directory.
#[allow(clippy::too_many_arguments)]
async fn watch_exit(
    mut child: tokio::process::Child,
    kill: Arc<Notify>,
    exit_tx: watch::Sender<Option<Exit>>,
    cgroup: Option<Cgroup>,
    socket_dir: tempfile::TempDir,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    memory_mb: u32,
    who: Arc<ProcessLogs>,
) {
    let mut killed = false;
    let status = tokio::select! {
        status = child.wait() => status,
        _ = kill.notified() => {
            killed = true;
            let _ = child.start_kill();
            child.wait().await
        }
    };
    // The last lines of stderr may still be in the pipe: logged, and attributed to their
    // invocations before these are told how the process ended.
    if let Some(done) = stderr_done {
        let _ = tokio::time::timeout(Duration::from_millis(200), done).await;
    }
    let oom = cgroup.as_ref().is_some_and(Cgroup::oom_killed);
    let tasks = cgroup.as_ref().is_some_and(Cgroup::tasks_exhausted);
    let how = match &status {
        Ok(s) => describe_status(s),
        Err(e) => format!("its status is unknown ({e})"),
    };
    let message = if oom {
        format!("the process was killed at its memory limit ({memory_mb} MB, limits.memory_mb)")
    } else if killed {
        "the process was stopped by the worker".to_string()
    } else if tasks {
        format!(
            "the process reached its task limit ({} processes and threads) and {how}",
            crate::host::MAX_TASKS
        )
    } else {
        format!("the process {how}")
    };
    if killed && !oom {
        tracing::debug!(org = %who.org, function = %who.function, deployment_id = %who.deployment_id, process = who.process, "bun process stopped");
    } else {
        tracing::warn!(org = %who.org, function = %who.function, deployment_id = %who.deployment_id, process = who.process, "bun process ended: {message}");
    }
    let _ = exit_tx.send(Some(Exit { message }));
    drop(socket_dir);
    if let Some(group) = cgroup {
        group.remove().await;
    }
}

fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}
