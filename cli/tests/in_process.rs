//! In-process service tests: the embedded server's router driven with `oneshot`, with
//! real SQLite, real storage and the real wasmtime worker, no socket.

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use reactor_cli::dev::{DevArgs, start};
use reactor_tests::{build_component, bundle, read, sha256_hex};
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

const TOKEN: &str = "rct_InPr0cessTestT0kenXq7Wm2Rk9Lb4Vn8Zc3Hj6Pd1Fs5";

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: Body,
    extra: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-reactor-org", "acme");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_and_invoke_in_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = DevArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        workdir: Some(dir.path().join("work")),
        config: None,
        org: "acme".into(),
        admin_token: Some(TOKEN.into()),
        threads: None,
        grace_secs: 1,
        log: Default::default(),
    };
    let server = start(&args).await.expect("starts");
    assert_eq!(server.bootstrap.token, TOKEN);
    let app = server.app;

    let (st, _, body) = call(
        &app,
        "POST",
        "/fn/v1/_admin/functions",
        Body::from(r#"{"name":"probe","runtime":"wasm"}"#),
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    assert_eq!(body["runtime"], "wasm");

    // Unknown admin paths and bad JSON are JSON errors too.
    let (st, h, body) = call(
        &app,
        "GET",
        "/fn/v1/_admin/nothing-here",
        Body::empty(),
        &[],
    )
    .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert!(h.contains_key("x-request-id"));
    let (st, _, body) = call(
        &app,
        "POST",
        "/fn/v1/_admin/functions",
        Body::from("{"),
        &[],
    )
    .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_input"))
    );
    // Lambda is not enabled by default.
    let (st, _, body) = call(
        &app,
        "POST",
        "/fn/v1/_admin/functions",
        Body::from(r#"{"name":"b","runtime":"lambda"}"#),
        &[],
    )
    .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("runtime_disabled"))
    );

    let b = bundle(&[(
        "probe.wasm",
        &read(&build_component("tests/fixtures/probe-wasm", true)),
    )]);
    let sha = sha256_hex(&b);
    let (st, _, dep) = call(
        &app,
        "POST",
        "/fn/v1/_admin/functions/probe/deployments",
        Body::from(b),
        &[("x-reactor-bundle-sha256", &sha)],
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{dep}");
    assert_eq!(dep["sha256"], sha.as_str());
    let id = dep["id"].as_str().expect("id").to_string();
    let path = format!("/fn/v1/_admin/functions/probe/deployments/{id}");
    let mut status = String::new();
    for _ in 0..600 {
        let (_, _, d) = call(&app, "GET", &path, Body::empty(), &[]).await;
        status = d["status"].as_str().unwrap_or_default().to_string();
        if status != "materializing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "ready");
    let (st, _, live) = call(
        &app,
        "POST",
        "/fn/v1/_admin/functions/probe/promote",
        Body::empty(),
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (live["id"].as_str(), live["live"].as_bool()),
        (Some(id.as_str()), Some(true))
    );

    let (st, h, echo) = call(
        &app,
        "PUT",
        "/fn/v1/probe/items/7?full=1",
        Body::from("x"),
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(echo["path"], "/items/7?full=1");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(h["x-reactor-function"], "probe");
    assert_eq!(h["x-reactor-cold-start"], "false");
    assert_eq!(
        json!(echo["headers"]["x-reactor-caller-org"]),
        json!("acme")
    );
}
