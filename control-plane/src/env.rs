//! Env values and secrets as the control plane keeps them: the keyring built from the
//! configuration, the deployment env that workers receive ([`StoreEnv`]), the check that
//! every stored secret still has its data key, and rotation to a new data key.
//!
//! Secrets are decrypted only here, on their way to a worker that hands them to the
//! function instance; nothing in this module logs a value.

use crate::secrets::{DataKey, Keyring, SecretsError};
use crate::store::{EnvValue, Store, StoreError};
use async_trait::async_trait;
use reactor_api::config::FunctionsConfig;
use reactor_api::model::RotationReport;
use reactor_api::{DeploymentSpec, EnvSource};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The file that keeps the embedded default's generated data key.
pub const DATA_KEY_FILE: &str = "data_key";

/// Largest env value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Most env keys per function.
pub const MAX_KEYS: usize = 200;
/// Most bytes of keys and values per function (what a worker receives in one message).
pub const MAX_TOTAL_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("data_keys_previous[{index}]: {source}")]
    Previous { index: usize, source: SecretsError },
}

/// The keyring of the configuration: `data_key` (else the key kept in
/// `{workdir}/data_key`, generated on first start) and `data_keys_previous`.
pub fn keyring_from_config(config: &FunctionsConfig) -> Result<Keyring, EnvError> {
    let current = match &config.data_key {
        Some(b64) => DataKey::from_base64(b64)?,
        None => {
            let path = config.workdir.join(DATA_KEY_FILE);
            let (key, generated) = crate::secrets::load_or_create_key_file(&path)?;
            if generated {
                tracing::info!(path = %path.display(), key_id = key.id(), "generated a data key for secrets (set functions.data_key to manage it yourself)");
            }
            key
        }
    };
    let mut previous = Vec::new();
    for (index, b64) in config.data_keys_previous.iter().enumerate() {
        previous.push(
            DataKey::from_base64(b64).map_err(|source| EnvError::Previous { index, source })?,
        );
    }
    Ok(Keyring::new(current, previous))
}

/// Refuses to go on when a stored secret was sealed under a key the keyring lacks (an
/// old key removed from the configuration before `reactor data-key rotate` ran).
pub async fn check_keys(store: &dyn Store, keyring: &Keyring) -> Result<(), EnvError> {
    for (_, sealed) in store.secrets().await? {
        if !keyring.knows(&sealed.key_id) {
            return Err(SecretsError::UnknownKey(sealed.key_id).into());
        }
    }
    Ok(())
}

/// Re-seals every secret (current env and deployments' pinned copies) under the
/// keyring's current key. Idempotent: values already under it are left alone. Scans
/// again until one pass finds nothing under an old key, so that a row written during a
/// pass (a deployment pinning an old-key value) is not missed.
pub async fn rotate(store: &dyn Store, keyring: &Keyring) -> Result<RotationReport, EnvError> {
    let mut report = RotationReport {
        key_id: keyring.current_id().to_string(),
        resealed: 0,
        current: 0,
    };
    for pass in 0..10 {
        let mut resealed = 0;
        let mut current = 0;
        for (row, sealed) in store.secrets().await? {
            let (org, function, key) = row.binding();
            match keyring.reseal(org, function, key, &sealed)? {
                None => current += 1,
                Some(new) => {
                    if store.replace_secret(&row, &sealed, &new).await? {
                        resealed += 1;
                    }
                }
            }
        }
        report.resealed += resealed;
        if pass == 0 {
            report.current = current;
        }
        if resealed == 0 {
            return Ok(report);
        }
    }
    Ok(report)
}

/// Deployment env read from the store and decrypted with the keyring.
pub struct StoreEnv {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
}

impl StoreEnv {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>) -> Arc<Self> {
        Arc::new(Self { store, keyring })
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The env `deployment_id` (of `org`/`function`) pinned, secrets decrypted.
    pub async fn pinned(
        &self,
        org: &str,
        function: &str,
        deployment_id: &str,
    ) -> Result<BTreeMap<String, String>, EnvError> {
        let mut env = BTreeMap::new();
        for record in self.store.deployment_env(deployment_id).await? {
            let value = match record.value {
                EnvValue::Plain(v) => v,
                EnvValue::Secret(sealed) => {
                    let bytes = self.keyring.open(org, function, &record.key, &sealed)?;
                    String::from_utf8(bytes).map_err(|_| SecretsError::Decrypt {
                        org: org.to_string(),
                        function: function.to_string(),
                        key: record.key.clone(),
                    })?
                }
            };
            env.insert(record.key, value);
        }
        Ok(env)
    }
}

#[async_trait]
impl EnvSource for StoreEnv {
    async fn deployment_env(
        &self,
        spec: &DeploymentSpec,
    ) -> Result<Arc<BTreeMap<String, String>>, String> {
        self.pinned(&spec.org, &spec.function, &spec.deployment_id)
            .await
            .map(Arc::new)
            .map_err(|e| {
                tracing::error!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id, error = %e, "reading a deployment's env");
                format!("the deployment's env could not be read: {e}")
            })
    }
}
