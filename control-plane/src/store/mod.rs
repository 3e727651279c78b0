//! Metadata: orgs, tokens, functions, deployments and the routing version, behind one
//! [`Store`] interface, implemented once by [`SqlStore`] over sqlx's `Any` driver for
//! both databases: SQLite (the embedded default, `{workdir}/reactor.db`) and PostgreSQL
//! (`functions.database_url`). Each has its own migrations (`migrations/sqlite`,
//! `migrations/postgres`: same tables, native types); queries are written once with `?`
//! placeholders and rewritten to `$n` for PostgreSQL. Booleans are stored as integers
//! in both, so that one decoding serves both. The same suite runs against both.

use crate::secrets::Sealed;
use async_trait::async_trait;
use reactor_api::Runtime;
use reactor_api::model::{DeploymentStatus, Role};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What a unique key protects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Org,
    Token,
    Function,
    Deployment,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Org => "org",
            Entity::Token => "token",
            Entity::Function => "function",
            Entity::Deployment => "deployment",
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

/// The one place where database errors become store errors.
fn map_db_error(entity: Entity, name: &str) -> impl FnOnce(sqlx::Error) -> StoreError + '_ {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists {
            entity,
            name: name.to_string(),
        },
        _ => StoreError::Database(e.to_string()),
    }
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
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
    /// Replaces a sealed value if it is still sealed under `old_key_id`.
    async fn replace_secret(
        &self,
        row: &SecretRow,
        old_key_id: &str,
        sealed: &Sealed,
    ) -> Result<bool, StoreError>;
    /// Sets or clears the function's invoke policy; false when there is no such function.
    async fn set_function_policy(
        &self,
        org: &str,
        function: &str,
        policy: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Increments and returns the routing table's version.
    async fn next_routing_version(&self) -> Result<u64, StoreError>;
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

/// Which SQL database a [`SqlStore`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of a database URL (`sqlite:` or `postgres:`/`postgresql:`).
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// A query as the dialect wants it: `?` placeholders become `$1, $2, ...` for
/// PostgreSQL. Our queries hold no `?` inside string literals.
fn rewrite(dialect: Dialect, query: &str) -> String {
    match dialect {
        Dialect::Sqlite => query.to_string(),
        Dialect::Postgres => {
            let mut out = String::with_capacity(query.len() + 16);
            let mut n = 0;
            for c in query.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// Rewritten queries, kept for the life of the process: the set of queries is fixed
/// (built from constants), so this holds a few dozen strings.
fn interned(dialect: Dialect, query: &str) -> &'static str {
    type Cache = Mutex<HashMap<(Dialect, String), &'static str>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = match cache.lock() {
        Ok(map) => map,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(q) = map.get(&(dialect, query.to_string())) {
        return q;
    }
    let q: &'static str = Box::leak(rewrite(dialect, query).into_boxed_str());
    map.insert((dialect, query.to_string()), q);
    q
}

/// The metadata store on SQLite or PostgreSQL.
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl SqlStore {
    /// Opens `database_url` (`postgres://...`, or `sqlite://...`) and runs the migrations.
    pub async fn open_url(database_url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(database_url).ok_or_else(|| {
            StoreError::Database(format!(
                "database_url must start with postgres://, postgresql:// or sqlite: (got {:?})",
                redact_url(database_url)
            ))
        })?;
        let mut options = AnyPoolOptions::new()
            .max_connections(match dialect {
                Dialect::Sqlite => 4,
                Dialect::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(10));
        if dialect == Dialect::Sqlite {
            // WAL lets readers run beside the writer; foreign keys and the busy timeout
            // are on by default in sqlx's SQLite driver.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(database_url).await.map_err(|e| {
            StoreError::Database(format!("connecting to {}: {e}", redact_url(database_url)))
        })?;
        let migrator = match dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await.map_err(|e| {
            StoreError::Database(format!("migrating {}: {e}", redact_url(database_url)))
        })?;
        Ok(Self { pool, dialect })
    }

    /// Opens (creating if needed) the SQLite database file and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_url(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn sql(&self, query: &str) -> &'static str {
        interned(self.dialect, query)
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

fn token_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let role: String = row.try_get("role").map_err(db)?;
    Ok(TokenRecord {
        id: row.try_get("id").map_err(db)?,
        org: row.try_get("org").map_err(db)?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("token role {role:?}")))?,
        name: row.try_get("name").map_err(db)?,
        sha256: row.try_get("sha256").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn function_row(row: &AnyRow) -> Result<FunctionRecord, StoreError> {
    let runtime: String = row.try_get("runtime").map_err(db)?;
    Ok(FunctionRecord {
        org: row.try_get("org").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        runtime: Runtime::from_str(&runtime).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        live_deployment_id: row.try_get("live_deployment_id").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        policy: row.try_get("policy").map_err(db)?,
    })
}

fn deployment_row(row: &AnyRow) -> Result<DeploymentRecord, StoreError> {
    let status: String = row.try_get("status").map_err(db)?;
    let size: i64 = row.try_get("size_bytes").map_err(db)?;
    let timeout: i64 = row.try_get("timeout_ms").map_err(db)?;
    let memory: i64 = row.try_get("memory_mb").map_err(db)?;
    let min_instances: i64 = row.try_get("min_instances").map_err(db)?;
    let max_concurrency: Option<i64> = row.try_get("max_concurrency").map_err(db)?;
    Ok(DeploymentRecord {
        id: row.try_get("id").map_err(db)?,
        org: row.try_get("org").map_err(db)?,
        function: row.try_get("function").map_err(db)?,
        status: DeploymentStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("deployment status {status:?}")))?,
        error: row.try_get("error").map_err(db)?,
        sha256: row.try_get("sha256").map_err(db)?,
        size_bytes: size as u64,
        entrypoint: row.try_get("entrypoint").map_err(db)?,
        bundle_key: row.try_get("bundle_key").map_err(db)?,
        timeout_ms: timeout as u64,
        memory_mb: memory as u32,
        min_instances: min_instances as u32,
        max_concurrency: max_concurrency.map(|c| c as u32),
        created_at: row.try_get("created_at").map_err(db)?,
        policy: row.try_get("policy").map_err(db)?,
    })
}

fn env_row(row: &AnyRow) -> Result<EnvRecord, StoreError> {
    let key: String = row.try_get("key").map_err(db)?;
    let secret = row.try_get::<i64, _>("secret").map_err(db)? != 0;
    let value = if secret {
        let corrupt = || StoreError::Corrupt(format!("secret {key} without its ciphertext"));
        EnvValue::Secret(Sealed {
            key_id: row
                .try_get::<Option<String>, _>("key_id")
                .map_err(db)?
                .ok_or_else(corrupt)?,
            nonce: row
                .try_get::<Option<Vec<u8>>, _>("nonce")
                .map_err(db)?
                .ok_or_else(corrupt)?,
            ciphertext: row
                .try_get::<Option<Vec<u8>>, _>("ciphertext")
                .map_err(db)?
                .ok_or_else(corrupt)?,
        })
    } else {
        EnvValue::Plain(
            row.try_get::<Option<String>, _>("value")
                .map_err(db)?
                .unwrap_or_default(),
        )
    };
    Ok(EnvRecord {
        key,
        value,
        updated_at: row.try_get("updated_at").map_err(db)?,
    })
}

const DEPLOYMENT_COLUMNS: &str = "id, org, function, status, error, sha256, size_bytes, entrypoint, bundle_key, timeout_ms, memory_mb, min_instances, max_concurrency, created_at, policy";

#[async_trait]
impl Store for SqlStore {
    async fn create_org(&self, org: &OrgRecord) -> Result<(), StoreError> {
        sqlx::query(self.sql("INSERT INTO orgs (name, platform, created_at) VALUES (?, ?, ?)"))
            .bind(&org.name)
            .bind(i64::from(org.platform))
            .bind(&org.created_at)
            .execute(&self.pool)
            .await
            .map_err(map_db_error(Entity::Org, &org.name))?;
        Ok(())
    }

    async fn get_org(&self, name: &str) -> Result<Option<OrgRecord>, StoreError> {
        let row =
            sqlx::query(self.sql("SELECT name, platform, created_at FROM orgs WHERE name = ?"))
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        row.map(|r| {
            Ok(OrgRecord {
                name: r.try_get("name").map_err(db)?,
                platform: r.try_get::<i64, _>("platform").map_err(db)? != 0,
                created_at: r.try_get("created_at").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        sqlx::query(self.sql("INSERT INTO tokens (id, org, role, name, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?)"))
            .bind(&t.id)
            .bind(&t.org)
            .bind(t.role.as_str())
            .bind(&t.name)
            .bind(&t.sha256)
            .bind(&t.created_at)
            .execute(&self.pool)
            .await
            .map_err(map_db_error(Entity::Token, &t.id))?;
        Ok(())
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(self.sql("SELECT id, org, role, name, sha256, created_at FROM tokens WHERE sha256 = ? AND revoked_at IS NULL"))
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(token_row).transpose()
    }

    async fn list_tokens(&self, org: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(self.sql("SELECT id, org, role, name, sha256, created_at FROM tokens WHERE org = ? AND revoked_at IS NULL ORDER BY created_at, id"))
            .bind(org)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(token_row).collect()
    }

    async fn revoke_token(&self, org: &str, id: &str, at: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(self.sql(
            "UPDATE tokens SET revoked_at = ? WHERE org = ? AND id = ? AND revoked_at IS NULL",
        ))
        .bind(at)
        .bind(org)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn create_function(&self, f: &FunctionRecord) -> Result<(), StoreError> {
        sqlx::query(self.sql("INSERT INTO functions (org, name, runtime, live_deployment_id, created_at, policy) VALUES (?, ?, ?, NULL, ?, ?)"))
            .bind(&f.org)
            .bind(&f.name)
            .bind(f.runtime.as_str())
            .bind(&f.created_at)
            .bind(&f.policy)
            .execute(&self.pool)
            .await
            .map_err(map_db_error(Entity::Function, &f.name))?;
        Ok(())
    }

    async fn get_function(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        let row = sqlx::query(self.sql("SELECT org, name, runtime, live_deployment_id, created_at, policy FROM functions WHERE org = ? AND name = ?"))
            .bind(org)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(function_row).transpose()
    }

    async fn list_functions(&self, org: &str) -> Result<Vec<FunctionRecord>, StoreError> {
        let rows = sqlx::query(self.sql("SELECT org, name, runtime, live_deployment_id, created_at, policy FROM functions WHERE org = ? ORDER BY name"))
            .bind(org)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(function_row).collect()
    }

    async fn delete_function(&self, org: &str, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(self.sql("DELETE FROM deployments WHERE org = ? AND function = ?"))
            .bind(org)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let done = sqlx::query(self.sql("DELETE FROM functions WHERE org = ? AND name = ?"))
            .bind(org)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_live(&self, org: &str, name: &str, deployment_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            self.sql("UPDATE functions SET live_deployment_id = ? WHERE org = ? AND name = ?"),
        )
        .bind(deployment_id)
        .bind(org)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn insert_deployment(&self, d: &DeploymentRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(self.sql("INSERT INTO deployments (id, org, function, status, error, sha256, size_bytes, entrypoint, bundle_key, timeout_ms, memory_mb, min_instances, max_concurrency, created_at, policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&d.id)
            .bind(&d.org)
            .bind(&d.function)
            .bind(d.status.as_str())
            .bind(&d.error)
            .bind(&d.sha256)
            .bind(d.size_bytes as i64)
            .bind(&d.entrypoint)
            .bind(&d.bundle_key)
            .bind(d.timeout_ms as i64)
            .bind(d.memory_mb as i64)
            .bind(d.min_instances as i64)
            .bind(d.max_concurrency.map(i64::from))
            .bind(&d.created_at)
            .bind(&d.policy)
            .execute(&mut *tx)
            .await
            .map_err(map_db_error(Entity::Deployment, &d.id))?;
        sqlx::query(self.sql("INSERT INTO deployment_env (deployment_id, key, secret, value, key_id, nonce, ciphertext) SELECT ?, key, secret, value, key_id, nonce, ciphertext FROM env_vars WHERE org = ? AND function = ?"))
            .bind(&d.id)
            .bind(&d.org)
            .bind(&d.function)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn set_env(&self, org: &str, function: &str, e: &EnvRecord) -> Result<(), StoreError> {
        let (secret, value, key_id, nonce, ciphertext) = match &e.value {
            EnvValue::Plain(v) => (0_i64, Some(v.as_str()), None, None, None),
            EnvValue::Secret(s) => (
                1_i64,
                None,
                Some(s.key_id.as_str()),
                Some(s.nonce.as_slice()),
                Some(s.ciphertext.as_slice()),
            ),
        };
        sqlx::query(self.sql("INSERT INTO env_vars (org, function, key, secret, value, key_id, nonce, ciphertext, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (org, function, key) DO UPDATE SET secret = excluded.secret, value = excluded.value, key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at"))
            .bind(org)
            .bind(function)
            .bind(&e.key)
            .bind(secret)
            .bind(value)
            .bind(key_id)
            .bind(nonce)
            .bind(ciphertext)
            .bind(&e.updated_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn list_env(&self, org: &str, function: &str) -> Result<Vec<EnvRecord>, StoreError> {
        let rows = sqlx::query(self.sql("SELECT key, secret, value, key_id, nonce, ciphertext, updated_at FROM env_vars WHERE org = ? AND function = ? ORDER BY key"))
            .bind(org)
            .bind(function)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(env_row).collect()
    }

    async fn delete_env(&self, org: &str, function: &str, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            self.sql("DELETE FROM env_vars WHERE org = ? AND function = ? AND key = ?"),
        )
        .bind(org)
        .bind(function)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn deployment_env(&self, deployment_id: &str) -> Result<Vec<EnvRecord>, StoreError> {
        let rows = sqlx::query(self.sql("SELECT e.key, e.secret, e.value, e.key_id, e.nonce, e.ciphertext, d.created_at AS updated_at FROM deployment_env e JOIN deployments d ON d.id = e.deployment_id WHERE e.deployment_id = ? ORDER BY e.key"))
            .bind(deployment_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(env_row).collect()
    }

    async fn secrets(&self) -> Result<Vec<(SecretRow, Sealed)>, StoreError> {
        let sealed = |row: &AnyRow| -> Result<Sealed, StoreError> {
            match env_row(row)?.value {
                EnvValue::Secret(s) => Ok(s),
                EnvValue::Plain(_) => {
                    Err(StoreError::Corrupt("a secret row without a seal".into()))
                }
            }
        };
        let mut out = Vec::new();
        let rows = sqlx::query(self.sql("SELECT org, function, key, secret, value, key_id, nonce, ciphertext, updated_at FROM env_vars WHERE secret = 1"))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        for row in &rows {
            out.push((
                SecretRow::Function {
                    org: row.try_get("org").map_err(db)?,
                    function: row.try_get("function").map_err(db)?,
                    key: row.try_get("key").map_err(db)?,
                },
                sealed(row)?,
            ));
        }
        let rows = sqlx::query(self.sql("SELECT e.deployment_id, d.org, d.function, e.key, e.secret, e.value, e.key_id, e.nonce, e.ciphertext, d.created_at AS updated_at FROM deployment_env e JOIN deployments d ON d.id = e.deployment_id WHERE e.secret = 1"))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        for row in &rows {
            out.push((
                SecretRow::Deployment {
                    deployment_id: row.try_get("deployment_id").map_err(db)?,
                    org: row.try_get("org").map_err(db)?,
                    function: row.try_get("function").map_err(db)?,
                    key: row.try_get("key").map_err(db)?,
                },
                sealed(row)?,
            ));
        }
        Ok(out)
    }

    async fn replace_secret(
        &self,
        row: &SecretRow,
        old_key_id: &str,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let q = match row {
            SecretRow::Function { org, function, key } => sqlx::query(self.sql("UPDATE env_vars SET key_id = ?, nonce = ?, ciphertext = ? WHERE org = ? AND function = ? AND key = ? AND key_id = ?"))
                .bind(&sealed.key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(org)
                .bind(function)
                .bind(key),
            SecretRow::Deployment { deployment_id, key, .. } => sqlx::query(self.sql("UPDATE deployment_env SET key_id = ?, nonce = ?, ciphertext = ? WHERE deployment_id = ? AND key = ? AND key_id = ?"))
                .bind(&sealed.key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(deployment_id)
                .bind(key),
        };
        let done = q.bind(old_key_id).execute(&self.pool).await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_function_policy(
        &self,
        org: &str,
        function: &str,
        policy: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query(self.sql("UPDATE functions SET policy = ? WHERE org = ? AND name = ?"))
                .bind(policy)
                .bind(org)
                .bind(function)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_deployment(
        &self,
        org: &str,
        function: &str,
        id: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        let row = sqlx::query(self.sql(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE org = ? AND function = ? AND id = ?"
        )))
        .bind(org)
        .bind(function)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(deployment_row).transpose()
    }

    async fn list_deployments(
        &self,
        org: &str,
        function: &str,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query(self.sql(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE org = ? AND function = ? ORDER BY seq DESC")))
            .bind(org)
            .bind(function)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(deployment_row).collect()
    }

    async fn set_deployment_status(
        &self,
        id: &str,
        status: DeploymentStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(self.sql("UPDATE deployments SET status = ?, error = ? WHERE id = ?"))
            .bind(status.as_str())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn list_materializing(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let rows = sqlx::query(self.sql(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE status = 'materializing' ORDER BY seq")))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(deployment_row).collect()
    }

    async fn next_routing_version(&self) -> Result<u64, StoreError> {
        let row = sqlx::query(self.sql(
            "UPDATE routing_version SET version = version + 1 WHERE id = 1 RETURNING version",
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let v: i64 = row.try_get("version").map_err(db)?;
        Ok(v as u64)
    }

    async fn routing_snapshot(
        &self,
    ) -> Result<
        (
            Vec<(FunctionRecord, Option<DeploymentRecord>)>,
            Vec<TokenRecord>,
        ),
        StoreError,
    > {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let rows = sqlx::query(self.sql("SELECT org, name, runtime, live_deployment_id, created_at, policy FROM functions ORDER BY org, name"))
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let live_rows = sqlx::query(self.sql(&format!(
            "SELECT {} FROM deployments d JOIN functions f ON f.live_deployment_id = d.id",
            DEPLOYMENT_COLUMNS
                .split(", ")
                .map(|c| format!("d.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let token_rows = sqlx::query(self.sql(
            "SELECT id, org, role, name, sha256, created_at FROM tokens WHERE revoked_at IS NULL",
        ))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut live: std::collections::HashMap<String, DeploymentRecord> =
            std::collections::HashMap::new();
        for row in &live_rows {
            let d = deployment_row(row)?;
            live.insert(d.id.clone(), d);
        }
        let mut functions = Vec::with_capacity(rows.len());
        for row in &rows {
            let f = function_row(row)?;
            let d = f.live_deployment_id.as_ref().and_then(|id| live.remove(id));
            functions.push((f, d));
        }
        let tokens = token_rows.iter().map(token_row).collect::<Result<_, _>>()?;
        Ok((functions, tokens))
    }
}

/// The store suite: every backend must pass it (SQLite here; PostgreSQL will call it too).
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    fn org(name: &str) -> OrgRecord {
        OrgRecord {
            name: name.into(),
            platform: false,
            created_at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    fn token(id: &str, org: &str, sha: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            org: org.into(),
            role: Role::Developer,
            name: None,
            sha256: sha.into(),
            created_at: "t".into(),
        }
    }

    fn function(org: &str, name: &str) -> FunctionRecord {
        FunctionRecord {
            org: org.into(),
            name: name.into(),
            runtime: Runtime::Wasm,
            live_deployment_id: None,
            created_at: "t".into(),
            policy: None,
        }
    }

    fn deployment(id: &str, org: &str, f: &str) -> DeploymentRecord {
        DeploymentRecord {
            id: id.into(),
            org: org.into(),
            function: f.into(),
            status: DeploymentStatus::Materializing,
            error: None,
            sha256: "ab".repeat(32),
            size_bytes: 42,
            entrypoint: "a.wasm".into(),
            bundle_key: format!("bundles/{org}/{f}/{id}.tar.gz"),
            timeout_ms: 30_000,
            memory_mb: 128,
            min_instances: 1,
            max_concurrency: Some(50),
            created_at: "t".into(),
            policy: None,
        }
    }

    fn sealed(key_id: &str, byte: u8) -> Sealed {
        Sealed {
            key_id: key_id.into(),
            nonce: vec![byte; 12],
            ciphertext: vec![byte; 20],
        }
    }

    /// Env values, their pinning by deployments, re-sealing and policies.
    async fn env_and_policies(store: &dyn Store) {
        store.create_org(&org("envs")).await.expect("org");
        store
            .create_function(&function("envs", "f"))
            .await
            .expect("function");
        let plain = EnvRecord {
            key: "PUBLIC".into(),
            value: EnvValue::Plain("pk_1".into()),
            updated_at: "t1".into(),
        };
        let secret = EnvRecord {
            key: "SECRET".into(),
            value: EnvValue::Secret(sealed("dk_a", 1)),
            updated_at: "t1".into(),
        };
        store.set_env("envs", "f", &plain).await.expect("set");
        store.set_env("envs", "f", &secret).await.expect("set");
        assert_eq!(
            store.list_env("envs", "f").await.expect("list"),
            vec![plain.clone(), secret.clone()]
        );
        // The deployment pins the env as it is now; later changes do not reach it.
        store
            .insert_deployment(&deployment("dep_env1", "envs", "f"))
            .await
            .expect("deployment");
        let changed = EnvRecord {
            value: EnvValue::Plain("pk_2".into()),
            updated_at: "t2".into(),
            ..plain.clone()
        };
        store.set_env("envs", "f", &changed).await.expect("replace");
        assert!(
            store
                .delete_env("envs", "f", "SECRET")
                .await
                .expect("delete")
        );
        assert!(
            !store
                .delete_env("envs", "f", "SECRET")
                .await
                .expect("delete")
        );
        assert_eq!(
            store.list_env("envs", "f").await.expect("list"),
            vec![changed]
        );
        let pinned = store.deployment_env("dep_env1").await.expect("pinned");
        assert_eq!(pinned.len(), 2);
        assert_eq!(pinned[0].value, EnvValue::Plain("pk_1".into()));
        assert_eq!(pinned[1].value, EnvValue::Secret(sealed("dk_a", 1)));
        // Rotation sees the pinned secret and replaces it only under the old key.
        let all = store.secrets().await.expect("secrets");
        assert_eq!(all.len(), 1);
        let (row, old) = &all[0];
        assert_eq!(row.binding(), ("envs", "f", "SECRET"));
        assert!(
            store
                .replace_secret(row, &old.key_id, &sealed("dk_b", 2))
                .await
                .expect("replace")
        );
        assert!(
            !store
                .replace_secret(row, &old.key_id, &sealed("dk_b", 3))
                .await
                .expect("replace")
        );
        assert_eq!(
            store.deployment_env("dep_env1").await.expect("pinned")[1].value,
            EnvValue::Secret(sealed("dk_b", 2))
        );
        // Policies.
        assert!(
            store
                .set_function_policy("envs", "f", Some("{}"))
                .await
                .expect("policy")
        );
        assert!(
            !store
                .set_function_policy("envs", "nope", Some("{}"))
                .await
                .expect("policy")
        );
        assert_eq!(
            store
                .get_function("envs", "f")
                .await
                .expect("get")
                .and_then(|f| f.policy),
            Some("{}".into())
        );
        // Deleting the function takes its env and pinned copies with it.
        assert!(store.delete_function("envs", "f").await.expect("delete"));
        assert!(store.secrets().await.expect("secrets").is_empty());
        assert!(
            store
                .deployment_env("dep_env1")
                .await
                .expect("pinned")
                .is_empty()
        );
    }

    pub async fn run(store: &dyn Store) {
        env_and_policies(store).await;
        // Orgs.
        store.create_org(&org("acme")).await.expect("create org");
        store.create_org(&org("beta")).await.expect("create org");
        assert!(matches!(
            store.create_org(&org("acme")).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(
            store.get_org("acme").await.expect("get").map(|o| o.name),
            Some("acme".into())
        );
        assert_eq!(store.get_org("nope").await.expect("get"), None);

        // Tokens: by hash, scoped by org, revocation.
        store
            .insert_token(&token("tok_a", "acme", "h1"))
            .await
            .expect("token");
        store
            .insert_token(&token("tok_b", "beta", "h2"))
            .await
            .expect("token");
        assert!(matches!(
            store.insert_token(&token("tok_c", "acme", "h1")).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(
            store
                .token_by_hash("h1")
                .await
                .expect("by hash")
                .map(|t| t.org),
            Some("acme".into())
        );
        assert_eq!(store.list_tokens("acme").await.expect("list").len(), 1);
        assert!(
            !store
                .revoke_token("beta", "tok_a", "t")
                .await
                .expect("revoke"),
            "another org's token"
        );
        assert!(
            store
                .revoke_token("acme", "tok_a", "t")
                .await
                .expect("revoke")
        );
        assert_eq!(store.token_by_hash("h1").await.expect("by hash"), None);
        assert!(
            !store
                .revoke_token("acme", "tok_a", "t")
                .await
                .expect("revoke twice")
        );

        // Functions, scoped by org.
        store
            .create_function(&function("acme", "hello"))
            .await
            .expect("create fn");
        store
            .create_function(&function("beta", "hello"))
            .await
            .expect("same name, other org");
        assert!(matches!(
            store.create_function(&function("acme", "hello")).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(store.list_functions("acme").await.expect("list").len(), 1);
        assert_eq!(store.get_function("beta", "nope").await.expect("get"), None);

        // Deployments: newest first, status, live pointer, snapshot.
        for id in ["dep_1", "dep_2", "dep_3"] {
            store
                .insert_deployment(&deployment(id, "acme", "hello"))
                .await
                .expect("insert");
        }
        let ids: Vec<String> = store
            .list_deployments("acme", "hello")
            .await
            .expect("list")
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, ["dep_3", "dep_2", "dep_1"]);
        assert_eq!(
            store
                .get_deployment("beta", "hello", "dep_1")
                .await
                .expect("get"),
            None,
            "another org"
        );
        assert_eq!(store.list_materializing().await.expect("list").len(), 3);
        store
            .set_deployment_status("dep_1", DeploymentStatus::Ready, None)
            .await
            .expect("status");
        store
            .set_deployment_status("dep_2", DeploymentStatus::Failed, Some("bad"))
            .await
            .expect("status");
        let d2 = store
            .get_deployment("acme", "hello", "dep_2")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            (d2.status, d2.error.as_deref()),
            (DeploymentStatus::Failed, Some("bad"))
        );
        assert_eq!((d2.min_instances, d2.max_concurrency), (1, Some(50)));
        store
            .set_live("acme", "hello", "dep_1")
            .await
            .expect("live");
        let (functions, tokens) = store.routing_snapshot().await.expect("snapshot");
        assert_eq!(functions.len(), 2);
        let (f, live) = functions
            .iter()
            .find(|(f, _)| f.org == "acme")
            .expect("acme/hello");
        assert_eq!(f.live_deployment_id.as_deref(), Some("dep_1"));
        assert_eq!(live.as_ref().map(|d| d.id.as_str()), Some("dep_1"));
        assert!(
            functions
                .iter()
                .any(|(f, live)| f.org == "beta" && live.is_none())
        );
        assert_eq!(
            tokens.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["tok_b"],
            "revoked tokens are not pushed"
        );

        // The routing version only grows.
        let v1 = store.next_routing_version().await.expect("version");
        let v2 = store.next_routing_version().await.expect("version");
        assert!(v2 > v1);

        // Deleting a function deletes its deployments, not other orgs' functions.
        assert!(
            store
                .delete_function("acme", "hello")
                .await
                .expect("delete")
        );
        assert!(
            !store
                .delete_function("acme", "hello")
                .await
                .expect("delete twice")
        );
        assert_eq!(
            store
                .get_deployment("acme", "hello", "dep_1")
                .await
                .expect("get"),
            None
        );
        assert!(
            store
                .get_function("beta", "hello")
                .await
                .expect("get")
                .is_some()
        );
    }

    #[tokio::test]
    async fn sqlite_passes_the_store_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqlStore::open(&dir.path().join("reactor.db"))
            .await
            .expect("open");
        assert_eq!(store.dialect(), Dialect::Sqlite);
        run(&store).await;
        // The version survives a reopen.
        let v = store.next_routing_version().await.expect("version");
        drop(store);
        let store = SqlStore::open(&dir.path().join("reactor.db"))
            .await
            .expect("reopen");
        assert!(store.next_routing_version().await.expect("version") > v);
    }

    /// PostgreSQL at `REACTOR_TEST_POSTGRES_URL` (default: the local server, trust auth):
    /// a database of its own, dropped at the end.
    #[tokio::test]
    async fn postgres_passes_the_store_suite() {
        let admin_url = std::env::var("REACTOR_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let db = crate::test_support::TestDatabase::create(&admin_url).await;
        let store = SqlStore::open_url(&db.url).await.expect("open");
        assert_eq!(store.dialect(), Dialect::Postgres);
        run(&store).await;
        let v = store.next_routing_version().await.expect("version");
        store.close().await;
        let store = SqlStore::open_url(&db.url).await.expect("reopen");
        assert!(store.next_routing_version().await.expect("version") > v);
        store.close().await;
        db.drop_now().await;
    }

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        assert_eq!(
            rewrite(
                Dialect::Postgres,
                "UPDATE t SET a = ? WHERE b = ? AND c = 'x'"
            ),
            "UPDATE t SET a = $1 WHERE b = $2 AND c = 'x'"
        );
        assert_eq!(rewrite(Dialect::Sqlite, "a = ?"), "a = ?");
        assert!(std::ptr::eq(
            interned(Dialect::Postgres, "b = ?"),
            interned(Dialect::Postgres, "b = ?")
        ));
        assert_eq!(
            redact_url("postgres://reactor:hunter2@db:5432/reactor"),
            "postgres://reactor:***@db:5432/reactor"
        );
        assert_eq!(Dialect::of_url("mysql://x"), None);
    }
}
