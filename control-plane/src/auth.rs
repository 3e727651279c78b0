//! API tokens: generated secrets of which only the SHA-256 is stored, and the caller an
//! admin request authenticates as.

use rand::Rng;
use rand::distr::Alphanumeric;
use reactor_api::model::Role;

pub const TOKEN_PREFIX: &str = "rct_";

/// A fresh token secret: 43 random alphanumerics, 256 bits.
pub fn generate_token() -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(43)
        .map(char::from)
        .collect();
    format!("{TOKEN_PREFIX}{body}")
}

pub use reactor_api::token::{bearer, token_hash};

/// Who is calling the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub org: String,
    pub role: Role,
    pub token_id: String,
    /// The caller's org is the platform's (the bootstrap org): it may create orgs.
    pub platform: bool,
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
    }
}
