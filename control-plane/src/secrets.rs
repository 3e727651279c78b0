//! The data-key keyring that encrypts function secrets at rest. Each value is sealed with
//! AES-256-GCM under the current data key, with a fresh random 96-bit nonce and the
//! value's org, function and key name bound as associated data, so a ciphertext copied to
//! another row does not open. The id of the key that sealed a value is stored beside it
//! ([`Sealed`]); the keyring keeps the current key plus previous ones, so after a rotation
//! old values still open and [`Keyring::reseal`] moves them to the current key. The key
//! comes from the `data_key` setting (base64 of 32 bytes) or, when none is configured,
//! from a file in the work directory created on first start
//! ([`load_or_create_key_file`]). Neither key material nor plaintext is ever logged or
//! printed by `Debug`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Length of a data key in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// Prefix of a data key's id.
pub const KEY_ID_PREFIX: &str = "dk_";

/// Hashed before the raw key bytes to derive a key's id.
const KEY_ID_CONTEXT: &[u8] = b"reactor data key v1";

/// First part of the associated data of every sealed value.
const AAD_CONTEXT: &[u8] = b"reactor-secret-v1";

/// Decoding accepts padded or unpadded input, in the standard or the URL-safe alphabet.
const ANY_PADDING: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, ANY_PADDING);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, ANY_PADDING);

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("data_key is not valid base64: {0}")]
    Base64(base64::DecodeError),
    #[error("data_key must be 32 bytes, got {0}")]
    KeyLength(usize),
    #[error(
        "no configured data key has id {0} (add the old key to data_keys_previous until `reactor data-key rotate` has run)"
    )]
    UnknownKey(String),
    #[error("secret {key} of {org}/{function} does not decrypt (wrong key or tampered)")]
    Decrypt {
        org: String,
        function: String,
        key: String,
    },
    #[error("secret {key} of {org}/{function} could not be encrypted")]
    Encrypt {
        org: String,
        function: String,
        key: String,
    },
    #[error("the system random number generator failed")]
    Random,
    #[error("data key file {path}: {source}")]
    KeyFile { path: PathBuf, source: io::Error },
    #[error("data key file {path} does not hold a valid key: {source}")]
    KeyFileContents {
        path: PathBuf,
        source: Box<SecretsError>,
    },
}

/// One sealed value as stored in the database: all three fields are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the data key that sealed the value ([`DataKey::id`]).
    pub key_id: String,
    /// The 12-byte AES-GCM nonce, random per value.
    pub nonce: Vec<u8>,
    /// The encrypted value followed by the 16-byte authentication tag.
    pub ciphertext: Vec<u8>,
}

/// One AES-256-GCM data key and its id. `Debug` prints only the id.
pub struct DataKey {
    /// `dk_` + the first 16 hex characters of SHA-256(`reactor data key v1` || raw key).
    id: String,
    key: LessSafeKey,
}

impl DataKey {
    /// Parses a key given as base64 of 32 bytes. Surrounding whitespace is ignored; the
    /// standard and the URL-safe alphabets are accepted, with or without padding.
    pub fn from_base64(b64: &str) -> Result<DataKey, SecretsError> {
        let text = b64.trim();
        let engine = if text.contains(['-', '_']) {
            &URL_SAFE_ANY_PADDING
        } else {
            &STANDARD_ANY_PADDING
        };
        let raw = engine.decode(text).map_err(SecretsError::Base64)?;
        let raw: [u8; KEY_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| SecretsError::KeyLength(raw.len()))?;
        Ok(DataKey::from_raw(&raw))
    }

    /// A fresh random key and its standard (padded) base64 form, for the operator to keep.
    ///
    /// Panics only if the operating system's random number generator fails.
    pub fn generate() -> (DataKey, String) {
        let mut raw = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut raw)
            .expect("the system random number generator failed");
        let b64 = STANDARD.encode(raw);
        (DataKey::from_raw(&raw), b64)
    }

    /// `dk_` followed by 16 lowercase hex characters; stable for a given key.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn from_raw(raw: &[u8; KEY_LEN]) -> DataKey {
        let mut hasher = Sha256::new();
        hasher.update(KEY_ID_CONTEXT);
        hasher.update(raw);
        let digest = hasher.finalize();
        let id = format!("{KEY_ID_PREFIX}{}", hex::encode(&digest[..8]));
        let unbound = UnboundKey::new(&AES_256_GCM, raw).expect("AES-256-GCM takes a 32-byte key");
        DataKey {
            id,
            key: LessSafeKey::new(unbound),
        }
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The associated data bound to a sealed value: the UTF-8 bytes of
/// `reactor-secret-v1`, then for each of `org`, `function` and `key` in that order one
/// NUL byte (`0x00`) followed by the name's UTF-8 bytes. No trailing NUL, no length
/// prefixes:
///
/// ```text
/// "reactor-secret-v1" 0x00 org 0x00 function 0x00 key
/// ```
///
/// For example `("acme", "api", "DB_URL")` gives `b"reactor-secret-v1\0acme\0api\0DB_URL"`.
/// Names never contain NUL, so the encoding is unambiguous. To open a stored row without
/// this module: AES-256-GCM (`ring::aead::AES_256_GCM`) with the raw data key, the row's
/// 12-byte nonce, this associated data, and the row's ciphertext (tag appended).
pub fn associated_data(org: &str, function: &str, key: &str) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(AAD_CONTEXT.len() + 3 + org.len() + function.len() + key.len());
    aad.extend_from_slice(AAD_CONTEXT);
    for part in [org, function, key] {
        aad.push(0);
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

/// The current data key, which seals, and previous ones, which only open.
#[derive(Debug)]
pub struct Keyring {
    current: DataKey,
    previous: Vec<DataKey>,
}

impl Keyring {
    /// Previous keys with the current key's id, or repeated, are dropped.
    pub fn new(current: DataKey, previous: Vec<DataKey>) -> Keyring {
        let mut kept: Vec<DataKey> = Vec::with_capacity(previous.len());
        for key in previous {
            if key.id != current.id && !kept.iter().any(|k| k.id == key.id) {
                kept.push(key);
            }
        }
        Keyring {
            current,
            previous: kept,
        }
    }

    /// Id of the key new values are sealed under.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Ids of all keys, the current one first.
    pub fn ids(&self) -> Vec<String> {
        self.keys().map(|k| k.id.clone()).collect()
    }

    /// Whether values sealed under `key_id` can be opened.
    pub fn knows(&self, key_id: &str) -> bool {
        self.find(key_id).is_some()
    }

    /// Encrypts `plaintext`, the value of secret `key` of `org`/`function`, under the
    /// current key with a fresh random nonce.
    pub fn seal(
        &self,
        org: &str,
        function: &str,
        key: &str,
        plaintext: &[u8],
    ) -> Result<Sealed, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut in_out = Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len());
        in_out.extend_from_slice(plaintext);
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(org, function, key)),
                &mut in_out,
            )
            .map_err(|_| SecretsError::Encrypt {
                org: org.to_owned(),
                function: function.to_owned(),
                key: key.to_owned(),
            })?;
        Ok(Sealed {
            key_id: self.current.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: in_out,
        })
    }

    /// Decrypts a value with the key named by `sealed.key_id`, checking that it was sealed
    /// for secret `key` of `org`/`function`.
    pub fn open(
        &self,
        org: &str,
        function: &str,
        key: &str,
        sealed: &Sealed,
    ) -> Result<Vec<u8>, SecretsError> {
        let data_key = self
            .find(&sealed.key_id)
            .ok_or_else(|| SecretsError::UnknownKey(sealed.key_id.clone()))?;
        let decrypt_error = || SecretsError::Decrypt {
            org: org.to_owned(),
            function: function.to_owned(),
            key: key.to_owned(),
        };
        let nonce: [u8; NONCE_LEN] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| decrypt_error())?;
        let mut in_out = sealed.ciphertext.clone();
        let len = data_key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(org, function, key)),
                &mut in_out,
            )
            .map_err(|_| decrypt_error())?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }

    /// Re-seals under the current key when sealed under another; None when already current.
    pub fn reseal(
        &self,
        org: &str,
        function: &str,
        key: &str,
        sealed: &Sealed,
    ) -> Result<Option<Sealed>, SecretsError> {
        if sealed.key_id == self.current.id {
            return Ok(None);
        }
        let plaintext = self.open(org, function, key, sealed)?;
        self.seal(org, function, key, &plaintext).map(Some)
    }

    fn keys(&self) -> impl Iterator<Item = &DataKey> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    fn find(&self, key_id: &str) -> Option<&DataKey> {
        self.keys().find(|k| k.id == key_id)
    }
}

/// The embedded default: when no data_key is configured, the control plane keeps one in
/// `path` (`{workdir}/data_key`), created on first start with mode 0600 and holding the
/// base64 key and a newline. Returns the key and whether it was generated now.
///
/// The new key is written and synced to a temporary file (mode 0600) in the same
/// directory, then published under `path` in one step, so a crash never leaves half a
/// key. Publishing is a hard link, which fails if another process created `path`
/// meanwhile (its key is then used); where hard links are unsupported it is a rename.
pub fn load_or_create_key_file(path: &Path) -> Result<(DataKey, bool), SecretsError> {
    if let Some(key) = read_key_file(path)? {
        return Ok((key, false));
    }

    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| key_file_error(dir, e))?;
    let (key, b64) = DataKey::generate();
    let tmp = temp_path(dir, path)?;
    if let Err(e) = write_new_private(&tmp, format!("{b64}\n").as_bytes()) {
        let _ = fs::remove_file(&tmp);
        return Err(key_file_error(&tmp, e));
    }

    match fs::hard_link(&tmp, path) {
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Another process created the file first: use its key, not ours.
            let _ = fs::remove_file(&tmp);
            return match read_key_file(path)? {
                Some(existing) => Ok((existing, false)),
                None => Err(key_file_error(path, e)),
            };
        }
        Err(_) => {
            if let Err(e) = fs::rename(&tmp, path) {
                let _ = fs::remove_file(&tmp);
                return Err(key_file_error(path, e));
            }
        }
    }
    // Make the new directory entry durable; best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((key, true))
}

/// The key in `path`, or None when the file does not exist.
fn read_key_file(path: &Path) -> Result<Option<DataKey>, SecretsError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(key_file_error(path, e)),
    };
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the data key file has mode {mode:o}, so group or others can access it; it should be 600"
            );
        }
    }
    DataKey::from_base64(&text)
        .map(Some)
        .map_err(|e| SecretsError::KeyFileContents {
            path: path.to_owned(),
            source: Box::new(e),
        })
}

/// A fresh name beside `path` in `dir` for the temporary file.
fn temp_path(dir: &Path, path: &Path) -> Result<PathBuf, SecretsError> {
    let mut suffix = [0u8; 8];
    SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| SecretsError::Random)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data_key".to_owned());
    Ok(dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    )))
}

/// Creates `path` (which must not exist) with mode 0600, writes `contents` and syncs it.
fn write_new_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn key_file_error(path: &Path, source: io::Error) -> SecretsError {
    SecretsError::KeyFile {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::new(DataKey::generate().0, Vec::new())
    }

    #[test]
    fn round_trip() {
        let ring = keyring();
        let sealed = ring
            .seal("acme", "api", "DB_URL", b"postgres://u:p@db/app")
            .expect("seal");
        assert_eq!(sealed.key_id, ring.current_id());
        assert_eq!(sealed.nonce.len(), 12);
        assert_eq!(sealed.ciphertext.len(), b"postgres://u:p@db/app".len() + 16);
        assert_ne!(&sealed.ciphertext[..21], b"postgres://u:p@db/app");
        let opened = ring.open("acme", "api", "DB_URL", &sealed).expect("open");
        assert_eq!(opened, b"postgres://u:p@db/app");

        let empty = ring.seal("acme", "api", "EMPTY", b"").expect("seal empty");
        assert_eq!(empty.ciphertext.len(), 16);
        assert_eq!(
            ring.open("acme", "api", "EMPTY", &empty)
                .expect("open empty"),
            b""
        );
    }

    #[test]
    fn fresh_nonce_per_value() {
        let ring = keyring();
        let a = ring.seal("acme", "api", "K", b"same").expect("seal");
        let b = ring.seal("acme", "api", "K", b"same").expect("seal");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a, b);
    }

    fn assert_decrypt_error(result: Result<Vec<u8>, SecretsError>) {
        match result {
            Err(SecretsError::Decrypt { .. }) => {}
            Err(other) => panic!("expected a decrypt error, got {other}"),
            Ok(_) => panic!("expected a decrypt error, the value opened"),
        }
    }

    #[test]
    fn moved_or_tampered_values_do_not_open() {
        let ring = keyring();
        let sealed = ring.seal("acme", "api", "DB_URL", b"secret").expect("seal");
        assert_decrypt_error(ring.open("other", "api", "DB_URL", &sealed));
        assert_decrypt_error(ring.open("acme", "web", "DB_URL", &sealed));
        assert_decrypt_error(ring.open("acme", "api", "API_KEY", &sealed));
        // Moving bytes between the names does not help either.
        assert_decrypt_error(ring.open("acme\0api", "", "DB_URL", &sealed));

        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert_decrypt_error(ring.open("acme", "api", "DB_URL", &flipped));
        let mut bad_tag = sealed.clone();
        let last = bad_tag.ciphertext.len() - 1;
        bad_tag.ciphertext[last] ^= 0x80;
        assert_decrypt_error(ring.open("acme", "api", "DB_URL", &bad_tag));
        let mut short_nonce = sealed.clone();
        short_nonce.nonce.pop();
        assert_decrypt_error(ring.open("acme", "api", "DB_URL", &short_nonce));
        let mut truncated = sealed.clone();
        truncated.ciphertext.truncate(8);
        assert_decrypt_error(ring.open("acme", "api", "DB_URL", &truncated));

        let err = ring
            .open("other", "api", "DB_URL", &sealed)
            .expect_err("moved value");
        assert_eq!(
            err.to_string(),
            "secret DB_URL of other/api does not decrypt (wrong key or tampered)"
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let a = keyring();
        let b = keyring();
        let sealed = a.seal("acme", "api", "K", b"v").expect("seal");
        match b.open("acme", "api", "K", &sealed) {
            Err(SecretsError::UnknownKey(id)) => assert_eq!(id, a.current_id()),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
        assert!(!b.knows(a.current_id()));
        let message = SecretsError::UnknownKey(a.current_id().to_owned()).to_string();
        assert!(message.contains(a.current_id()));

        // A value relabelled with the other key's id is refused as not decrypting.
        let mut relabelled = sealed;
        relabelled.key_id = b.current_id().to_owned();
        assert_decrypt_error(b.open("acme", "api", "K", &relabelled));
    }

    #[test]
    fn rotation() {
        let (a, a_b64) = DataKey::generate();
        let (b, b_b64) = DataKey::generate();
        let a_id = a.id().to_owned();
        let b_id = b.id().to_owned();

        let old_ring = Keyring::new(a, Vec::new());
        let old = old_ring.seal("acme", "api", "K", b"value").expect("seal");
        assert_eq!(old.key_id, a_id);

        let rotating = Keyring::new(
            DataKey::from_base64(&b_b64).expect("b"),
            vec![DataKey::from_base64(&a_b64).expect("a")],
        );
        assert_eq!(rotating.current_id(), b_id);
        assert_eq!(rotating.ids(), vec![b_id.clone(), a_id.clone()]);
        assert!(rotating.knows(&a_id) && rotating.knows(&b_id));
        assert_eq!(
            rotating.open("acme", "api", "K", &old).expect("open old"),
            b"value"
        );
        let resealed = rotating
            .reseal("acme", "api", "K", &old)
            .expect("reseal")
            .expect("needs resealing");
        assert_eq!(resealed.key_id, b_id);
        assert_eq!(
            rotating
                .reseal("acme", "api", "K", &resealed)
                .expect("reseal"),
            None
        );

        let new_ring = Keyring::new(b, Vec::new());
        assert_eq!(
            new_ring
                .open("acme", "api", "K", &resealed)
                .expect("open new"),
            b"value"
        );
        match new_ring.open("acme", "api", "K", &old) {
            Err(SecretsError::UnknownKey(id)) => assert_eq!(id, a_id),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
        match new_ring.reseal("acme", "api", "K", &old) {
            Err(SecretsError::UnknownKey(id)) => assert_eq!(id, a_id),
            other => panic!("expected UnknownKey, got {other:?}"),
        }
    }

    #[test]
    fn reseal_of_a_current_value_is_none() {
        let ring = keyring();
        let sealed = ring.seal("acme", "api", "K", b"v").expect("seal");
        assert_eq!(
            ring.reseal("acme", "api", "K", &sealed).expect("reseal"),
            None
        );
    }

    #[test]
    fn keyring_drops_previous_keys_equal_to_current() {
        let (a, a_b64) = DataKey::generate();
        let (b, b_b64) = DataKey::generate();
        let a_id = a.id().to_owned();
        let b_id = b.id().to_owned();
        let ring = Keyring::new(
            a,
            vec![
                DataKey::from_base64(&a_b64).expect("a"),
                b,
                DataKey::from_base64(&b_b64).expect("b"),
            ],
        );
        assert_eq!(ring.ids(), vec![a_id, b_id]);
    }

    #[test]
    fn bad_keys_are_refused() {
        match DataKey::from_base64("not base64!!") {
            Err(e @ SecretsError::Base64(_)) => {
                assert!(e.to_string().starts_with("data_key is not valid base64: "))
            }
            other => panic!("expected a base64 error, got {other:?}"),
        }
        match DataKey::from_base64(&STANDARD.encode([7u8; 16])) {
            Err(e @ SecretsError::KeyLength(16)) => {
                assert_eq!(e.to_string(), "data_key must be 32 bytes, got 16")
            }
            other => panic!("expected a length error, got {other:?}"),
        }
        assert!(matches!(
            DataKey::from_base64(&STANDARD.encode([7u8; 33])),
            Err(SecretsError::KeyLength(33))
        ));
        assert!(matches!(
            DataKey::from_base64(""),
            Err(SecretsError::KeyLength(0))
        ));
    }

    #[test]
    fn base64_forms_are_accepted() {
        let standard = STANDARD.encode([0xfbu8; 32]);
        assert!(standard.contains('+') && standard.contains('/') && standard.ends_with('='));
        let id = DataKey::from_base64(&standard)
            .expect("standard")
            .id()
            .to_owned();
        let url_safe = standard.replace('+', "-").replace('/', "_");
        let forms = [
            format!("  {standard}\n"),
            standard.trim_end_matches('=').to_owned(),
            url_safe.clone(),
            url_safe.trim_end_matches('=').to_owned(),
        ];
        for form in forms {
            assert_eq!(DataKey::from_base64(&form).expect("key").id(), id, "{form}");
        }
    }

    #[test]
    fn id_format() {
        let (key, b64) = DataKey::generate();
        let id = key.id();
        assert!(id.starts_with("dk_"), "{id}");
        assert_eq!(id.len(), 3 + 16);
        assert!(
            id[3..]
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{id}"
        );
        assert_eq!(DataKey::from_base64(&b64).expect("key").id(), id);

        // Pinned: ids are stored beside every value, so the derivation must not change.
        let raw: Vec<u8> = (0u8..32).collect();
        let known = DataKey::from_base64(&STANDARD.encode(raw)).expect("key");
        assert_eq!(known.id(), "dk_72e4e027dd0756d0");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (key, b64) = DataKey::generate();
        let raw = STANDARD.decode(&b64).expect("b64");
        let hex_key = hex::encode(&raw);
        let shown = format!("{key:?} {key:#?}");
        assert!(shown.contains(key.id()));
        assert!(!shown.contains(&b64));
        assert!(!shown.contains(&hex_key));
        assert!(!shown.contains(&format!("{raw:?}")));

        let ring = Keyring::new(key, Vec::new());
        let shown = format!("{ring:?}");
        assert!(!shown.contains(&b64) && !shown.contains(&hex_key));
    }

    #[test]
    fn sealed_values_open_with_ring_directly() {
        // What an integration test reading a stored row does.
        let (key, b64) = DataKey::generate();
        let ring = Keyring::new(key, Vec::new());
        let sealed = ring.seal("acme", "api", "DB_URL", b"value").expect("seal");
        assert_eq!(
            associated_data("acme", "api", "DB_URL"),
            b"reactor-secret-v1\0acme\0api\0DB_URL"
        );

        let raw = STANDARD.decode(&b64).expect("b64");
        let direct = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("key"));
        let nonce: [u8; 12] = sealed.nonce.as_slice().try_into().expect("12-byte nonce");
        let nonce = Nonce::assume_unique_for_key(nonce);
        let mut in_out = sealed.ciphertext.clone();
        let plaintext = direct
            .open_in_place(
                nonce,
                Aad::from(associated_data("acme", "api", "DB_URL")),
                &mut in_out,
            )
            .expect("open");
        assert_eq!(plaintext, b"value");
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data_key");

        let (first, generated) = load_or_create_key_file(&path).expect("create");
        assert!(generated);
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.ends_with('\n') && !text.trim_end().contains('\n'));
        assert_eq!(
            DataKey::from_base64(&text).expect("stored key").id(),
            first.id()
        );
        // The temporary file is gone.
        let entries: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("data_key")]);

        let (second, generated) = load_or_create_key_file(&path).expect("reuse");
        assert!(!generated);
        assert_eq!(second.id(), first.id());

        // A value sealed under the first load opens under the second.
        let sealed = Keyring::new(first, Vec::new())
            .seal("acme", "api", "K", b"v")
            .expect("seal");
        assert_eq!(
            Keyring::new(second, Vec::new())
                .open("acme", "api", "K", &sealed)
                .expect("open"),
            b"v"
        );
    }

    #[test]
    fn key_file_with_garbage_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data_key");
        fs::write(&path, "short\n").expect("write");
        match load_or_create_key_file(&path) {
            Err(e @ SecretsError::KeyFileContents { .. }) => {
                assert!(e.to_string().contains("data_key"), "{e}")
            }
            other => panic!("expected a key file error, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&path).expect("read"), "short\n");
    }
}
