//! Access tokens of signed-in users: short-lived JSON Web Tokens signed with Ed25519
//! (`alg: EdDSA`) by the control plane, verified by every service with the public keys
//! the routing table carries, so a router checks one without asking anybody.
//!
//! They carry who (`sub`, the user id), the sign-in they come from (`sid`) and when they
//! expire; not what the user may do: routers look the user's role in the org up in the
//! table, so removing a member or deleting a user takes effect at the next table version,
//! not when the token expires. API tokens (`rct_...`) hold no `.`, access tokens always
//! two: [`is_access_token`] tells them apart.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The issuer every access token names.
pub const ISSUER: &str = "reactor";
/// Longer values are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated between the signer and a verifier (an `iat` this far ahead).
pub const CLOCK_SKEW_SECS: u64 = 60;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The user id (`usr_...`).
    pub sub: String,
    /// The sign-in (session) id (`ses_...`).
    pub sid: String,
    /// Issued and expires at, in seconds since the Unix epoch.
    pub iat: u64,
    pub exp: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a token was refused; a caller only ever sees `unauthorized`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("not a well-formed access token")]
    Malformed,
    #[error("signed with an unknown key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("issued in the future")]
    NotYetValid,
}

/// Whether `token` has the shape of an access token (three dot-separated parts).
pub fn is_access_token(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// A signing key: its id (`kid`) and its Ed25519 pair.
pub struct Signer {
    kid: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// A new key pair, as PKCS#8 (to be stored sealed).
    pub fn generate_pkcs8() -> Result<Vec<u8>, AccessError> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| AccessError::Malformed)
    }

    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<Self, AccessError> {
        Ok(Self {
            kid: kid.to_string(),
            pair: Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| AccessError::Malformed)?,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The 32-byte public key routers verify with.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, claims: &AccessClaims) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: self.kid.clone(),
        };
        // Serializing these plain structs cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let claims = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let signature = self.pair.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(signature.as_ref()))
    }
}

/// Checks `token`'s signature with the public key its `kid` names (`key` looks it up),
/// its issuer and its lifetime at `now` (seconds since the epoch).
pub fn verify<'k>(
    token: &str,
    key: impl Fn(&str) -> Option<&'k [u8]>,
    now: u64,
) -> Result<AccessClaims, AccessError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AccessError::Malformed);
    }
    let (signed, signature) = token.rsplit_once('.').ok_or(AccessError::Malformed)?;
    let (header, claims) = signed.split_once('.').ok_or(AccessError::Malformed)?;
    let header: Header = B64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(AccessError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(AccessError::Malformed);
    }
    let public = key(&header.kid).ok_or(AccessError::UnknownKey)?;
    let signature = B64.decode(signature).map_err(|_| AccessError::Malformed)?;
    UnparsedPublicKey::new(&ED25519, public)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| AccessError::BadSignature)?;
    let claims: AccessClaims = B64
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice(&c).ok())
        .ok_or(AccessError::Malformed)?;
    if claims.iss != ISSUER {
        return Err(AccessError::Malformed);
    }
    if now >= claims.exp {
        return Err(AccessError::Expired);
    }
    if claims.iat > now + CLOCK_SKEW_SECS {
        return Err(AccessError::NotYetValid);
    }
    Ok(claims)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(kid: &str) -> Signer {
        let pkcs8 = Signer::generate_pkcs8().expect("generate");
        Signer::from_pkcs8(kid, &pkcs8).expect("load")
    }

    fn claims(iat: u64, exp: u64) -> AccessClaims {
        AccessClaims {
            iss: ISSUER.into(),
            sub: "usr_1".into(),
            sid: "ses_1".into(),
            iat,
            exp,
        }
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_only_and_within_its_lifetime() {
        let a = signer("k1");
        let b = signer("k2");
        let token = a.sign(&claims(1000, 1900));
        assert!(is_access_token(&token));
        assert!(!is_access_token("rct_abcdef"));
        let pa = a.public_key();
        let pb = b.public_key();
        let keys = |kid: &str| match kid {
            "k1" => Some(pa.as_slice()),
            "k2" => Some(pb.as_slice()),
            _ => None,
        };
        assert_eq!(verify(&token, keys, 1500), Ok(claims(1000, 1900)));
        assert_eq!(verify(&token, keys, 1900), Err(AccessError::Expired));
        assert_eq!(verify(&token, keys, 900), Err(AccessError::NotYetValid));
        // The same token claiming another key's id fails on the signature.
        let wrong = |kid: &str| (kid == "k1").then_some(pb.as_slice());
        assert_eq!(verify(&token, wrong, 1500), Err(AccessError::BadSignature));
        assert_eq!(verify(&token, |_| None, 1500), Err(AccessError::UnknownKey));
        // Changing the claims (a longer lifetime) breaks the signature.
        let (h, rest) = token.split_once('.').expect("parts");
        let (_, s) = rest.split_once('.').expect("parts");
        let forged = format!(
            "{h}.{}.{s}",
            B64.encode(serde_json::to_vec(&claims(1000, 99_999)).expect("json"))
        );
        assert_eq!(verify(&forged, keys, 1500), Err(AccessError::BadSignature));
        for bad in ["a.b.c", "..", "x", &"a.".repeat(3000)] {
            assert!(verify(bad, keys, 1500).is_err(), "{bad}");
        }
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let header = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let body = B64.encode(serde_json::to_vec(&claims(1, 9_999)).expect("json"));
        let a = signer("k1");
        let pa = a.public_key();
        let token = format!("{header}.{body}.");
        assert_eq!(
            verify(&token, |_| Some(pa.as_slice()), 5),
            Err(AccessError::Malformed)
        );
    }
}
