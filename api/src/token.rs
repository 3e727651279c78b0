//! API tokens as every service sees them: `Authorization: Bearer <token>`, stored and
//! pushed to routers only as the SHA-256 (hex) of the secret.

use sha2::{Digest, Sha256};

/// The token of an `Authorization` value `Bearer <token>`.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// What is stored and pushed instead of the secret.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The internal token services share, kept as its SHA-256 and compared by hash, so that
/// the time a check takes says nothing about the token.
#[derive(Clone)]
pub struct InternalToken([u8; 32]);

impl InternalToken {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn matches(&self, given: &[u8]) -> bool {
        Sha256::digest(given).as_slice() == self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_parse_and_hash_stably() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(token_hash("x"), token_hash("x"));
        assert_eq!(token_hash("x").len(), 64);
        let internal = InternalToken::new("secret-secret-secret");
        assert!(internal.matches(b"secret-secret-secret"));
        assert!(!internal.matches(b"secret"));
    }
}
