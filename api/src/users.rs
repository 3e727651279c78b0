//! Users who sign in: the admin API's shapes for users, org members and the token
//! endpoint (`POST /fn/v1/_admin/auth/token`, password and refresh grants), and the rules
//! an email and a password must follow.

use crate::model::Role;
use serde::{Deserialize, Serialize};

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longer ones too: hashing is deliberately slow, and should stay bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// RFC 5321's limit on an address.
pub const MAX_EMAIL_BYTES: usize = 254;

/// `POST /fn/v1/_admin/users`.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A user's role in one org.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Membership {
    pub org: String,
    pub role: Role,
}

/// A user as the admin API shows one (never the password or its hash).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserInfo {
    pub id: String,
    pub email: String,
    pub created_at: String,
    pub orgs: Vec<Membership>,
}

/// `PUT /fn/v1/_admin/orgs/{org}/members/{email}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMember {
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberInfo {
    pub user_id: String,
    pub email: String,
    pub org: String,
    pub role: Role,
    pub created_at: String,
}

/// `POST /fn/v1/_admin/auth/token`, by `grant_type`.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "grant_type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenRequest {
    /// Signs in: a new sign-in with its refresh token.
    Password { email: String, password: String },
    /// Renews the access token of a sign-in; the refresh token given is spent and a new
    /// one returned.
    RefreshToken { refresh_token: String },
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRequest::Password { email, .. } => f
                .debug_struct("Password")
                .field("email", email)
                .finish_non_exhaustive(),
            TokenRequest::RefreshToken { .. } => f.write_str("RefreshToken"),
        }
    }
}

/// The signed-in user, as the token endpoint names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserRef {
    pub id: String,
    pub email: String,
}

/// The token endpoint's answer (the shape of OAuth 2's, plus who signed in).
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenGranted {
    /// `Authorization: Bearer <access_token>` on the admin and invoke APIs.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds the access token is valid for.
    pub expires_in: u64,
    /// Spent by the next refresh grant, which returns another.
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user: UserRef,
    /// The orgs the user may pick with `X-Reactor-Org`.
    pub orgs: Vec<Membership>,
}

impl std::fmt::Debug for TokenGranted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGranted")
            .field("expires_in", &self.expires_in)
            .field("user", &self.user)
            .field("orgs", &self.orgs)
            .finish_non_exhaustive()
    }
}

/// `POST /fn/v1/_admin/auth/revoke`: ends the sign-in of a refresh token.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRefresh {
    pub refresh_token: String,
}

/// The address as stored and compared: trimmed and lower case. Refuses what cannot be an
/// address (no `@`, spaces or control characters, too long).
pub fn normalize_email(email: &str) -> Result<String, String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= MAX_EMAIL_BYTES
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if valid {
        Ok(email)
    } else {
        Err(format!(
            "{:?} is not an email address (NAME@DOMAIN, at most {MAX_EMAIL_BYTES} bytes)",
            truncate(&email, 64)
        ))
    }
}

/// Refuses a password shorter than [`MIN_PASSWORD_CHARS`] or longer than
/// [`MAX_PASSWORD_BYTES`]; the message never quotes it.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password is too short: at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is too long: at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").as_deref(),
            Ok("ada@example.com")
        );
        for bad in ["", "ada", "@x", "ada@", "a b@x", "a@b@c", &"a".repeat(300)] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_have_bounds_and_are_never_quoted() {
        let err = check_password("hunter2").expect_err("short");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(check_password("correct horse battery").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn token_requests_parse_by_grant_type_and_debug_hides_secrets() {
        let r: TokenRequest = serde_json::from_str(
            r#"{"grant_type":"password","email":"a@b","password":"sekrit-sekrit"}"#,
        )
        .expect("password grant");
        assert!(!format!("{r:?}").contains("sekrit"));
        let r: TokenRequest =
            serde_json::from_str(r#"{"grant_type":"refresh_token","refresh_token":"rrt_x"}"#)
                .expect("refresh grant");
        assert!(matches!(r, TokenRequest::RefreshToken { .. }));
        assert!(
            serde_json::from_str::<TokenRequest>(r#"{"grant_type":"client_credentials"}"#).is_err()
        );
    }
}
