//! What a control plane stands on, opened from `[functions]`: the metadata store, bundle
//! storage, the keyring for secrets (checked against every stored secret) and the function
//! log hub. The embedded default and `reactor-control-plane` open them the same way.

use crate::env::{self, StoreEnv};
use crate::logs::{LogHub, LogRetention};
use crate::store::{SqliteStore, Store};
use anyhow::Context;
use reactor_api::config::FunctionsConfig;
use reactor_storage::LocalStorage;
use std::sync::Arc;
use std::time::Duration;

/// The metadata database file under the workdir.
pub const DATABASE_FILE: &str = "reactor.db";

pub struct Backends {
    pub store: Arc<dyn Store>,
    pub storage: Arc<LocalStorage>,
    pub env: Arc<StoreEnv>,
    pub logs: Arc<LogHub>,
}

impl Backends {
    /// Creates the workdir if needed and opens everything under it. Fails when a stored
    /// secret was sealed under a data key that is no longer configured.
    pub async fn open(config: &FunctionsConfig) -> anyhow::Result<Self> {
        let workdir = &config.workdir;
        tokio::fs::create_dir_all(workdir)
            .await
            .with_context(|| format!("creating workdir {}", workdir.display()))?;
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&workdir.join(DATABASE_FILE)).await?);
        let storage = Arc::new(LocalStorage::open(workdir.join("storage")).await?);
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
        Ok(Self {
            store,
            storage,
            env,
            logs,
        })
    }
}
