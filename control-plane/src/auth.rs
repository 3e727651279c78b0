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
/// further one makes the key wait, 1 s doubling up to 5 minutes, whether or not the next
/// attempt would be right. In memory, per control plane.
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

    /// Counts a failure of `key`; past `free` failures (0: never) it waits.
    pub fn fail(&self, key: &str, free: u32) {
        if free == 0 {
            return;
        }
        let now = Instant::now();
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            keys.retain(|_, s| now.duration_since(s.last) < FORGET_AFTER);
            if keys.len() >= MAX_KEYS {
                // Full of live entries: forgetting them all is what bounds the memory.
                tracing::warn!(keys = keys.len(), "sign-in throttle full: forgetting it");
                keys.clear();
            }
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
    }

    /// Forgets `key`'s failures (a successful sign-in).
    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// What signing in needs: the access-token signer, the backoff, a bound on password
/// hashing running at once, and a hash to check against when the email is unknown (so
/// that an unknown address costs as long as a wrong password).
pub struct SignIn {
    pub signer: Arc<Signer>,
    pub throttle: Throttle,
    pub hashing: tokio::sync::Semaphore,
    pub decoy_hash: String,
}

/// Password checks and hashes running at once, each about 19 MiB and tens of
/// milliseconds of one core.
const HASHING_SLOTS: usize = 2;

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
            decoy_hash,
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
    fn the_throttle_lets_free_failures_through_then_doubles_the_wait() {
        let t = Throttle::default();
        for _ in 0..3 {
            t.fail("a", 3);
            assert_eq!(t.wait("a"), None);
        }
        t.fail("a", 3);
        let first = t.wait("a").expect("waits after the 4th failure");
        assert!(first <= Duration::from_secs(1) && first > Duration::from_millis(900));
        t.fail("a", 3);
        let second = t.wait("a").expect("waits");
        assert!(second > Duration::from_millis(1900), "{second:?}");
        assert_eq!(t.wait("b"), None, "keys are apart");
        t.clear("a");
        assert_eq!(t.wait("a"), None);
        // 0 turns it off.
        for _ in 0..10 {
            t.fail("c", 0);
        }
        assert_eq!(t.wait("c"), None);
        // The wait is bounded.
        for _ in 0..40 {
            t.fail("d", 1);
        }
        assert!(t.wait("d").expect("waits") <= MAX_BACKOFF);
    }
}
