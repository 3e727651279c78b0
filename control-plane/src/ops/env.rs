//! Env and secrets: a function's env values, and the env a deployment pinned.

use crate::auth::Caller;
use crate::service::{ControlPlane, need, now};
use crate::store::{DeploymentRecord, EnvRecord, EnvValue, FunctionRecord};
use reactor_api::model::{DeploymentStatus, EnvVarInfo, SetEnv};
use reactor_api::{ApiError, ErrorCode, Runtime};

fn env_info(e: &EnvRecord) -> EnvVarInfo {
    match &e.value {
        EnvValue::Plain(v) => EnvVarInfo {
            key: e.key.clone(),
            secret: false,
            value: Some(v.clone()),
            updated_at: e.updated_at.clone(),
        },
        EnvValue::Secret(_) => EnvVarInfo {
            key: e.key.clone(),
            secret: true,
            value: None,
            updated_at: e.updated_at.clone(),
        },
    }
}

fn invalid_env_key(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidInput,
        format!("env key {key:?} is not valid (letters, digits and _, not starting with a digit)"),
    )
    .with_detail("key", key)
}

impl ControlPlane {
    /// The env `deployment_id` pinned, decrypted: for a worker service that is about to
    /// start the deployment's instances.
    pub async fn deployment_env(
        &self,
        org: &str,
        function: &str,
        deployment_id: &str,
        runtime: Runtime,
    ) -> Result<(std::collections::BTreeMap<String, String>, DeploymentRecord), ApiError> {
        let f = self.store.get_function(org, function).await?;
        let d = self
            .store
            .get_deployment(org, function, deployment_id)
            .await?;
        let (Some(f), Some(d)) = (f, d) else {
            return Err(ApiError::new(
                ErrorCode::DeploymentNotFound,
                format!("deployment {deployment_id} of {org}/{function} not found"),
            ));
        };
        if f.runtime != runtime {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("function {org}/{function} does not run on {runtime} workers"),
            ));
        }
        // A Bun deployment being built: its check loads the module with its env (top-level
        // code may read it), as in process. No other runtime's build reads env.
        let building = d.status == DeploymentStatus::Materializing && runtime == Runtime::Bun;
        if d.status != DeploymentStatus::Ready && !building {
            return Err(ApiError::new(
                ErrorCode::DeploymentNotReady,
                format!("deployment {deployment_id} is {}", d.status.as_str()),
            ));
        }
        let env = self
            .env
            .pinned(org, function, deployment_id)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok((env, d))
    }

    /// Sets one env value of a function; a secret is sealed before it is stored. The
    /// next deployment pins it; live deployments keep the env they pinned.
    pub async fn set_env(
        &self,
        caller: &Caller,
        name: &str,
        key: &str,
        req: SetEnv,
    ) -> Result<EnvVarInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "set env")?;
        let f = self.function(caller, name).await?;
        if !reactor_api::manifest::valid_env_key(key) || key.len() > 256 {
            return Err(invalid_env_key(key));
        }
        if req.value.len() > crate::env::MAX_VALUE_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the value of {key} is {} bytes; at most {} are allowed",
                    req.value.len(),
                    crate::env::MAX_VALUE_BYTES
                ),
            ));
        }
        let existing = self.store.list_env(&f.org, &f.name).await?;
        // Secrets are counted at their sealed size, close enough to the plaintext's.
        let others: usize = existing
            .iter()
            .filter(|e| e.key != key)
            .map(|e| {
                e.key.len()
                    + match &e.value {
                        EnvValue::Plain(v) => v.len(),
                        EnvValue::Secret(s) => s.ciphertext.len(),
                    }
            })
            .sum();
        if others + key.len() + req.value.len() > crate::env::MAX_TOTAL_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "the env of function {name} would exceed {} bytes of keys and values",
                    crate::env::MAX_TOTAL_BYTES
                ),
            ));
        }
        if existing.len() >= crate::env::MAX_KEYS && !existing.iter().any(|e| e.key == key) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "function {name} already has {} env keys, the most allowed",
                    crate::env::MAX_KEYS
                ),
            ));
        }
        let value = if req.secret {
            let sealed = self
                .env
                .keyring()
                .seal(&f.org, &f.name, key, req.value.as_bytes())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            EnvValue::Secret(sealed)
        } else {
            EnvValue::Plain(req.value)
        };
        let record = EnvRecord {
            key: key.to_string(),
            value,
            updated_at: now(),
        };
        self.store.set_env(&f.org, &f.name, &record).await?;
        tracing::info!(org = %f.org, function = %f.name, key, secret = req.secret, "env set");
        self.event(
            &f.org,
            &f.name,
            None,
            format!(
                "env {key} set{} (deploy to use it)",
                if req.secret { " as a secret" } else { "" }
            ),
        );
        Ok(env_info(&record))
    }

    /// The function's env keys: plain values shown, secrets never.
    pub async fn list_env(&self, caller: &Caller, name: &str) -> Result<Vec<EnvVarInfo>, ApiError> {
        need(caller, caller.role.can_deploy(), "read env")?;
        let f = self.function(caller, name).await?;
        Ok(self
            .store
            .list_env(&f.org, &f.name)
            .await?
            .iter()
            .map(env_info)
            .collect())
    }

    pub async fn unset_env(&self, caller: &Caller, name: &str, key: &str) -> Result<(), ApiError> {
        need(caller, caller.role.can_deploy(), "unset env")?;
        let f = self.function(caller, name).await?;
        if !self.store.delete_env(&f.org, &f.name, key).await? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("env key {key} is not set for function {name}"),
            )
            .with_detail("key", key));
        }
        tracing::info!(org = %f.org, function = %f.name, key, "env unset");
        self.event(&f.org, &f.name, None, format!("env {key} unset"));
        Ok(())
    }

    /// Refuses a manifest whose `env_keys`/`secret_keys` name keys the function lacks
    /// (or a secret key set as a plain value), naming each.
    pub(super) async fn check_env_keys(
        &self,
        function: &FunctionRecord,
        resolved: &reactor_api::manifest::Resolved,
    ) -> Result<(), ApiError> {
        if resolved.env_keys.is_empty() && resolved.secret_keys.is_empty() {
            return Ok(());
        }
        let env = self.store.list_env(&function.org, &function.name).await?;
        let find = |k: &str| env.iter().find(|e| e.key == k);
        let missing: Vec<String> = resolved
            .env_keys
            .iter()
            .chain(&resolved.secret_keys)
            .filter(|k| find(k).is_none())
            .cloned()
            .collect();
        let not_secret: Vec<String> = resolved
            .secret_keys
            .iter()
            .filter(|k| {
                matches!(
                    find(k),
                    Some(EnvRecord {
                        value: EnvValue::Plain(_),
                        ..
                    })
                )
            })
            .cloned()
            .collect();
        if missing.is_empty() && not_secret.is_empty() {
            return Ok(());
        }
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!(
                "env keys not set for function {}: {} (set them with `reactor functions env set {} KEY`)",
                function.name,
                missing.join(", "),
                function.name
            ));
        }
        if !not_secret.is_empty() {
            problems.push(format!(
                "listed in secret_keys but set as plain values: {} (set them with --secret)",
                not_secret.join(", ")
            ));
        }
        Err(
            ApiError::new(ErrorCode::ManifestInvalid, problems.join("; "))
                .with_detail("missing_keys", missing)
                .with_detail("not_secret_keys", not_secret),
        )
    }
}
