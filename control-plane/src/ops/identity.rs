//! Identity: the bootstrap org and its admin token, authenticating admin requests (API
//! tokens here, signed-in users' access tokens in `users`), orgs and tokens.

use crate::auth::{self, Caller};
use crate::service::{Bootstrap, ControlPlane, need, now, valid_function_name};
use crate::store::{OrgRecord, TokenRecord};
use reactor_api::model::{OrgCreated, Role, TokenCreated, TokenInfo};
use reactor_api::{ApiError, ErrorCode};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a refused token hash is refused without asking the store.
const BAD_TOKEN_TTL: Duration = Duration::from_secs(30);
/// Refused token hashes remembered at most.
const BAD_TOKENS_MAX: usize = 10_000;

impl ControlPlane {
    /// Ensures the bootstrap org exists and has an admin token: `token` when the operator
    /// gave one, else `reuse` when it is still valid there, else a new one.
    pub async fn bootstrap(
        &self,
        org: &str,
        token: Option<&str>,
        reuse: Option<&str>,
    ) -> Result<Bootstrap, ApiError> {
        if self.store.get_org(org).await?.is_none() {
            let created = self
                .store
                .create_org(&OrgRecord {
                    name: org.to_string(),
                    platform: true,
                    created_at: now(),
                })
                .await;
            // Replicas starting together: another one created it in between.
            if let Err(e) = created
                && self.store.get_org(org).await?.is_none()
            {
                return Err(e.into());
            }
        }
        let valid_here =
            |t: Option<TokenRecord>| t.is_some_and(|t| t.org == org && t.role == Role::Admin);
        if let Some(token) = token {
            let existing = self.store.token_by_hash(&auth::token_hash(token)).await?;
            if existing.is_some() && !valid_here(existing.clone()) {
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "REACTOR_ADMIN_TOKEN belongs to another org or role, not to the admin of {org}"
                    ),
                ));
            }
            if existing.is_none() {
                let inserted = self
                    .insert_token(org, Role::Admin, Some("bootstrap"), token)
                    .await
                    .map(|_| ());
                // Replicas starting together with the same token: another one inserted it.
                let inserted = match inserted {
                    Err(_)
                        if valid_here(
                            self.store.token_by_hash(&auth::token_hash(token)).await?,
                        ) =>
                    {
                        Ok(())
                    }
                    other => other,
                };
                inserted.map_err(|e| {
                    if e.code == ErrorCode::InvalidInput {
                        ApiError::new(
                            ErrorCode::InvalidInput,
                            "REACTOR_ADMIN_TOKEN was revoked; set another one",
                        )
                    } else {
                        e
                    }
                })?;
                self.routing.publish().await?;
            }
            return Ok(Bootstrap {
                org: org.to_string(),
                token: token.to_string(),
                generated: false,
            });
        }
        if let Some(reuse) = reuse
            && valid_here(self.store.token_by_hash(&auth::token_hash(reuse)).await?)
        {
            return Ok(Bootstrap {
                org: org.to_string(),
                token: reuse.to_string(),
                generated: false,
            });
        }
        let token = auth::generate_token();
        self.insert_token(org, Role::Admin, Some("bootstrap"), &token)
            .await?;
        self.routing.publish().await?;
        Ok(Bootstrap {
            org: org.to_string(),
            token,
            generated: true,
        })
    }

    async fn insert_token(
        &self,
        org: &str,
        role: Role,
        name: Option<&str>,
        secret: &str,
    ) -> Result<TokenRecord, ApiError> {
        let record = TokenRecord {
            id: format!("tok_{}", ulid::Ulid::new()),
            org: org.to_string(),
            role,
            name: name.map(str::to_string),
            sha256: auth::token_hash(secret),
            created_at: now(),
        };
        self.store.insert_token(&record).await?;
        // A chosen secret (REACTOR_ADMIN_TOKEN) may have been tried before it existed.
        self.bad_tokens_lock().remove(&record.sha256);
        Ok(record)
    }

    fn bad_tokens_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.bad_tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hash was refused less than [`BAD_TOKEN_TTL`] ago.
    fn known_bad(&self, hash: &str) -> bool {
        let mut bad = self.bad_tokens_lock();
        match bad.get(hash) {
            Some(seen) if seen.elapsed() < BAD_TOKEN_TTL => true,
            Some(_) => {
                bad.remove(hash);
                false
            }
            None => false,
        }
    }

    /// Remembers a refused hash. When full, expired entries go, and all of them unless
    /// that freed half: each sweep is then paid for by half a cache of inserts.
    fn remember_bad(&self, hash: String) {
        let mut bad = self.bad_tokens_lock();
        if bad.len() >= BAD_TOKENS_MAX {
            bad.retain(|_, seen| seen.elapsed() < BAD_TOKEN_TTL);
            if bad.len() >= BAD_TOKENS_MAX / 2 {
                bad.clear();
            }
        }
        bad.insert(hash, Instant::now());
    }

    /// Authenticates an admin request from its bearer token and `X-Reactor-Org`.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        org_header: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let unauthorized =
            || ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required");
        let token = authorization
            .and_then(auth::bearer)
            .ok_or_else(unauthorized)?;
        if reactor_api::access::is_access_token(token) {
            return self.authenticate_access(token, org_header).await;
        }
        // A token refused recently is refused again without a query: repeating a bad
        // token costs the store nothing. Valid tokens are not cached, so that a revoke
        // takes effect at once.
        let hash = auth::token_hash(token);
        if self.known_bad(&hash) {
            return Err(unauthorized());
        }
        let Some(record) = self.store.token_by_hash(&hash).await? else {
            self.remember_bad(hash);
            return Err(unauthorized());
        };
        if let Some(org) = org_header
            && org != record.org
        {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this token belongs to another org than {org:?}"),
            ));
        }
        let platform = self
            .store
            .get_org(&record.org)
            .await?
            .is_some_and(|o| o.platform);
        Ok(Caller {
            org: record.org,
            role: record.role,
            token_id: record.id,
            platform,
            user_id: None,
        })
    }

    pub async fn create_org(&self, caller: &Caller, name: &str) -> Result<OrgCreated, ApiError> {
        need(
            caller,
            caller.role.is_admin() && caller.platform,
            "create orgs (only admins of the platform org can)",
        )?;
        if !valid_function_name(name) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "org name {name:?} is not valid (lowercase letters, digits and '-', starting with a letter, at most 63)"
                ),
            ));
        }
        let created_at = now();
        self.store
            .create_org(&OrgRecord {
                name: name.to_string(),
                platform: false,
                created_at: created_at.clone(),
            })
            .await?;
        let secret = auth::generate_token();
        let token = self
            .insert_token(name, Role::Admin, Some("org admin"), &secret)
            .await?;
        self.routing.publish().await?;
        Ok(OrgCreated {
            name: name.to_string(),
            created_at,
            admin_token: TokenCreated {
                id: token.id,
                org: token.org,
                role: token.role,
                name: token.name,
                token: secret,
            },
        })
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        role: Role,
        name: Option<&str>,
    ) -> Result<TokenCreated, ApiError> {
        need(caller, caller.role.is_admin(), "create tokens")?;
        let quota = self.config.max_tokens_per_org;
        if self.store.list_tokens(&caller.org).await?.len() >= quota {
            return Err(super::functions::quota_exceeded(
                format!(
                    "org {} already has {quota} tokens, its quota: revoke one first, or ask the operator to raise functions.max_tokens_per_org",
                    caller.org
                ),
                "tokens",
                quota,
            ));
        }
        let secret = auth::generate_token();
        let t = self.insert_token(&caller.org, role, name, &secret).await?;
        self.routing.publish().await?;
        Ok(TokenCreated {
            id: t.id,
            org: t.org,
            role: t.role,
            name: t.name,
            token: secret,
        })
    }

    pub async fn list_tokens(&self, caller: &Caller) -> Result<Vec<TokenInfo>, ApiError> {
        need(caller, caller.role.is_admin(), "list tokens")?;
        Ok(self
            .store
            .list_tokens(&caller.org)
            .await?
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                org: t.org,
                role: t.role,
                name: t.name,
                created_at: t.created_at,
            })
            .collect())
    }

    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        need(caller, caller.role.is_admin(), "revoke tokens")?;
        if !self.store.revoke_token(&caller.org, id, &now()).await? {
            return Err(ApiError::new(
                ErrorCode::TokenNotFound,
                format!("token {id} not found"),
            ));
        }
        self.routing.publish().await?;
        Ok(())
    }
}
