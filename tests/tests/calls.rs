//! Calls between functions (`http://NAME.reactor.internal/...`), end to end through the
//! real `reactor dev`: WASM and Bun callers and callees, the context the platform stamps
//! (trace, baggage, identity, caller, deadline, depth), the depth limit, calls in
//! parallel, `calls` aliases, cancellation down the chain, and outside requests that try
//! to pass for calls.

use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

use reactor_tests::{CALL_PARENT as PARENT, CALL_TRACE as TRACE};

async fn get(s: &Server, path: &str) -> reqwest::Response {
    s.request(Method::GET, path).send().await.expect("send")
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

/// The headers the echoing callee saw (WASM probe: `.headers`; Bun `/headers`: itself).
fn seen(v: &Value) -> &Value {
    if v["probe"] == true { &v["headers"] } else { v }
}

/// The token id and role the router stamps for the test's admin token.
async fn identity(s: &Server, echo: &str) -> (String, String) {
    let (status, v) = json_of(get(s, echo).await).await;
    assert_eq!(status, 200, "{v}");
    let h = seen(&v);
    (
        h["x-reactor-caller-token"]
            .as_str()
            .expect("token")
            .to_string(),
        h["x-reactor-caller-role"]
            .as_str()
            .expect("role")
            .to_string(),
    )
}

/// What a callee saw of a call by `caller` (deployment `caller_dep`) for the test's
/// outside request, which had 30 s.
fn check_context(
    h: &Value,
    s: &Server,
    (token, role): &(String, String),
    caller: &str,
    caller_dep: &str,
    baggage: &str,
) {
    check_call_context(
        h,
        &s.org,
        (token, role),
        (caller, caller_dep),
        baggage,
        30_000,
    );
}

async fn call_with_context(s: &Server, path: &str) -> (u16, Value, String) {
    let resp = s
        .request(Method::GET, path)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("baggage", "user=alice,tier=gold")
        .send()
        .await
        .expect("send");
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (status, v) = json_of(resp).await;
    (status, v, request_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasm_call_carries_the_callers_context() {
    let s = Server::start();
    let front = s.deploy_live("front", wasm_probe_bundle(None)).await;
    s.deploy_live("back", wasm_probe_bundle(None)).await;
    let who = identity(&s, "/fn/v1/back/echo").await;
    let (status, v, request_id) =
        call_with_context(&s, "/fn/v1/front/call?to=back.reactor.internal&path=/echo").await;
    assert_eq!(status, 200, "{v}\n{}", s.logs());
    assert_eq!(v["path"], "/echo", "the callee sees the path called: {v}");
    let h = seen(&v);
    check_context(h, &s, &who, "front", &front, "user=alice,tier=gold");
    assert_eq!(
        h["x-request-id"],
        request_id.as_str(),
        "the root request's id"
    );
    // The call is logged as an invocation of the callee, with its caller.
    let logged = wait_until(Duration::from_secs(5), || async {
        let out = s.cli(&["functions", "logs", "back"]).stdout;
        out.contains("call from front").then_some(out)
    })
    .await;
    assert!(
        logged.is_some(),
        "{}",
        s.cli(&["functions", "logs", "back"]).stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_stops_at_the_depth_limit_naming_its_path() {
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_CALLS_MAX_DEPTH", "4")]);
    s.deploy_live("ping", wasm_probe_bundle(None)).await;
    s.deploy_live_runtime("pong", "bun", bun_probe_bundle("v1", None))
        .await;
    let (status, v) = json_of(get(&s, "/fn/v1/ping/ping-pong?a=ping&b=pong").await).await;
    assert_eq!(status, 508, "{v}\n{}", s.logs());
    assert_eq!(v["error"]["code"], "call_depth_exceeded", "{v}");
    assert_eq!(v["error"]["details"]["max_depth"], 4, "{v}");
    assert_eq!(
        v["error"]["details"]["path"],
        json!(["ping", "pong", "ping", "pong", "ping"]),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_started_together_take_the_time_of_the_slowest() {
    let s = Server::start();
    s.deploy_live("fan", wasm_probe_bundle(None)).await;
    s.deploy_live("nap", wasm_probe_bundle(None)).await;
    s.deploy_live_runtime("bunfan", "bun", bun_probe_bundle("v1", None))
        .await;
    // Warm: the first call loads the callee.
    let (status, v) =
        json_of(get(&s, "/fn/v1/fan/call?to=nap.reactor.internal&path=/").await).await;
    assert_eq!(status, 200, "{v}");
    for caller in ["fan", "bunfan"] {
        let (status, v) = json_of(
            get(
                &s,
                &format!(
                    "/fn/v1/{caller}/fanout?to=nap.reactor.internal&path=%2Fsleep%3Fms%3D700&n=3"
                ),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{v}\n{}", s.logs());
        assert_eq!(v["statuses"], json!([200, 200, 200]), "{caller}: {v}");
        let ms = v["ms"].as_f64().expect("ms");
        assert!(
            (700.0..1_400.0).contains(&ms),
            "{caller}: three calls of 700 ms took {ms} ms, not 2,100"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_declared_calls_are_allowed() {
    let s = Server::start();
    let manifest = json!({"calls": {"users": {"function": "back", "timeout_ms": 800}}});
    s.deploy_live("front", wasm_probe_bundle(Some(&manifest)))
        .await;
    s.deploy_live("back", wasm_probe_bundle(None)).await;
    let (status, v) =
        json_of(get(&s, "/fn/v1/front/call?to=users.reactor.internal&path=/echo").await).await;
    assert_eq!(status, 200, "{v}\n{}", s.logs());
    let deadline: u64 = v["headers"]["x-reactor-deadline-ms"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("deadline");
    assert!(deadline <= 800, "the alias's timeout_ms bounds it: {v}");
    let (status, v) =
        json_of(get(&s, "/fn/v1/front/call?to=back.reactor.internal&path=/echo").await).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "call_not_allowed", "{v}");
    assert_eq!(v["error"]["details"]["target"], "back", "{v}");
    // Another org's function is not there to call.
    let (status, v) =
        json_of(get(&s, "/fn/v1/back/call?to=nobody.reactor.internal&path=/").await).await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["code"], "function_not_found", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outside_requests_get_no_special_treatment() {
    let s = Server::start();
    s.deploy_live("back", wasm_probe_bundle(None)).await;
    let resp = s
        .request(Method::GET, "/fn/v1/back/echo")
        .header("host", "back.reactor.internal")
        .header("x-reactor-call-depth", "15")
        .header("x-reactor-caller-function", "evil")
        .header("x-reactor-caller-deployment", "dep_evil")
        .header("x-reactor-deadline-ms", "1")
        .header("x-reactor-internal-call", "e30")
        .send()
        .await
        .expect("send");
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 200, "{v}");
    let h = &v["headers"];
    assert_eq!(h["x-reactor-call-depth"], "1", "{v}");
    assert!(h.get("x-reactor-caller-function").is_none(), "{v}");
    assert!(h.get("x-reactor-caller-deployment").is_none(), "{v}");
    assert!(h.get("x-reactor-internal-call").is_none(), "{v}");
    assert_eq!(h["x-reactor-deadline-ms"], "30000", "its own limit: {v}");
    // A Bun function builds its request's URL from Host: one under reactor.internal never
    // reaches it.
    s.deploy_live_runtime("bunback", "bun", bun_probe_bundle("v1", None))
        .await;
    let resp = s
        .request(Method::GET, "/fn/v1/bunback/headers")
        .header("host", "bunback.reactor.internal")
        .send()
        .await
        .expect("send");
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 200, "{v}");
    assert!(!v.to_string().contains("reactor.internal"), "{v}");
    assert_eq!(v["x-reactor-call-depth"], "1", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn fan_out_and_deadlines_are_bounded() {
    let s = Server::start_with(&[
        ("REACTOR_FUNCTIONS_CALLS_MAX_CALLS_PER_INVOCATION", "2"),
        ("REACTOR_FUNCTIONS_CALLS_DEADLINE_MARGIN_MS", "29000"),
    ]);
    s.deploy_live("fan", wasm_probe_bundle(None)).await;
    s.deploy_live("nap", wasm_probe_bundle(None)).await;
    let short = json!({"limits": {"timeout_ms": 1000}});
    s.deploy_live("hasty", wasm_probe_bundle(Some(&short)))
        .await;
    // The third call of one invocation: 429.
    let (status, v) = json_of(
        get(
            &s,
            "/fn/v1/fan/fanout?to=nap.reactor.internal&path=%2Fsleep%3Fms%3D10&n=3",
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let mut statuses: Vec<u64> = v["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 429], "{v}");
    // With less than the margin left (1 s of its own, a 29 s margin): 504 at once.
    let (status, v) =
        json_of(get(&s, "/fn/v1/hasty/call?to=nap.reactor.internal&path=/echo").await).await;
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"]["code"], "deadline_exceeded", "{v}");
    assert_eq!(v["error"]["details"]["margin_ms"], 29000, "{v}");
    // With more: the callee gets what is left less the margin.
    let (status, v) =
        json_of(get(&s, "/fn/v1/fan/call?to=nap.reactor.internal&path=/echo").await).await;
    assert_eq!(status, 200, "{v}");
    let deadline: u64 = v["headers"]["x-reactor-deadline-ms"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("deadline");
    assert!(deadline <= 1000, "30 s less the 29 s margin: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bun_call_carries_the_context_and_overwrites_forgeries() {
    let s = Server::start();
    let front = s
        .deploy_live_runtime("front", "bun", bun_probe_bundle("v1", None))
        .await;
    s.deploy_live_runtime("back", "bun", bun_probe_bundle("v1", None))
        .await;
    let who = identity(&s, "/fn/v1/back/headers").await;
    // The caller's own baggage is its context for the callee; the identity headers it
    // sets are overwritten.
    let (status, v, request_id) = call_with_context(
        &s,
        "/fn/v1/front/call?to=back.reactor.internal&path=/headers&baggage=step%3D2",
    )
    .await;
    assert_eq!(status, 200, "{v}\n{}", s.logs());
    check_context(&v, &s, &who, "front", &front, "step=2");
    assert_eq!(v["x-request-id"], request_id.as_str());
    assert!(v.get("x-reactor-call-capability").is_none(), "{v}");
    // Without its own, the invocation's baggage passes on; and a WASM callee works the
    // same from Bun.
    let wasm_back = s.deploy_live("wasmback", wasm_probe_bundle(None)).await;
    let _ = wasm_back;
    let (status, v, _) =
        call_with_context(&s, "/fn/v1/front/call?to=wasmback.reactor.internal&path=/e").await;
    assert_eq!(status, 200, "{v}\n{}", s.logs());
    check_context(
        &v["headers"],
        &s,
        &who,
        "front",
        &front,
        "user=alice,tier=gold",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_going_away_aborts_its_streaming_callee() {
    let s = Server::start();
    s.deploy_live_runtime("front", "bun", bun_probe_bundle("v1", None))
        .await;
    s.deploy_live("wfront", wasm_probe_bundle(None)).await;
    s.deploy_live_runtime("back", "bun", bun_probe_bundle("v1", None))
        .await;
    let mut resp = get(
        &s,
        "/fn/v1/front/call?to=back.reactor.internal&path=/stream",
    )
    .await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.expect("a chunk").expect("not the end");
    assert!(
        String::from_utf8_lossy(&first).starts_with("line 0"),
        "{first:?}"
    );
    drop(resp);
    let aborted = wait_until(Duration::from_secs(5), || async {
        s.logs().contains("probe: stream aborted").then_some(())
    })
    .await;
    assert!(aborted.is_some(), "the callee saw no abort:\n{}", s.logs());
    // A WASM caller that times out takes its callee with it too.
    let before = s.logs().matches("probe: stream aborted").count();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .expect("client");
    let err = client
        .get(format!(
            "{}/fn/v1/wfront/call?to=back.reactor.internal&path=/stream",
            s.url
        ))
        .bearer_auth(&s.token)
        .header("X-Reactor-Org", &s.org)
        .send()
        .await
        .expect_err("the client gives up: the WASM caller waits for the whole answer");
    assert!(err.is_timeout());
    let aborted = wait_until(Duration::from_secs(5), || async {
        (s.logs().matches("probe: stream aborted").count() > before).then_some(())
    })
    .await;
    assert!(aborted.is_some(), "the callee saw no abort:\n{}", s.logs());
}

/// Calls on the split topology: the worker sends them to the router's call listener,
/// over mutual TLS with `tls`; nothing but a worker gets through that listener.
async fn split_calls(s: &reactor_tests::split::Split) {
    let front = s.admin.deploy_live("front", wasm_probe_bundle(None)).await;
    s.admin.deploy_live("back", wasm_probe_bundle(None)).await;
    s.wait_routable("back").await;
    let resp = s
        .invoke(
            Method::GET,
            "/fn/v1/front/call?to=back.reactor.internal&path=/echo",
        )
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("baggage", "user=alice,tier=gold")
        .send()
        .await
        .expect("send");
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 200, "{v}\n{}", s.logs());
    let h = &v["headers"];
    assert_eq!(h["x-reactor-caller-function"], "front", "{v}");
    assert_eq!(h["x-reactor-caller-deployment"], front.as_str(), "{v}");
    assert_eq!(h["x-reactor-call-depth"], "2", "{v}");
    assert_eq!(h["baggage"], "user=alice,tier=gold", "{v}");
    assert!(
        h["traceparent"].as_str().expect("tp").contains(TRACE),
        "{v}"
    );
    // The public listener knows nothing of calls.
    let resp = s
        .invoke(Method::GET, "/call/echo")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_on_the_split_topology_go_through_the_routers_call_listener() {
    let s = reactor_tests::split::Split::start();
    split_calls(&s).await;
    // Without the internal token the call listener answers nothing but 401.
    let resp = reqwest::Client::new()
        .get(format!("{}/call/echo", s.call_url))
        .header("x-reactor-internal-call", "e30")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bun_worker_of_the_split_topology_calls_through_the_router() {
    let mut s = reactor_tests::split::Split::start();
    let _bun = s.start_bun_worker("bun", &[]);
    let front = s
        .admin
        .deploy_live_runtime("bfront", "bun", bun_probe_bundle("v1", None))
        .await;
    s.admin.deploy_live("back", wasm_probe_bundle(None)).await;
    s.wait_routable("back").await;
    let resp = s
        .invoke(
            Method::GET,
            "/fn/v1/bfront/call?to=back.reactor.internal&path=/echo&baggage=k%3Dv",
        )
        .send()
        .await
        .expect("send");
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 200, "{v}\n{}", s.logs());
    let h = &v["headers"];
    assert_eq!(h["x-reactor-caller-function"], "bfront", "{v}");
    assert_eq!(h["x-reactor-caller-deployment"], front.as_str(), "{v}");
    assert_eq!(h["x-reactor-caller-org"], "acme", "{v}");
    assert_eq!(h["baggage"], "k=v", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_over_mutual_tls_take_a_workers_certificate_only() {
    let s = reactor_tests::split::Split::start_tls();
    split_calls(&s).await;
    let tls = s.dir.path().join("tls");
    let addr: std::net::SocketAddr = s
        .call_url
        .trim_start_matches("https://")
        .parse()
        .expect("the call listener's address");
    let with = |role: Option<&str>| tls_client(&tls, "router.reactor.internal", addr, role);
    let url = format!("https://router.reactor.internal:{}/call/echo", addr.port());
    // A router's or the control plane's certificate is dropped at the handshake; none
    // reaches health checks only.
    for role in ["router", "control-plane"] {
        let r = with(Some(role))
            .get(&url)
            .header(
                "x-reactor-internal-auth",
                reactor_tests::split::INTERNAL_TOKEN,
            )
            .send()
            .await;
        assert!(r.is_err(), "{role}: {r:?}");
    }
    let r = with(None).get(&url).send().await.expect("no certificate");
    assert_ne!(r.status(), 200);
    // A worker's certificate without the internal token: 401.
    let r = with(Some("worker")).get(&url).send().await.expect("worker");
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_examples_fan_out_and_merge() {
    let s = Server::start();
    for (runtime, dir) in [
        ("wasm", "./examples/calls-wasm"),
        ("bun", "./examples/calls-bun"),
    ] {
        for part in ["profile", "orders", "dashboard"] {
            let name = format!("{runtime}-{part}");
            s.cli_ok(&["functions", "create", &name, "--runtime", runtime]);
            let out = s.cli_ok(&["functions", "deploy", &name, "--dir", dir]);
            assert!(out.contains("is ready"), "{out}");
            s.cli_ok(&["functions", "promote", &name]);
        }
        let resp = s
            .request(
                Method::GET,
                &format!("/fn/v1/{runtime}-dashboard/dashboard/42"),
            )
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .send()
            .await
            .expect("send");
        let (status, v) = json_of(resp).await;
        assert_eq!(status, 200, "{runtime}: {v}\n{}", s.logs());
        assert_eq!(v["profile"]["name"], "user 42", "{v}");
        let dashboard = format!("{runtime}-dashboard");
        assert_eq!(v["profile"]["caller"], dashboard.as_str(), "{v}");
        assert_eq!(v["orders"].as_array().map(Vec::len), Some(2), "{v}");
        assert_eq!(v["trace_id"], TRACE, "{v}");
        if runtime == "bun" {
            assert_eq!(v["profile"]["tier"], "gold", "the caller's baggage: {v}");
        }
    }
}

/// The function's log lines as text (invocations and platform events).
async fn function_logs(s: &Server, function: &str) -> String {
    s.request(
        Method::GET,
        &format!("/fn/v1/_admin/functions/{function}/logs?follow=false"),
    )
    .send()
    .await
    .expect("logs")
    .text()
    .await
    .expect("text")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inline_callee_runs_in_its_callers_worker_under_the_same_rules() {
    let s = Server::start();
    let inline = json!({"pool": {"type": "inline"}});
    s.deploy_live("leaf", wasm_probe_bundle(Some(&inline)))
        .await;
    s.deploy_live("hop", wasm_probe_bundle(None)).await;

    // The callee sees the call as the router would stamp it, and it is logged as inline.
    let (status, v) =
        json_of(get(&s, "/fn/v1/hop/call?to=leaf.reactor.internal&path=/echo").await).await;
    assert_eq!(status, 200, "{v}\n{}", s.logs());
    let h = seen(&v);
    assert_eq!(h["x-reactor-caller-function"], "hop", "{v}");
    assert_eq!(h["x-reactor-caller-org"], s.org.as_str(), "{v}");
    assert_eq!(h["x-reactor-call-depth"], "2", "{v}");
    assert!(h["x-reactor-deadline-ms"].as_str().is_some(), "{v}");
    let logged = wait_until(Duration::from_secs(10), || async {
        let text = function_logs(&s, "leaf").await;
        text.contains("call from hop").then_some(text)
    })
    .await
    .expect("the call is logged");
    assert!(logged.contains("inline"), "{logged}");

    // The depth limit holds inline too: two inline functions calling each other stop at
    // functions.calls.max_depth.
    s.deploy_live("ping", wasm_probe_bundle(Some(&inline)))
        .await;
    s.deploy_live("pong", wasm_probe_bundle(Some(&inline)))
        .await;
    let (status, v) = json_of(get(&s, "/fn/v1/ping/ping-pong?a=ping&b=pong").await).await;
    assert_eq!(status, 508, "{v}");
    assert_eq!(v["error"]["code"], "call_depth_exceeded", "{v}");

    // What only the router enforces sends the call through it: a policy on the callee.
    let resp = s
        .request(Method::PUT, "/fn/v1/_admin/functions/leaf/policy")
        .json(&json!({"default": "deny", "rules": []}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    let (status, v) =
        json_of(get(&s, "/fn/v1/hop/call?to=leaf.reactor.internal&path=/echo").await).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "policy_denied", "{v}");
}
