//! Invoke policies: reading and setting a function's policy.

use crate::auth::Caller;
use crate::service::{ControlPlane, need};
use reactor_api::{ApiError, ErrorCode};

impl ControlPlane {
    /// Refuses a policy of more than `policy_max_bytes` (as JSON): every router holds it.
    pub(crate) fn check_policy_size(&self, len: usize) -> Result<(), ApiError> {
        let max = self.config.policy_max_bytes;
        if len > max {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("the policy is {len} bytes as JSON; at most {max} are allowed (functions.policy_max_bytes)"),
            )
            .with_detail("limit", max as u64));
        }
        Ok(())
    }

    /// The function's invoke policy (the default, allow everything, when none is set).
    pub async fn get_policy(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<reactor_policy::Policy, ApiError> {
        need(caller, caller.role.can_deploy(), "read policies")?;
        let f = self.function(caller, name).await?;
        match f.policy.as_deref() {
            Some(json) => reactor_policy::Policy::from_json(json)
                .map_err(|e| ApiError::internal(format!("stored policy of {name}: {e}"))),
            None => Ok(reactor_policy::Policy::default()),
        }
    }

    /// Sets (or with `None` clears) the function's invoke policy. It is compiled here, so
    /// an invalid rule is refused now rather than when a request meets it; routers get
    /// it with the next routing table.
    pub async fn set_policy(
        &self,
        caller: &Caller,
        name: &str,
        policy: Option<reactor_policy::Policy>,
    ) -> Result<reactor_policy::Policy, ApiError> {
        need(caller, caller.role.can_deploy(), "set policies")?;
        let f = self.function(caller, name).await?;
        let json = match &policy {
            Some(p) => {
                p.compile().map_err(|e| {
                    ApiError::new(ErrorCode::InvalidInput, format!("policy is not valid: {e}"))
                })?;
                let json =
                    serde_json::to_string(p).map_err(|e| ApiError::internal(e.to_string()))?;
                self.check_policy_size(json.len())?;
                Some(json)
            }
            None => None,
        };
        self.store
            .set_function_policy(&f.org, &f.name, json.as_deref())
            .await?;
        let version = self.routing.publish_function(&f.org, &f.name).await?;
        tracing::info!(org = %f.org, function = %f.name, version, cleared = policy.is_none(), "policy set");
        let policy = policy.unwrap_or_default();
        self.event(
            &f.org,
            &f.name,
            None,
            format!("invoke policy set ({} rules)", policy.rules.len()),
        );
        Ok(policy)
    }
}
