//! Users who sign in: accounts (admins of the platform org manage them), org members
//! (admins of the org, or of the platform), the token endpoint's password and refresh
//! grants with their backoff, revoking a sign-in, and authenticating an access token.

use crate::auth::{self, Caller, hash_password, verify_password};
use crate::service::{ControlPlane, need, now};
use crate::store::{MemberRecord, SessionRecord, UserRecord};
use reactor_api::access::{self, AccessClaims};
use reactor_api::model::Role;
use reactor_api::users::{
    CreateUser, MemberInfo, Membership, TokenGranted, TokenRequest, UserInfo, UserRef,
    check_password, normalize_email,
};
use reactor_api::{ApiError, ErrorCode};
use std::net::IpAddr;

fn wrong_credentials() -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, "wrong email or password")
}

fn bad_refresh() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "the refresh token is not valid (expired, revoked, or already used): sign in again",
    )
}

fn user_not_found(email: &str) -> ApiError {
    ApiError::new(ErrorCode::UserNotFound, format!("no user {email}"))
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, message)
}

fn memberships(records: Vec<MemberRecord>) -> Vec<Membership> {
    records
        .into_iter()
        .map(|m| Membership {
            org: m.org,
            role: m.role,
        })
        .collect()
}

fn member_info(m: MemberRecord) -> MemberInfo {
    MemberInfo {
        user_id: m.user_id,
        email: m.email,
        org: m.org,
        role: m.role,
        created_at: m.created_at,
    }
}

impl ControlPlane {
    fn need_platform_admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
        need(
            caller,
            caller.role.is_admin() && caller.platform,
            &format!("{what} (only admins of the platform org can)"),
        )
    }

    /// Admins of `org`, and of the platform org, manage its members.
    async fn need_org_admin(&self, caller: &Caller, org: &str) -> Result<(), ApiError> {
        need(
            caller,
            caller.role.is_admin() && (caller.platform || caller.org == org),
            &format!("manage the members of org {org}"),
        )?;
        if self.store.get_org(org).await?.is_none() {
            return Err(ApiError::new(
                ErrorCode::OrgNotFound,
                format!("org {org} not found"),
            ));
        }
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<UserRecord, ApiError> {
        let email = normalize_email(email).map_err(invalid)?;
        self.store
            .accounts()
            .user_by_email(&email)
            .await?
            .ok_or_else(|| user_not_found(&email))
    }

    /// Runs a password hash or check on the blocking threads, at most `HASHING_SLOTS` at
    /// once.
    async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        /// Counts a waiting request until it stops waiting, however it stops (a client
        /// that goes away drops the future mid-wait).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let waiting = &self.sign_in.hashing_waiting;
        let ahead = waiting.fetch_add(1, Ordering::AcqRel);
        let queued = Waiting(waiting);
        if ahead >= auth::HASHING_QUEUE {
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                "too many sign-ins at once: try again in a second",
            ));
        }
        let slot = self.sign_in.hashing.acquire().await;
        drop(queued);
        let _slot = slot.map_err(|_| ApiError::internal("shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))
    }

    pub async fn create_user(
        &self,
        caller: &Caller,
        req: CreateUser,
    ) -> Result<UserInfo, ApiError> {
        Self::need_platform_admin(caller, "create users")?;
        let email = normalize_email(&req.email).map_err(invalid)?;
        check_password(&req.password).map_err(invalid)?;
        let password = req.password;
        let password_hash = self
            .hashing(move || hash_password(&password))
            .await?
            .map_err(|e| ApiError::internal(format!("hashing the password: {e}")))?;
        let user = UserRecord {
            id: format!("usr_{}", ulid::Ulid::new()),
            email,
            password_hash,
            created_at: now(),
        };
        self.store.accounts().create_user(&user).await?;
        Ok(UserInfo {
            id: user.id,
            email: user.email,
            created_at: user.created_at,
            orgs: Vec::new(),
        })
    }

    pub async fn list_users(&self, caller: &Caller) -> Result<Vec<UserInfo>, ApiError> {
        Self::need_platform_admin(caller, "list users")?;
        let accounts = self.store.accounts();
        let mut orgs: std::collections::HashMap<String, Vec<MemberRecord>> = Default::default();
        for m in accounts.all_memberships().await? {
            orgs.entry(m.user_id.clone()).or_default().push(m);
        }
        Ok(accounts
            .list_users()
            .await?
            .into_iter()
            .map(|u| UserInfo {
                orgs: memberships(orgs.remove(&u.id).unwrap_or_default()),
                id: u.id,
                email: u.email,
                created_at: u.created_at,
            })
            .collect())
    }

    /// Deletes a user, their memberships and sign-ins: their access tokens stop working
    /// at the next routing table version.
    pub async fn delete_user(&self, caller: &Caller, email: &str) -> Result<(), ApiError> {
        Self::need_platform_admin(caller, "delete users")?;
        let user = self.user_by_email(email).await?;
        if caller.user_id.as_deref() == Some(user.id.as_str()) {
            return Err(invalid(
                "you cannot delete yourself: ask another admin of the platform org".into(),
            ));
        }
        if !self.store.accounts().delete_user(&user.id).await? {
            return Err(user_not_found(&user.email));
        }
        self.routing.publish().await?;
        Ok(())
    }

    pub async fn set_member(
        &self,
        caller: &Caller,
        org: &str,
        email: &str,
        role: Role,
    ) -> Result<MemberInfo, ApiError> {
        self.need_org_admin(caller, org).await?;
        let user = self.user_by_email(email).await?;
        self.store
            .accounts()
            .set_member(&user.id, org, role, &now())
            .await?;
        self.routing.publish().await?;
        let member = self
            .store
            .accounts()
            .memberships(&user.id)
            .await?
            .into_iter()
            .find(|m| m.org == org)
            .ok_or_else(|| ApiError::internal("the membership just stored is gone"))?;
        Ok(member_info(member))
    }

    pub async fn remove_member(
        &self,
        caller: &Caller,
        org: &str,
        email: &str,
    ) -> Result<(), ApiError> {
        self.need_org_admin(caller, org).await?;
        let user = self.user_by_email(email).await?;
        if !self.store.accounts().remove_member(&user.id, org).await? {
            return Err(ApiError::new(
                ErrorCode::UserNotFound,
                format!("{} is not a member of org {org}", user.email),
            ));
        }
        self.routing.publish().await?;
        Ok(())
    }

    pub async fn list_members(
        &self,
        caller: &Caller,
        org: &str,
    ) -> Result<Vec<MemberInfo>, ApiError> {
        self.need_org_admin(caller, org).await?;
        Ok(self
            .store
            .accounts()
            .members(org)
            .await?
            .into_iter()
            .map(member_info)
            .collect())
    }

    /// `POST /fn/v1/_admin/auth/token`: signs in with a password, or renews with a
    /// refresh token. `client` is the caller's address (per-address backoff), when known.
    pub async fn grant_token(
        &self,
        req: TokenRequest,
        client: Option<IpAddr>,
    ) -> Result<TokenGranted, ApiError> {
        match req {
            TokenRequest::Password { email, password } => {
                self.password_grant(&email, &password, client).await
            }
            TokenRequest::RefreshToken { refresh_token } => {
                self.refresh_grant(&refresh_token).await
            }
        }
    }

    /// Admits a sign-in attempt under every key (counted as failed until it succeeds), or
    /// refuses it, counting nothing, when a key must wait.
    fn admit(&self, keys: &[(String, u32)]) -> Result<(), ApiError> {
        let throttle = &self.sign_in.throttle;
        for (i, (key, free)) in keys.iter().enumerate() {
            if let Err(wait) = throttle.admit(key, *free) {
                for (admitted, _) in &keys[..i] {
                    throttle.forgive(admitted);
                }
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                return Err(ApiError::new(
                    ErrorCode::TooManyRequests,
                    format!("too many failed sign-ins: try again in {secs} s"),
                )
                .with_detail("retry_after_secs", secs));
            }
        }
        Ok(())
    }

    async fn password_grant(
        &self,
        email: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<TokenGranted, ApiError> {
        // A malformed address cannot name an account: the same answer as a wrong one.
        let email = normalize_email(email).map_err(|_| wrong_credentials())?;
        let auth = &self.config.auth;
        let mut keys = vec![(format!("user:{email}"), auth.failed_signins_per_account)];
        if let Some(ip) = client {
            keys.push((format!("addr:{ip}"), auth.failed_signins_per_address));
        }
        // Counted before the password is looked at, so that guesses sent at once are
        // throttled too; a throttled key learns nothing.
        self.admit(&keys)?;
        let forgive = || {
            for (key, _) in &keys {
                self.sign_in.throttle.forgive(key);
            }
        };
        let user = match self.store.accounts().user_by_email(&email).await {
            Ok(user) => user,
            Err(e) => {
                forgive();
                return Err(e.into());
            }
        };
        let hash = user.as_ref().map_or_else(
            || self.sign_in.decoy_hash.clone(),
            |u| u.password_hash.clone(),
        );
        let given = password.to_string();
        let matches = match self.hashing(move || verify_password(&given, &hash)).await {
            Ok(m) => m,
            Err(e) => {
                forgive();
                return Err(e);
            }
        };
        let Some(user) = user.filter(|_| matches) else {
            tracing::info!(email, client = ?client, "failed sign-in");
            return Err(wrong_credentials());
        };
        self.sign_in.throttle.clear(&keys[0].0);
        for (key, _) in &keys[1..] {
            self.sign_in.throttle.forgive(key);
        }
        let refresh = auth::generate_refresh_token();
        let session = SessionRecord {
            id: format!("ses_{}", ulid::Ulid::new()),
            user_id: user.id.clone(),
            refresh_sha256: auth::token_hash(&refresh),
            created_at: now(),
            expires_at: access::now_secs().saturating_add(self.config.auth.refresh_token_ttl_secs),
            rotated_at: None,
        };
        self.store.accounts().insert_session(&session).await?;
        tracing::info!(user = user.id, session = session.id, "signed in");
        self.granted(&user, &session.id, refresh).await
    }

    async fn refresh_grant(&self, refresh: &str) -> Result<TokenGranted, ApiError> {
        let accounts = self.store.accounts();
        let old = auth::token_hash(refresh);
        let Some(session) = accounts.session_by_refresh(&old).await? else {
            // A refresh token already spent, presented again: someone else holds a copy.
            // The sign-in ends for both (RFC 9700, 4.14.2); unless it was spent moments
            // ago, which is two refreshes racing (or a retry after a lost answer), not theft.
            if let Some(stolen) = accounts.session_by_previous(&old).await?
                && stolen.rotated_at.is_none_or(|at| {
                    access::now_secs().saturating_sub(at)
                        >= self.config.auth.refresh_reuse_grace_secs
                })
                && accounts.revoke_session(&stolen.id, &now()).await?
            {
                tracing::warn!(
                    session = stolen.id,
                    user = stolen.user_id,
                    "a spent refresh token was presented again: sign-in ended"
                );
            }
            return Err(bad_refresh());
        };
        if session.expires_at <= access::now_secs() {
            return Err(bad_refresh());
        }
        let user = accounts
            .get_user(&session.user_id)
            .await?
            .ok_or_else(bad_refresh)?;
        let next = auth::generate_refresh_token();
        let expires_at = access::now_secs().saturating_add(self.config.auth.refresh_token_ttl_secs);
        // Only one of two refreshes racing with the same token gets through.
        if !accounts
            .rotate_session(
                &session.id,
                &old,
                &auth::token_hash(&next),
                expires_at,
                access::now_secs(),
            )
            .await?
        {
            return Err(bad_refresh());
        }
        self.granted(&user, &session.id, next).await
    }

    async fn granted(
        &self,
        user: &UserRecord,
        session_id: &str,
        refresh_token: String,
    ) -> Result<TokenGranted, ApiError> {
        let ttl = self.config.auth.access_token_ttl_secs.max(60);
        let iat = access::now_secs();
        let access_token = self.sign_in.signer.sign(&AccessClaims {
            iss: access::ISSUER.into(),
            sub: user.id.clone(),
            sid: session_id.to_string(),
            iat,
            exp: iat + ttl,
        });
        Ok(TokenGranted {
            access_token,
            token_type: "bearer".into(),
            expires_in: ttl,
            refresh_token,
            refresh_expires_in: self.config.auth.refresh_token_ttl_secs,
            user: UserRef {
                id: user.id.clone(),
                email: user.email.clone(),
            },
            orgs: memberships(self.store.accounts().memberships(&user.id).await?),
        })
    }

    /// Ends the sign-in of `refresh_token`: it cannot be used again, and its access
    /// tokens expire on their own. An unknown token is no error (nothing to end).
    pub async fn revoke_refresh(&self, refresh_token: &str) -> Result<(), ApiError> {
        let accounts = self.store.accounts();
        let hash = auth::token_hash(refresh_token);
        // The token just spent by a refresh racing this sign-out ends its sign-in too.
        let session = match accounts.session_by_refresh(&hash).await? {
            Some(s) => Some(s),
            None => accounts.session_by_previous(&hash).await?,
        };
        if let Some(session) = session {
            accounts.revoke_session(&session.id, &now()).await?;
            tracing::info!(session = session.id, "signed out");
        }
        Ok(())
    }

    /// Every signing key's public half, read from the store at most every 10 s (a token
    /// naming an unknown key costs no query each time).
    async fn signing_keys(&self) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        const KEYS_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);
        {
            let cached = self.sign_in.keys.lock().unwrap_or_else(|p| p.into_inner());
            if cached.1.is_some_and(|at| at.elapsed() < KEYS_REFRESH) {
                return Ok(cached.0.clone());
            }
        }
        let keys: Vec<(String, Vec<u8>)> = self
            .store
            .accounts()
            .signing_keys()
            .await?
            .into_iter()
            .map(|k| (k.id, k.public_key))
            .collect();
        *self.sign_in.keys.lock().unwrap_or_else(|p| p.into_inner()) =
            (keys.clone(), Some(std::time::Instant::now()));
        Ok(keys)
    }

    /// The caller an access token names, in `org_header`'s org (or the user's only one).
    pub(crate) async fn authenticate_access(
        &self,
        token: &str,
        org_header: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let unauthorized =
            || ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required");
        let signer = &self.sign_in.signer;
        let own = signer.public_key();
        let claims = match access::verify(
            token,
            |kid| (kid == signer.kid()).then_some(own.as_slice()),
            access::now_secs(),
        ) {
            Ok(c) => c,
            // Signed by another control plane's key (they share the database).
            Err(access::AccessError::UnknownKey) => {
                let keys = self.signing_keys().await?;
                access::verify(
                    token,
                    |kid| {
                        keys.iter()
                            .find(|(id, _)| id == kid)
                            .map(|(_, key)| key.as_slice())
                    },
                    access::now_secs(),
                )
                .map_err(|_| unauthorized())?
            }
            Err(e) => {
                tracing::debug!(error = %e, "access token refused");
                return Err(unauthorized());
            }
        };
        // Routers cannot know a sign-in was ended; the admin API can, and refuses it.
        if !self.store.accounts().session_active(&claims.sid).await? {
            return Err(unauthorized());
        }
        let member = pick_org(
            self.store.accounts().memberships(&claims.sub).await?,
            org_header,
        )?;
        let platform = self
            .store
            .get_org(&member.org)
            .await?
            .is_some_and(|o| o.platform);
        Ok(Caller {
            org: member.org,
            role: member.role,
            token_id: claims.sid,
            platform,
            user_id: Some(claims.sub),
        })
    }
}

/// The membership a signed-in request acts in: the one `X-Reactor-Org` names, else the
/// user's only one.
fn pick_org(
    members: Vec<MemberRecord>,
    org_header: Option<&str>,
) -> Result<MemberRecord, ApiError> {
    match org_header {
        Some(org) => members.into_iter().find(|m| m.org == org).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Forbidden,
                format!("you are not a member of org {org:?}"),
            )
        }),
        None => {
            let orgs: Vec<String> = members.iter().map(|m| m.org.clone()).collect();
            let mut members = members;
            match (members.pop(), members.is_empty()) {
                (Some(only), true) => Ok(only),
                (None, _) => Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "you are not a member of any org: ask an org admin to add you",
                )),
                _ => Err(invalid(format!(
                    "you are a member of several orgs ({}): name one with X-Reactor-Org",
                    orgs.join(", ")
                ))),
            }
        }
    }
}
