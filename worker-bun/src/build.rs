//! Materialization on a Bun worker ([`Builder`]): the check that a bundle's entrypoint
//! loads and exports `fetch`, run once in a sandboxed process within the memory limit,
//! and the best-effort prebundle (`bun build` into one file, checked too, then stored).

use crate::bundles::{prebundled_key, prebundled_path};
use crate::launcher::PREBUNDLED;
use crate::worker::{BunWorker, START_TIMEOUT};
use async_trait::async_trait;
use bytes::Bytes;
use reactor_api::{Builder, DeploymentSpec};
use std::path::Path;
use std::sync::Arc;

/// Most of a check's output kept (the start of Bun's error text).
const MAX_OUTPUT: usize = 64 * 1024;
/// The largest prebundled file accepted.
const MAX_PREBUNDLED: u64 = 64 << 20;

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

impl BunWorker {
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
        )?;
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
}

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
