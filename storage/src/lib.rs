//! Where bundles and build artifacts live, behind one [`Storage`] interface.
//!
//! Two backends: [`LocalStorage`], the embedded default, keeps objects as files under
//! `workdir/storage`; [`S3Storage`] keeps them in an S3 bucket (AWS or an S3-compatible
//! server such as MinIO or Ceph). Keys are `/`-separated relative paths built by [`keys`]
//! and checked alike by both backends. Writes are atomic (a reader never sees half an
//! object). The hidden `contract` module is the behaviour every backend must show, run by
//! each backend's tests. Bundle archives are received and unpacked safely by
//! [`bundle`]; beyond that, this crate knows nothing of what the objects mean.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod s3;
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
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

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

    async fn commit(&self, key: &str, tmp: &Path) -> Result<(), StorageError> {
        let dest = self.path(key)?;
        let io = |source| StorageError::Io {
            key: key.to_string(),
            source,
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        tokio::fs::rename(tmp, &dest).await.map_err(io)
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        self.path(key)?;
        let tmp = self.temp_path();
        tokio::fs::copy(path, &tmp)
            .await
            .map_err(|source| StorageError::Io {
                key: key.to_string(),
                source,
            })?;
        self.commit(key, &tmp).await
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.path(key)?;
        let tmp = self.temp_path();
        let io = |source| StorageError::Io {
            key: key.to_string(),
            source,
        };
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        file.write_all(&bytes).await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        self.commit(key, &tmp).await
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
        match tokio::fs::remove_dir_all(&path).await {
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
