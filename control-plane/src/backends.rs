//! What a control plane stands on, opened from `[functions]`: the metadata store, bundle
//! storage, the keyring for secrets (checked against every stored secret) and the function
//! log hub. The embedded default and `reactor-control-plane` open them the same way.

use crate::env::{self, StoreEnv};
use crate::logs::{LogHub, LogRetention};
use crate::store::{SqlStore, Store};
use anyhow::Context;
use reactor_api::config::FunctionsConfig;
use reactor_storage::Storage;
use std::sync::Arc;
use std::time::Duration;

/// The metadata database file under the workdir.
pub const DATABASE_FILE: &str = "reactor.db";

pub struct Backends {
    pub store: Arc<dyn Store>,
    pub storage: Arc<dyn Storage>,
    pub env: Arc<StoreEnv>,
    pub logs: Arc<LogHub>,
}

/// The metadata store of `config`: PostgreSQL (or SQLite) at `database_url`, else
/// SQLite in the workdir.
pub async fn open_store(config: &FunctionsConfig) -> anyhow::Result<SqlStore> {
    let store = match &config.database_url {
        Some(url) => SqlStore::open_url(url).await?,
        None => SqlStore::open(&config.workdir.join(DATABASE_FILE)).await?,
    };
    tracing::info!(dialect = ?store.dialect(), "metadata store open");
    Ok(store)
}

impl Backends {
    /// Creates the workdir if needed and opens everything under it. Fails when a stored
    /// secret was sealed under a data key that is no longer configured.
    pub async fn open(config: &FunctionsConfig) -> anyhow::Result<Self> {
        let workdir = &config.workdir;
        tokio::fs::create_dir_all(workdir)
            .await
            .with_context(|| format!("creating workdir {}", workdir.display()))?;
        let store: Arc<dyn Store> = Arc::new(open_store(config).await?);
        let storage = reactor_storage::open(config)
            .await
            .context("opening bundle storage")?;
        let keyring = env::keyring_from_config(config).context("functions.data_key")?;
        env::check_keys(store.as_ref(), &keyring)
            .await
            .context("checking the stored secrets against the configured data keys")?;
        tracing::info!(
            key_id = keyring.current_id(),
            previous = keyring.ids().len() - 1,
            "secrets: data key loaded"
        );
        let env = StoreEnv::new(store.clone(), Arc::new(keyring));
        let logs = LogHub::new(LogRetention {
            max_entries_per_function: config.log_retention_entries,
            max_age: Duration::from_secs(config.log_retention_secs),
        });
        if let Some(url) = &config.redis_url {
            crate::logs_redis::attach(
                &logs,
                url,
                crate::logs_redis::StreamOptions::default(),
                logs.closed_token(),
            )
            .await?;
            tracing::info!("function logs: shared through Redis");
        }
        Ok(Self {
            store,
            storage,
            env,
            logs,
        })
    }
}
