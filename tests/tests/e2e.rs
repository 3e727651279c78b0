//! End-to-end: the real `reactor dev` on a free loopback port, driven by the real CLI and
//! by HTTP, with real components built for wasm32-wasip2.

use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PROBE: &str = "tests/fixtures/probe-wasm";

fn probe_bundle() -> Vec<u8> {
    wasm_probe_bundle(None)
}

fn probe_bundle_with(manifest: &Value) -> Vec<u8> {
    wasm_probe_bundle(Some(manifest))
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error body is JSON");
    (status, body)
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["details"]["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn quickstart_then_v2_then_rollback() {
    let s = Server::start();
    assert_eq!(s.org, "acme");
    // The seed's CLI lines, on the example with a build step.
    s.cli_ok(&["functions", "create", "hello-wasm", "--runtime", "wasm"]);
    let deployed = s.cli_ok(&[
        "functions",
        "deploy",
        "hello-wasm",
        "--dir",
        "./examples/hello-wasm",
    ]);
    assert!(deployed.contains("is ready"), "{deployed}");
    s.cli_ok(&["functions", "promote", "hello-wasm"]);
    let out = s.cli_ok(&[
        "functions",
        "invoke",
        "hello-wasm",
        "--json",
        r#"{"name":"Reactor"}"#,
    ]);
    assert_eq!(out.trim(), r#"{"message":"Hello, Reactor!"}"#);

    // The seed's curl line.
    let resp = s
        .http
        .post(format!("{}/fn/v1/hello-wasm", s.url))
        .header("Authorization", format!("Bearer {}", s.token))
        .header("X-Reactor-Org", "acme")
        .header("Content-Type", "application/json")
        .body(r#"{"name":"Reactor"}"#)
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-reactor-function"], "hello-wasm");
    // Promote loaded the deployment: the first request is warm.
    assert_eq!(h["x-reactor-cold-start"], "false");
    let ms: f64 = h["x-reactor-duration-ms"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    assert!((0.0..5000.0).contains(&ms), "{ms}");
    assert!(
        h["x-request-id"]
            .to_str()
            .expect("ascii")
            .starts_with("req_")
    );
    assert_eq!(
        resp.json::<Value>().await.expect("json"),
        json!({"message": "Hello, Reactor!"})
    );
    // No body, or not JSON: World.
    let out = s.cli_ok(&["functions", "invoke", "hello-wasm", "--data", "not json"]);
    assert_eq!(out.trim(), r#"{"message":"Hello, World!"}"#);

    // v2: a bundle without a manifest (the one .wasm file is the entrypoint).
    let dir = dir_with("probe.wasm", &read(&build_component(PROBE, true))).expect("dir");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    s.cli_ok(&["functions", "deploy", "hello-wasm", "--dir", &dir_arg]);
    let list: Value = serde_json::from_str(&s.cli_ok(&[
        "--output",
        "json",
        "functions",
        "deployments",
        "list",
        "hello-wasm",
    ]))
    .expect("json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2);
    let (v2, v1) = (
        list[0]["id"].as_str().expect("id"),
        list[1]["id"].as_str().expect("id"),
    );
    assert_eq!(list[0]["entrypoint"], "probe.wasm");
    assert_eq!(list[0]["status"], "ready");
    assert_eq!(list[1]["live"], true);
    assert_eq!(list[0]["live"], false);
    assert!(v2.starts_with("dep_") && list[0]["sha256"].as_str().is_some_and(|s| s.len() == 64));

    s.cli_ok(&["functions", "promote", "hello-wasm"]);
    let out: Value =
        serde_json::from_str(&s.cli_ok(&["functions", "invoke", "hello-wasm", "--json", "{}"]))
            .expect("probe answers JSON");
    assert_eq!(out["probe"], true);

    let rolled = s.cli_ok(&["functions", "rollback", "hello-wasm", "--to-deployment", v1]);
    assert!(rolled.contains(v1), "{rolled}");
    let out = s.cli_ok(&[
        "functions",
        "invoke",
        "hello-wasm",
        "--json",
        r#"{"name":"again"}"#,
    ]);
    assert_eq!(out.trim(), r#"{"message":"Hello, again!"}"#);
    let text = s.cli_ok(&["functions", "deployments", "list", "hello-wasm"]);
    let live_line = text.lines().find(|l| l.contains(v1)).expect("v1 listed");
    assert!(live_line.split_whitespace().any(|w| w == "*"), "{text}");

    // Errors from the CLI: the code and message first, then the details (the request id
    // to quote), and a non-zero exit.
    let out = s.cli(&[
        "functions",
        "rollback",
        "hello-wasm",
        "--to-deployment",
        "dep_nope",
    ]);
    assert!(!out.success);
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(first.contains("deployment_not_found"), "{}", out.stderr);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.trim().starts_with("request_id: req_")),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_function_sees_its_own_path_and_no_platform_credentials() {
    let s = Server::start();
    s.deploy_live("probe", probe_bundle()).await;
    let cases = [
        ("/fn/v1/probe", "/"),
        ("/fn/v1/probe/", "/"),
        ("/fn/v1/probe/a/b?x=1", "/a/b?x=1"),
        (
            "/fn/v1/probe/a%20b/c%2Fd?q=%C3%A9&r=1",
            "/a%20b/c%2Fd?q=%C3%A9&r=1",
        ),
    ];
    for (path, seen) in cases {
        let resp = s
            .request(Method::POST, path)
            .body("payload")
            .send()
            .await
            .expect("invoke");
        assert_eq!(resp.status(), 200, "{path}");
        let request_id = resp.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        let echo: Value = resp.json().await.expect("json");
        assert_eq!(echo["path"], seen, "{path}");
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["body"], "payload");
        let h = &echo["headers"];
        assert_eq!(h["x-forwarded-prefix"], "/fn/v1/probe");
        assert_eq!(h["x-reactor-caller-org"], "acme");
        assert_eq!(h["x-reactor-caller-role"], "admin");
        assert!(
            h["x-reactor-caller-token"]
                .as_str()
                .is_some_and(|t| t.starts_with("tok_"))
        );
        assert_eq!(h["x-request-id"], request_id.as_str());
        assert!(h["traceparent"].as_str().is_some_and(|t| t.len() == 55));
        assert!(h.get("authorization").is_none(), "{h}");
        assert!(h.get("x-reactor-org").is_none(), "{h}");
        assert!(
            !echo.to_string().contains(&s.token),
            "the token reached the function"
        );
    }
    // A caller cannot forge the router's headers.
    let echo: Value = s
        .request(Method::GET, "/fn/v1/probe")
        .header("x-reactor-caller-role", "admin-of-everything")
        .header("x-forwarded-prefix", "/evil")
        .send()
        .await
        .expect("invoke")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["headers"]["x-reactor-caller-role"], "admin");
    assert_eq!(echo["headers"]["x-forwarded-prefix"], "/fn/v1/probe");
    assert_eq!(echo["method"], "GET");
}

#[tokio::test(flavor = "multi_thread")]
async fn invocation_errors_are_the_documented_codes() {
    let s = Server::start();
    // 401 without or with a bad token.
    let (st, body) = error_of(
        s.http
            .post(format!("{}/fn/v1/probe", s.url))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 401, "unauthorized");
    let (st, body) = error_of(
        s.request_as("rct_wrong", "acme", Method::GET, "/fn/v1/probe")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 401, "unauthorized");
    // 404 for a function that does not exist; every response names the function.
    let resp = s
        .request(Method::GET, "/fn/v1/nope")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["x-reactor-function"], "nope");
    assert_eq!(resp.headers()["x-reactor-cold-start"], "false");
    assert!(resp.headers().contains_key("x-reactor-duration-ms"));
    let (st, body) = error_of(resp).await;
    assert_error(st, &body, 404, "function_not_found");
    // 503 while nothing is live.
    s.cli_ok(&["functions", "create", "probe", "--runtime", "wasm"]);
    let (st, body) = error_of(
        s.request(Method::GET, "/fn/v1/probe")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 503, "deployment_not_ready");
    let (st, body) = error_of(
        s.request(Method::POST, "/fn/v1/_admin/functions/probe/promote")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 503, "deployment_not_ready");

    let dep = s
        .deploy_live(
            "probe",
            probe_bundle_with(&json!({"limits": {"timeout_ms": 700, "memory_mb": 64}})),
        )
        .await;
    // 408 when the handler runs past limits.timeout_ms (a busy loop: epoch interruption).
    let started = Instant::now();
    let (st, body) = error_of(
        s.request(Method::GET, "/fn/v1/probe/spin")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 408, "function_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(body["error"]["details"]["deployment_id"], dep.as_str());
    // 408 too when it waits past the deadline in a host call.
    let (st, body) = error_of(
        s.request(Method::GET, "/fn/v1/probe/slow")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 408, "function_timeout");
    // 500 on a trap, with deployment_id and duration_ms; the next request still works.
    let (st, body) = error_of(
        s.request(Method::GET, "/fn/v1/probe/crash")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 500, "function_crashed");
    assert_eq!(body["error"]["details"]["deployment_id"], dep.as_str());
    assert!(body["error"]["details"]["duration_ms"].is_u64(), "{body}");
    // The memory limit of the manifest (64 MB) holds.
    let ok = s
        .request(Method::GET, "/fn/v1/probe/grow?mb=16")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    let (st, body) = error_of(
        s.request(Method::GET, "/fn/v1/probe/grow?mb=100")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 500, "function_crashed");
    let ok = s
        .request(Method::GET, "/fn/v1/probe/")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    // A timeout after the headers aborts the stream: the client sees no clean end.
    let mut resp = s
        .request(Method::GET, "/fn/v1/probe/stall")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.expect("first chunk").expect("some");
    assert_eq!(&first[..], b"first chunk\n");
    let mut rest = Ok(None);
    for _ in 0..10 {
        rest = resp.chunk().await;
        if !matches!(rest, Ok(Some(_))) {
            break;
        }
    }
    assert!(rest.is_err(), "the stream ended cleanly: {rest:?}");
    // Functions cannot reach the platform or the private network.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let to = listener.local_addr().expect("addr").to_string();
    let outcome = s
        .request(Method::GET, &format!("/fn/v1/probe/fetch?to={to}"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(outcome.contains("DestinationIpProhibited"), "{outcome}");
    assert!(
        listener.accept().is_err(),
        "the function connected to the host"
    );
    // Guest output became log lines of the function.
    let printed = s
        .request(Method::GET, "/fn/v1/probe/print")
        .send()
        .await
        .expect("send");
    assert_eq!(printed.status(), 200);
    let logs = s.logs();
    assert!(
        logs.contains("probe: to stdout") && logs.contains("probe: to stderr"),
        "{logs}"
    );
    assert!(logs.contains("probe crashed on purpose"), "{logs}");
    // A function that answers with no body and goes on working is not cut off when the
    // (empty) answer has gone out: its task runs to its end.
    let before = s.logs().len();
    let empty = s
        .request(Method::GET, "/fn/v1/probe/empty-then-print")
        .send()
        .await
        .expect("send");
    assert_eq!(empty.status(), 204);
    let after = wait_until(Duration::from_secs(5), || async {
        s.logs()
            .contains("probe: after an empty response")
            .then_some(())
    })
    .await;
    assert!(after.is_some(), "the guest was cut off: {}", s.logs());
    let since = s.logs().get(before..).unwrap_or_default().to_string();
    assert!(!since.contains("the client went away"), "{since}");
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_of_a_materializing_deployment_is_refused() {
    let s = Server::start();
    s.cli_ok(&["functions", "create", "probe", "--runtime", "wasm"]);
    // An unoptimised build: several megabytes that take a while to compile.
    let big = bundle(&[("probe.wasm", &read(&build_component(PROBE, false)))]);
    let up = s.upload("probe", big).await;
    assert_eq!(up.status(), 202);
    let dep: Value = up.json().await.expect("json");
    assert_eq!(dep["status"], "materializing");
    let id = dep["id"].as_str().expect("id");
    let (st, body) = error_of(
        s.request(Method::POST, "/fn/v1/_admin/functions/probe/promote")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 503, "deployment_not_ready");
    assert_eq!(body["error"]["details"]["status"], "materializing");
    assert_eq!(s.wait_deployment("probe", id).await["status"], "ready");
    let ok = s
        .request(Method::POST, "/fn/v1/_admin/functions/probe/promote")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    // A bundle that is not a wasi:http component fails with a reason, and cannot be promoted.
    let up = s
        .upload("probe", bundle(&[("bad.wasm", b"\0asm\x01\0\0\0")]))
        .await;
    let dep: Value = up.json().await.expect("json");
    let failed = s
        .wait_deployment("probe", dep["id"].as_str().expect("id"))
        .await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("component")),
        "{failed}"
    );
    let (st, body) = error_of(
        s.request(Method::POST, "/fn/v1/_admin/functions/probe/promote")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 503, "deployment_not_ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_chunks_stream_before_the_handler_finishes() {
    let s = Server::start();
    s.cli_ok(&["functions", "create", "stream-demo", "--runtime", "wasm"]);
    s.cli_ok(&[
        "functions",
        "deploy",
        "stream-demo",
        "--dir",
        "./examples/stream-wasm",
    ]);
    s.cli_ok(&["functions", "promote", "stream-demo"]);
    let started = Instant::now();
    let mut resp = s
        .request(Method::POST, "/fn/v1/stream-demo")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        arrivals.push(started.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(text.matches("data: ").count(), 10, "{text}");
    assert!(text.starts_with("data: {\"chunk\":0}\n\n"), "{text}");
    let total = *arrivals.last().expect("chunks");
    assert!(total >= Duration::from_millis(1800), "{total:?}");
    // The first event reached the client long before the handler finished.
    assert!(
        arrivals[0] + Duration::from_millis(1200) < total,
        "{arrivals:?}"
    );
    assert!(
        arrivals.len() >= 5,
        "events arrived in {} chunks",
        arrivals.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_the_handler() {
    let s = Server::start();
    s.deploy_live("probe", probe_bundle()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let err = client
        .get(format!("{}/fn/v1/probe/slow", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .expect_err("the client gives up");
    assert!(err.is_timeout());
    let cancelled = wait_until(Duration::from_secs(5), || async {
        s.logs().contains("invocation cancelled").then_some(())
    })
    .await;
    assert!(cancelled.is_some(), "{}", s.logs());
    // Past the moment the handler would have finished, it never did.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let logs = s.logs();
    assert!(logs.contains("probe: slow start"), "{logs}");
    assert!(!logs.contains("probe: slow done"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bundles_are_refused_and_change_nothing() {
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_BUNDLE_MAX_BYTES", "2000000")]);
    s.cli_ok(&["functions", "create", "probe", "--runtime", "wasm"]);
    let unsafe_ones = [
        raw_bundle("../evil.wasm", tar::EntryType::Regular, None),
        raw_bundle("/etc/evil.wasm", tar::EntryType::Regular, None),
        raw_bundle("a/../../evil.wasm", tar::EntryType::Regular, None),
        raw_bundle("link.wasm", tar::EntryType::Symlink, Some("/etc/passwd")),
        raw_bundle(
            "code/link.wasm",
            tar::EntryType::Symlink,
            Some("../../../etc/passwd"),
        ),
        raw_bundle("dev.wasm", tar::EntryType::Char, None),
        raw_bundle("fifo.wasm", tar::EntryType::Fifo, None),
    ];
    for b in unsafe_ones {
        let (st, body) = error_of(s.upload("probe", b).await).await;
        assert_error(st, &body, 422, "manifest_invalid");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unsafe archive entry")),
            "{body}"
        );
    }
    // Not a tar.gz at all.
    let (st, body) = error_of(s.upload("probe", b"hello".to_vec()).await).await;
    assert_error(st, &body, 422, "manifest_invalid");
    // Hash mismatch.
    let resp = s
        .request(Method::POST, "/fn/v1/_admin/functions/probe/deployments")
        .header("x-reactor-bundle-sha256", "0".repeat(64))
        .body(probe_bundle())
        .send()
        .await
        .expect("send");
    let (st, body) = error_of(resp).await;
    assert_error(st, &body, 422, "manifest_invalid");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sha256")),
        "{body}"
    );
    // Over bundle_max_bytes.
    let (st, body) = error_of(s.upload("probe", vec![0u8; 3_000_000]).await).await;
    assert_error(st, &body, 413, "bundle_too_large");
    // Manifests out of range, mismatched, or requiring env keys that are not set.
    for (manifest, needle) in [
        (json!({"limits": {"memory_mb": 4096}}), "32-1024"),
        (json!({"limits": {"timeout_ms": 999999}}), "1-300000"),
        (json!({"runtime": "bun"}), "runtime"),
        (json!({"name": "other"}), "name"),
        (json!({"entrypoint": "missing.wasm"}), "missing.wasm"),
        (
            json!({"env_keys": ["STRIPE_PUBLIC_KEY"]}),
            "STRIPE_PUBLIC_KEY",
        ),
        (json!({"entrypont": "typo"}), "entrypont"),
    ] {
        let (st, body) = error_of(s.upload("probe", probe_bundle_with(&manifest)).await).await;
        assert_error(st, &body, 422, "manifest_invalid");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle)),
            "{manifest}: {body}"
        );
    }
    // Two .wasm files and no manifest: ambiguous.
    let (st, body) = error_of(
        s.upload("probe", bundle(&[("a.wasm", b"x"), ("b.wasm", b"y")]))
            .await,
    )
    .await;
    assert_error(st, &body, 422, "manifest_invalid");
    // Nothing was recorded.
    let list: Value = s
        .request(Method::GET, "/fn/v1/_admin/functions/probe/deployments")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(list, json!([]));
    // Bad admin input.
    let (st, body) = error_of(
        s.request(Method::POST, "/fn/v1/_admin/functions")
            .json(&json!({"name": "Bad_Name", "runtime": "wasm"}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 400, "invalid_input");
    let (st, body) = error_of(
        s.request(Method::POST, "/fn/v1/_admin/functions")
            .body("{")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 400, "invalid_input");
    let (st, body) = error_of(
        s.request(Method::POST, "/fn/v1/_admin/functions")
            .json(&json!({"name": "probe", "runtime": "wasm"}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 409, "function_exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn orgs_and_roles_are_enforced() {
    let s = Server::start();
    s.deploy_live("probe", probe_bundle()).await;

    // Another org: its admin sees nothing of acme's.
    let created: Value =
        serde_json::from_str(&s.cli_ok(&["--output", "json", "orgs", "create", "beta"]))
            .expect("json");
    let beta = created["admin_token"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let (st, body) = error_of(
        s.request_as(&beta, "beta", Method::GET, "/fn/v1/probe")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 404, "function_not_found");
    let (st, body) = error_of(
        s.request_as(&beta, "beta", Method::GET, "/fn/v1/_admin/functions/probe")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 404, "function_not_found");
    let (st, body) = error_of(
        s.request_as(&beta, "acme", Method::GET, "/fn/v1/probe")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 403, "forbidden");
    let list: Value = s
        .request_as(&beta, "beta", Method::GET, "/fn/v1/_admin/functions")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(list, json!([]));
    // Only the platform org's admins create orgs.
    let out = s.cli_as(&beta, "beta", &["orgs", "create", "gamma"]);
    assert!(
        !out.success && out.stderr.contains("forbidden"),
        "{}",
        out.stderr
    );

    // An invoker token invokes and nothing else.
    let t: Value = serde_json::from_str(
        &s.cli_ok(&["--output", "json", "tokens", "create", "--role", "invoker"]),
    )
    .expect("json");
    let invoker = t["token"].as_str().expect("token").to_string();
    let ok = s
        .request_as(&invoker, "acme", Method::GET, "/fn/v1/probe")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);
    let echo: Value = ok.json().await.expect("json");
    assert_eq!(echo["headers"]["x-reactor-caller-role"], "invoker");
    assert_eq!(echo["headers"]["x-reactor-caller-token"], t["id"]);
    for (method, path) in [
        (Method::POST, "/fn/v1/_admin/functions/probe/promote"),
        (Method::POST, "/fn/v1/_admin/functions/probe/deployments"),
        (Method::DELETE, "/fn/v1/_admin/functions/probe"),
        (Method::GET, "/fn/v1/_admin/tokens"),
    ] {
        let (st, body) = error_of(
            s.request_as(&invoker, "acme", method, path)
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_error(st, &body, 403, "forbidden");
    }
    let out = s.cli_as(
        &invoker,
        "acme",
        &["functions", "create", "other", "--runtime", "wasm"],
    );
    assert!(
        !out.success && out.stderr.contains("forbidden"),
        "{}",
        out.stderr
    );

    // A developer deploys but does not manage tokens.
    let d: Value = serde_json::from_str(&s.cli_ok(&[
        "--output",
        "json",
        "tokens",
        "create",
        "--role",
        "developer",
    ]))
    .expect("json");
    let developer = d["token"].as_str().expect("token").to_string();
    let out = s.cli_as(
        &developer,
        "acme",
        &["functions", "create", "dev-fn", "--runtime", "wasm"],
    );
    assert!(out.success, "{}", out.stderr);
    let out = s.cli_as(&developer, "acme", &["tokens", "create", "--role", "admin"]);
    assert!(
        !out.success && out.stderr.contains("forbidden"),
        "{}",
        out.stderr
    );

    // A revoked token stops working at the router at once.
    s.cli_ok(&["tokens", "revoke", t["id"].as_str().expect("id")]);
    let (st, body) = error_of(
        s.request_as(&invoker, "acme", Method::GET, "/fn/v1/probe")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_error(st, &body, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_functions_live_and_credentials() {
    let s = Server::start();
    s.deploy_live("probe", probe_bundle()).await;
    let token = s.token.clone();
    let dir = s.stop();
    let s = Server::start_in(dir, &[]);
    // The saved credentials are reused rather than a new admin token minted.
    assert_eq!(s.token, token);
    let resp = s
        .request(Method::GET, "/fn/v1/probe/x")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    // The first request after a restart loaded the deployment: cold.
    assert_eq!(resp.headers()["x-reactor-cold-start"], "true");
    let resp = s
        .request(Method::GET, "/fn/v1/probe/x")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.headers()["x-reactor-cold-start"], "false");
}

/// An artifact built before a restart is still trusted after it (`reactor dev` keeps the
/// seal's key in its workdir): with the local cache gone, the deployment is read back
/// from storage, not compiled again from its bundle.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_with_an_emptied_cache_reads_artifacts_instead_of_rebuilding() {
    let s = Server::start();
    s.deploy_live("probe", probe_bundle()).await;
    let dir = s.stop();
    std::fs::remove_dir_all(dir.path().join("work/cache")).expect("removing the cache");
    // The log file goes on across the restart: only what comes after counts.
    let before = std::fs::read_to_string(dir.path().join("reactor.log"))
        .map(|l| l.len())
        .unwrap_or(0);
    let s = Server::start_in(dir, &[]);
    let resp = s
        .request(Method::GET, "/fn/v1/probe/x")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-reactor-cold-start"], "true");
    let loaded = wait_until(Duration::from_secs(10), || async {
        let logs = s.logs().get(before..).unwrap_or_default().to_string();
        logs.contains("deployment loaded").then_some(logs)
    })
    .await
    .expect("a deployment loaded line");
    assert!(
        loaded.contains("source=\"storage\"") && !loaded.contains("source=\"bundle\""),
        "the artifact should come from storage: {loaded}"
    );
    assert!(!loaded.contains("fails its MAC"), "{loaded}");
}
