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

/// Values shipped in our examples and deployment files: a secret everybody has read is no
/// secret, so a service refuses them at start.
const KNOWN_PLACEHOLDERS: &[&str] = &[
    "dev-internal-token-change-me",
    "rct_dev_admin_token_change_me",
    "reactor-dev-secret-change-me",
    "reactor-dev",
    "base64-32-byte-key",
    "cmVhY3Rvci1kZXYtZGF0YS1rZXktQ0hBTkdFLU1FISE=",
    "internal-token-for-the-split-tests",
];

/// The least entropy an operator-provided secret must carry: 32 bytes.
pub const MIN_SECRET_BITS: f64 = 256.0;

/// How to make a good one, for error messages.
pub const GENERATE_HINT: &str = "generate one with `openssl rand -hex 32`";

/// An estimate of the entropy of `secret` in bits: its length times the bits of the
/// smallest usual alphabet that holds it (hex, base64 or printable ASCII). A heuristic
/// that catches the usual weak choices, not a proof of randomness: few distinct
/// characters, one character dominating, a repeated piece, or (beyond hex) no mix of
/// lower case, upper case and digits all score low.
pub fn estimated_bits(secret: &str) -> f64 {
    // A short lower-case prefix such as `rct_` carries nothing: judge what follows it.
    let secret = match secret.split_once('_') {
        Some((prefix, rest))
            if (1..=8).contains(&prefix.len())
                && prefix.chars().all(|c| c.is_ascii_lowercase())
                && !rest.is_empty() =>
        {
            rest
        }
        _ => secret,
    };
    let chars: Vec<char> = secret.chars().collect();
    if chars.is_empty() {
        return 0.0;
    }
    let hex = chars.iter().all(|c| c.is_ascii_hexdigit());
    let b64 = chars
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_'));
    let alphabet: f64 = if hex {
        16.0
    } else if b64 {
        64.0
    } else {
        95.0
    };
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // Random strings of this length use many symbols; `abababab` does not.
    if distinct.len() < 10 {
        return (distinct.len() as f64).log2().max(0.0) * chars.len() as f64 / 4.0;
    }
    // Random strings spread over their alphabet: no symbol takes a quarter of them, and
    // beyond hex they mix lower case, upper case and digits (a sentence does not).
    let most = distinct
        .iter()
        .map(|d| chars.iter().filter(|c| *c == d).count())
        .max()
        .unwrap_or(0);
    if most * 4 > chars.len() {
        return alphabet.log2() * (chars.len() - most) as f64 / 2.0;
    }
    if !hex {
        let classes = [
            chars.iter().any(|c| c.is_ascii_lowercase()),
            chars.iter().any(|c| c.is_ascii_uppercase()),
            chars.iter().any(|c| c.is_ascii_digit()),
        ];
        if classes.iter().filter(|c| **c).count() < 3 {
            return 26f64.log2() * chars.len() as f64 / 2.0;
        }
    }
    // `0123456789abcdef0123456789abcdef` is worth its first half only.
    let period = (1..=chars.len() / 2)
        .find(|p| chars.len().is_multiple_of(*p) && chars.chunks(*p).all(|c| c == &chars[..*p]))
        .unwrap_or(chars.len());
    alphabet.log2() * period as f64
}

/// Whether `secret` is one of the shipped placeholders or says CHANGE-ME.
pub fn is_placeholder(secret: &str) -> bool {
    let lower = secret.trim().to_ascii_lowercase();
    KNOWN_PLACEHOLDERS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(secret.trim()))
        || ["change-me", "changeme", "change_me"]
            .iter()
            .any(|m| lower.contains(m))
}

/// Refuses a known placeholder and a secret with less than 32 bytes of entropy; `what`
/// names the setting in the error.
pub fn check_secret(what: &str, secret: &str) -> Result<(), String> {
    if is_placeholder(secret) {
        return Err(format!(
            "{what} is a placeholder from an example or a deployment file: {GENERATE_HINT}"
        ));
    }
    let bits = estimated_bits(secret);
    if bits < MIN_SECRET_BITS {
        return Err(format!(
            "{what} is too weak (about {bits:.0} bits; at least {MIN_SECRET_BITS:.0}, 32 random bytes, are needed): {GENERATE_HINT}"
        ));
    }
    Ok(())
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

    #[test]
    fn placeholders_and_weak_secrets_are_refused() {
        for bad in [
            "dev-internal-token-change-me",
            "rct_dev_admin_token_change_me",
            "CHANGE-ME-internal-token",
            "CHANGE-ME",
            "cmVhY3Rvci1kZXYtZGF0YS1rZXktQ0hBTkdFLU1FISE=",
            "internal-token-for-the-split-tests",
            "short",
            "0123456789abcdef0123456789abcdef",
            &"a".repeat(200),
            &"ab".repeat(100),
            &"0123456789abcdef".repeat(8),
            "my-super-secret-internal-token-for-production",
            &format!("{}0123456789", "a".repeat(100)),
        ] {
            let err = check_secret("internal.token", bad).expect_err(bad);
            assert!(err.contains("openssl rand -hex 32"), "{err}");
        }
        for good in [
            "3f1c9a7be2d04856a1c3e5f7092b4d6e8a0c2e4f6b8d0f1a3c5e7092b4d6e8a0",
            "q3XnZ0v9L2mR8tYkWb4sHc7dJf1gPa6eNu5xVoTi2Ey=",
            "rct_Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7dE9f",
            "rct_3f1c9a7be2d04856a1c3e5f7092b4d6e8a0c2e4f6b8d0f1a3c5e7092b4d6e8a0",
        ] {
            check_secret("internal.token", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }
}
