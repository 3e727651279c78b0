//! Contracts as the platform checks them (the shapes are in `reactor_api::contract`):
//!
//! - [`Schema::compile`]: a JSON Schema 2020-12, formats asserted, compiled once (at deploy
//!   to refuse a bad one with `manifest_invalid`, by routers once per routing table). No
//!   reference is fetched: a `$ref` outside the schema is a compile error.
//! - [`Schema::check`] and [`check_body`]: a request or answer body against a schema, each
//!   violation with its JSON pointer ([`Violation`]).
//! - [`compat`]: whether an implementation's schemas break a named contract's.
//! - [`openapi`]: a contract as an OpenAPI 3.1 document.
#![forbid(unsafe_code)]

pub mod compat;
pub mod openapi;

use serde::Serialize;
use serde_json::Value;

/// Most violations one check reports (the first ones the validator finds).
pub const MAX_VIOLATIONS: usize = 20;

/// A schema that does not compile, with the validator's reason.
#[derive(Debug, thiserror::Error)]
#[error("{at} is not a valid JSON Schema (2020-12): {reason}")]
pub struct SchemaError {
    pub at: String,
    pub reason: String,
}

/// A compiled schema.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

/// Where a body breaks its schema: `pointer` is the JSON pointer of the offending value
/// (`""` for the whole body), `schema_path` the keyword that refused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub pointer: String,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub schema_path: String,
}

impl Schema {
    /// Compiles `schema` (named `at` in the error, like `contract.input`).
    pub fn compile(schema: &Value, at: &str) -> Result<Schema, SchemaError> {
        let error = |reason: String| SchemaError {
            at: at.to_string(),
            reason,
        };
        // The meta-schema first: compiling alone lets some malformed keywords through.
        jsonschema::meta::validate(schema).map_err(|e| error(e.to_string()))?;
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| error(e.to_string()))?;
        Ok(Schema { validator })
    }

    /// The violations of `instance`, at most [`MAX_VIOLATIONS`]; empty when it is valid.
    pub fn check(&self, instance: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(instance)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation {
                pointer: e.instance_path().as_str().to_string(),
                message: e.to_string(),
                schema_path: e.schema_path().as_str().to_string(),
            })
            .collect()
    }

    pub fn is_valid(&self, instance: &Value) -> bool {
        self.validator.is_valid(instance)
    }
}

/// A body against `schema`: it must be JSON (an empty body is `null`) and valid.
pub fn check_body(schema: &Schema, body: &[u8]) -> Result<(), Vec<Violation>> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| {
            vec![Violation {
                pointer: String::new(),
                message: format!("the body is not JSON: {e}"),
                schema_path: String::new(),
            }]
        })?
    };
    let violations = schema.check(&value);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// A contract's schemas compiled: what a router checks bodies against.
#[derive(Debug, Default)]
pub struct Compiled {
    pub input: Option<Schema>,
    pub output: Option<Schema>,
    pub validate_output: bool,
    pub mode: reactor_api::contract::Mode,
}

impl Compiled {
    /// Compiles a manifest's `contract` (each schema named under `at`).
    pub fn from_spec(
        spec: &reactor_api::contract::ContractSpec,
        at: &str,
    ) -> Result<Self, SchemaError> {
        let compile = |schema: &Option<Value>, field: &str| {
            schema
                .as_ref()
                .map(|s| Schema::compile(s, &format!("{at}.{field}")))
                .transpose()
        };
        Ok(Self {
            input: compile(&spec.input, "input")?,
            output: compile(&spec.output, "output")?,
            validate_output: spec.validate_output,
            mode: spec.mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn email() -> Schema {
        Schema::compile(
            &json!({
                "type": "object",
                "required": ["to", "subject"],
                "properties": {
                    "to": {"type": "string", "format": "email"},
                    "subject": {"type": "string", "maxLength": 20},
                    "cc": {"type": "array", "items": {"type": "string", "format": "email"}}
                },
                "additionalProperties": false
            }),
            "contract.input",
        )
        .expect("compiles")
    }

    #[test]
    fn violations_name_their_json_pointer() {
        let s = email();
        assert!(check_body(&s, br#"{"to":"a@example.com","subject":"hi"}"#).is_ok());
        let errors = check_body(
            &s,
            br#"{"to":"not an address","subject":"x","cc":["b@example.com", 7],"bcc":1}"#,
        )
        .expect_err("invalid");
        let pointers: Vec<&str> = errors.iter().map(|v| v.pointer.as_str()).collect();
        for expected in ["/to", "/cc/1", ""] {
            assert!(pointers.contains(&expected), "{expected} in {errors:?}");
        }
        let missing = check_body(&s, br#"{"to":"a@example.com"}"#).expect_err("invalid");
        assert_eq!(missing[0].pointer, "");
        assert!(missing[0].message.contains("subject"), "{missing:?}");
        let not_json = check_body(&s, b"{nope").expect_err("not JSON");
        assert!(not_json[0].message.contains("not JSON"));
        let empty = check_body(&s, b"").expect_err("null is not an object");
        assert_eq!(empty[0].pointer, "");
        assert!(check_body(&Schema::compile(&json!(true), "x").expect("ok"), b"").is_ok());
    }

    #[test]
    fn bad_schemas_and_remote_references_do_not_compile() {
        let err = Schema::compile(&json!({"type": "strng"}), "contract.input").expect_err("bad");
        assert!(err.to_string().contains("contract.input"), "{err}");
        let err = Schema::compile(&json!({"minLength": -1}), "contract.output").expect_err("bad");
        assert!(err.to_string().contains("contract.output"), "{err}");
        let remote = json!({"$ref": "https://example.com/schema.json"});
        assert!(
            Schema::compile(&remote, "x").is_err(),
            "remote refs are not fetched"
        );
        let file = json!({"$ref": "file:///etc/passwd"});
        assert!(Schema::compile(&file, "x").is_err(), "files are not read");
        let local = json!({"$defs": {"id": {"type": "integer"}}, "$ref": "#/$defs/id"});
        let s = Schema::compile(&local, "x").expect("a local ref compiles");
        assert!(s.is_valid(&json!(3)) && !s.is_valid(&json!("3")));
    }

    #[test]
    fn violations_are_capped() {
        let s = Schema::compile(
            &json!({"type": "array", "items": {"type": "string"}}),
            "contract.input",
        )
        .expect("compiles");
        let many = serde_json::to_vec(&vec![1; 100]).expect("json");
        assert_eq!(
            check_body(&s, &many).expect_err("invalid").len(),
            MAX_VIOLATIONS
        );
    }
}
