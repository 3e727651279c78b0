//! How a Bun process is started: inside bubblewrap (own mount, PID, IPC, network, UTS and
//! user namespaces, with no further user namespaces inside (`--disable-userns`); the bundle
//! read-only; a private `/tmp`; a cleared environment; the socket directory the only way
//! in; a seccomp filter, see `seccomp`), or, with the sandbox switched off, as a plain
//! child with a cleared environment and no filter. Either way it first joins its memory
//! and task groups, and its configuration (with the function's env) is written to its
//! stdin, never its arguments.
//!
//! The filter refuses new namespaces, mounts, `ptrace` and other processes' memory,
//! modules, keyrings, `bpf`, `perf_event_open`, `userfaultfd`, clock changes and legacy
//! calls, and turns `io_uring` and `clone3` away with `ENOSYS`. What remains is the kernel
//! behind every allowed call (a kernel bug there is an escape), and no per-path policy
//! (no LSM): the mounts alone decide what a process can read.

use crate::host::{Cgroup, MemoryLimiter, TaskLimiter};
use reactor_api::DeploymentSpec;
use reactor_api::logs::LogSink;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::process::Command;

/// Where things are inside the sandbox.
const APP: &str = "/app";
const RUN: &str = "/run/reactor";
const BUN: &str = "/reactor/bun";
const HARNESS: &str = "/reactor/harness.js";
const BUNFIG: &str = "/reactor/bunfig.toml";
/// The socket's name in the process directory.
const SOCKET: &str = "fn.sock";
/// The worker's socket for the process's calls between functions (`calls.rs`), in the
/// process directory.
pub const CALL_SOCKET: &str = "call.sock";
/// The name `build` writes its output under, in the process directory.
pub const PREBUNDLED: &str = "prebundled.js";
/// Size of the private `/tmp` (a tmpfs, in memory: charged to the memory group too).
const TMP_BYTES: u64 = 64 << 20;

/// What the harness reads on stdin.
#[derive(serde::Serialize)]
struct HarnessConfig<'a> {
    mode: &'a str,
    name: &'a str,
    entry: String,
    socket: String,
    /// Where "serve" sends calls between functions.
    call_socket: String,
    /// Where `build` writes the prebundled file.
    output: String,
    env: &'a BTreeMap<String, String>,
    /// What "serve" tags an invocation's console lines with (see `logs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    log_tag: Option<&'a str>,
}

/// A command ready to spawn, the configuration for its stdin, and the socket's path on
/// the host.
pub struct Launch {
    pub command: Command,
    pub config: Vec<u8>,
    pub socket: PathBuf,
    /// The seccomp filter bwrap reads (`--seccomp N`), held open until the spawn.
    seccomp: Option<File>,
}

/// Longest a process may take to read its configuration.
const CONFIG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Held while a filter's descriptor is inheritable, so that no other function process
/// spawned meanwhile inherits it (and, reading from it, moves the offset this bwrap reads
/// from). Children the worker spawns elsewhere may still inherit it: harmless, it is
/// sealed and holds only the public filter.
static SPAWNING: Mutex<()> = Mutex::new(());

impl Launch {
    /// Spawns the process with piped stdio (killed when dropped) and writes its
    /// configuration to its stdin, which then closes.
    pub async fn spawn(mut self) -> Result<tokio::process::Child, String> {
        use tokio::io::AsyncWriteExt;
        self.command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let spawned = {
            // Guards nothing but the window: a poisoned lock is as good.
            let _window = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(filter) = &self.seccomp {
                rustix::io::fcntl_setfd(filter, rustix::io::FdFlags::empty())
                    .map_err(|e| format!("passing the seccomp filter: {e}"))?;
            }
            let spawned = self.command.spawn();
            // bwrap has its own copy (or the spawn failed): close the worker's now.
            self.seccomp = None;
            spawned
        };
        let mut child = spawned.map_err(|e| format!("starting bun: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            tokio::time::timeout(CONFIG_TIMEOUT, stdin.write_all(&self.config))
                .await
                .map_err(|_| "the process did not read its configuration".to_string())?
                .map_err(|e| format!("configuring the process: {e}"))?;
        }
        Ok(child)
    }
}

pub struct Launcher {
    bun: PathBuf,
    harness: PathBuf,
    /// An empty Bun config, used instead of a `bunfig.toml` in the bundle, whose
    /// `preload` would run before the harness.
    bunfig: PathBuf,
    /// `Some(bwrap)` when sandboxed.
    bwrap: Option<PathBuf>,
    /// The compiled seccomp filter, when sandboxed (and this architecture has one).
    seccomp: Option<Vec<u8>>,
    memory: MemoryLimiter,
    tasks: TaskLimiter,
    run_dir: PathBuf,
    /// Where the lines processes print go besides the worker's own log.
    logs: Arc<dyn LogSink>,
}

impl Launcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bun: PathBuf,
        harness: PathBuf,
        bunfig: PathBuf,
        bwrap: Option<PathBuf>,
        memory: MemoryLimiter,
        tasks: TaskLimiter,
        run_dir: PathBuf,
        logs: Arc<dyn LogSink>,
    ) -> Self {
        let seccomp = bwrap.as_ref().and_then(|_| {
            let program = crate::seccomp::program();
            if program.is_none() {
                tracing::warn!(
                    "bun sandbox: no seccomp filter for this architecture (x86_64 and aarch64 have one)"
                );
            }
            program.map(|p| crate::seccomp::to_bytes(&p))
        });
        Self {
            logs,
            bun,
            harness,
            bunfig,
            bwrap,
            seccomp,
            memory,
            tasks,
            run_dir,
        }
    }

    pub fn logs(&self) -> &Arc<dyn LogSink> {
        &self.logs
    }

    pub fn tasks(&self) -> &TaskLimiter {
        &self.tasks
    }

    /// The groups of one process: its memory limit and [`crate::host::MAX_TASKS`], as
    /// the host allows.
    pub fn cgroup(&self, name: &str, memory_mb: u32) -> std::io::Result<Option<Cgroup>> {
        self.memory.create(&self.tasks, name, memory_mb)
    }

    /// The directory under which each process gets its private socket directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The command running the harness in `mode` on `entry` (a path inside `bundle`),
    /// tagging invocations' console lines with `log_tag` when given ("serve").
    /// Fails only when the seccomp filter cannot be handed over.
    #[allow(clippy::too_many_arguments)]
    pub fn command(
        &self,
        mode: &str,
        spec: &DeploymentSpec,
        entry: &str,
        bundle: &Path,
        socket_dir: &Path,
        cgroup: Option<&Cgroup>,
        env: &BTreeMap<String, String>,
        log_tag: Option<&str>,
    ) -> Result<Launch, String> {
        // A file of its own per spawn: bwrap reads it from its offset, to the end.
        let seccomp = match (&self.bwrap, &self.seccomp) {
            (Some(_), Some(bytes)) => Some(
                crate::seccomp::sealed_file(bytes)
                    .map_err(|e| format!("preparing the seccomp filter: {e}"))?,
            ),
            _ => None,
        };
        let (program, mut args, entry_root, socket_root) = match &self.bwrap {
            Some(bwrap) => (
                bwrap.clone(),
                self.bwrap_args(bundle, socket_dir, seccomp.as_ref()),
                PathBuf::from(APP),
                PathBuf::from(RUN),
            ),
            None => (
                self.bun.clone(),
                Vec::new(),
                bundle.to_path_buf(),
                socket_dir.to_path_buf(),
            ),
        };
        if self.bwrap.is_some() {
            args.extend([
                "--".into(),
                BUN.into(),
                format!("--config={BUNFIG}"),
                "--no-install".into(),
                HARNESS.into(),
            ]);
        } else {
            args.extend([
                format!("--config={}", self.bunfig.display()),
                "--no-install".into(),
                self.harness.display().to_string(),
            ]);
        }
        let config = HarnessConfig {
            mode,
            name: &spec.entrypoint,
            entry: entry_root.join(entry).display().to_string(),
            socket: socket_root.join(SOCKET).display().to_string(),
            call_socket: socket_root.join(CALL_SOCKET).display().to_string(),
            output: socket_root.join(PREBUNDLED).display().to_string(),
            env,
            log_tag,
        };
        // A struct of strings serializes.
        let config = serde_json::to_vec(&config).unwrap_or_default();
        let mut command = match cgroup {
            // The shell joins the groups, then becomes the sandbox (or Bun): nothing of the
            // function runs outside them.
            Some(group) => {
                let files = group.procs_files();
                // `sh -c SCRIPT file0 file1.. program args..`: $0 is file0.
                let mut script = r#"echo $$ > "$0""#.to_string();
                for i in 1..files.len() {
                    script.push_str(&format!(r#" && echo $$ > "${{{i}}}""#));
                }
                if files.len() > 1 {
                    script.push_str(&format!(" && shift {}", files.len() - 1));
                }
                script.push_str(r#" && exec "$@""#);
                let mut c = Command::new("/bin/sh");
                c.arg("-c")
                    .arg(script)
                    .args(&files)
                    .arg(&program)
                    .args(&args);
                c
            }
            None => {
                let mut c = Command::new(&program);
                c.args(&args);
                c
            }
        };
        command.env_clear();
        command.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        if self.bwrap.is_some() {
            command.current_dir("/");
        } else {
            command.env("HOME", socket_dir);
            command.env("TMPDIR", socket_dir);
            command.current_dir(bundle);
        }
        Ok(Launch {
            command,
            config,
            socket: socket_dir.join(SOCKET),
            seccomp,
        })
    }

    fn bwrap_args(&self, bundle: &Path, socket_dir: &Path, seccomp: Option<&File>) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&[
            "--unshare-all",
            // Not just tried, as --unshare-all does: required by --disable-userns, which
            // keeps the function from creating user namespaces of its own.
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            "--ro-bind",
            "/usr",
            "/usr",
        ]);
        // The dynamic loader and libc: /lib* are symlinks into /usr on merged-usr hosts.
        for dir in ["/lib", "/lib64", "/lib32", "/bin", "/sbin"] {
            match std::fs::read_link(dir) {
                Ok(target) => push(&["--symlink", &target.display().to_string(), dir]),
                Err(_) if Path::new(dir).is_dir() => push(&["--ro-bind", dir, dir]),
                Err(_) => {}
            }
        }
        let (bun, harness, bunfig) = (
            self.bun.display().to_string(),
            self.harness.display().to_string(),
            self.bunfig.display().to_string(),
        );
        let (bundle, socket_dir, tmp_bytes) = (
            bundle.display().to_string(),
            socket_dir.display().to_string(),
            TMP_BYTES.to_string(),
        );
        push(&[
            "--ro-bind",
            &bun,
            BUN,
            "--ro-bind",
            &harness,
            HARNESS,
            "--ro-bind",
            &bunfig,
            BUNFIG,
            "--ro-bind",
            &bundle,
            APP,
            // Writable and on the host's disk, as the harness creates its socket here
            // (`build`, its output): nothing bounds what else a function writes here
            // until its process ends and the directory is removed.
            "--bind",
            &socket_dir,
            RUN,
            "--size",
            &tmp_bytes,
            "--tmpfs",
            "/tmp",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--chdir",
            APP,
        ]);
        // Installed by bwrap right before it execs Bun, after its own setup.
        if let Some(filter) = seccomp {
            push(&["--seccomp", &filter.as_raw_fd().to_string()]);
        }
        a
    }
}
