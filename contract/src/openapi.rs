//! A contract as an OpenAPI 3.1 document (`GET /fn/v1/_admin/contracts/{name}/openapi.json`).
//!
//! OpenAPI 3.1 takes JSON Schema 2020-12 as it is, so the schemas go in unchanged. The
//! operation is the call: `POST /` on the contract's host (a caller reaches it through an
//! alias of its `calls`, `http://ALIAS.reactor.internal/`), its body the `input`, a 200's
//! the `output`, and the platform's errors as the shared error body.

use serde_json::{Value, json};

/// What the document says of the contract.
pub struct Described<'a> {
    /// `NAME@VERSION`.
    pub name: &'a str,
    pub version: u32,
    pub description: Option<&'a str>,
    pub input: Option<&'a Value>,
    pub output: Option<&'a Value>,
    /// The function bound in the org, when there is one.
    pub function: Option<&'a str>,
}

/// The OpenAPI 3.1 document of a contract.
pub fn document(c: &Described<'_>) -> Value {
    let anything = json!({});
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        })
    };
    let mut description = c.description.unwrap_or("").to_string();
    if let Some(f) = c.function {
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str(&format!("Implemented in this org by function `{f}`."));
    }
    let operation = c.name.split('@').next().unwrap_or(c.name);
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": c.name,
            "version": c.version.to_string(),
            "description": description,
        },
        "servers": [{
            "url": "http://{alias}.reactor.internal",
            "description": "From a function: the alias its manifest's calls gives the contract",
            "variables": {"alias": {"default": operation.replace('.', "-")}}
        }],
        "paths": {
            "/": {
                "post": {
                    "operationId": operation,
                    "summary": format!("Call {}", c.name),
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": c.input.unwrap_or(&anything)}}
                    },
                    "responses": {
                        "200": {
                            "description": "The function's answer",
                            "content": {"application/json": {"schema": c.output.unwrap_or(&anything)}}
                        },
                        "400": error("invalid_input: the body breaks the input schema (details.errors: each with its JSON pointer)"),
                        "403": error("call_not_allowed or policy_denied"),
                        "404": error("function_not_found: the contract is bound to no function in this org"),
                        "429": error("too_many_requests"),
                        "502": error("invalid_output: the answer breaks the output schema"),
                        "503": error("circuit_open or deployment_not_ready"),
                        "504": error("deadline_exceeded"),
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {"type": "object"}
                            }
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_carries_the_schemas_unchanged() {
        let input = json!({"type": "object", "required": ["to"]});
        let output = json!({"type": "object"});
        let doc = document(&Described {
            name: "email.sender@1",
            version: 1,
            description: Some("Sends mail."),
            input: Some(&input),
            output: Some(&output),
            function: Some("smtp-sender"),
        });
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], "1");
        let post = &doc["paths"]["/"]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"],
            input
        );
        assert_eq!(
            post["responses"]["200"]["content"]["application/json"]["schema"],
            output
        );
        assert_eq!(post["operationId"], "email.sender");
        assert!(
            doc["info"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("smtp-sender"))
        );
        // The document's own schemas compile as 2020-12 (OpenAPI 3.1's dialect).
        let error = &doc["components"]["schemas"]["Error"];
        crate::Schema::compile(error, "Error").expect("compiles");
    }
}
