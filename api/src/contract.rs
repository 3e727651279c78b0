//! Contracts: the JSON Schemas (2020-12) of what a function takes and gives back.
//!
//! A deployment declares its own in the manifest's `contract`; the router validates each
//! request's JSON body against `input` (400 `invalid_input`, each error with its JSON
//! pointer) and, when `validate_output` is set, each 2xx answer against `output` (502
//! `invalid_output`). `mode: report` only logs what enforcing would have refused.
//!
//! A *named* contract (`email.sender@1`) is an admin resource of an org, bound to the
//! function that implements it; callers address the contract through their manifest's
//! `calls` (`{"email-sender": {"contract": "email.sender@1"}}`) and do not change when the
//! binding does. This module holds the shapes and names; `reactor-contract` compiles and
//! compares the schemas (the crates that only run functions do not link a validator).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Most bytes of one schema (as JSON): schemas travel in every routing table.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

/// A manifest's `contract`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    /// The schema of the request's JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The schema of a 2xx answer's JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Validate answers too (they are then buffered, not streamed).
    #[serde(default, skip_serializing_if = "is_false")]
    pub validate_output: bool,
    #[serde(default, skip_serializing_if = "Mode::is_enforce")]
    pub mode: Mode,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a violation does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse it: 400 `invalid_input`, 502 `invalid_output`.
    #[default]
    Enforce,
    /// Let it through and log it (a dry run before enforcing).
    Report,
}

impl Mode {
    fn is_enforce(&self) -> bool {
        *self == Mode::Enforce
    }
}

impl ContractSpec {
    /// Sizes and shapes; the schemas themselves are compiled by `reactor-contract`.
    pub fn check(&self, at: &str) -> Result<(), String> {
        for (field, schema) in [("input", &self.input), ("output", &self.output)] {
            let Some(schema) = schema else { continue };
            if !(schema.is_object() || schema.is_boolean()) {
                return Err(format!(
                    "{at}.{field} must be a JSON Schema (an object or a boolean)"
                ));
            }
            let len = schema.to_string().len();
            if len > MAX_SCHEMA_BYTES {
                return Err(format!(
                    "{at}.{field} is {len} bytes, at most {MAX_SCHEMA_BYTES}"
                ));
            }
        }
        if self.validate_output && self.output.is_none() {
            return Err(format!("{at}.validate_output needs {at}.output"));
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.input.is_none() && self.output.is_none()
    }
}

/// A named contract's name and major version: `email.sender@1`. The name is dot-separated
/// labels of lowercase letters, digits and '-'; a new major version is a new contract.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContractName {
    pub name: String,
    pub version: u32,
}

impl ContractName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("contract {s:?} is not NAME@VERSION (like email.sender@1): {why}");
        let (name, version) = s.split_once('@').ok_or_else(|| bad("no @VERSION"))?;
        let version: u32 = version
            .parse()
            .ok()
            .filter(|v| *v >= 1 && version.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("the version is a whole number from 1"))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.starts_with(|c: char| c.is_ascii_lowercase())
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if name.len() > 100 || !name.split('.').all(label_ok) {
            return Err(bad(
                "the name is labels of lowercase letters, digits and '-', separated by dots, at most 100 characters",
            ));
        }
        Ok(Self {
            name: name.to_string(),
            version,
        })
    }
}

impl fmt::Display for ContractName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// `POST /fn/v1/_admin/contracts`: a named contract (immutable once created).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContract {
    /// `NAME@VERSION`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Validate the answers of calls made through the contract.
    #[serde(default)]
    pub validate_output: bool,
}

/// A named contract as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContractInfo {
    pub name: String,
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    pub validate_output: bool,
    /// The function that implements it in this org, when bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub created_at: String,
}

/// `PUT /fn/v1/_admin/contracts/{name}/binding`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindContract {
    pub function: String,
    /// Bind even when the function's live deployment breaks the contract.
    #[serde(default)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contract_names() {
        let n = ContractName::parse("email.sender@1").expect("valid");
        assert_eq!((n.name.as_str(), n.version), ("email.sender", 1));
        assert_eq!(n.to_string(), "email.sender@1");
        assert!(ContractName::parse("billing@12").is_ok());
        for bad in [
            "email.sender",
            "email.sender@0",
            "email.sender@v1",
            "email.sender@+1",
            "Email@1",
            "email..sender@1",
            ".email@1",
            "email.@1",
            "1email@1",
            "email-@1",
            "@1",
        ] {
            assert!(ContractName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_are_checked_for_shape_and_size() {
        let ok = ContractSpec {
            input: Some(json!({"type": "object"})),
            ..Default::default()
        };
        assert!(ok.check("contract").is_ok());
        let not_a_schema = ContractSpec {
            input: Some(json!("object")),
            ..Default::default()
        };
        assert!(
            not_a_schema
                .check("contract")
                .expect_err("refused")
                .contains("contract.input")
        );
        let no_output = ContractSpec {
            validate_output: true,
            ..Default::default()
        };
        assert!(
            no_output
                .check("contract")
                .expect_err("refused")
                .contains("validate_output")
        );
        let huge = ContractSpec {
            output: Some(json!({"description": "x".repeat(MAX_SCHEMA_BYTES)})),
            ..Default::default()
        };
        assert!(
            huge.check("contract")
                .expect_err("refused")
                .contains("bytes")
        );
        let parsed: ContractSpec =
            serde_json::from_value(json!({"input": true, "mode": "report"})).expect("parses");
        assert_eq!(parsed.mode, Mode::Report);
        assert!(serde_json::from_value::<ContractSpec>(json!({"inputs": {}})).is_err());
    }
}
