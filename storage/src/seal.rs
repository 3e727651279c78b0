//! What comes out of storage is verified before it runs. Write access to the bucket must
//! not be code execution on a worker:
//! - bundles are checked against the sha256 the control plane recorded at upload
//!   ([`verify_bundle`]);
//! - artifacts (precompiled native code) carry a MAC beside them (`<key>.mac`), keyed by
//!   a secret only the platform holds (derived from the workers' credential) and bound
//!   to the object's key, so an artifact can be neither forged nor moved to another
//!   deployment ([`ArtifactSeal`]). One that fails is rebuilt from its verified bundle.

use crate::{Storage, StorageError};
use bytes::Bytes;
use ring::hmac;
use sha2::{Digest, Sha256};

/// Where an artifact's MAC is stored.
pub fn mac_key(key: &str) -> String {
    format!("{key}.mac")
}

/// Signs and verifies artifacts.
pub struct ArtifactSeal(hmac::Key);

impl ArtifactSeal {
    /// The seal of every worker and builder that holds `secret` (the workers' token).
    pub fn from_secret(secret: &str) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let derived = hmac::sign(&root, b"reactor artifact seal v1");
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// A seal known to this process only (`reactor dev`, tests): artifacts another
    /// process stored fail it and are rebuilt from their bundle.
    pub fn ephemeral() -> Self {
        let secret: [u8; 32] = rand_bytes();
        Self(hmac::Key::new(hmac::HMAC_SHA256, &secret))
    }

    fn tag(&self, key: &str, bytes: &[u8]) -> hmac::Tag {
        self.tag_digest(key, &Sha256::digest(bytes))
    }

    fn tag_digest(&self, key: &str, sha256: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(key.as_bytes());
        ctx.update(&[0]);
        ctx.update(sha256);
        ctx.sign()
    }

    /// Stores at `to` a copy of the artifact at `from` (copied by the storage, never
    /// read here), sealed for `to` as the bytes whose SHA-256 is `sha256`: what this
    /// process put at `from`. Should `from` hold anything else by now, the copy fails its
    /// MAC when loaded and is rebuilt, like any tampered artifact.
    pub async fn copy(
        &self,
        storage: &dyn Storage,
        from: &str,
        to: &str,
        sha256: &[u8],
    ) -> Result<(), StorageError> {
        storage.copy(from, to).await?;
        let tag = hex::encode(self.tag_digest(to, sha256).as_ref());
        storage.put_bytes(&mac_key(to), Bytes::from(tag)).await
    }

    /// Stores `bytes` at `key`, then its MAC.
    pub async fn put(
        &self,
        storage: &dyn Storage,
        key: &str,
        bytes: Bytes,
    ) -> Result<(), StorageError> {
        let tag = hex::encode(self.tag(key, &bytes).as_ref());
        storage.put_bytes(key, bytes).await?;
        storage.put_bytes(&mac_key(key), Bytes::from(tag)).await
    }

    /// The artifact at `key` if it is there and its MAC verifies; `Ok(None)` when it is
    /// missing, or present but unsealed or tampered with (logged): rebuild it.
    pub async fn get(
        &self,
        storage: &dyn Storage,
        key: &str,
    ) -> Result<Option<Bytes>, StorageError> {
        let bytes = match storage.get_bytes(key).await {
            Ok(b) => b,
            Err(StorageError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mac = match storage.get_bytes(&mac_key(key)).await {
            Ok(m) => m,
            Err(StorageError::NotFound(_)) => {
                tracing::warn!(key, "an artifact in storage has no MAC: ignoring it");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let given = std::str::from_utf8(&mac)
            .ok()
            .and_then(|s| hex::decode(s.trim()).ok())
            .unwrap_or_default();
        let mut ctx = Vec::with_capacity(key.len() + 33);
        ctx.extend_from_slice(key.as_bytes());
        ctx.push(0);
        ctx.extend_from_slice(&Sha256::digest(&bytes));
        if hmac::verify(&self.0, &ctx, &given).is_err() {
            tracing::warn!(
                key,
                "an artifact in storage fails its MAC (tampered, or sealed by another key): ignoring it"
            );
            return Ok(None);
        }
        Ok(Some(bytes))
    }
}

/// Checks a bundle fetched from storage against the sha256 (hex) recorded at upload.
pub fn verify_bundle(bytes: &[u8], sha256: &str) -> Result<(), String> {
    let got = hex::encode(Sha256::digest(bytes));
    if got.eq_ignore_ascii_case(sha256.trim()) {
        Ok(())
    } else {
        Err(format!(
            "the bundle in storage does not match its recorded sha256 (recorded {sha256}, found {got}): refusing to run it"
        ))
    }
}

fn rand_bytes() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; 32];
    // The system RNG failing is not recoverable; fall back to a hash of time and pid,
    // which still makes the seal unknown to other processes.
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        let seed = format!("{:?}-{}", std::time::SystemTime::now(), std::process::id());
        out.copy_from_slice(&Sha256::digest(seed.as_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStorage;

    #[tokio::test]
    async fn a_sealed_artifact_verifies_and_a_tampered_or_moved_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path()).await.expect("storage");
        let seal = ArtifactSeal::from_secret("the workers' token");
        let key = "artifacts/acme/f/dep_1/wasm-x.cwasm";
        seal.put(&storage, key, Bytes::from_static(b"native code"))
            .await
            .expect("put");
        let got = seal.get(&storage, key).await.expect("get");
        assert_eq!(got.as_deref(), Some(&b"native code"[..]));
        // Another key's holder (or none) does not accept it.
        let other = ArtifactSeal::from_secret("another token");
        assert!(other.get(&storage, key).await.expect("get").is_none());
        // Write access to the bucket: replaced bytes fail.
        storage
            .put_bytes(key, Bytes::from_static(b"evil code"))
            .await
            .expect("tamper");
        assert!(seal.get(&storage, key).await.expect("get").is_none());
        // A genuine artifact copied to another deployment's key fails too.
        let moved = "artifacts/other/g/dep_2/wasm-x.cwasm";
        seal.put(&storage, key, Bytes::from_static(b"native code"))
            .await
            .expect("put");
        let mac = storage.get_bytes(&mac_key(key)).await.expect("mac");
        storage
            .put_bytes(moved, Bytes::from_static(b"native code"))
            .await
            .expect("copy");
        storage
            .put_bytes(&mac_key(moved), mac)
            .await
            .expect("copy mac");
        assert!(seal.get(&storage, moved).await.expect("get").is_none());
        // Missing: None, not an error.
        assert!(
            seal.get(&storage, "artifacts/none")
                .await
                .expect("get")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_copy_is_sealed_for_its_key_and_fails_when_the_source_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path()).await.expect("storage");
        let seal = ArtifactSeal::from_secret("the workers' token");
        let (from, to) = ("artifacts/acme/f/dep_1/a", "artifacts/acme/g/dep_2/a");
        let code = Bytes::from_static(b"native code");
        seal.put(&storage, from, code.clone()).await.expect("put");
        let digest = Sha256::digest(&code);
        seal.copy(&storage, from, to, &digest).await.expect("copy");
        assert_eq!(
            seal.get(&storage, to).await.expect("get").as_deref(),
            Some(&b"native code"[..])
        );
        // The source replaced before the copy: the copy carries the old digest and fails.
        let late = "artifacts/acme/h/dep_3/a";
        storage
            .put_bytes(from, Bytes::from_static(b"evil code"))
            .await
            .expect("tamper");
        seal.copy(&storage, from, late, &digest)
            .await
            .expect("copy");
        assert!(seal.get(&storage, late).await.expect("get").is_none());
        // A missing source: NotFound, nothing sealed.
        let err = seal
            .copy(
                &storage,
                "artifacts/acme/none",
                "artifacts/acme/i/dep_4/a",
                &digest,
            )
            .await
            .expect_err("missing");
        assert!(matches!(err, StorageError::NotFound(_)), "{err}");
        assert!(
            !storage
                .exists(&mac_key("artifacts/acme/i/dep_4/a"))
                .await
                .expect("exists")
        );
    }

    #[test]
    fn bundles_must_match_their_recorded_sha256() {
        let sha = hex::encode(Sha256::digest(b"bundle"));
        assert!(verify_bundle(b"bundle", &sha).is_ok());
        let err = verify_bundle(b"bundle!", &sha).expect_err("tampered");
        assert!(err.contains("does not match"), "{err}");
    }
}
