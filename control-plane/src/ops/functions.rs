//! Functions: creating, reading and deleting them, and the lookup the other operations
//! start from.

use crate::auth::Caller;
use crate::convert::function_info;
use crate::service::{ControlPlane, need, now, valid_function_name};
use crate::store::{FunctionRecord, StoreError};
use reactor_api::model::FunctionInfo;
use reactor_api::{ApiError, ErrorCode, Runtime};
use reactor_storage::keys;

impl ControlPlane {
    /// The caller's function `name`, or FunctionNotFound.
    pub(super) async fn function(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<FunctionRecord, ApiError> {
        self.store
            .get_function(&caller.org, name)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::FunctionNotFound,
                    format!("function {name} not found"),
                )
                .with_detail("function", name)
            })
    }

    pub async fn create_function(
        &self,
        caller: &Caller,
        name: &str,
        runtime: Runtime,
    ) -> Result<FunctionInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "create functions")?;
        if !valid_function_name(name) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!(
                    "function name {name:?} is not valid (lowercase letters, digits and '-', starting with a letter, at most 63)"
                ),
            ));
        }
        if !self.config.runtimes.contains(&runtime) {
            let enabled: Vec<&str> = self.config.runtimes.iter().map(|r| r.as_str()).collect();
            return Err(ApiError::new(
                ErrorCode::RuntimeDisabled,
                format!(
                    "runtime {runtime} is not enabled on this server (enabled: {})",
                    enabled.join(", ")
                ),
            ));
        }
        let quota = self.config.max_functions_per_org;
        if self.store.list_functions(&caller.org).await?.len() >= quota {
            return Err(quota_exceeded(
                format!(
                    "org {} already has {quota} functions, its quota: delete one first, or ask the operator to raise functions.max_functions_per_org",
                    caller.org
                ),
                "functions",
                quota,
            ));
        }
        let record = FunctionRecord {
            org: caller.org.clone(),
            name: name.to_string(),
            runtime,
            live_deployment_id: None,
            created_at: now(),
            policy: None,
        };
        self.store
            .create_function(&record)
            .await
            .map_err(|e| match e {
                StoreError::AlreadyExists { .. } => ApiError::new(
                    ErrorCode::FunctionExists,
                    format!("function {name} already exists"),
                )
                .with_detail("function", name),
                other => other.into(),
            })?;
        self.routing.publish_function(&caller.org, name).await?;
        tracing::info!(org = %caller.org, function = name, %runtime, "function created");
        Ok(function_info(&record))
    }

    pub async fn get_function(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<FunctionInfo, ApiError> {
        Ok(function_info(&self.function(caller, name).await?))
    }

    pub async fn list_functions(&self, caller: &Caller) -> Result<Vec<FunctionInfo>, ApiError> {
        Ok(self
            .store
            .list_functions(&caller.org)
            .await?
            .iter()
            .map(function_info)
            .collect())
    }

    pub async fn delete_function(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        need(caller, caller.role.is_admin(), "delete functions")?;
        // Not while it is promoted, rolled back or collected, through any control plane.
        let _deleting = self.lock_function(&caller.org, name).await?;
        if !self.store.delete_function(&caller.org, name).await? {
            return Err(ApiError::new(
                ErrorCode::FunctionNotFound,
                format!("function {name} not found"),
            ));
        }
        self.routing.publish_function(&caller.org, name).await?;
        self.logs.forget(&caller.org, name);
        for prefix in keys::function_prefix(&caller.org, name) {
            if let Err(e) = self.storage.delete_prefix(&prefix).await {
                tracing::warn!(error = %e, prefix, "leaving objects of a deleted function behind");
            }
        }
        tracing::info!(org = %caller.org, function = name, "function deleted");
        Ok(())
    }

    /// The function, for a caller that may read its logs (not invokers).
    pub async fn function_for_logs(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<FunctionInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "read logs")?;
        Ok(function_info(&self.function(caller, name).await?))
    }
}

/// A per-org quota was reached: nothing was changed.
pub(crate) fn quota_exceeded(message: String, what: &str, quota: usize) -> ApiError {
    ApiError::new(ErrorCode::QuotaExceeded, message)
        .with_detail("quota", what)
        .with_detail("limit", quota as u64)
}
