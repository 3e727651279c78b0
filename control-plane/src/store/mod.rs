//! Metadata: orgs, tokens, functions, deployments and the routing version, behind one
//! [`Store`] interface, implemented once by [`SqlStore`] over sqlx's `Any` driver for
//! both databases: SQLite (the embedded default, `{workdir}/reactor.db`) and PostgreSQL
//! (`functions.database_url`). Each has its own migrations (`migrations/sqlite`,
//! `migrations/postgres`: same tables, native types); queries are written once with `?`
//! placeholders and rewritten to `$n` for PostgreSQL ([`Dialect`]). Booleans are stored as
//! integers in both, so that one decoding serves both. The same suite runs against both.
//!
//! This module owns the records, the errors and the [`Store`] trait; `dialect` what
//! differs between the databases, `sql` the implementation, `suite` the tests.

use crate::secrets::Sealed;
use async_trait::async_trait;
use reactor_api::Runtime;
use reactor_api::model::{DeploymentStatus, Role};

mod dialect;
mod sql;
#[cfg(test)]
mod suite;

pub use dialect::Dialect;
pub use sql::{SqlStore, redact_url};

/// What a unique key protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Org,
    Token,
    Function,
    Deployment,
    Contract,
    User,
    Session,
    SigningKey,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Org => "org",
            Entity::Token => "token",
            Entity::Function => "function",
            Entity::Deployment => "deployment",
            Entity::Contract => "contract",
            Entity::User => "user",
            Entity::Session => "session",
            Entity::SigningKey => "signing key",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} {name} already exists", entity.as_str())]
    AlreadyExists { entity: Entity, name: String },
    #[error("database: {0}")]
    Database(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgRecord {
    pub name: String,
    pub platform: bool,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub org: String,
    pub role: Role,
    pub name: Option<String>,
    pub sha256: String,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionRecord {
    pub org: String,
    pub name: String,
    pub runtime: Runtime,
    pub live_deployment_id: Option<String>,
    pub created_at: String,
    /// The invoke policy set through the admin API (JSON).
    pub policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    pub org: String,
    pub function: String,
    pub status: DeploymentStatus,
    pub error: Option<String>,
    pub sha256: String,
    pub size_bytes: u64,
    pub entrypoint: String,
    pub bundle_key: String,
    pub timeout_ms: u64,
    pub memory_mb: u32,
    /// `concurrency.min_instances` of the manifest.
    pub min_instances: u32,
    /// `concurrency.max_concurrency` of the manifest, when set.
    pub max_concurrency: Option<u32>,
    pub created_at: String,
    /// The invoke policy of the deployment's manifest (JSON).
    pub policy: Option<String>,
    /// The manifest's `calls` (JSON); `None`: any function of the org may be called.
    pub calls: Option<String>,
    /// The manifest's `interceptors` (JSON); `None`: none.
    pub interceptors: Option<String>,
    /// The manifest's `pool`, settled (JSON); `None`: the workers' own settings.
    pub pool: Option<String>,
    /// The manifest's `contract` (JSON); `None`: no schema.
    pub contract: Option<String>,
}

/// A named contract of an org and the function bound to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContractRecord {
    pub org: String,
    /// `NAME@VERSION`.
    pub name: String,
    pub description: Option<String>,
    /// The schemas, as JSON.
    pub input: Option<String>,
    pub output: Option<String>,
    pub validate_output: bool,
    /// The implementing function; `None`: unbound.
    pub function: Option<String>,
    pub created_at: String,
}

/// An env value as stored: plain, or a secret sealed under a data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Secret(Sealed),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvRecord {
    pub key: String,
    pub value: EnvValue,
    pub updated_at: String,
}

/// Where a sealed value is stored (rotation re-seals each in place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRow {
    Function {
        org: String,
        function: String,
        key: String,
    },
    /// A deployment's pinned copy; org and function are the deployment's.
    Deployment {
        deployment_id: String,
        org: String,
        function: String,
        key: String,
    },
}

impl SecretRow {
    /// The org, function and key the value is bound to.
    pub fn binding(&self) -> (&str, &str, &str) {
        match self {
            SecretRow::Function { org, function, key }
            | SecretRow::Deployment {
                org, function, key, ..
            } => (org, function, key),
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn create_org(&self, org: &OrgRecord) -> Result<(), StoreError>;
    async fn get_org(&self, name: &str) -> Result<Option<OrgRecord>, StoreError>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// A token that is not revoked, by the SHA-256 of its secret.
    async fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>, StoreError>;
    async fn list_tokens(&self, org: &str) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes a token of `org`; false when there is none.
    async fn revoke_token(&self, org: &str, id: &str, at: &str) -> Result<bool, StoreError>;

    async fn create_function(&self, f: &FunctionRecord) -> Result<(), StoreError>;
    async fn get_function(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<FunctionRecord>, StoreError>;
    async fn list_functions(&self, org: &str) -> Result<Vec<FunctionRecord>, StoreError>;
    /// Deletes the function and its deployments; false when there is none.
    async fn delete_function(&self, org: &str, name: &str) -> Result<bool, StoreError>;
    async fn set_live(&self, org: &str, name: &str, deployment_id: &str) -> Result<(), StoreError>;

    /// Records a deployment and pins the function's env as it is now.
    async fn insert_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError>;
    async fn get_deployment(
        &self,
        org: &str,
        function: &str,
        id: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError>;
    /// Newest first.
    async fn list_deployments(
        &self,
        org: &str,
        function: &str,
    ) -> Result<Vec<DeploymentRecord>, StoreError>;
    async fn set_deployment_status(
        &self,
        id: &str,
        status: DeploymentStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError>;
    async fn list_materializing(&self) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Deployments garbage collection may remove, oldest first: created before `before`
    /// (RFC 3339, as `created_at`), not live, not materializing, and failed or with at
    /// least `keep_ready` newer ready deployments of their function.
    async fn collectable_deployments(
        &self,
        before: &str,
        keep_ready: u32,
    ) -> Result<Vec<DeploymentRecord>, StoreError>;
    /// Deletes a deployment and its pinned env unless it is live; false when nothing was
    /// deleted.
    async fn delete_deployment(&self, id: &str) -> Result<bool, StoreError>;

    /// Sets (inserts or replaces) one env value of a function.
    async fn set_env(&self, org: &str, function: &str, e: &EnvRecord) -> Result<(), StoreError>;
    /// The function's env, by key.
    async fn list_env(&self, org: &str, function: &str) -> Result<Vec<EnvRecord>, StoreError>;
    /// False when the key was not set.
    async fn delete_env(&self, org: &str, function: &str, key: &str) -> Result<bool, StoreError>;
    /// The env a deployment pinned when it was uploaded, by key.
    async fn deployment_env(&self, deployment_id: &str) -> Result<Vec<EnvRecord>, StoreError>;
    /// Every sealed value, current and pinned.
    async fn secrets(&self) -> Result<Vec<(SecretRow, Sealed)>, StoreError>;
    /// Replaces a sealed value if it is still `old` (its key and nonce: a value set again
    /// since, under any key, is left alone).
    async fn replace_secret(
        &self,
        row: &SecretRow,
        old: &Sealed,
        sealed: &Sealed,
    ) -> Result<bool, StoreError>;
    /// Sets or clears the function's invoke policy; false when there is no such function.
    async fn set_function_policy(
        &self,
        org: &str,
        function: &str,
        policy: Option<&str>,
    ) -> Result<bool, StoreError>;

    async fn create_contract(&self, c: &ContractRecord) -> Result<(), StoreError>;
    async fn get_contract(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<ContractRecord>, StoreError>;
    /// The org's contracts, by name.
    async fn list_contracts(&self, org: &str) -> Result<Vec<ContractRecord>, StoreError>;
    async fn delete_contract(&self, org: &str, name: &str) -> Result<bool, StoreError>;
    /// Binds the contract to `function` (`None`: unbinds it); false when there is none.
    async fn bind_contract(
        &self,
        org: &str,
        name: &str,
        function: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Every bound contract of every org (for the routing table).
    async fn bound_contracts(&self) -> Result<Vec<ContractRecord>, StoreError>;

    /// Users, their memberships and sign-ins, and the keys that sign access tokens.
    fn accounts(&self) -> &dyn Accounts;

    /// Increments and returns the routing table's version (on PostgreSQL, and tells every
    /// process listening: [`Store::listen_routing`]).
    async fn next_routing_version(&self) -> Result<u64, StoreError>;
    /// Waits for, then holds until dropped, the lock of function `name` of `org` across
    /// every process on this database: promotes, rollbacks, deletes and collection of
    /// one function run one at a time wherever they were asked. `None` where the store
    /// has no such lock (a SQLite file has one control plane; its process lock serves).
    async fn lock_function(&self, org: &str, name: &str) -> Result<Option<HeldLock>, StoreError> {
        let _ = (org, name);
        Ok(None)
    }
    /// Records (or renews) a worker's registration in the registry every control plane
    /// on this database reads: refused when the id is live with another secret. `None`
    /// where the store has no such registry (SQLite: its one process keeps its workers).
    async fn put_worker(
        &self,
        worker: &WorkerRow,
        ttl: std::time::Duration,
    ) -> Result<Option<PutWorker>, StoreError> {
        let _ = (worker, ttl);
        Ok(None)
    }
    /// A heartbeat of worker `id` registered with `secret_sha256`: whether it is known.
    async fn touch_worker(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<Option<bool>, StoreError> {
        let _ = (id, secret_sha256);
        Ok(None)
    }
    /// Removes worker `id` registered with `secret_sha256`: whether it was there.
    async fn remove_worker(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<Option<bool>, StoreError> {
        let _ = (id, secret_sha256);
        Ok(None)
    }
    /// The workers heard from within `ttl` (by the database's clock).
    async fn live_workers(
        &self,
        ttl: std::time::Duration,
    ) -> Result<Option<Vec<WorkerRow>>, StoreError> {
        let _ = ttl;
        Ok(None)
    }
    /// Takes lease `name` for `holder` (or renews it) for `ttl` by the database's
    /// clock: whether `holder` holds it now. `None` where the store has no leases (one
    /// control plane per SQLite file: it holds them all).
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<bool>, StoreError> {
        let _ = (name, holder, ttl);
        Ok(None)
    }
    /// Gives up lease `name` if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _ = (name, holder);
        Ok(())
    }
    /// The routing table's version as it is now, when this store can say: other control
    /// planes on the same database may have moved it.
    async fn routing_version(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// The versions any process on this database publishes, as they are published (on
    /// PostgreSQL, by LISTEN); `None` where the store has no such feed.
    async fn listen_routing(&self) -> Option<tokio::sync::mpsc::Receiver<u64>> {
        None
    }
    /// Every function with its live deployment, and every valid token.
    async fn routing_snapshot(
        &self,
    ) -> Result<
        (
            Vec<(FunctionRecord, Option<DeploymentRecord>)>,
            Vec<TokenRecord>,
        ),
        StoreError,
    >;
}

/// A registered worker, as the shared registry keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    pub id: String,
    pub runtime: String,
    pub url: String,
    /// Hex SHA-256 of the secret it registered with.
    pub secret_sha256: String,
}

/// What [`Store::put_worker`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutWorker {
    Put,
    /// The id is live with another secret.
    Taken,
}

/// A lock held in the database, released when dropped.
pub type HeldLock = Box<dyn Send + Sync>;

/// A user who signs in with an email (stored lower case) and a password.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    /// The argon2id PHC string.
    pub password_hash: String,
    pub created_at: String,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// A user's role in an org.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub user_id: String,
    pub email: String,
    pub org: String,
    pub role: Role,
    pub created_at: String,
}

/// A sign-in: the refresh token that renews its access tokens, as its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub refresh_sha256: String,
    pub created_at: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    /// When its refresh token was last replaced (seconds since the epoch); none: never.
    pub rotated_at: Option<u64>,
}

/// An Ed25519 key that signs access tokens: the public half in clear, the PKCS#8 sealed.
#[derive(Clone, Debug)]
pub struct SigningKeyRecord {
    pub id: String,
    pub public_key: Vec<u8>,
    pub private: Sealed,
    pub created_at: String,
}

#[async_trait]
pub trait Accounts: Send + Sync + 'static {
    /// `AlreadyExists` (entity `User`) when the email is taken.
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StoreError>;
    /// By email.
    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    /// Deletes the user with their memberships and sign-ins; false when there is none.
    async fn delete_user(&self, id: &str) -> Result<bool, StoreError>;

    /// Adds the user to `org` with `role`, or changes their role there.
    async fn set_member(
        &self,
        user_id: &str,
        org: &str,
        role: Role,
        at: &str,
    ) -> Result<(), StoreError>;
    /// False when the user was not a member.
    async fn remove_member(&self, user_id: &str, org: &str) -> Result<bool, StoreError>;
    /// The members of `org`, by email.
    async fn members(&self, org: &str) -> Result<Vec<MemberRecord>, StoreError>;
    /// The orgs of a user, by org.
    async fn memberships(&self, user_id: &str) -> Result<Vec<MemberRecord>, StoreError>;
    /// Every membership (for the routing table).
    async fn all_memberships(&self) -> Result<Vec<MemberRecord>, StoreError>;

    async fn insert_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// The sign-in whose refresh token hashes to `sha256`, unless revoked.
    async fn session_by_refresh(&self, sha256: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Replaces the refresh token of a sign-in that still holds `old_sha256` (false when
    /// another refresh got there first, or it was revoked).
    async fn rotate_session(
        &self,
        id: &str,
        old_sha256: &str,
        new_sha256: &str,
        expires_at: u64,
        at: u64,
    ) -> Result<bool, StoreError>;
    /// False when there is no such sign-in left to revoke.
    async fn revoke_session(&self, id: &str, at: &str) -> Result<bool, StoreError>;
    /// The sign-in whose refresh token was rotated away from `sha256` (revoked or not).
    async fn session_by_previous(&self, sha256: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Whether the sign-in exists and is not revoked.
    async fn session_active(&self, id: &str) -> Result<bool, StoreError>;

    /// Oldest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError>;
}
