//! API tokens: generated secrets of which only the SHA-256 is stored, and the caller an
//! admin request authenticates as.

use rand::Rng;
use rand::distr::Alphanumeric;
use reactor_api::model::Role;
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "rct_";

/// A fresh token secret.
pub fn generate_token() -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    format!("{TOKEN_PREFIX}{body}")
}

/// What is stored and pushed to routers instead of the secret.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who is calling the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub org: String,
    pub role: Role,
    pub token_id: String,
    /// The caller's org is the platform's (the bootstrap org): it may create orgs.
    pub platform: bool,
}

/// Splits `Bearer <token>`.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_stably() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 44);
        assert_eq!(token_hash("x"), token_hash("x"));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
