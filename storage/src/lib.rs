//! Where bundles and build artifacts live, behind one [`Storage`] interface.
//!
//! The embedded default keeps them as files under `workdir/storage`; an S3 backend will
//! implement the same trait. Keys are `/`-separated relative paths built by [`keys`].
//! Writes are atomic (a reader never sees half an object). This crate knows nothing of
//! what the objects mean.
#![forbid(unsafe_code)]

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
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key.split('/').all(|part| {
                !part.is_empty() && part != "." && part != ".." && !part.starts_with(".tmp")
            });
        if !ok {
            return Err(StorageError::InvalidKey(key.to_string()));
        }
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
}
