//! Telemetry (`docs/operations.md`, "Logs"): `reactor dev --log-format json` writes its own
//! logs as JSON lines, and the lines of an invocation carry its trace and span ids: the
//! caller's trace continued, the span the function sees as its parent in `traceparent`.

use reactor_tests::*;
use serde_json::Value;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_invocations_trace_and_span() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("work").to_string_lossy().into_owned();
    let s = Server::start_args(
        dir,
        &["--workdir", &workdir, "--log-format", "json"],
        &[("RUST_LOG", "info,sqlx=warn,reactor_data_plane=debug")],
    );
    s.deploy_live_runtime("probe", "bun", bun_probe_bundle("1", None))
        .await;
    let resp = s
        .request(reqwest::Method::GET, "/fn/v1/probe/headers")
        .header("traceparent", format!("00-{TRACE}-b7ad6b7169203331-01"))
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), 200);
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("request id")
        .to_string();
    let seen: Value = resp.json().await.expect("headers as JSON");
    let traceparent = seen["traceparent"]
        .as_str()
        .expect("traceparent reaches the function");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        parts[1], TRACE,
        "the caller's trace is continued: {traceparent}"
    );
    let span_id = parts[2];
    assert_ne!(span_id, "b7ad6b7169203331", "the router's own span");

    // The line is written as the answer goes out: wait for it.
    let line = wait_until(std::time::Duration::from_secs(10), || async {
        s.logs().lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "invoked" && v["span"]["request_id"] == request_id.as_str())
                .then_some(v)
        })
    })
    .await
    .unwrap_or_else(|| panic!("no JSON line for the invocation:\n{}", s.logs()));
    assert_eq!(line["span"]["trace_id"], TRACE, "{line}");
    assert_eq!(line["span"]["span_id"], span_id, "{line}");
    assert_eq!(line["span"]["function"], "probe", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert!(line["timestamp"].is_string(), "{line}");

    // Every line the server wrote is one JSON object.
    let logs = s.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 1, "{logs}");
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{l}");
    }
}
