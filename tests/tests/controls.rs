//! End-to-end for what the router enforces and records around an invocation: invoke
//! policies (method, path, time window, CEL), the concurrency cap, the request body limit,
//! limits at deploy, and the function's logs (`reactor functions logs --follow`).

use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::time::Duration;

fn wasm_bundle(manifest: Option<&Value>) -> Vec<u8> {
    wasm_probe_bundle(manifest)
}

fn bun_bundle(manifest: Option<&Value>) -> Vec<u8> {
    bun_probe_bundle("v1", manifest)
}

async fn status_and_body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Sends `method path` to the function with extra `headers`, as `token` (the admin's by
/// default); returns the status and, for a refusal, the rule named.
async fn call(
    s: &Server,
    token: Option<&str>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let mut req = s.request_as(token.unwrap_or(&s.token), &s.org, method, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, body) = status_and_body(req.send().await.expect("send")).await;
    if status == 403 {
        assert_eq!(body["error"]["code"], "policy_denied", "{body}");
    }
    let rule = body["error"]["details"]["rule"]
        .as_str()
        .map(str::to_string);
    (status, rule)
}

/// Caller token (None: the admin), method, path, headers, expected status and rule.
type Case<'a> = (
    Option<&'a str>,
    Method,
    &'a str,
    Vec<(&'a str, &'a str)>,
    u16,
    Option<&'a str>,
);

fn utc_hour() -> u64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    (secs / 3600) % 24
}

#[tokio::test(flavor = "multi_thread")]
async fn invoke_policies_allow_and_deny_by_method_path_window_and_cel() {
    let s = Server::start();
    s.deploy_live("guarded", wasm_bundle(None)).await;
    let invoker: Value = s
        .request(Method::POST, "/fn/v1/_admin/tokens")
        .json(&json!({"role": "invoker", "name": "policy test"}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let invoker = invoker["token"].as_str().expect("token").to_string();
    let h = utc_hour();
    // A window that contains now (two hours, so the test does not race the hour turning)
    // and one that does not.
    let now_window = json!({"from": h, "to": (h + 2) % 24});
    let other_window = json!({"from": (h + 3) % 24, "to": (h + 5) % 24});
    let policy = json!({
        "default": "allow",
        "rules": [
            {"name": "no-deletes", "effect": "deny", "methods": ["DELETE"]},
            {"name": "admins-only", "effect": "deny", "paths": ["/admin/**"],
             "when": "request.caller.role != 'admin'"},
            {"name": "maintenance", "effect": "deny", "paths": ["/maint/*"], "hours": now_window},
            {"name": "night-batch", "effect": "deny", "paths": ["/batch"], "hours": other_window},
            {"name": "beta-only", "effect": "deny", "paths": ["/beta"],
             "when": "!('x-beta' in request.headers) || request.headers['x-beta'] != 'yes' || request.query['v'] != '2'"},
        ]
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("policy.json");
    std::fs::write(&file, policy.to_string()).expect("write");
    s.cli_ok(&[
        "functions",
        "policy",
        "set",
        "guarded",
        "--file",
        file.to_str().expect("utf-8"),
    ]);
    let shown = s.cli_ok(&["functions", "policy", "get", "guarded"]);
    assert!(shown.contains("admins-only"), "{shown}");

    let inv = Some(invoker.as_str());
    let cases: Vec<Case> = vec![
        (None, Method::GET, "/fn/v1/guarded/x", vec![], 200, None),
        (
            None,
            Method::DELETE,
            "/fn/v1/guarded/x",
            vec![],
            403,
            Some("no-deletes"),
        ),
        (
            inv,
            Method::DELETE,
            "/fn/v1/guarded/x",
            vec![],
            403,
            Some("no-deletes"),
        ),
        (
            None,
            Method::GET,
            "/fn/v1/guarded/admin/users",
            vec![],
            200,
            None,
        ),
        (
            inv,
            Method::GET,
            "/fn/v1/guarded/admin/users",
            vec![],
            403,
            Some("admins-only"),
        ),
        (
            inv,
            Method::GET,
            "/fn/v1/guarded/administer",
            vec![],
            200,
            None,
        ),
        (
            inv,
            Method::GET,
            "/fn/v1/guarded/maint/now",
            vec![],
            403,
            Some("maintenance"),
        ),
        (
            inv,
            Method::GET,
            "/fn/v1/guarded/maint/a/b",
            vec![],
            200,
            None,
        ),
        (inv, Method::GET, "/fn/v1/guarded/batch", vec![], 200, None),
        (
            inv,
            Method::GET,
            "/fn/v1/guarded/beta?v=2",
            vec![("x-beta", "yes")],
            200,
            None,
        ),
        (
            inv,
            Method::GET,
            "/fn/v1/guarded/beta?v=1",
            vec![("x-beta", "yes")],
            403,
            Some("beta-only"),
        ),
        (
            inv,
            Method::GET,
            "/fn/v1/guarded/beta?v=2",
            vec![],
            403,
            Some("beta-only"),
        ),
    ];
    for (token, method, path, headers, want, rule) in cases {
        let got = call(&s, token, method.clone(), path, &headers).await;
        assert_eq!(
            got,
            (want, rule.map(str::to_string)),
            "{method} {path} {headers:?} as {}",
            if token.is_some() { "invoker" } else { "admin" }
        );
    }

    // Refused requests are invocations in the function's log, with the reason.
    let logged = wait_until(Duration::from_secs(10), || async {
        let out = s.cli(&["functions", "logs", "guarded"]).stdout;
        (out.contains("invocation 403") && out.contains("refused: ")).then_some(())
    })
    .await;
    assert!(
        logged.is_some(),
        "{}",
        s.cli(&["functions", "logs", "guarded"]).stdout
    );

    // An invalid rule is refused when it is set, and the policy in force stays.
    for bad in [
        json!({"rules": [{"name": "broken", "effect": "deny", "when": "request.method =="}]}),
        json!({"rules": [{"name": "x", "effect": "deny", "hours": {"from": 3, "to": 3}}]}),
        json!({"rules": [{"name": "x", "effect": "maybe"}]}),
    ] {
        let resp = s
            .request(Method::PUT, "/fn/v1/_admin/functions/guarded/policy")
            .json(&bad)
            .send()
            .await
            .expect("put");
        let (status, body) = status_and_body(resp).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_input");
    }
    assert_eq!(
        call(&s, None, Method::DELETE, "/fn/v1/guarded/x", &[])
            .await
            .0,
        403
    );

    // Default deny: only what a rule allows passes.
    let resp = s
        .request(Method::PUT, "/fn/v1/_admin/functions/guarded/policy")
        .json(&json!({"default": "deny", "rules": [
            {"name": "reads", "effect": "allow", "methods": ["GET", "HEAD"]}
        ]}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        call(&s, None, Method::GET, "/fn/v1/guarded/", &[]).await.0,
        200
    );
    assert_eq!(
        call(&s, None, Method::POST, "/fn/v1/guarded/", &[]).await,
        (403, Some("default".into()))
    );

    // A deployment's manifest policy applies on top of the function's once it is live.
    s.cli_ok(&["functions", "policy", "clear", "guarded"]);
    let manifest = json!({"policy": {"rules": [
        {"name": "no-patch", "effect": "deny", "methods": ["PATCH"]}
    ]}});
    let id = s
        .deploy_ready("guarded", wasm_bundle(Some(&manifest)))
        .await;
    assert_eq!(
        call(&s, None, Method::PATCH, "/fn/v1/guarded/", &[])
            .await
            .0,
        200
    );
    s.promote("guarded", &id).await;
    assert_eq!(
        call(&s, None, Method::PATCH, "/fn/v1/guarded/", &[]).await,
        (403, Some("no-patch".into()))
    );
    // An invalid manifest policy is refused at upload.
    let bad = json!({"policy": {"rules": [{"name": "b", "effect": "deny", "when": "1 +"}]}});
    let up = s.upload("guarded", wasm_bundle(Some(&bad))).await;
    assert_eq!(up.status(), 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_max_concurrency_gets_429_with_retry_after() {
    let s = Server::start();
    for (function, runtime) in [("capped-bun", "bun"), ("capped-wasm", "wasm")] {
        let manifest = json!({"concurrency": {"max_concurrency": 1}});
        let bundle = if runtime == "bun" {
            bun_bundle(Some(&manifest))
        } else {
            wasm_bundle(Some(&manifest))
        };
        s.deploy_live_runtime(function, runtime, bundle).await;
        let slow = if runtime == "bun" {
            "/slow?ms=1500"
        } else {
            "/slow"
        };
        let burst = (0..6).map(|i| {
            let req = s.request(Method::GET, &format!("/fn/v1/{function}{slow}"));
            async move {
                // Let the first one in before the rest.
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let resp = req.send().await.expect("send");
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let (status, body) = status_and_body(resp).await;
                (status, retry, body)
            }
        });
        let results = futures::future::join_all(burst).await;
        let ok = results.iter().filter(|r| r.0 == 200).count();
        let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
        assert_eq!(ok, 1, "{runtime}: {results:?}");
        assert_eq!(refused.len(), 5, "{runtime}: {results:?}");
        for (_, retry, body) in refused {
            assert_eq!(retry.as_deref(), Some("1"));
            assert_eq!(body["error"]["code"], "too_many_requests");
        }
        // The slot is free again once the response is done.
        let again = s
            .request(Method::GET, &format!("/fn/v1/{function}/"))
            .send()
            .await
            .expect("send");
        assert_eq!(again.status(), 200, "{runtime}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_over_the_limit_get_413_and_manifests_out_of_range_are_refused() {
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_INVOKE_MAX_BODY_BYTES", "1024")]);
    s.deploy_live("bodies", wasm_bundle(None)).await;
    let small = s
        .request(Method::POST, "/fn/v1/bodies/")
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("send");
    assert_eq!(small.status(), 200);
    let (status, body) = status_and_body(
        s.request(Method::POST, "/fn/v1/bodies/")
            .body(vec![b'a'; 2000])
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    // Without a Content-Length the limit holds while streaming.
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 400])));
    let (status, body) = status_and_body(
        s.request(Method::POST, "/fn/v1/bodies/")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // Limits out of range are refused at deploy with the allowed range.
    for (manifest, range) in [
        (json!({"limits": {"timeout_ms": 400000}}), "1-300000"),
        (json!({"limits": {"memory_mb": 4096}}), "32-1024"),
    ] {
        let up = s.upload("bodies", wasm_bundle(Some(&manifest))).await;
        let (status, body) = status_and_body(up).await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(range)),
            "{body}"
        );
    }
    // Bun's memory range differs.
    s.create("bodies-bun", "bun").await;
    let up = s
        .upload(
            "bodies-bun",
            bun_bundle(Some(&json!({"limits": {"memory_mb": 32}}))),
        )
        .await;
    let (status, body) = status_and_body(up).await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("64-2048")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_receives_what_a_running_function_prints() {
    let s = Server::start();
    let id = s
        .deploy_live_runtime("chatty", "bun", bun_bundle(None))
        .await;
    s.deploy_live("chatty-wasm", wasm_bundle(None)).await;

    let mut follow = s.cli_spawn(&["functions", "logs", "chatty", "--follow"]);
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // History first: the platform's own events of this deployment.
    let mut seen = Vec::new();
    let wait_for = |needle: &str, seen: &mut Vec<String>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if seen.iter().any(|l| l.contains(needle)) {
                return true;
            }
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(line);
            }
        }
        false
    };
    assert!(wait_for("promoted", &mut seen), "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("materialized")), "{seen:#?}");

    // Live: a line the function prints while running reaches the follower.
    let resp = s
        .request(Method::GET, "/fn/v1/chatty/log")
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), 200);
    assert!(wait_for("probe: a line on stdout", &mut seen), "{seen:#?}");
    assert!(wait_for("probe: a line on stderr", &mut seen), "{seen:#?}");
    // And the invocation itself: deployment, status, duration and cold start.
    assert!(wait_for("invocation 200", &mut seen), "{seen:#?}");
    let inv = seen
        .iter()
        .find(|l| l.contains("invocation 200"))
        .expect("invocation line");
    assert!(inv.contains(&id) && inv.contains("cold="), "{inv}");
    let _ = follow.kill();
    let _ = follow.wait();

    // History only, as JSON; crashes and timeouts are events; other functions' lines
    // stay out.
    let crash = s
        .request(Method::GET, "/fn/v1/chatty/throw")
        .send()
        .await
        .expect("invoke");
    assert_eq!(crash.status(), 500);
    let wasm = s
        .request(Method::GET, "/fn/v1/chatty-wasm/print")
        .send()
        .await
        .expect("invoke");
    assert_eq!(wasm.status(), 200);
    let entries = wait_until(Duration::from_secs(10), || async {
        let out = s.cli(&["functions", "logs", "chatty", "--since", "10m", "--json"]);
        let entries: Vec<Value> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        entries
            .iter()
            .any(|e| {
                e["kind"] == "event"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("crashed"))
            })
            .then_some(entries)
    })
    .await
    .expect("the crash is logged");
    assert!(entries.iter().all(|e| e["function"] == "chatty"));
    let invocation = entries
        .iter()
        .find(|e| e["kind"] == "invocation")
        .expect("an invocation entry");
    assert!(invocation["duration_ms"].as_f64().is_some());
    assert!(invocation["cold_start"].as_bool().is_some());
    assert_eq!(invocation["deployment_id"], id.as_str());
    let wasm_logs = s.cli_ok(&["functions", "logs", "chatty-wasm"]);
    assert!(wasm_logs.contains("probe: to stdout"), "{wasm_logs}");
    assert!(wasm_logs.contains("probe: to stderr"), "{wasm_logs}");
}
