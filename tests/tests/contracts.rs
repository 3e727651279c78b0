//! Contracts, end to end through the real `reactor dev`, with the Bun probe function:
//! - a manifest's `contract`: schemas compiled at deploy, inputs refused with their JSON
//!   pointers, outputs refused when asked, `mode: report` only logging;
//! - named contracts (`email.sender@1`): bound to a function, called through a caller's
//!   `calls`, rebound without touching the caller, promote refused on a breaking schema
//!   unless forced, and documented as OpenAPI 3.1;
//! - the declared call graph: its worst-case depth and its loops reported at upload.

use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn post(s: &Server, path: &str, body: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = s
        .request(Method::POST, path)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}\n{}", s.logs()));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn pointers(error: &Value) -> Vec<String> {
    error["error"]["details"]["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["pointer"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn mail_input() -> Value {
    json!({
        "type": "object",
        "required": ["to", "subject"],
        "properties": {
            "to": {"type": "string", "format": "email"},
            "subject": {"type": "string", "maxLength": 40},
            "id": {"type": "string"}
        },
        "additionalProperties": false
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_contract_checks_inputs_and_outputs() {
    let s = Server::start();
    let contract = json!({"contract": {
        "input": mail_input(),
        "output": {"type": "object", "required": ["id"]},
        "validate_output": true
    }});
    s.deploy_live_runtime("mailer", "bun", bun_probe_bundle("v1", Some(&contract)))
        .await;

    // A valid body reaches the function (echoed back: it is the output, with its id).
    let valid = r#"{"to":"ada@example.com","subject":"hi","id":"m1"}"#;
    let (status, _, v) = post(&s, "/fn/v1/mailer/echo", valid).await;
    assert_eq!((status, &v["id"]), (200, &json!("m1")), "{v}");

    // Each violation with its JSON pointer, and the function never sees the request.
    let (status, _, v) = post(
        &s,
        "/fn/v1/mailer/echo",
        r#"{"to":"not an address","subject":7,"cc":"x"}"#,
    )
    .await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_input")),
        "{v}"
    );
    let found = pointers(&v);
    for expected in ["/to", "/subject", ""] {
        assert!(found.iter().any(|p| p == expected), "{expected} in {v}");
    }
    let (status, _, v) = post(&s, "/fn/v1/mailer/echo", "{not json").await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not JSON")),
        "{v}"
    );

    // A GET without a body is not held to the input; its answer is to the output: the
    // probe's "/" has no id.
    let resp = s
        .request(Method::GET, "/fn/v1/mailer/")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "invalid_output", "{v}");
    assert_eq!(
        v["error"]["details"]["errors"][0]["schema_path"], "/required",
        "{v}"
    );
    // Which keyword, never the value: the answer is what is kept from the client.
    assert!(!v.to_string().contains("instance"), "{v}");
    // A non-2xx answer is not an output.
    let (status, _, _) = post(&s, "/fn/v1/mailer/nowhere", valid).await;
    assert_eq!(status, 404);

    // Report mode lets it through, says so, and logs it.
    let report = json!({"contract": {"input": mail_input(), "mode": "report"}});
    s.deploy_live_runtime("dry", "bun", bun_probe_bundle("v1", Some(&report)))
        .await;
    let (status, headers, v) = post(&s, "/fn/v1/dry/echo", r#"{"to":"x"}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-reactor-contract-violations"], "input");
    let (_, headers, _) = post(&s, "/fn/v1/dry/echo", valid).await;
    assert!(!headers.contains_key("x-reactor-contract-violations"));
    let logged = wait_until(std::time::Duration::from_secs(10), || async {
        let text = s
            .request(Method::GET, "/fn/v1/_admin/functions/dry/logs?follow=false")
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("contract report: the input breaks")
            .then_some(text)
    })
    .await;
    assert!(logged.is_some(), "the violation is logged");

    // Schemas are compiled at deploy: a bad one is refused, naming where.
    let bad = json!({"contract": {"input": {"type": "strng"}}});
    let up = s.upload("mailer", bun_probe_bundle("v2", Some(&bad))).await;
    assert_eq!(up.status(), 422);
    let v: Value = up.json().await.expect("json");
    assert_eq!(v["error"]["code"], "manifest_invalid");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("contract.input")),
        "{v}"
    );
    let remote = json!({"contract": {"input": {"$ref": "https://example.com/s.json"}}});
    let up = s
        .upload("mailer", bun_probe_bundle("v2", Some(&remote)))
        .await;
    assert_eq!(up.status(), 422, "remote references are not fetched");
}

/// Creates `email.sender@1` (its input requires `to`) through the admin API.
async fn create_sender(s: &Server) {
    let created = s
        .request(Method::POST, "/fn/v1/_admin/contracts")
        .json(&json!({
            "name": "email.sender@1",
            "description": "Sends one email.",
            "input": {"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}}
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(
        created.status(),
        201,
        "{}",
        created.text().await.unwrap_or_default()
    );
}

fn implementation(version: &str, input: Value) -> Vec<u8> {
    bun_probe_bundle(version, Some(&json!({"contract": {"input": input}})))
}

#[tokio::test(flavor = "multi_thread")]
async fn named_contracts_are_bound_rebound_and_kept() {
    let s = Server::start();
    create_sender(&s).await;
    let same =
        json!({"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}});
    s.deploy_live_runtime("smtp", "bun", implementation("smtp", same.clone()))
        .await;
    s.deploy_live_runtime("ses", "bun", implementation("ses", same.clone()))
        .await;
    s.cli_ok(&["contracts", "bind", "email.sender@1", "smtp"]);
    let caller = json!({"calls": {"mail": {"contract": "email.sender@1"}}});
    s.deploy_live_runtime("app", "bun", bun_probe_bundle("app", Some(&caller)))
        .await;
    let through = "/fn/v1/app/relay?to=mail.reactor.internal&path=/";

    // The caller reaches the bound function; the contract's input is checked on the way.
    let (status, _, v) = post(&s, through, r#"{"to":"ada@example.com"}"#).await;
    assert_eq!((status, &v["version"]), (200, &json!("smtp")), "{v}");
    let (status, _, v) = post(&s, through, r#"{"subject":"no one"}"#).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("invalid_input")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("email.sender@1")),
        "{v}"
    );

    // Rebinding moves the callers without touching them.
    let out = s.cli_ok(&["contracts", "bind", "email.sender@1", "ses"]);
    assert!(out.contains("bound to ses"), "{out}");
    let (status, _, v) = post(&s, through, r#"{"to":"ada@example.com"}"#).await;
    assert_eq!((status, &v["version"]), (200, &json!("ses")), "{v}");

    // A deployment of ses whose input is narrower breaks the contract: promote refuses
    // it, naming where, unless forced.
    let narrower = json!({"type": "object", "required": ["to", "subject"], "properties": {"to": {"type": "string"}}});
    let id = s
        .deploy_ready("ses", implementation("ses-2", narrower))
        .await;
    let refused = s
        .request(Method::POST, "/fn/v1/_admin/functions/ses/promote")
        .json(&json!({"deployment_id": id}))
        .send()
        .await
        .expect("promote");
    assert_eq!(refused.status(), 422);
    let v: Value = refused.json().await.expect("json");
    assert_eq!(v["error"]["code"], "manifest_invalid", "{v}");
    assert_eq!(v["error"]["details"]["contract"], "email.sender@1");
    assert_eq!(
        v["error"]["details"]["breaks"][0]["at"], "/input/required",
        "{v}"
    );
    let (_, _, v) = post(&s, through, r#"{"to":"ada@example.com"}"#).await;
    assert_eq!(v["version"], "ses", "the live deployment did not change");
    let forced = s.cli(&[
        "functions",
        "promote",
        "ses",
        "--deployment",
        &id,
        "--force",
    ]);
    assert!(forced.success, "{}", forced.stderr);
    // Forced, the break is the callers' to see: what the contract allows is refused.
    let (status, _, v) = post(&s, through, r#"{"to":"ada@example.com"}"#).await;
    assert_eq!(
        (status, &v["error"]["details"]["function"]),
        (400, &json!("ses")),
        "{v}"
    );
    let (_, _, v) = post(&s, through, r#"{"to":"ada@example.com","subject":"hi"}"#).await;
    assert_eq!(v["version"], "ses-2", "{v}");
    // Binding a function whose live deployment breaks it is refused the same way.
    let bind = s.cli(&["contracts", "bind", "email.sender@1", "ses"]);
    assert!(
        !bind.success && bind.stderr.contains("manifest_invalid"),
        "{}",
        bind.stderr
    );

    // The OpenAPI document carries the schemas as they are.
    let doc: Value = s
        .request(
            Method::GET,
            "/fn/v1/_admin/contracts/email.sender@1/openapi.json",
        )
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"],
        same
    );
    let listed = s.cli_ok(&["contracts", "list"]);
    assert!(
        listed.contains("email.sender@1") && listed.contains("ses"),
        "{listed}"
    );

    // Versions never change; a bound contract is not deleted; unbound, its callers are
    // told it is bound to nothing.
    let again = s
        .request(Method::POST, "/fn/v1/_admin/contracts")
        .json(&json!({"name": "email.sender@1"}))
        .send()
        .await
        .expect("create");
    assert_eq!(again.status(), 400);
    assert!(!s.cli(&["contracts", "delete", "email.sender@1"]).success);
    s.cli_ok(&["contracts", "unbind", "email.sender@1"]);
    let (status, _, v) = post(&s, through, r#"{"to":"ada@example.com"}"#).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (404, &json!("function_not_found")),
        "{v}"
    );
    s.cli_ok(&["contracts", "delete", "email.sender@1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_declared_call_graph_is_checked_at_deploy() {
    let s = Server::start();
    let calls = |to: &str| json!({"calls": {to: {"function": to}}});
    s.deploy_live_runtime("leaf", "bun", bun_probe_bundle("v1", None))
        .await;
    s.deploy_live_runtime(
        "middle",
        "bun",
        bun_probe_bundle("v1", Some(&calls("leaf"))),
    )
    .await;
    s.create("top", "bun").await;
    let up = s
        .upload("top", bun_probe_bundle("v1", Some(&calls("middle"))))
        .await;
    assert_eq!(up.status(), 202);
    let d: Value = up.json().await.expect("json");
    assert_eq!(d["call_graph"]["depth"], 3, "{d}");
    assert_eq!(d["call_graph"]["path"], json!(["top", "middle", "leaf"]));

    // leaf calling top closes the loop top -> middle -> leaf -> top once top is live:
    // reported (the depth limit bounds it at run time), not refused.
    let up = s
        .upload("leaf", bun_probe_bundle("v2", Some(&calls("top"))))
        .await;
    let d: Value = up.json().await.expect("json");
    assert_eq!(
        d["call_graph"]["cycle"],
        Value::Null,
        "top is not live yet: {d}"
    );
    let id = s
        .deploy_ready("top", bun_probe_bundle("v1", Some(&calls("middle"))))
        .await;
    s.promote("top", &id).await;
    let up = s
        .upload("leaf", bun_probe_bundle("v3", Some(&calls("top"))))
        .await;
    assert_eq!(up.status(), 202);
    let d: Value = up.json().await.expect("json");
    assert_eq!(
        d["call_graph"]["cycle"],
        json!(["leaf", "top", "middle", "leaf"]),
        "{d}"
    );
    assert_eq!(d["call_graph"]["depth"], 3, "{d}");
    let id = d["id"].as_str().expect("id").to_string();
    s.wait_deployment("leaf", &id).await;
    let logged = wait_until(std::time::Duration::from_secs(10), || async {
        let text = s
            .request(
                Method::GET,
                "/fn/v1/_admin/functions/leaf/logs?follow=false",
            )
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("the calls can loop").then_some(text)
    })
    .await;
    assert!(logged.is_some(), "the loop is in the function's log");
}
