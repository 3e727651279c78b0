//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL through sqlx's `Any` driver, with
//! its migrations, row decoding and the mapping of database errors to [`StoreError`].

use super::dialect::{Dialect, interned};
use super::{
    ContractRecord, DeploymentRecord, Entity, EnvRecord, EnvValue, FunctionRecord, OrgRecord,
    SecretRow, Store, StoreError, TokenRecord,
};
use crate::secrets::Sealed;
use async_trait::async_trait;
use reactor_api::Runtime;
use reactor_api::model::{DeploymentStatus, Role};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

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

/// The advisory lock key of a function: 64 bits of the SHA-256 of its org and name (two
/// functions sharing one only wait for each other).
fn function_lock_key(org: &str, name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"reactor function lock\0")
        .chain_update(org.as_bytes())
        .chain_update([0u8])
        .chain_update(name.as_bytes())
        .finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// A function's advisory lock, held by the session of `conn` and released by closing it
/// when dropped (the connection never goes back to the pool). A process killed while
/// holding one loses its session too, and the server releases the lock.
struct AdvisoryLock {
    _conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
}

async fn routing_listener(url: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(ROUTING_CHANNEL).await?;
    Ok(listener)
}

/// Sends every routing version announced on the database to `tx`, connecting again (and
/// saying so) when the connection breaks, until `tx` closes. A version announced while
/// the connection was down is not sent: the reader also polls (see `service`).
async fn listen_routing(
    url: String,
    mut first: Option<sqlx::postgres::PgListener>,
    tx: tokio::sync::mpsc::Sender<u64>,
) {
    let mut failing = first.is_none();
    loop {
        let listening = async {
            match first.take() {
                Some(l) => Ok(l),
                None => routing_listener(&url).await,
            }
        };
        let mut listener = tokio::select! {
            l = listening => match l {
                Ok(l) => l,
                Err(e) => {
                    if !failing {
                        tracing::warn!("listening for routing versions on {}: {e}; trying again", redact_url(&url));
                        failing = true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        () = tx.closed() => return,
                    }
                }
            },
            () = tx.closed() => return,
        };
        if std::mem::take(&mut failing) {
            tracing::info!("listening for routing versions again");
        }
        loop {
            tokio::select! {
                note = listener.recv() => match note {
                    Ok(note) => {
                        if let Ok(v) = note.payload().parse::<u64>()
                            && tx.send(v).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!("the routing versions' listener failed: {e}; connecting again");
                        failing = true;
                        break;
                    }
                },
                () = tx.closed() => return,
            }
        }
    }
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// The metadata store on SQLite or PostgreSQL.
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// PostgreSQL's URL, for the connection that listens for routing versions.
    listen_url: Option<String>,
    /// PostgreSQL: connections that hold functions' advisory locks, apart from `pool` so
    /// that operations holding one still get a connection for their own queries.
    lock_pool: Option<sqlx::PgPool>,
}

/// Connections holding function locks at once (one per promote, rollback, delete or
/// collection in flight on this process); a further one waits for a free connection.
const LOCK_CONNECTIONS: u32 = 32;

/// How long a promote (or delete) waits for another process's operation on the same
/// function before it gives up.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The channel every routing version is announced on (PostgreSQL NOTIFY).
const ROUTING_CHANNEL: &str = "reactor_routing";

mod accounts;

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
        let listen_url = (dialect == Dialect::Postgres).then(|| database_url.to_string());
        let lock_pool = match &listen_url {
            Some(url) => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(LOCK_CONNECTIONS)
                    .min_connections(0)
                    .idle_timeout(Duration::from_secs(60))
                    .acquire_timeout(LOCK_WAIT)
                    .connect_lazy(url)
                    .map_err(|e| {
                        StoreError::Database(format!("connecting to {}: {e}", redact_url(url)))
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            pool,
            dialect,
            listen_url,
            lock_pool,
        })
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
        calls: row.try_get("calls").map_err(db)?,
        interceptors: row.try_get("interceptors").map_err(db)?,
        pool: row.try_get("pool").map_err(db)?,
        contract: row.try_get("contract").map_err(db)?,
    })
}

fn contract_row(row: &AnyRow) -> Result<ContractRecord, StoreError> {
    Ok(ContractRecord {
        org: row.try_get("org").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        description: row.try_get("description").map_err(db)?,
        input: row.try_get("input").map_err(db)?,
        output: row.try_get("output").map_err(db)?,
        validate_output: row.try_get::<i64, _>("validate_output").map_err(db)? != 0,
        function: row.try_get("function").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

const CONTRACT_COLUMNS: &str =
    "org, name, description, input, output, validate_output, function, created_at";

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

const DEPLOYMENT_COLUMNS: &str = "id, org, function, status, error, sha256, size_bytes, entrypoint, bundle_key, timeout_ms, memory_mb, min_instances, max_concurrency, created_at, policy, calls, interceptors, pool, contract";

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
        // Its contracts stay, unbound (callers get function_not_found until one is bound).
        sqlx::query(
            self.sql("UPDATE contracts SET function = NULL WHERE org = ? AND function = ?"),
        )
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
        sqlx::query(self.sql("INSERT INTO deployments (id, org, function, status, error, sha256, size_bytes, entrypoint, bundle_key, timeout_ms, memory_mb, min_instances, max_concurrency, created_at, policy, calls, interceptors, pool, contract) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
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
            .bind(&d.calls)
            .bind(&d.interceptors)
            .bind(&d.pool)
            .bind(&d.contract)
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
        old: &Sealed,
        sealed: &Sealed,
    ) -> Result<bool, StoreError> {
        let q = match row {
            SecretRow::Function { org, function, key } => sqlx::query(self.sql("UPDATE env_vars SET key_id = ?, nonce = ?, ciphertext = ? WHERE org = ? AND function = ? AND key = ? AND key_id = ? AND nonce = ?"))
                .bind(&sealed.key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(org)
                .bind(function)
                .bind(key),
            SecretRow::Deployment { deployment_id, key, .. } => sqlx::query(self.sql("UPDATE deployment_env SET key_id = ?, nonce = ?, ciphertext = ? WHERE deployment_id = ? AND key = ? AND key_id = ? AND nonce = ?"))
                .bind(&sealed.key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(deployment_id)
                .bind(key),
        };
        let done = q
            .bind(&old.key_id)
            .bind(&old.nonce)
            .execute(&self.pool)
            .await
            .map_err(db)?;
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

    async fn collectable_deployments(
        &self,
        before: &str,
        keep_ready: u32,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        let columns = DEPLOYMENT_COLUMNS
            .split(", ")
            .map(|c| format!("d.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Newer ready deployments are counted through deployments_by_function.
        let rows = sqlx::query(self.sql(&format!(
            "SELECT {columns} FROM deployments d \
             WHERE d.created_at < ? AND d.status <> 'materializing' \
             AND NOT EXISTS (SELECT 1 FROM functions f WHERE f.live_deployment_id = d.id) \
             AND (d.status = 'failed' OR (SELECT COUNT(*) FROM deployments n \
                  WHERE n.org = d.org AND n.function = d.function AND n.seq > d.seq \
                  AND n.status = 'ready') >= ?) \
             ORDER BY d.seq"
        )))
        .bind(before)
        .bind(i64::from(keep_ready))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(deployment_row).collect()
    }

    async fn delete_deployment(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(self.sql("DELETE FROM deployments WHERE id = ? AND NOT EXISTS (SELECT 1 FROM functions f WHERE f.live_deployment_id = deployments.id)"))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        if done.rows_affected() > 0 {
            // The foreign key cascades too; this does not depend on it.
            sqlx::query(self.sql("DELETE FROM deployment_env WHERE deployment_id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    fn accounts(&self) -> &dyn super::Accounts {
        self
    }

    async fn next_routing_version(&self) -> Result<u64, StoreError> {
        let query = match self.dialect {
            // The notification goes out when the statement commits: every control plane
            // on the database hears of the version once the state it covers is there.
            Dialect::Postgres => {
                "WITH v AS (UPDATE routing_version SET version = version + 1 WHERE id = 1 RETURNING version), \
                 n AS (SELECT pg_notify('reactor_routing', version::text) FROM v) \
                 SELECT v.version FROM v, n"
            }
            Dialect::Sqlite => {
                "UPDATE routing_version SET version = version + 1 WHERE id = 1 RETURNING version"
            }
        };
        let row = sqlx::query(self.sql(query))
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let v: i64 = row.try_get("version").map_err(db)?;
        Ok(v as u64)
    }

    async fn lock_function(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<super::HeldLock>, StoreError> {
        let Some(pool) = &self.lock_pool else {
            return Ok(None);
        };
        let key = function_lock_key(org, name);
        let mut conn = pool.acquire().await.map_err(db)?;
        // Never back to the pool: a wait cancelled by its caller (a client that went away)
        // would otherwise return a session that gets the lock later and keeps it. Closing
        // the session releases the lock.
        conn.close_on_drop();
        let locked = tokio::time::timeout(
            LOCK_WAIT,
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(key)
                .execute(&mut *conn),
        )
        .await;
        match locked {
            Ok(Ok(_)) => Ok(Some(Box::new(AdvisoryLock { _conn: conn }))),
            Ok(Err(e)) => Err(db(e)),
            Err(_) => {
                // The wait may still be queued on the server: the session goes with it.
                Err(StoreError::Database(format!(
                    "function {name} of {org} is still locked by another control plane's promote, rollback or delete after {} s",
                    LOCK_WAIT.as_secs()
                )))
            }
        }
    }

    async fn put_worker(
        &self,
        worker: &super::WorkerRow,
        ttl: Duration,
    ) -> Result<Option<super::PutWorker>, StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        // One statement: of two replicas registering a new id at once, the second finds
        // the first's row (a live id with another secret is not taken over).
        let put = sqlx::query(self.sql(
            "INSERT INTO workers (id, runtime, url, secret_sha256, last_seen) VALUES (?, ?, ?, ?, now()) \
             ON CONFLICT (id) DO UPDATE SET runtime = EXCLUDED.runtime, url = EXCLUDED.url, \
             secret_sha256 = EXCLUDED.secret_sha256, last_seen = now() \
             WHERE workers.secret_sha256 = EXCLUDED.secret_sha256 \
             OR workers.last_seen <= now() - (?::bigint * interval '1 millisecond') \
             RETURNING id",
        ))
        .bind(&worker.id)
        .bind(&worker.runtime)
        .bind(&worker.url)
        .bind(&worker.secret_sha256)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        if put.is_none() {
            return Ok(Some(super::PutWorker::Taken));
        }
        // Workers come and go with new ids (pods): those silent for an hour are
        // forgotten, on the way (a failure here changes nothing for this one).
        let _ = sqlx::query("DELETE FROM workers WHERE last_seen < now() - interval '1 hour'")
            .execute(&self.pool)
            .await;
        Ok(Some(super::PutWorker::Put))
    }

    async fn touch_worker(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<Option<bool>, StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let done = sqlx::query(
            self.sql("UPDATE workers SET last_seen = now() WHERE id = ? AND secret_sha256 = ?"),
        )
        .bind(id)
        .bind(secret_sha256)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(Some(done.rows_affected() > 0))
    }

    async fn remove_worker(
        &self,
        id: &str,
        secret_sha256: &str,
    ) -> Result<Option<bool>, StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let done = sqlx::query(self.sql("DELETE FROM workers WHERE id = ? AND secret_sha256 = ?"))
            .bind(id)
            .bind(secret_sha256)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(Some(done.rows_affected() > 0))
    }

    async fn live_workers(
        &self,
        ttl: Duration,
    ) -> Result<Option<Vec<super::WorkerRow>>, StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(self.sql(
            "SELECT id, runtime, url, secret_sha256 FROM workers WHERE last_seen > now() - (?::bigint * interval '1 millisecond') ORDER BY id",
        ))
        .bind(ttl_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(super::WorkerRow {
                id: row.try_get("id").map_err(db)?,
                runtime: row.try_get("runtime").map_err(db)?,
                url: row.try_get("url").map_err(db)?,
                secret_sha256: row.try_get("secret_sha256").map_err(db)?,
            });
        }
        Ok(Some(out))
    }

    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<bool>, StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let row = sqlx::query(self.sql(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, now() + (?::bigint * interval '1 millisecond')) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now() \
             RETURNING holder",
        ))
        .bind(name)
        .bind(holder)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(Some(row.is_some()))
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        sqlx::query(self.sql("DELETE FROM leases WHERE name = ? AND holder = ?"))
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn routing_version(&self) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(self.sql("SELECT version FROM routing_version WHERE id = 1"))
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        let v: i64 = row.try_get("version").map_err(db)?;
        Ok(Some(v as u64))
    }

    async fn listen_routing(&self) -> Option<tokio::sync::mpsc::Receiver<u64>> {
        let url = self.listen_url.clone()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // Listening before this returns, so that the control plane hears of every version
        // from its start; a database that does not answer in time is tried again behind.
        let first = tokio::time::timeout(Duration::from_secs(5), routing_listener(&url))
            .await
            .ok()
            .and_then(Result::ok);
        tokio::spawn(listen_routing(url, first, tx));
        Some(rx)
    }

    async fn create_contract(&self, c: &ContractRecord) -> Result<(), StoreError> {
        sqlx::query(self.sql("INSERT INTO contracts (org, name, description, input, output, validate_output, function, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&c.org)
            .bind(&c.name)
            .bind(&c.description)
            .bind(&c.input)
            .bind(&c.output)
            .bind(i64::from(c.validate_output))
            .bind(&c.function)
            .bind(&c.created_at)
            .execute(&self.pool)
            .await
            .map_err(map_db_error(Entity::Contract, &c.name))?;
        Ok(())
    }

    async fn get_contract(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Option<ContractRecord>, StoreError> {
        let row = sqlx::query(self.sql(&format!(
            "SELECT {CONTRACT_COLUMNS} FROM contracts WHERE org = ? AND name = ?"
        )))
        .bind(org)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(contract_row).transpose()
    }

    async fn list_contracts(&self, org: &str) -> Result<Vec<ContractRecord>, StoreError> {
        let rows = sqlx::query(self.sql(&format!(
            "SELECT {CONTRACT_COLUMNS} FROM contracts WHERE org = ? ORDER BY name"
        )))
        .bind(org)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(contract_row).collect()
    }

    async fn delete_contract(&self, org: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(self.sql("DELETE FROM contracts WHERE org = ? AND name = ?"))
            .bind(org)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn bind_contract(
        &self,
        org: &str,
        name: &str,
        function: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query(self.sql("UPDATE contracts SET function = ? WHERE org = ? AND name = ?"))
                .bind(function)
                .bind(org)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn bound_contracts(&self) -> Result<Vec<ContractRecord>, StoreError> {
        let rows = sqlx::query(self.sql(&format!(
            "SELECT {CONTRACT_COLUMNS} FROM contracts WHERE function IS NOT NULL ORDER BY org, name"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(contract_row).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redact_url("postgres://reactor:hunter2@db:5432/reactor"),
            "postgres://reactor:***@db:5432/reactor"
        );
    }
}
