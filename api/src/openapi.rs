//! The shared parts of the OpenAPI 3.1 document (`GET /fn/v1/_admin/openapi.json`): the
//! invoke API, whose routes the routers serve and whose bodies are the functions' own; the
//! platform's error responses, read from [`ErrorCode`]'s table; and what every operation
//! gets ([`finish`]). The admin API's operations come from the control plane's handlers.

use crate::error::ErrorCode;
use crate::headers;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The security scheme: an API token (`rct_...`) or a signed-in user's access token.
pub const BEARER: &str = "bearer";

/// The methods a function answers, as the document lists them.
const INVOKE_METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

/// Every error code, by the HTTP status it is answered with.
pub fn codes_by_status() -> BTreeMap<u16, Vec<ErrorCode>> {
    use utoipa::PartialSchema;
    let schema = serde_json::to_value(ErrorCode::schema()).unwrap_or(Value::Null);
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    let names = schema["enum"].as_array().cloned().unwrap_or_default();
    for name in names {
        if let Ok(code) = serde_json::from_value::<ErrorCode>(name) {
            by_status
                .entry(code.status().as_u16())
                .or_default()
                .push(code);
        }
    }
    by_status
}

fn error_ref() -> Value {
    json!({ "$ref": "#/components/schemas/ErrorBody" })
}

/// The response of a platform error with `status`, naming the codes it can carry.
fn error_response(status: u16, codes: &[ErrorCode]) -> Value {
    let names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    let mut response_headers = json!({
        "X-Reactor-Error": {
            "description": "The error's code: the platform answered, not the function.",
            "schema": { "type": "string", "enum": names }
        },
        "X-Request-Id": {
            "description": "The request's id, also in `details.request_id`.",
            "schema": { "type": "string" }
        }
    });
    if status == 429 || status == 503 {
        response_headers["Retry-After"] = json!({
            "description": "Seconds to wait before trying again.",
            "schema": { "type": "integer", "minimum": 0 }
        });
    }
    json!({
        "description": format!("A platform error: {}.", names.join(", ")),
        "headers": response_headers,
        "content": { "application/json": { "schema": error_ref() } }
    })
}

/// The invoke API: `/fn/v1/{name}` and everything below it, any method, with the
/// function's own bodies; the platform's errors are told apart by `X-Reactor-Error`.
pub fn invoke_paths() -> Map<String, Value> {
    let statuses = codes_by_status();
    let platform: Vec<String> = statuses
        .iter()
        .map(|(status, codes)| {
            let names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
            format!("{status} {}", names.join(", "))
        })
        .collect();
    let answer = json!({
        "description": format!(
            "The function's own answer: any status, headers and body. A platform error \
             instead carries `X-Reactor-Error` and an `ErrorBody` (by status: {}).",
            platform.join("; ")
        ),
        "headers": {
            "X-Reactor-Function": { "description": "The function that answered.", "schema": { "type": "string" } },
            "X-Reactor-Cold-Start": { "description": "Whether this invocation started an instance.", "schema": { "type": "string", "enum": ["true", "false"] } },
            "X-Reactor-Duration-Ms": { "description": "Milliseconds the platform spent, the function included.", "schema": { "type": "string" } },
            "X-Reactor-Error": { "description": "Only on a platform error: its code.", "schema": { "type": "string" } },
            "X-Request-Id": { "description": "The request's id.", "schema": { "type": "string" } }
        },
        "content": { "*/*": { "schema": {} } }
    });
    let name = json!({
        "name": "name", "in": "path", "required": true,
        "description": "The function.",
        "schema": { "type": "string" }
    });
    let rest = json!({
        "name": "path", "in": "path", "required": true,
        "description": "The path below the function's mount, as the function sees it.",
        "schema": { "type": "string" }
    });
    let operation = |suffix: &str, method: &str| {
        json!({
            "tags": ["invoke"],
            "operationId": format!("invoke{suffix}_{method}"),
            "summary": "Invoke a function's live deployment",
            "description": format!(
                "Runs the function with the request as sent (the body streams both ways). \
                 Callers need a token of the function's org (any role) unless the function's \
                 policy says otherwise; `{}` and `{}` are the platform's.",
                headers::ORG, headers::IDEMPOTENCY_KEY
            ),
            "security": [{ BEARER: [] }],
            "requestBody": {
                "required": false,
                "content": { "*/*": { "schema": {} } }
            },
            "responses": { "default": answer.clone() }
        })
    };
    let mut paths = Map::new();
    for (path, suffix, params) in [
        ("/fn/v1/{name}", "", vec![name.clone()]),
        ("/fn/v1/{name}/{path}", "_path", vec![name.clone(), rest]),
    ] {
        let mut item = Map::new();
        item.insert("parameters".into(), Value::Array(params));
        for method in INVOKE_METHODS {
            item.insert(method.into(), operation(suffix, method));
        }
        paths.insert(path.into(), Value::Object(item));
    }
    paths
}

/// Completes a document whose operations and schemas are in place: the security scheme,
/// the org header, and the platform's error responses on every operation (those it names
/// already are kept): 400 and 500 everywhere, 401 and 403 where a token is needed, 404
/// where the path names something, and `default` for the rest.
pub fn finish(doc: &mut Value) {
    let statuses = codes_by_status();
    let components = &mut doc["components"];
    components["securitySchemes"] = json!({
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (`rct_...`) or a signed-in user's access token \
                            (`POST /fn/v1/_admin/auth/token`)."
        }
    });
    components["parameters"] = json!({
        "Org": {
            "name": "X-Reactor-Org",
            "in": "header",
            "required": false,
            "description": "The org to act in, for a user who belongs to several.",
            "schema": { "type": "string" }
        }
    });
    let mut responses = Map::new();
    for (status, codes) in &statuses {
        responses.insert(format!("Error{status}"), error_response(*status, codes));
    }
    let all: Vec<ErrorCode> = statuses.values().flatten().copied().collect();
    responses.insert("Error".into(), error_response(0, &all));
    if let Some(Value::String(d)) = responses
        .get_mut("Error")
        .and_then(|r| r.get_mut("description"))
    {
        *d = "A platform error (any code).".into();
    }
    components["responses"] = Value::Object(responses);

    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        let names_something = path.contains('{');
        for (method, op) in item.iter_mut() {
            if !matches!(
                method.as_str(),
                "get" | "put" | "post" | "delete" | "patch" | "head" | "options"
            ) {
                continue;
            }
            let secured = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty());
            if secured {
                let params = op["parameters"].as_array_mut();
                let org = json!({ "$ref": "#/components/parameters/Org" });
                match params {
                    Some(params) => params.push(org),
                    None => op["parameters"] = json!([org]),
                }
            }
            // The invoke API's answers are the functions' own, any status: its one
            // response (`default`) says how a platform error is told apart.
            let invoke = op["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "invoke"));
            if invoke {
                continue;
            }
            let mut wanted = vec![400u16, 500];
            if secured {
                wanted.extend([401, 403]);
            }
            if names_something {
                wanted.push(404);
            }
            let Some(responses) = op["responses"].as_object_mut() else {
                continue;
            };
            // An error the handler names (its own description) gets the shared response
            // with its headers, keeping that description.
            for (status, response) in responses.iter_mut() {
                let is_error_body = response
                    .pointer("/content/application~1json/schema/$ref")
                    .is_some_and(|r| r == "#/components/schemas/ErrorBody");
                let shared = status
                    .parse::<u16>()
                    .ok()
                    .filter(|s| statuses.contains_key(s));
                if let (true, Some(status)) = (is_error_body, shared) {
                    let description = response["description"].clone();
                    *response = json!({
                        "$ref": format!("#/components/responses/Error{status}"),
                        "description": description,
                    });
                }
            }
            for status in wanted {
                if statuses.contains_key(&status) {
                    responses.entry(status.to_string()).or_insert_with(
                        || json!({ "$ref": format!("#/components/responses/Error{status}") }),
                    );
                }
            }
            responses
                .entry("default")
                .or_insert_with(|| json!({ "$ref": "#/components/responses/Error" }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_under_its_status() {
        let by_status = codes_by_status();
        assert!(by_status[&404].contains(&ErrorCode::FunctionNotFound));
        assert!(by_status[&429].contains(&ErrorCode::TooManyRequests));
        assert!(by_status[&400].contains(&ErrorCode::InvalidInput));
        let total: usize = by_status.values().map(Vec::len).sum();
        // One per variant of ErrorCode: a new code shows up here by itself.
        assert!(total >= 31, "{total} codes");
    }

    #[test]
    fn finishing_adds_the_errors_an_operation_can_meet() {
        let mut doc = json!({
            "components": {},
            "paths": {
                "/fn/v1/_admin/functions/{name}": {
                    "get": { "security": [{ "bearer": [] }], "responses": { "200": {} } }
                },
                "/fn/v1/_admin/auth/token": {
                    "post": { "responses": { "200": {}, "429": { "description": "own" } } }
                }
            }
        });
        finish(&mut doc);
        let get = &doc["paths"]["/fn/v1/_admin/functions/{name}"]["get"];
        for status in ["400", "401", "403", "404", "500", "default"] {
            assert!(get["responses"][status].is_object(), "{status} missing");
        }
        assert_eq!(get["parameters"][0]["$ref"], "#/components/parameters/Org");
        let token = &doc["paths"]["/fn/v1/_admin/auth/token"]["post"];
        assert_eq!(token["responses"]["429"]["description"], "own");
        assert!(token["responses"]["401"].is_null());
        assert!(token["parameters"].is_null());
        let mut doc = json!({
            "components": {},
            "paths": { "/x": { "post": { "responses": { "409": {
                "description": "function_exists",
                "content": { "application/json": { "schema": error_ref() } }
            } } } } }
        });
        finish(&mut doc);
        let conflict = &doc["paths"]["/x"]["post"]["responses"]["409"];
        assert_eq!(conflict["$ref"], "#/components/responses/Error409");
        assert_eq!(conflict["description"], "function_exists");
        assert!(
            doc["components"]["responses"]["Error404"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("function_not_found"))
        );
    }
}
