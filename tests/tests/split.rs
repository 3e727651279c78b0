//! The split topology: `reactor-control-plane`, `reactor-data-plane` and
//! `reactor-worker-wasm` as three processes on loopback ports, and what each of them
//! going away does to invocations.

use reactor_tests::split::{INTERNAL_TOKEN, Split};
use reactor_tests::*;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

const PROBE: &str = "tests/fixtures/probe-wasm";
const HELLO: &str = "examples/hello-wasm";

fn bundle_of(dir: &str, name: &str) -> Vec<u8> {
    bundle(&[(name, &read(&build_component(dir, true)))])
}

/// Polls the router until `GET path` answers `status`; returns the last response body.
async fn wait_for_status(
    s: &Split,
    path: &str,
    status: u16,
) -> (reqwest::header::HeaderMap, String) {
    let got = wait_until(Duration::from_secs(20), || async {
        let r = s.invoke(Method::GET, path).send().await.ok()?;
        if r.status().as_u16() != status {
            return None;
        }
        let headers = r.headers().clone();
        Some((headers, r.text().await.ok()?))
    })
    .await;
    got.unwrap_or_else(|| panic!("GET {path} never answered {status}\n{}", s.logs()))
}

#[tokio::test(flavor = "multi_thread")]
async fn three_services_deploy_invoke_and_survive_each_one_going_away() {
    let probe = bundle_of(PROBE, "probe.wasm");
    let hello = bundle_of(HELLO, "hello.wasm");
    let mut s = Split::start();
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(format!("{}{path}", s.admin.url))
            .await
            .expect("cp health");
        assert_eq!(r.status(), 200, "control plane {path}");
    }

    // The full flow: create, upload, promote on the control plane; invoke on the router.
    s.admin.deploy_live("probe", probe.clone()).await;
    let (headers, body) = wait_for_status(&s, "/fn/v1/probe/a/b?x=1", 200).await;
    let echo: Value = serde_json::from_str(&body).expect("probe JSON");
    assert_eq!(echo["path"], "/a/b?x=1", "{echo}");
    let seen = echo["headers"].as_object().expect("headers");
    assert!(!seen.contains_key("authorization"), "{echo}");
    assert!(
        !seen.keys().any(|k| k.starts_with("x-reactor-internal")),
        "internal headers reached the function: {echo}"
    );
    assert_eq!(seen["x-reactor-caller-org"], "acme");
    assert!(headers.contains_key("x-reactor-cold-start"));
    let ms: f64 = headers["x-reactor-duration-ms"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    assert!(ms > 0.0 && ms < 5000.0, "{ms}");
    let r = reqwest::get(format!("{}/readyz", s.invoke_url))
        .await
        .expect("router ready");
    assert_eq!(r.status(), 200);

    // A function cannot reach the worker with forged internal headers through the router.
    let forged = s
        .invoke(Method::GET, "/fn/v1/probe/")
        .header("x-reactor-internal-auth", INTERNAL_TOKEN)
        .header("x-reactor-internal-cold-start", "true")
        .send()
        .await
        .expect("invoke");
    assert_eq!(forged.status(), 200);
    let echo: Value = forged.json().await.expect("json");
    assert!(
        !echo["headers"]
            .as_object()
            .expect("headers")
            .keys()
            .any(|k| k.starts_with("x-reactor-internal")),
        "{echo}"
    );
    // And the worker refuses callers without the internal token.
    let worker_url = s.worker.as_ref().expect("worker").url_after("listening: ");
    let direct = reqwest::get(format!("{worker_url}/invoke/"))
        .await
        .expect("direct");
    assert_eq!(direct.status(), 401);

    // Control plane gone: the router keeps serving and authenticating on its last table.
    s.cp.take().expect("cp").stop();
    let (_, body) = wait_for_status(&s, "/fn/v1/probe/", 200).await;
    assert!(body.contains("\"probe\":true"), "{body}");
    let stranger = s
        .admin
        .http
        .get(format!("{}/fn/v1/probe/", s.invoke_url))
        .bearer_auth("rct_not_a_token")
        .send()
        .await
        .expect("invoke");
    assert_eq!(stranger.status(), 401);

    // Back: a new promote reaches the router.
    s.restart_cp();
    s.admin.deploy_live("probe", hello).await;
    let (_, body) = wait_for_status(&s, "/fn/v1/probe/", 200).await;
    let body = if body.contains("Hello") {
        body
    } else {
        let got = wait_until(Duration::from_secs(10), || async {
            let t = s
                .invoke(Method::GET, "/fn/v1/probe/")
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            t.contains("Hello").then_some(t)
        })
        .await;
        got.unwrap_or_else(|| panic!("the new deployment never reached the router\n{}", s.logs()))
    };
    assert!(body.contains("Hello, World!"), "{body}");

    // Worker killed: a clear 502 worker_unavailable (it is still listed) or 503
    // no_worker_available (it expired), then recovery when a worker returns.
    s.worker.take().expect("worker").kill();
    let r = s
        .invoke(Method::GET, "/fn/v1/probe/")
        .send()
        .await
        .expect("invoke");
    let status = r.status().as_u16();
    let err: Value = r.json().await.expect("error JSON");
    match status {
        502 => assert_eq!(err["error"]["code"], "worker_unavailable", "{err}"),
        503 => assert_eq!(err["error"]["code"], "no_worker_available", "{err}"),
        other => panic!("{other}: {err}"),
    }
    let (_, body) = wait_for_status(&s, "/fn/v1/probe/", 503).await;
    assert!(body.contains("no_worker_available"), "{body}");
    let back = s.start_worker("worker", &[]);
    s.worker = Some(back);
    let (_, body) = wait_for_status(&s, "/fn/v1/probe/", 200).await;
    assert!(body.contains("Hello, World!"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_worker_leaves_the_table_before_it_stops() {
    let mut s = Split::start();
    s.admin
        .deploy_live("probe", bundle_of(PROBE, "probe.wasm"))
        .await;
    wait_for_status(&s, "/fn/v1/probe/", 200).await;
    let second = s.start_worker("second", &[]);
    // Keep invoking while the first worker drains: no request may fail.
    let stop = tokio::spawn({
        let first = s.worker.take().expect("worker");
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::task::spawn_blocking(move || first.stop())
                .await
                .expect("stop");
        }
    });
    let mut failures = Vec::new();
    let mut n = 0;
    while !stop.is_finished() {
        let r = s
            .invoke(Method::GET, "/fn/v1/probe/")
            .send()
            .await
            .expect("invoke");
        if r.status() != 200 {
            failures.push(r.text().await.unwrap_or_default());
        }
        n += 1;
    }
    assert!(n > 10, "only {n} requests");
    assert!(
        failures.is_empty(),
        "{} of {n} failed: {failures:?}\n{}",
        failures.len(),
        s.logs()
    );
    s.worker = Some(second);
    wait_for_status(&s, "/fn/v1/probe/", 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_dies_is_passed_over_before_it_expires() {
    use reactor_data_plane::RouteIndex;
    use reactor_proto::routing::{RoutingTable, WorkerEndpoint};
    let mut s = Split::start();
    let dep = s
        .admin
        .deploy_live("probe", bundle_of(PROBE, "probe.wasm"))
        .await;
    wait_for_status(&s, "/fn/v1/probe/", 200).await;
    let second = s.start_worker("second", &[]);
    // Both registered and in the router's table.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Kill the worker the router sends this deployment to (the router's own choice).
    let first = s.worker.take().expect("worker");
    let endpoint = |id: &str, w: &reactor_tests::split::Service| WorkerEndpoint {
        worker_id: id.into(),
        runtime: "wasm".into(),
        url: w.url_after("listening: "),
    };
    let index = RouteIndex::build(&RoutingTable {
        version: 1,
        workers: vec![endpoint("worker", &first), endpoint("second", &second)],
        ..Default::default()
    });
    let chosen = index
        .pick_worker(reactor_api::Runtime::Wasm, &dep)
        .expect("a worker")
        .id
        .clone();
    let survivor = if chosen == "worker" {
        first.kill();
        second
    } else {
        second.kill();
        first
    };
    // Within the 3 s TTL: a request without a body that finds its worker gone goes to the
    // next one, and the router then passes over the dead one.
    let started = std::time::Instant::now();
    let mut failed = 0;
    for _ in 0..20 {
        let r = s
            .invoke(Method::GET, "/fn/v1/probe/")
            .send()
            .await
            .expect("invoke");
        if r.status() != 200 {
            assert_eq!(r.status(), 502, "{}", r.text().await.unwrap_or_default());
            failed += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "too slow to show anything"
    );
    assert_eq!(failed, 0, "{failed} of 20 failed\n{}", s.logs());
    s.worker = Some(survivor);
}
