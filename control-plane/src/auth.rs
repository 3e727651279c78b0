//! Who is calling: API tokens (generated secrets of which only the SHA-256 is stored) and
//! signed-in users (an email and a password, hashed with argon2id; access tokens signed
//! with the key [`SignIn`] loads), the [`Caller`] an admin request authenticates as, and
//! the backoff that slows password guessing ([`Throttle`]).

use crate::secrets::Keyring;
use crate::store::{SigningKeyRecord, Store};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;
use rand::distr::Alphanumeric;
use reactor_api::access::Signer;
use reactor_api::model::Role;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TOKEN_PREFIX: &str = "rct_";
/// Refresh tokens: shown to their user once, stored as their SHA-256.
pub const REFRESH_PREFIX: &str = "rrt_";

/// A fresh secret: `prefix` and 43 random alphanumerics, 256 bits.
fn secret(prefix: &str) -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(43)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

/// A fresh API token secret.
pub fn generate_token() -> String {
    secret(TOKEN_PREFIX)
}

/// A fresh refresh token.
pub fn generate_refresh_token() -> String {
    secret(REFRESH_PREFIX)
}

pub use reactor_api::token::{bearer, token_hash};

/// Who is calling the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub org: String,
    pub role: Role,
    /// The API token's id, or a signed-in user's sign-in (`ses_...`).
    pub token_id: String,
    /// The caller's org is the platform's (the bootstrap org): it may create orgs.
    pub platform: bool,
    /// The signed-in user (`usr_...`); none for an API token.
    pub user_id: Option<String>,
}

/// The argon2id hash of `password` as a PHC string (default parameters: 19 MiB, two
/// passes, one lane, as OWASP recommends). Slow on purpose: call it off the async threads.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash` (false when `hash` is unreadable).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// The longest a throttled key waits.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A key with no failure for this long starts again from nothing.
const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Keys remembered at most (see [`Throttle::fail`]).
const MAX_KEYS: usize = 100_000;

struct Strikes {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failed sign-ins by key (an account, a client address): after `free` failures each
/// further attempt makes the key wait, 1 s doubling up to 5 minutes, whether or not it
/// would be right. An attempt counts as a failure from the moment it is admitted (so
/// guesses sent at once are counted before any is checked) until it succeeds. In memory,
/// per control plane.
#[derive(Default)]
pub struct Throttle {
    keys: std::sync::Mutex<HashMap<String, Strikes>>,
}

impl Throttle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Strikes>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `key` must still wait, if it must.
    pub fn wait(&self, key: &str) -> Option<Duration> {
        let keys = self.lock();
        let until = keys.get(key)?.blocked_until?;
        until.checked_duration_since(Instant::now())
    }

    /// Admits an attempt of `key`, counted as a failure until [`Throttle::forgive`] or
    /// [`Throttle::clear`]; past `free` failures (0: never) the key waits. `Err`: how long
    /// it must still wait (nothing counted).
    pub fn admit(&self, key: &str, free: u32) -> Result<(), Duration> {
        if free == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut keys = self.lock();
        if let Some(wait) = keys
            .get(key)
            .and_then(|s| s.blocked_until)
            .and_then(|until| until.checked_duration_since(now))
        {
            return Err(wait);
        }
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            evict(&mut keys, now);
        }
        let s = keys.entry(key.to_string()).or_insert(Strikes {
            failures: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(s.last) >= FORGET_AFTER {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.last = now;
        if s.failures > free {
            let doublings = (s.failures - free - 1).min(16);
            let wait = Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF);
            s.blocked_until = Some(now + wait);
        }
        Ok(())
    }

    /// Takes back one admitted attempt that did not fail (or was not tried).
    pub fn forgive(&self, key: &str) {
        if let Some(s) = self.lock().get_mut(key) {
            s.failures = s.failures.saturating_sub(1);
        }
    }

    /// Forgets `key`'s failures (a successful sign-in to an account).
    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// Makes room in a full throttle: expired keys go, then the tenth least recently failed,
/// so a flood of new keys cannot wipe out a key under attack.
fn evict(keys: &mut HashMap<String, Strikes>, now: Instant) {
    keys.retain(|_, s| now.duration_since(s.last) < FORGET_AFTER);
    if keys.len() < MAX_KEYS {
        return;
    }
    let mut lasts: Vec<Instant> = keys.values().map(|s| s.last).collect();
    let cut = lasts.len() / 10;
    let (_, oldest_kept, _) = lasts.select_nth_unstable(cut);
    let oldest_kept = *oldest_kept;
    keys.retain(|_, s| s.last >= oldest_kept);
    tracing::warn!(
        keys = keys.len(),
        "sign-in throttle full: forgot the least recent tenth"
    );
}

/// What signing in needs: the access-token signer, the backoff, a bound on password
/// hashing running at once, and a hash to check against when the email is unknown (so
/// that an unknown address costs as long as a wrong password).
pub struct SignIn {
    pub signer: Arc<Signer>,
    pub throttle: Throttle,
    pub hashing: tokio::sync::Semaphore,
    /// Requests waiting for a hashing slot (bounded: see `HASHING_QUEUE`).
    pub hashing_waiting: std::sync::atomic::AtomicUsize,
    pub decoy_hash: String,
    /// Every signing key's public half by id, as last read from the store, and when.
    pub keys: std::sync::Mutex<KnownKeys>,
}

/// Public signing keys by id, and when they were read.
pub type KnownKeys = (Vec<(String, Vec<u8>)>, Option<Instant>);

/// Password checks and hashes running at once, each about 19 MiB and tens of
/// milliseconds of one core.
const HASHING_SLOTS: usize = 2;
/// Requests that may wait for a slot; more are refused with 429 at once.
pub const HASHING_QUEUE: usize = 32;

/// Where the signing key's PKCS#8 is sealed: `_platform` is no org name (names start with
/// a letter), so no secret of a function can be mistaken for it.
fn sealed_as(kid: &str) -> (&'static str, &'static str, String) {
    ("_platform", "_signing_key", kid.to_string())
}

impl SignIn {
    /// Loads the oldest signing key that the keyring opens, or makes one. Control planes
    /// starting together on one database each insert a key and then all pick the oldest.
    pub async fn load(store: &dyn Store, keyring: &Keyring) -> anyhow::Result<Self> {
        let accounts = store.accounts();
        let opened = |keys: Vec<SigningKeyRecord>| {
            keys.into_iter().find_map(|k| {
                let (org, function, key) = sealed_as(&k.id);
                let pkcs8 = keyring.open(org, function, &key, &k.private).ok()?;
                Signer::from_pkcs8(&k.id, &pkcs8).ok()
            })
        };
        let signer = match opened(accounts.signing_keys().await?) {
            Some(s) => s,
            None => {
                let kid = format!("key_{}", ulid::Ulid::new());
                let pkcs8 = Signer::generate_pkcs8()
                    .map_err(|e| anyhow::anyhow!("generating a signing key: {e}"))?;
                let signer = Signer::from_pkcs8(&kid, &pkcs8)
                    .map_err(|e| anyhow::anyhow!("loading the new signing key: {e}"))?;
                let (org, function, key) = sealed_as(&kid);
                accounts
                    .insert_signing_key(&SigningKeyRecord {
                        id: kid.clone(),
                        public_key: signer.public_key(),
                        private: keyring.seal(org, function, &key, &pkcs8)?,
                        created_at: crate::service::now(),
                    })
                    .await?;
                tracing::info!(kid, "generated the key that signs access tokens");
                opened(accounts.signing_keys().await?).ok_or_else(|| {
                    anyhow::anyhow!("the signing key just stored cannot be opened")
                })?
            }
        };
        let decoy_hash = tokio::task::spawn_blocking(|| hash_password(&secret("decoy_")))
            .await?
            .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
        Ok(Self {
            signer: Arc::new(signer),
            throttle: Throttle::default(),
            hashing: tokio::sync::Semaphore::new(HASHING_SLOTS),
            hashing_waiting: Default::default(),
            decoy_hash,
            keys: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 47);
        assert!(generate_refresh_token().starts_with(REFRESH_PREFIX));
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse battery staple").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery staple", &hash));
        assert!(!verify_password("correct horse battery stapler", &hash));
        assert!(!verify_password("anything", "not a hash"));
        assert_ne!(
            hash,
            hash_password("correct horse battery staple").expect("hash")
        );
    }

    #[test]
    fn the_throttle_counts_attempts_as_admitted_then_doubles_the_wait() {
        let t = Throttle::default();
        for _ in 0..3 {
            assert_eq!(t.admit("a", 3), Ok(()));
        }
        assert_eq!(t.wait("a"), None);
        // The 4th attempt is admitted, and blocks the next ones even before it is checked.
        assert_eq!(t.admit("a", 3), Ok(()));
        let first = t.admit("a", 3).expect_err("waits");
        assert!(first <= Duration::from_secs(1) && first > Duration::from_millis(900));
        assert_eq!(t.wait("b"), None, "keys are apart");
        // Forgiven attempts do not count.
        for _ in 0..10 {
            assert_eq!(t.admit("b", 3), Ok(()));
            t.forgive("b");
        }
        assert_eq!(t.wait("b"), None);
        t.clear("a");
        assert_eq!(t.admit("a", 3), Ok(()));
        // 0 turns it off.
        for _ in 0..10 {
            assert_eq!(t.admit("c", 0), Ok(()));
        }
        // The wait is bounded and doubles.
        let t = Throttle::default();
        let mut waits = Vec::new();
        for _ in 0..40 {
            if let Some(w) = t.wait("d") {
                waits.push(w);
                t.lock().get_mut("d").expect("d").blocked_until = None;
            }
            let _ = t.admit("d", 1);
        }
        assert!(waits.iter().all(|w| *w <= MAX_BACKOFF));
        assert!(waits[1] > waits[0], "{waits:?}");
    }

    #[test]
    fn a_full_throttle_keeps_its_most_recent_keys() {
        let t = Throttle::default();
        assert_eq!(t.admit("victim", 1), Ok(()));
        assert_eq!(t.admit("victim", 1), Ok(()));
        for i in 0..MAX_KEYS {
            let _ = t.admit(&format!("flood{i}"), 5);
        }
        // The victim failed first: the eviction took it, but never all keys at once.
        assert!(t.lock().len() >= MAX_KEYS * 8 / 10);
    }
}
