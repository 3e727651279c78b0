//! Materialization on a Bun worker ([`Builder`]): the check that a bundle's entrypoint
//! loads and exports `fetch`, run once in a sandboxed process within the memory limit,
//! and the best-effort prebundle (`bun build` into one file, checked too, then stored).
//! Bun's error text becomes the deployment's error, with the deployment's env values
//! hidden: whoever may list deployments need not be able to read its secrets.

use crate::bundles::{prebundled_key, prebundled_path};
use crate::launcher::PREBUNDLED;
use crate::worker::{BunWorker, START_TIMEOUT};
use async_trait::async_trait;
use bytes::Bytes;
use reactor_api::{Builder, DeploymentSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Most of a check's output kept (the start of Bun's error text).
const MAX_OUTPUT: usize = 64 * 1024;
/// The largest prebundled file accepted.
const MAX_PREBUNDLED: u64 = 64 << 20;
/// Env values shorter than this are left in error texts: hiding them would garble the
/// text and reveal little.
const MIN_REDACTED: usize = 4;
/// What an env value in an error text is replaced with.
const REDACTED: &str = "[redacted]";

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
    /// wrote its output); `Err` is Bun's own error text, env values hidden.
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
            .cgroup(
                &format!(
                    "reactor-bun-{}-{mode}-{}",
                    std::process::id(),
                    crate::process::next_id()
                ),
                spec.memory_mb,
            )
            .map_err(|e| format!("creating the process's cgroups: {e}"))?;
        let launch = self.launcher.command(
            mode,
            spec,
            entry,
            bundle_dir,
            socket_dir.path(),
            cgroup.as_ref(),
            &env,
            None,
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
        let text = redact(String::from_utf8_lossy(&err_text).trim(), &env);
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

/// `text` with every env value of at least [`MIN_REDACTED`] bytes replaced by
/// [`REDACTED`], the longest first where values overlap.
fn redact(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut values: Vec<&str> = env
        .values()
        .map(String::as_str)
        .filter(|v| v.len() >= MIN_REDACTED)
        .collect();
    values.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    values.dedup();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while let Some(c) = rest.chars().next() {
        for v in &values {
            if let Some(after) = rest.strip_prefix(v) {
                out.push_str(REDACTED);
                rest = after;
                continue 'scan;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_hidden_in_error_texts() {
        let env = BTreeMap::from([
            ("API_KEY".to_string(), "sk_live_4242".to_string()),
            ("PREFIX".to_string(), "sk_live".to_string()),
            ("SHORT".to_string(), "abc".to_string()),
            ("EMPTY".to_string(), String::new()),
            ("UNICODE".to_string(), "clé-é".to_string()),
        ]);
        let text = "index.ts:3: Error: bad key sk_live_4242 (sk_live_4242)\n\
                    prefix sk_live, abc stays, clé-é, sk_live_4242";
        assert_eq!(
            redact(text, &env),
            "index.ts:3: Error: bad key [redacted] ([redacted])\n\
             prefix [redacted], abc stays, [redacted], [redacted]"
        );
        assert_eq!(redact("nothing here", &env), "nothing here");
        assert_eq!(redact("sk_live_4242", &BTreeMap::new()), "sk_live_4242");
    }
}
