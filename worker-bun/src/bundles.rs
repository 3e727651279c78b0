//! The bundle cache: a deployment's bundle fetched from storage and unpacked under the
//! worker's cache directory (read-only, kept for later pools), with the prebundled
//! entrypoint materialization stored beside the original when it made one.

use crate::worker::BunWorker;
use bytes::Bytes;
use reactor_api::{DeploymentSpec, InvokeError};
use reactor_storage::{StorageError, keys};
use std::path::{Path, PathBuf};

impl BunWorker {
    /// The deployment's bundle unpacked under the cache (kept for later pools), read-only,
    /// with its prebundled entrypoint beside the original when materialization made one.
    /// Returns the directory and the file processes import.
    pub(crate) async fn unpack(
        &self,
        spec: &DeploymentSpec,
    ) -> Result<(PathBuf, String), InvokeError> {
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
        reactor_storage::seal::verify_bundle(&archive, &spec.sha256).map_err(not_ready)?;
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
}

/// Where the prebundled entrypoint goes: beside the entrypoint, so that paths relative to
/// the module (`import.meta.dir`) stay the same.
pub(crate) fn prebundled_path(entrypoint: &str) -> String {
    match entrypoint.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/.reactor-prebundled.js"),
        None => ".reactor-prebundled.js".to_string(),
    }
}

pub(crate) fn prebundled_key(spec: &DeploymentSpec) -> String {
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
