//! What the host offers the worker: bubblewrap and a way to bound a process's memory
//! (cgroup v2, cgroup v1, or nothing); the Bun binary is found by `reactor_bun_dist`.
//! All found once, at start, with a clear error when something required is missing.

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
                        match probe(&dir, "memory.max") {
                            Ok(()) => return MemoryLimiter::V2 { parent: dir },
                            Err(e) => reasons.push(format!("cgroup v2 at {}: {e}", dir.display())),
                        }
                    }
                }
            } else if controllers.split(',').any(|c| c == "memory") {
                let dir = Path::new("/sys/fs/cgroup/memory").join(path);
                match probe(&dir, "memory.limit_in_bytes") {
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

    /// Creates the group of one process, limited to `memory_mb`. `None` when the host
    /// has no mechanism.
    pub fn create(&self, name: &str, memory_mb: u32) -> std::io::Result<Option<Cgroup>> {
        let bytes = (u64::from(memory_mb) << 20).to_string();
        let (dir, v2) = match self {
            MemoryLimiter::None { .. } => return Ok(None),
            MemoryLimiter::V2 { parent } => (parent.join(name), true),
            MemoryLimiter::V1 { parent } => (parent.join(name), false),
        };
        std::fs::create_dir(&dir)?;
        let group = Cgroup { dir, v2 };
        if v2 {
            std::fs::write(group.dir.join("memory.max"), &bytes)?;
            // No swapping past the limit either, where the host has swap accounting.
            let _ = std::fs::write(group.dir.join("memory.swap.max"), "0");
        } else {
            std::fs::write(group.dir.join("memory.limit_in_bytes"), &bytes)?;
            let _ = std::fs::write(group.dir.join("memory.memsw.limit_in_bytes"), &bytes);
        }
        Ok(Some(group))
    }
}

/// Creates and removes a test group to prove that this process may, and removes the
/// groups that workers which are no longer running left behind (killed before cleaning up).
fn probe(parent: &Path, limit_file: &str) -> std::io::Result<()> {
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
    let wrote = std::fs::write(dir.join(limit_file), (64u64 << 20).to_string());
    let _ = std::fs::remove_dir(&dir);
    wrote
}

/// One process's memory group; removed when dropped (once the process is gone).
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// The file a process writes its pid to in order to join.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Whether the kernel's OOM killer has killed a process of this group.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == Some(key)).then(|| it.next()?.parse::<u64>().ok())?
                })
            })
            .is_some_and(|n| n > 0)
    }
}

impl Cgroup {
    /// Removes the group once the kernel has let go of its last process (a killed
    /// process's group stays busy for a moment after its parent has reaped it).
    pub async fn remove(self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::warn!(group = %self.dir.display(), "a bun process's memory group could not be removed");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
