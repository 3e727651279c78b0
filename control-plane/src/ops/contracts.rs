//! Named contracts (`email.sender@1`): created once per org and version, bound to the
//! function that implements them, documented as OpenAPI 3.1. A binding, and a promote of a
//! bound function, are refused when the function's schemas break the contract
//! (`reactor_contract::compat`), unless forced.

use crate::auth::Caller;
use crate::convert::contract_info;
use crate::service::{ControlPlane, need, now};
use crate::store::{ContractRecord, DeploymentRecord};
use reactor_api::contract::{
    BindContract, ContractInfo, ContractName, ContractSpec, CreateContract,
};
use reactor_api::{ApiError, ErrorCode};
use reactor_contract::compat::{Break, breaks};
use serde_json::Value;

/// Most characters of a contract's description.
const MAX_DESCRIPTION: usize = 2000;
/// Most contracts (versions included) an org keeps.
pub const MAX_CONTRACTS_PER_ORG: usize = 64;
/// Most contracts bound to one function: their schemas travel in its routing entry,
/// which every router decodes (at most 8 × 2 × 64 KiB).
pub const MAX_BOUND_PER_FUNCTION: usize = 8;

impl ControlPlane {
    /// Creates a named contract. Versions are immutable: a change is a new version.
    pub async fn create_contract(
        &self,
        caller: &Caller,
        req: CreateContract,
    ) -> Result<ContractInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "create contracts")?;
        let name = ContractName::parse(&req.name)
            .map_err(|e| ApiError::new(ErrorCode::InvalidInput, e))?;
        if req
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
        {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("description is longer than {MAX_DESCRIPTION} characters"),
            ));
        }
        let spec = ContractSpec {
            input: req.input.clone(),
            output: req.output.clone(),
            validate_output: req.validate_output,
            ..Default::default()
        };
        spec.check("contract")
            .map_err(|e| ApiError::new(ErrorCode::InvalidInput, e))?;
        reactor_contract::Compiled::from_spec(&spec, "contract")
            .map_err(|e| ApiError::new(ErrorCode::InvalidInput, e.to_string()))?;
        let held = self.store.list_contracts(&caller.org).await?.len();
        if held >= MAX_CONTRACTS_PER_ORG {
            return Err(crate::ops::functions::quota_exceeded(
                format!(
                    "org {} has {held} contracts, its limit: delete one it no longer needs",
                    caller.org
                ),
                "contracts_per_org",
                MAX_CONTRACTS_PER_ORG,
            ));
        }
        let json = |v: &Option<Value>| v.as_ref().map(Value::to_string);
        let record = ContractRecord {
            org: caller.org.clone(),
            name: name.to_string(),
            description: req.description,
            input: json(&req.input),
            output: json(&req.output),
            validate_output: req.validate_output,
            function: None,
            created_at: now(),
        };
        self.store.create_contract(&record).await.map_err(|e| {
            let mut err = ApiError::from(e);
            if err.code == ErrorCode::InvalidInput {
                err.message = format!(
                    "contract {name} already exists: a version never changes, create {}@{} for a new one",
                    name.name,
                    name.version + 1
                );
            }
            err
        })?;
        tracing::info!(org = %record.org, contract = %record.name, "contract created");
        Ok(contract_info(&record))
    }

    pub async fn list_contracts(&self, caller: &Caller) -> Result<Vec<ContractInfo>, ApiError> {
        let list = self.store.list_contracts(&caller.org).await?;
        Ok(list.iter().map(contract_info).collect())
    }

    pub async fn get_contract(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<ContractInfo, ApiError> {
        Ok(contract_info(&self.contract(caller, name).await?))
    }

    /// Deletes an unbound contract.
    pub async fn delete_contract(&self, caller: &Caller, name: &str) -> Result<(), ApiError> {
        need(caller, caller.role.can_deploy(), "delete contracts")?;
        let c = self.contract(caller, name).await?;
        if let Some(function) = &c.function {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("contract {name} is bound to function {function}: unbind it first (reactor contracts unbind {name})"),
            )
            .with_detail("function", function.clone()));
        }
        self.store.delete_contract(&c.org, &c.name).await?;
        Ok(())
    }

    /// Binds the contract to a function of the org (`None`: unbinds it). Callers that
    /// address the contract reach the new function with the next routing table.
    pub async fn bind_contract(
        &self,
        caller: &Caller,
        name: &str,
        bind: Option<BindContract>,
    ) -> Result<ContractInfo, ApiError> {
        need(caller, caller.role.can_deploy(), "bind contracts")?;
        let mut c = self.contract(caller, name).await?;
        // Not while the function is being promoted: each checks what the other changes.
        let _promoting = match &bind {
            Some(b) => Some(self.lock_function(&caller.org, &b.function).await?),
            None => None,
        };
        let function = match &bind {
            Some(b) => {
                let f = self.function(caller, &b.function).await?;
                let bound = self
                    .store
                    .list_contracts(&f.org)
                    .await?
                    .iter()
                    .filter(|o| o.function.as_deref() == Some(f.name.as_str()) && o.name != c.name)
                    .count();
                if bound >= MAX_BOUND_PER_FUNCTION {
                    return Err(crate::ops::functions::quota_exceeded(
                        format!(
                            "function {} implements {bound} contracts, the most one may",
                            f.name
                        ),
                        "contracts_per_function",
                        MAX_BOUND_PER_FUNCTION,
                    ));
                }
                if let Some(live) = &f.live_deployment_id
                    && !b.force
                    && let Some(d) = self.store.get_deployment(&f.org, &f.name, live).await?
                {
                    refuse_breaks(&c, &d, "bind")?;
                }
                Some(f.name)
            }
            None => None,
        };
        self.store
            .bind_contract(&c.org, &c.name, function.as_deref())
            .await?;
        let version = self.routing.publish().await?;
        let previous = std::mem::replace(&mut c.function, function.clone());
        tracing::info!(org = %c.org, contract = %c.name, function = ?function, ?previous, version, "contract bound");
        let mut told: Vec<String> = previous.iter().cloned().collect();
        if previous != function {
            told.extend(function.iter().cloned());
        }
        for f in &told {
            self.event(
                &c.org,
                f,
                None,
                match &function {
                    Some(to) => format!("contract {} bound to {to}", c.name),
                    None => format!("contract {} unbound", c.name),
                },
            );
        }
        Ok(contract_info(&c))
    }

    /// The OpenAPI 3.1 document of a contract.
    pub async fn contract_openapi(&self, caller: &Caller, name: &str) -> Result<Value, ApiError> {
        let c = self.contract(caller, name).await?;
        let parsed = ContractName::parse(&c.name)
            .map_err(|e| ApiError::internal(format!("stored contract name: {e}")))?;
        let schema = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str(s).ok());
        let (input, output): (Option<Value>, Option<Value>) = (schema(&c.input), schema(&c.output));
        Ok(reactor_contract::openapi::document(
            &reactor_contract::openapi::Described {
                name: &c.name,
                version: parsed.version,
                description: c.description.as_deref(),
                input: input.as_ref(),
                output: output.as_ref(),
                function: c.function.as_deref(),
            },
        ))
    }

    /// Refuses to make `d` live while its schemas break a contract its function is bound
    /// to (promote with `force` skips this).
    pub(crate) async fn check_contracts(&self, d: &DeploymentRecord) -> Result<(), ApiError> {
        for c in self.store.list_contracts(&d.org).await? {
            if c.function.as_deref() == Some(d.function.as_str()) {
                refuse_breaks(&c, d, "promote")?;
            }
        }
        Ok(())
    }

    async fn contract(&self, caller: &Caller, name: &str) -> Result<ContractRecord, ApiError> {
        ContractName::parse(name).map_err(|e| ApiError::new(ErrorCode::InvalidInput, e))?;
        self.store
            .get_contract(&caller.org, name)
            .await?
            .ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("contract {name} not found"))
                    .with_detail("contract", name)
            })
    }
}

/// `manifest_invalid` when deployment `d`'s schemas break contract `c`.
fn refuse_breaks(c: &ContractRecord, d: &DeploymentRecord, what: &str) -> Result<(), ApiError> {
    let found = contract_breaks(c, d);
    if found.is_empty() {
        return Ok(());
    }
    let first = &found[0];
    Err(ApiError::new(
        ErrorCode::ManifestInvalid,
        format!(
            "deployment {} of {} breaks contract {} ({} {}{}); {what} with --force to do it anyway",
            d.id,
            d.function,
            c.name,
            first.at,
            first.reason,
            if found.len() > 1 {
                format!(", and {} more", found.len() - 1)
            } else {
                String::new()
            }
        ),
    )
    .with_detail("contract", c.name.clone())
    .with_detail("deployment_id", d.id.clone())
    .with_detail(
        "breaks",
        serde_json::to_value(&found).unwrap_or(Value::Null),
    ))
}

fn contract_breaks(c: &ContractRecord, d: &DeploymentRecord) -> Vec<Break> {
    let parse = |s: &Option<String>| -> Option<Value> {
        s.as_deref().and_then(|s| serde_json::from_str(s).ok())
    };
    let own: ContractSpec = d
        .contract
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    breaks(
        parse(&c.input).as_ref(),
        parse(&c.output).as_ref(),
        own.input.as_ref(),
        own.output.as_ref(),
    )
}
