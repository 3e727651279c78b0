//! Where bundles and build artifacts live, behind one [`Storage`] interface.
//!
//! Two backends: [`LocalStorage`], the embedded default, keeps objects as files under
//! `workdir/storage`; [`S3Storage`] keeps them in an S3 bucket (AWS or an S3-compatible
//! server such as MinIO or Ceph). Keys are `/`-separated relative paths built by [`keys`]
//! and checked alike by both backends. Writes are atomic (a reader never sees half an
//! object); local ones are also durable (synced, with their directories) before `put_*`
//! returns, so that nothing recorded as stored can be lost to a power cut. The hidden `contract` module is the behaviour every backend must show, run by
//! each backend's tests. Bundle archives are received and unpacked safely by
//! [`bundle`]; beyond that, this crate knows nothing of what the objects mean.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod s3;
pub mod seal;
pub use s3::{S3Config, S3Storage};

/// The storage `config` names: an S3 bucket when `storage.bucket` or `storage.url` is
/// set, else local files under `{workdir}/storage`.
pub async fn open(
    config: &reactor_api::config::FunctionsConfig,
) -> Result<std::sync::Arc<dyn Storage>, StorageError> {
    let settings = config.storage.s3().map_err(|e| StorageError::Remote {
        op: "configure",
        key: String::new(),
        message: e.to_string(),
    })?;
    Ok(match settings {
        Some(s) => std::sync::Arc::new(S3Storage::connect(s).await?),
        None => std::sync::Arc::new(LocalStorage::open(config.workdir.join("storage")).await?),
    })
}

use async_trait::async_trait;
use bytes::Bytes;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("storage key {0:?} is not valid")]
    InvalidKey(String),
    #[error("storage i/o on {key}: {source}")]
    Io { key: String, source: std::io::Error },
    /// A remote store (S3) refused or failed a request; `message` holds the whole chain.
    #[error("storage {op} of {key}: {message}")]
    Remote {
        op: &'static str,
        key: String,
        message: String,
    },
}

/// Checks that `key` is a relative, normalised `/`-separated path: not empty, no leading
/// `/`, no empty, `.` or `..` segment, and no segment starting with `.tmp` (reserved for
/// half-written local objects).
pub(crate) fn check_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key.split('/').all(|part| {
            !part.is_empty() && part != "." && part != ".." && !part.starts_with(".tmp")
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_string()))
    }
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores the file at `path` under `key` (the file is left in place).
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError>;
    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError>;
    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError>;
    /// Copies the object to a local file at `dest`.
    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<(), StorageError>;
    async fn exists(&self, key: &str) -> Result<bool, StorageError>;
    /// Copies the object at `from` to `to` (replacing what `to` held) without bringing
    /// it through this process: a hard link on local storage, a server-side copy on S3.
    /// `NotFound` when `from` is missing.
    async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Deletes every object whose key starts with `prefix` (a folder).
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError>;
}

/// Storage keys, in one place.
pub mod keys {
    pub fn bundle(org: &str, function: &str, deployment_id: &str) -> String {
        format!("bundles/{org}/{function}/{deployment_id}.tar.gz")
    }

    pub fn function_prefix(org: &str, function: &str) -> [String; 2] {
        [
            format!("bundles/{org}/{function}"),
            format!("artifacts/{org}/{function}"),
        ]
    }

    /// A runtime artifact, keyed by what makes it valid (for WASM, the engine's
    /// compatibility hash) so that a worker on another build recompiles.
    pub fn artifact(org: &str, function: &str, deployment_id: &str, name: &str) -> String {
        format!("artifacts/{org}/{function}/{deployment_id}/{name}")
    }
}

/// Objects as files under a root directory.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        // Half-written objects of a previous run.
        let _ = tokio::fs::remove_dir_all(root.join(".tmp")).await;
        tokio::fs::create_dir_all(root.join(".tmp"))
            .await
            .map_err(|source| StorageError::Io {
                key: root.display().to_string(),
                source,
            })?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn temp_path(&self) -> PathBuf {
        self.root.join(".tmp").join(ulid::Ulid::new().to_string())
    }

    /// Writes `key` durably through a temp file that `fill` writes (see [`write_durably`]),
    /// on a blocking thread.
    async fn put_with<F>(&self, key: &str, fill: F) -> Result<(), StorageError>
    where
        F: FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
    {
        let dest = self.path(key)?;
        let (root, tmp) = (self.root.clone(), self.temp_path());
        let io = |source| StorageError::Io {
            key: key.to_string(),
            source,
        };
        tokio::task::spawn_blocking(move || write_durably(&root, &tmp, &dest, fill))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)
    }
}

/// Writes an object so that it is whole under `dest` once this returns, even across a
/// power cut: `fill` writes `tmp` (in `root/.tmp`, same filesystem), which is synced and
/// renamed over `dest`; then every directory from `dest`'s up to `root` is synced, so the
/// new entry and any directory created for it are durable. On failure the temp file is
/// removed and `dest` keeps what it had. Blocking.
fn write_durably<F>(root: &Path, tmp: &Path, dest: &Path, fill: F) -> std::io::Result<()>
where
    F: FnOnce(&mut std::fs::File) -> std::io::Result<()>,
{
    if let Err(e) = write_and_rename(tmp, dest, fill) {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    sync_dirs(root, dest)
}

fn write_and_rename<F>(tmp: &Path, dest: &Path, fill: F) -> std::io::Result<()>
where
    F: FnOnce(&mut std::fs::File) -> std::io::Result<()>,
{
    let mut file = std::fs::File::create(tmp)?;
    fill(&mut file)?;
    file.sync_all()?;
    drop(file);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(tmp, dest)
}

/// Makes `dest` a second name of the file at `src` (objects are never written in place,
/// so the two stay equal), through a temp name renamed over `dest` like
/// [`write_durably`]; a plain copy where hard links are not supported. Blocking.
fn link_durably(root: &Path, src: &Path, tmp: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(parent) = tmp.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if let Err(e) = std::fs::hard_link(src, tmp) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Err(e);
        }
        let _ = std::fs::remove_file(tmp);
        return write_durably(root, tmp, dest, |file| {
            std::io::copy(&mut std::fs::File::open(src)?, file).map(drop)
        });
    }
    let renamed = dest
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::rename(tmp, dest));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    sync_dirs(root, dest)
}

/// Makes the new entry `dest` durable: every directory from its own up to `root`.
fn sync_dirs(root: &Path, dest: &Path) -> std::io::Result<()> {
    let mut dir = dest.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(root)) {
        sync_dir(d)?;
        dir = d.parent();
    }
    Ok(())
}

/// Makes a directory's entries (files renamed or created in it) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let src = path.to_path_buf();
        self.put_with(key, move |file| {
            std::io::copy(&mut std::fs::File::open(&src)?, file).map(drop)
        })
        .await
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.put_with(key, move |file| file.write_all(&bytes)).await
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.to_string()))
            }
            Err(source) => Err(StorageError::Io {
                key: key.to_string(),
                source,
            }),
        }
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<(), StorageError> {
        let path = self.path(key)?;
        // A missing parent of `dest` must not pass for a missing object.
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| StorageError::Io {
                    key: key.to_string(),
                    source,
                })?;
        }
        match tokio::fs::copy(&path, dest).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.to_string()))
            }
            Err(source) => Err(StorageError::Io {
                key: key.to_string(),
                source,
            }),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dest) = (self.path(from)?, self.path(to)?);
        let (root, tmp) = (self.root.clone(), self.temp_path());
        let key = to.to_string();
        let result = tokio::task::spawn_blocking(move || link_durably(&root, &src, &tmp, &dest))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(from.to_string()))
            }
            Err(source) => Err(StorageError::Io { key, source }),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let path = self.path(key)?;
        tokio::fs::try_exists(&path)
            .await
            .map_err(|source| StorageError::Io {
                key: key.to_string(),
                source,
            })
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let path = self.path(prefix)?;
        // A folder, or an object named exactly `prefix` (as S3 deletes both).
        let removed = match tokio::fs::symlink_metadata(&path).await {
            Ok(m) if m.is_file() => tokio::fs::remove_file(&path).await,
            _ => tokio::fs::remove_dir_all(&path).await,
        };
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Io {
                key: prefix.to_string(),
                source,
            }),
        }
    }
}

/// The behaviour every [`Storage`] backend must show, as one suite that each backend's
/// tests run (the local one in this crate's unit tests, S3 in `tests/s3.rs`).
#[doc(hidden)]
pub mod contract {
    use super::{Storage, StorageError};
    use bytes::Bytes;
    use std::fmt::Debug;
    use std::path::Path;

    /// Exercises `storage`, which must start empty, keeping local files under `scratch` (an
    /// existing directory). Panics with a message naming the broken expectation.
    pub async fn run(storage: &dyn Storage, scratch: &Path) {
        round_trip_bytes(storage).await;
        round_trip_file(storage, scratch).await;
        missing_objects(storage, scratch).await;
        overwrite(storage, scratch).await;
        copy(storage).await;
        invalid_keys(storage, scratch).await;
        delete_prefix(storage).await;
    }

    /// Deterministic bytes without a short period (xorshift64).
    pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    async fn put(storage: &dyn Storage, key: &str, bytes: &[u8]) {
        storage
            .put_bytes(key, Bytes::copy_from_slice(bytes))
            .await
            .unwrap_or_else(|e| panic!("put_bytes of {key}: {e}"));
    }

    async fn get(storage: &dyn Storage, key: &str) -> Bytes {
        storage
            .get_bytes(key)
            .await
            .unwrap_or_else(|e| panic!("get_bytes of {key}: {e}"))
    }

    async fn exists(storage: &dyn Storage, key: &str) -> bool {
        storage
            .exists(key)
            .await
            .unwrap_or_else(|e| panic!("exists of {key}: {e}"))
    }

    async fn round_trip_bytes(storage: &dyn Storage) {
        let key = "bundles/o/f/a.bin";
        put(storage, key, b"hello").await;
        assert_eq!(
            get(storage, key).await,
            Bytes::from_static(b"hello"),
            "get_bytes of {key}"
        );
        assert!(
            exists(storage, key).await,
            "exists of {key} after put_bytes"
        );

        let empty = "bundles/o/f/empty.bin";
        put(storage, empty, b"").await;
        assert!(
            get(storage, empty).await.is_empty(),
            "get_bytes of the empty {empty}"
        );
    }

    async fn round_trip_file(storage: &dyn Storage, scratch: &Path) {
        let data = pseudo_random(300 * 1024 + 7, 42);
        let src = scratch.join("contract-in.bin");
        tokio::fs::write(&src, &data)
            .await
            .expect("writing the contract's source file");
        let key = "artifacts/o/f/d1/module.bin";
        storage
            .put_file(key, &src)
            .await
            .unwrap_or_else(|e| panic!("put_file of {key}: {e}"));
        assert!(
            tokio::fs::try_exists(&src).await.unwrap_or(false),
            "put_file must leave the source file in place"
        );
        assert!(exists(storage, key).await, "exists of {key} after put_file");

        // The destination's parent does not exist yet: get_to_file creates it.
        let dest = scratch
            .join("contract-out")
            .join("nested")
            .join("module.bin");
        storage
            .get_to_file(key, &dest)
            .await
            .unwrap_or_else(|e| panic!("get_to_file of {key}: {e}"));
        let back = tokio::fs::read(&dest)
            .await
            .expect("reading the file get_to_file wrote");
        assert!(
            back == data,
            "get_to_file of {key} wrote {} bytes that differ from the {} put",
            back.len(),
            data.len()
        );
        assert!(
            get(storage, key).await == data,
            "get_bytes of {key} differs from the file put"
        );
    }

    async fn missing_objects(storage: &dyn Storage, scratch: &Path) {
        let missing = "bundles/o/f/missing.tar.gz";
        match storage.get_bytes(missing).await {
            Err(StorageError::NotFound(key)) => {
                assert_eq!(key, missing, "NotFound must name the key asked for")
            }
            other => panic!("get_bytes of missing {missing}: expected NotFound, got {other:?}"),
        }
        let dest = scratch.join("contract-missing.bin");
        match storage.get_to_file(missing, &dest).await {
            Err(StorageError::NotFound(key)) => {
                assert_eq!(key, missing, "NotFound must name the key asked for")
            }
            other => panic!("get_to_file of missing {missing}: expected NotFound, got {other:?}"),
        }
        assert!(
            !tokio::fs::try_exists(&dest).await.unwrap_or(true),
            "get_to_file of a missing object must not leave a file at {}",
            dest.display()
        );
        assert!(
            !exists(storage, missing).await,
            "exists of missing {missing}"
        );
    }

    async fn overwrite(storage: &dyn Storage, scratch: &Path) {
        let key = "bundles/o/f/over.bin";
        put(storage, key, b"first").await;
        put(storage, key, b"second, longer").await;
        assert_eq!(
            get(storage, key).await,
            Bytes::from_static(b"second, longer"),
            "get_bytes of {key} after an overwrite"
        );
        let src = scratch.join("contract-over.bin");
        tokio::fs::write(&src, b"third")
            .await
            .expect("writing the contract's overwrite file");
        storage
            .put_file(key, &src)
            .await
            .unwrap_or_else(|e| panic!("put_file over {key}: {e}"));
        assert_eq!(
            get(storage, key).await,
            Bytes::from_static(b"third"),
            "get_bytes of {key} after put_file over it"
        );
    }

    async fn copy(storage: &dyn Storage) {
        let (from, to) = ("artifacts/o/f/d1/a.bin", "artifacts/o/g/d2/a.bin");
        put(storage, from, b"compiled").await;
        put(storage, to, b"older").await;
        storage
            .copy(from, to)
            .await
            .unwrap_or_else(|e| panic!("copy of {from} to {to}: {e}"));
        assert_eq!(
            get(storage, to).await,
            Bytes::from_static(b"compiled"),
            "{to} after the copy"
        );
        // The two stay independent: rewriting or deleting one leaves the other.
        put(storage, from, b"rewritten").await;
        assert_eq!(
            get(storage, to).await,
            Bytes::from_static(b"compiled"),
            "{to} after {from} was rewritten"
        );
        storage
            .delete_prefix("artifacts/o/f")
            .await
            .unwrap_or_else(|e| panic!("delete_prefix artifacts/o/f: {e}"));
        assert_eq!(
            get(storage, to).await,
            Bytes::from_static(b"compiled"),
            "{to} after {from} was deleted"
        );
        assert!(
            matches!(
                storage.copy(from, "artifacts/o/h/x").await,
                Err(StorageError::NotFound(_))
            ),
            "copy of a missing object must be NotFound"
        );
        assert!(
            !exists(storage, "artifacts/o/h/x").await,
            "a failed copy must leave nothing"
        );
        storage
            .delete_prefix("artifacts/o")
            .await
            .unwrap_or_else(|e| panic!("delete_prefix artifacts/o: {e}"));
    }

    fn expect_invalid<T: Debug>(op: &str, key: &str, result: Result<T, StorageError>) {
        assert!(
            matches!(result, Err(StorageError::InvalidKey(_))),
            "{op} of {key:?}: expected InvalidKey, got {result:?}"
        );
    }

    async fn invalid_keys(storage: &dyn Storage, scratch: &Path) {
        let src = scratch.join("contract-invalid-src.bin");
        tokio::fs::write(&src, b"x")
            .await
            .expect("writing the contract's source file");
        let dest = scratch.join("contract-invalid-dest.bin");
        for bad in ["../x", "/abs", "", "a//b", "a/./b", "a/.."] {
            expect_invalid("put_bytes", bad, storage.put_bytes(bad, Bytes::new()).await);
            expect_invalid("put_file", bad, storage.put_file(bad, &src).await);
            expect_invalid("get_bytes", bad, storage.get_bytes(bad).await);
            expect_invalid("get_to_file", bad, storage.get_to_file(bad, &dest).await);
            expect_invalid("exists", bad, storage.exists(bad).await);
            expect_invalid("copy", bad, storage.copy(bad, "artifacts/o/ok").await);
            expect_invalid("copy", bad, storage.copy("artifacts/o/ok", bad).await);
            expect_invalid("delete_prefix", bad, storage.delete_prefix(bad).await);
        }
    }

    async fn delete_prefix(storage: &dyn Storage) {
        let doomed = ["bundles/o/f/1.tar.gz", "bundles/o/f/d2/nested/module.bin"];
        // A sibling sharing the textual prefix, another org, another kind of object.
        let kept = [
            "bundles/o/fg/x",
            "bundles/o2/f/1.tar.gz",
            "artifacts/o/f/kept.bin",
        ];
        for key in doomed.iter().chain(kept.iter()) {
            put(storage, key, key.as_bytes()).await;
        }
        storage
            .delete_prefix("bundles/o/f")
            .await
            .unwrap_or_else(|e| panic!("delete_prefix of bundles/o/f: {e}"));
        for key in doomed.iter().chain(["bundles/o/f/a.bin"].iter()) {
            assert!(
                !exists(storage, key).await,
                "{key} still exists after delete_prefix of bundles/o/f"
            );
        }
        for key in kept {
            assert!(
                exists(storage, key).await,
                "{key} was removed by delete_prefix of bundles/o/f"
            );
            assert_eq!(get(storage, key).await, key.as_bytes(), "content of {key}");
        }
        storage
            .delete_prefix("bundles/nobody/f")
            .await
            .unwrap_or_else(|e| panic!("delete_prefix of a prefix with nothing under it: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_refuse_escaping_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::open(dir.path()).await.expect("opens");
        s.put_bytes("a/b/c.bin", Bytes::from_static(b"hi"))
            .await
            .expect("put");
        assert_eq!(
            s.get_bytes("a/b/c.bin").await.expect("get"),
            Bytes::from_static(b"hi")
        );
        assert!(s.exists("a/b/c.bin").await.expect("exists"));
        assert!(matches!(
            s.get_bytes("a/nope").await,
            Err(StorageError::NotFound(_))
        ));
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", ".tmp/x", ""] {
            assert!(
                matches!(
                    s.put_bytes(bad, Bytes::new()).await,
                    Err(StorageError::InvalidKey(_))
                ),
                "{bad}"
            );
        }
        s.delete_prefix("a").await.expect("delete");
        assert!(!s.exists("a/b/c.bin").await.expect("exists"));
    }

    #[tokio::test]
    async fn a_write_failing_midway_leaves_the_old_object_and_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::open(dir.path()).await.expect("opens");
        let temp_files = || {
            std::fs::read_dir(dir.path().join(".tmp"))
                .expect("reading .tmp")
                .count()
        };
        let key = "bundles/o/f/d.tar.gz";
        s.put_bytes(key, Bytes::from_static(b"old"))
            .await
            .expect("put");
        // A source that breaks after half the object.
        let broken = |file: &mut std::fs::File| -> std::io::Result<()> {
            file.write_all(b"half of the new")?;
            Err(std::io::Error::other("the upload broke"))
        };

        let failed = s.put_with(key, broken).await;
        assert!(matches!(failed, Err(StorageError::Io { .. })), "{failed:?}");
        assert_eq!(
            s.get_bytes(key).await.expect("get"),
            Bytes::from_static(b"old")
        );
        let new = "bundles/o/f/new.tar.gz";
        assert!(s.put_with(new, broken).await.is_err());
        assert!(
            !s.exists(new).await.expect("exists"),
            "half an object is visible"
        );
        assert_eq!(temp_files(), 0, "a failed write left its temp file");

        // Failing after the temp file is complete (an object is in the key's way).
        let blocked = format!("{key}/below");
        assert!(
            s.put_bytes(&blocked, Bytes::from_static(b"x"))
                .await
                .is_err()
        );
        assert_eq!(temp_files(), 0, "a failed rename left its temp file");
    }

    #[tokio::test]
    async fn an_overwrite_replaces_the_file_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = LocalStorage::open(dir.path()).await.expect("opens");
        let key = "artifacts/o/f/d/module.bin";
        let first = contract::pseudo_random(256 * 1024, 1);
        let second = contract::pseudo_random(100 * 1024, 2);
        s.put_bytes(key, Bytes::from(first.clone()))
            .await
            .expect("put");
        let mut reader = std::fs::File::open(dir.path().join(key)).expect("opening the object");

        let src = dir.path().join("second.bin");
        std::fs::write(&src, &second).expect("writing the source");
        s.put_file(key, &src).await.expect("put_file");

        // Renamed into place, not rewritten: an open reader still sees all of the first.
        let mut seen = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut seen).expect("reading");
        assert!(seen == first, "a reader saw a mix of two objects");
        assert!(s.get_bytes(key).await.expect("get") == second);
    }

    #[tokio::test]
    async fn local_storage_meets_the_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path().join("store"))
            .await
            .expect("opens");
        let scratch = dir.path().join("scratch");
        tokio::fs::create_dir_all(&scratch)
            .await
            .expect("creating the scratch dir");
        contract::run(&storage, &scratch).await;
    }
}
