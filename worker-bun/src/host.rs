//! What the host offers the worker: bubblewrap and ways to bound a process's memory and
//! its number of tasks (cgroup v2, cgroup v1, or nothing); the Bun binary is found by
//! `reactor_bun_dist`. All found once, at start, with a clear error when something
//! required is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds `bwrap` on `PATH` and checks that it can create the namespaces the sandbox uses
/// (unprivileged user namespaces may be disabled on the host).
pub fn find_bwrap() -> Result<(PathBuf, String), String> {
    let path = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("bwrap"))
                .find(|c| c.is_file())
        })
        .ok_or_else(|| {
            "bubblewrap (bwrap) is not installed: install the Debian package bubblewrap \
             (./scripts/setup.sh does), or switch the sandbox off with functions.bun_sandbox = false \
             (REACTOR_FUNCTIONS_BUN_SANDBOX=false), which lets functions read the worker's files"
                .to_string()
        })?;
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let probe = Command::new(&path)
        .args([
            "--unshare-all",
            "--unshare-user",
            // bubblewrap 0.8 and later: an older one fails here, saying so.
            "--disable-userns",
            "--die-with-parent",
            "--ro-bind",
            "/",
            "/",
            "--",
            "/bin/true",
        ])
        .output()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    if !probe.status.success() {
        return Err(format!(
            "bubblewrap cannot create namespaces here ({}); it must be 0.8 or later \
             (for --disable-userns); allow unprivileged user namespaces \
             (Debian: sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04: \
             sysctl kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for bwrap), \
             or, last, switch the sandbox off with functions.bun_sandbox = false",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok((path, version))
}

/// How a process's memory is bounded on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryLimiter {
    /// cgroup v2: a child group with `memory.max` under the worker's own group.
    V2 { parent: PathBuf },
    /// cgroup v1: a child group with `memory.limit_in_bytes` under the worker's own
    /// memory group.
    V1 { parent: PathBuf },
    /// Nothing usable: limits are not enforced (said at start).
    None { reason: String },
}

impl MemoryLimiter {
    /// Detects what this process may use: a group it can create children in, for the
    /// hierarchy that has the memory controller.
    pub fn detect() -> Self {
        let cgroups = match std::fs::read_to_string("/proc/self/cgroup") {
            Ok(s) => s,
            Err(e) => {
                return MemoryLimiter::None {
                    reason: format!("/proc/self/cgroup: {e}"),
                };
            }
        };
        let mut reasons = Vec::new();
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(c), Some(p)) => (id, c, p.trim_start_matches('/')),
                _ => continue,
            };
            if controllers.is_empty() {
                // The v2 (unified) hierarchy: mounted at /sys/fs/cgroup (pure v2) or at
                // /sys/fs/cgroup/unified (hybrid), memory only if it lists the controller.
                for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                    let dir = Path::new(root).join(path);
                    let listed = std::fs::read_to_string(dir.join("cgroup.controllers"))
                        .map(|c| c.split_whitespace().any(|c| c == "memory"))
                        .unwrap_or(false);
                    if listed {
                        match probe(&dir, "memory.max", 64 << 20) {
                            Ok(()) => return MemoryLimiter::V2 { parent: dir },
                            Err(e) => reasons.push(format!("cgroup v2 at {}: {e}", dir.display())),
                        }
                    }
                }
            } else if controllers.split(',').any(|c| c == "memory") {
                let dir = Path::new("/sys/fs/cgroup/memory").join(path);
                match probe(&dir, "memory.limit_in_bytes", 64 << 20) {
                    Ok(()) => return MemoryLimiter::V1 { parent: dir },
                    Err(e) => reasons.push(format!("cgroup v1 at {}: {e}", dir.display())),
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no cgroup hierarchy with the memory controller".into());
        }
        MemoryLimiter::None {
            reason: reasons.join("; "),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            MemoryLimiter::V2 { parent } => {
                format!("cgroup v2 memory.max under {}", parent.display())
            }
            MemoryLimiter::V1 { parent } => {
                format!("cgroup v1 memory.limit_in_bytes under {}", parent.display())
            }
            MemoryLimiter::None { reason } => format!("not enforced ({reason})"),
        }
    }

    /// Creates the groups of one process: memory limited to `memory_mb`, and tasks to
    /// [`MAX_TASKS`] as `tasks` allows. `None` when the host has no mechanism for either.
    pub fn create(
        &self,
        tasks: &TaskLimiter,
        name: &str,
        memory_mb: u32,
    ) -> std::io::Result<Option<Cgroup>> {
        let bytes = (u64::from(memory_mb) << 20).to_string();
        // Filled as each directory is made: an error drops (removes) what exists.
        let mut group = Cgroup {
            dirs: Vec::new(),
            memory: None,
            pids: None,
        };
        match self {
            MemoryLimiter::None { .. } => {}
            MemoryLimiter::V2 { parent } => {
                let dir = parent.join(name);
                std::fs::create_dir(&dir)?;
                group.dirs.push(dir.clone());
                std::fs::write(dir.join("memory.max"), &bytes)?;
                // No swapping past the limit either, where the host has swap accounting.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                if *tasks == TaskLimiter::V2 {
                    std::fs::write(dir.join("pids.max"), MAX_TASKS.to_string())?;
                    group.pids = Some(dir.clone());
                }
                group.memory = Some((dir, true));
            }
            MemoryLimiter::V1 { parent } => {
                let dir = parent.join(name);
                std::fs::create_dir(&dir)?;
                group.dirs.push(dir.clone());
                std::fs::write(dir.join("memory.limit_in_bytes"), &bytes)?;
                let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), &bytes);
                group.memory = Some((dir, false));
            }
        }
        if let TaskLimiter::V1 { parent } = tasks {
            let dir = parent.join(name);
            std::fs::create_dir(&dir)?;
            group.dirs.push(dir.clone());
            std::fs::write(dir.join("pids.max"), MAX_TASKS.to_string())?;
            group.pids = Some(dir);
        }
        Ok((!group.dirs.is_empty()).then_some(group))
    }
}

/// Tasks (processes and threads: each thread counts) one Bun process may have, its
/// sandbox included. Bun 1.4 on 2 cores runs 3 threads idle, 7 after file, crypto and GC
/// work (`/proc/<pid>/task`); its thread pool and the collector's helpers grow with the
/// cores. 512 leaves room for large hosts and a function's own subprocesses, and stops a
/// fork bomb. At the limit Bun 1.4 aborts (it cannot start a thread): the process is
/// replaced.
pub const MAX_TASKS: u32 = 512;

/// How a process's number of tasks is bounded on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskLimiter {
    /// cgroup v2: `pids.max` in the process's memory group.
    V2,
    /// cgroup v1: a child group with `pids.max` under the worker's own pids group.
    V1 { parent: PathBuf },
    /// Nothing usable: the number of tasks is not bounded (said at start).
    None { reason: String },
}

impl TaskLimiter {
    /// Detects what this process may use: the pids controller beside the v2 memory
    /// group, else a v1 pids group it can create children in.
    pub fn detect(memory: &MemoryLimiter) -> Self {
        let mut reasons = Vec::new();
        if let MemoryLimiter::V2 { parent } = memory {
            let listed = std::fs::read_to_string(parent.join("cgroup.controllers"))
                .map(|c| c.split_whitespace().any(|c| c == "pids"))
                .unwrap_or(false);
            if !listed {
                reasons.push(format!(
                    "cgroup v2 at {}: no pids controller delegated",
                    parent.display()
                ));
            } else {
                match probe(parent, "pids.max", 64) {
                    Ok(()) => return TaskLimiter::V2,
                    Err(e) => reasons.push(format!("cgroup v2 at {}: {e}", parent.display())),
                }
            }
        }
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (controllers, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(c), Some(p)) => (c, p.trim_start_matches('/')),
                _ => continue,
            };
            if controllers.split(',').any(|c| c == "pids") {
                let dir = Path::new("/sys/fs/cgroup/pids").join(path);
                match probe(&dir, "pids.max", 64) {
                    Ok(()) => return TaskLimiter::V1 { parent: dir },
                    Err(e) => reasons.push(format!("cgroup v1 at {}: {e}", dir.display())),
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no cgroup hierarchy with the pids controller".into());
        }
        TaskLimiter::None {
            reason: reasons.join("; "),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            TaskLimiter::V2 => format!("cgroup v2 pids.max = {MAX_TASKS} per process"),
            TaskLimiter::V1 { parent } => format!(
                "cgroup v1 pids.max = {MAX_TASKS} per process under {}",
                parent.display()
            ),
            TaskLimiter::None { reason } => format!("not enforced ({reason})"),
        }
    }

    pub fn enforced(&self) -> bool {
        !matches!(self, TaskLimiter::None { .. })
    }
}

/// Creates and removes a test group to prove that this process may, and removes the
/// groups that workers which are no longer running left behind (killed before cleaning up).
fn probe(parent: &Path, limit_file: &str, value: u64) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix("reactor-bun-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = owner
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let dir = parent.join(format!("reactor-probe-{}", std::process::id()));
    std::fs::create_dir(&dir)?;
    let wrote = std::fs::write(dir.join(limit_file), value.to_string());
    let _ = std::fs::remove_dir(&dir);
    wrote
}

/// One process's groups (memory, and tasks: the same group on v2, its own on v1);
/// removed when dropped (once the process is gone).
#[derive(Debug)]
pub struct Cgroup {
    /// Every directory made, each of which the process joins.
    dirs: Vec<PathBuf>,
    /// The memory group, and whether it is v2.
    memory: Option<(PathBuf, bool)>,
    /// The group with `pids.max`.
    pids: Option<PathBuf>,
}

/// The number after `key` in a flat-keyed cgroup file such as `memory.events`.
fn counter(file: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(file).ok().and_then(|s| {
        s.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next()?.parse::<u64>().ok())?
        })
    })
}

impl Cgroup {
    /// The files a process writes its pid to in order to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel's OOM killer has killed a process of this group.
    pub fn oom_killed(&self) -> bool {
        let Some((dir, v2)) = &self.memory else {
            return false;
        };
        let file = if *v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        counter(&dir.join(file), "oom_kill").is_some_and(|n| n > 0)
    }

    /// Whether a fork or thread of this group was refused at [`MAX_TASKS`].
    pub fn tasks_exhausted(&self) -> bool {
        self.pids
            .as_ref()
            .and_then(|dir| counter(&dir.join("pids.events"), "max"))
            .is_some_and(|n| n > 0)
    }
}

impl Cgroup {
    /// Removes the groups once the kernel has let go of their last process (a killed
    /// process's group stays busy for a moment after its parent has reaped it).
    pub async fn remove(mut self) {
        for _ in 0..100 {
            self.dirs
                .retain(|dir| std::fs::remove_dir(dir).is_err() && dir.exists());
            if self.dirs.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        tracing::warn!(groups = ?left, "a bun process's groups could not be removed");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
