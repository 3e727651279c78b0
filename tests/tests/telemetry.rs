//! Telemetry (`docs/observability.md`):
//! - logs: `reactor dev --log-format json` writes JSON lines, and the lines of an
//!   invocation carry its trace and span ids (the caller's trace continued, the span the
//!   function sees as its parent in `traceparent`);
//! - traces: a local OTLP/gRPC receiver gets the spans of an invocation across the router,
//!   the workers and a call, and a failed invocation's whatever the sampling;
//! - metrics: `/metrics` before and after a burst, read by the Prometheus client library's
//!   parser.

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

// ---------------------------------------------------------------------------------------
// Traces: a local OTLP/gRPC receiver collects what the services export.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use reactor_tests::split::Split;
use reqwest::Method;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One exported span, with the service that sent it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    error: bool,
    attributes: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().expect("spans");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| value_text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Got {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    kind: span.kind,
                    // STATUS_CODE_ERROR
                    error: span.status.as_ref().is_some_and(|s| s.code == 2),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = kv.value.as_ref().and_then(|v| v.value.as_ref());
                            (kv.key.clone(), value_text(v))
                        })
                        .collect(),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn value_text(v: Option<&AnyValue>) -> String {
    match v {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Receiver {
    /// Serves OTLP/gRPC on a free loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = futures::stream::unfold(listener, |l| async move {
                let accepted = l.accept().await.map(|(s, _)| s);
                Some((accepted, l))
            });
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        format!("http://{addr}")
    }

    fn trace(&self, trace_id: &str) -> Vec<Got> {
        self.0
            .lock()
            .expect("spans")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Waits until trace `trace_id` has every span named in `names`.
    async fn wait_for(&self, trace_id: &str, names: &[&str]) -> Vec<Got> {
        let got = wait_until(Duration::from_secs(20), || async {
            let spans = self.trace(trace_id);
            names
                .iter()
                .all(|n| spans.iter().any(|s| s.name == *n))
                .then_some(spans)
        })
        .await;
        got.unwrap_or_else(|| {
            panic!(
                "trace {trace_id} never had {names:?}: {:#?}",
                self.trace(trace_id)
            )
        })
    }
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn one<'a>(spans: &'a [Got], service: &str, name: &str) -> &'a Got {
    let found: Vec<&Got> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span from {service} expected: {spans:#?}"
    );
    found[0]
}

fn children<'a>(spans: &'a [Got], parent: &Got) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| s.parent == parent.span_id)
        .collect()
}

const TRACE_1: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_2: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The split topology with a Bun worker: a Bun function calls a WASM one. Each hop's span
/// is the child of the one before, across the router, both workers and the call; the
/// cold start is in the first trace only.
#[tokio::test(flavor = "multi_thread")]
async fn a_trace_follows_an_invocation_across_router_workers_and_a_call() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let metrics_token = "metrics-token-7fK2pQ9xLm3vB8nR4tW6yZ1cH5jD0gSa";
    let env = [
        ("REACTOR_TELEMETRY_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("REACTOR_TELEMETRY_METRICS_TOKEN", metrics_token.to_string()),
    ];
    let mut s = Split::start_env(&env);
    let first = s.start_bun_worker("bun-1", &[]);
    s.admin
        .deploy_live_runtime("bfront", "bun", bun_probe_bundle("v1", None))
        .await;
    s.admin.deploy_live("back", wasm_probe_bundle(None)).await;
    // Promoting started a process on the first Bun worker. The one that takes over loads
    // nothing ahead (no prewarm): its first request is a cold start.
    let bun = s.start_bun_worker("bun-2", &[("REACTOR_WORKER_PREWARM", "false".into())]);
    let bun_workers = |n: f64| {
        let url = format!("{}/metrics", s.admin.url);
        async move {
            let text = reqwest::Client::new()
                .get(&url)
                .bearer_auth(metrics_token)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let samples = parse_metrics(&text);
            (value(
                &samples,
                "reactor_workers_registered",
                &[("runtime", "bun")],
            ) == n)
                .then_some(())
        }
    };
    wait_until(Duration::from_secs(20), || bun_workers(2.0))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the second Bun worker did not register
{}",
                s.logs()
            )
        });
    first.stop();
    wait_until(Duration::from_secs(20), || bun_workers(1.0))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the first Bun worker did not leave
{}",
                s.logs()
            )
        });

    let path = "/fn/v1/bfront/call?to=back.reactor.internal&path=/echo";
    for trace in [TRACE_1, TRACE_2] {
        let resp = s
            .invoke(Method::GET, path)
            .header("traceparent", format!("00-{trace}-{CALLER_SPAN}-01"))
            .send()
            .await
            .expect("invoke");
        let (status, v) = json_of(resp).await;
        assert_eq!(status, 200, "{v}\n{}", s.logs());
        // The callee got the trace too.
        let tp = v["headers"]["traceparent"].as_str().expect("traceparent");
        assert_eq!(tp.split('-').nth(1), Some(trace), "{v}");
    }

    let (router, bun_w, wasm_w) = (
        "reactor-data-plane",
        "reactor-worker-bun",
        "reactor-worker-wasm",
    );
    let spans = receiver
        .wait_for(
            TRACE_1,
            &[
                "bfront",
                "worker bfront",
                "call back",
                "back",
                "worker back",
                "cold_start",
            ],
        )
        .await;
    // The router's server span continues the caller's trace, with the FaaS attributes.
    let front = one(&spans, router, "bfront");
    assert_eq!(front.parent, CALLER_SPAN, "{front:#?}");
    assert_eq!(front.kind, SpanKind::Server as i32);
    assert_eq!(front.attr("faas.trigger"), Some("http"), "{front:#?}");
    assert_eq!(front.attr("faas.invoked_name"), Some("bfront"));
    assert_eq!(front.attr("faas.coldstart"), Some("true"), "{front:#?}");
    assert_eq!(front.attr("reactor.org"), Some("acme"));
    assert_eq!(front.attr("http.response.status_code"), Some("200"));
    assert!(
        front
            .attr("faas.invocation_id")
            .is_some_and(|id| id.starts_with("req_"))
    );
    assert!(
        front
            .attr("reactor.deployment")
            .is_some_and(|d| d.starts_with("dep_"))
    );
    assert!(!front.error);
    // Policy and the hop to the worker are its children; the Bun worker's span is the hop's.
    let under_front: Vec<&str> = children(&spans, front)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(under_front.contains(&"policy"), "{under_front:?}");
    assert!(under_front.contains(&"admission"), "{under_front:?}");
    let hop = children(&spans, front)
        .into_iter()
        .find(|s| s.name == "worker")
        .expect("the hop to the worker");
    assert_eq!(hop.kind, SpanKind::Client as i32);
    let worker = one(&spans, bun_w, "worker bfront");
    assert_eq!(worker.parent, hop.span_id, "{worker:#?}");
    assert_eq!(worker.kind, SpanKind::Server as i32);
    // Its cold start (the process's spawn and the module's import) and the guest's run.
    let cold = one(&spans, bun_w, "cold_start");
    assert_eq!(cold.parent, worker.span_id);
    let parts: Vec<&str> = children(&spans, cold)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        parts.contains(&"spawn") && parts.contains(&"import"),
        "{parts:?}"
    );
    // The bundle was unpacked on this worker for this request too.
    assert!(
        children(&spans, worker).iter().any(|s| s.name == "unpack"),
        "{spans:#?}"
    );
    let guest = one(&spans, bun_w, "guest");
    assert_eq!(guest.parent, worker.span_id);
    // The call: a client span under the span the function was given; the callee's router
    // span is its child, and the WASM worker's is under that one's hop.
    let call = one(&spans, bun_w, "call back");
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(call.parent, worker.span_id, "{call:#?}");
    let back = one(&spans, router, "back");
    assert_eq!(back.parent, call.span_id, "{back:#?}");
    let back_hop = children(&spans, back)
        .into_iter()
        .find(|s| s.name == "worker")
        .expect("the callee's hop");
    let back_worker = one(&spans, wasm_w, "worker back");
    assert_eq!(back_worker.parent, back_hop.span_id);
    let back_parts: Vec<&str> = children(&spans, back_worker)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        back_parts.contains(&"instantiate") && back_parts.contains(&"guest"),
        "{back_parts:?}"
    );

    // The second invocation found its process running: no cold start.
    let second = receiver
        .wait_for(
            TRACE_2,
            &["bfront", "worker bfront", "call back", "worker back"],
        )
        .await;
    assert!(
        !second.iter().any(|s| s.name == "cold_start"),
        "{second:#?}"
    );
    assert_eq!(
        one(&second, router, "bfront").attr("faas.coldstart"),
        Some("false")
    );

    // Every service serves /metrics, with the bearer token only.
    let worker_url = bun.url_after("listening: ");
    let http = reqwest::Client::new();
    for (url, series) in [
        (s.invoke_url.clone(), "reactor_routing_table_version"),
        (s.admin.url.clone(), "reactor_workers_registered"),
        (worker_url, "reactor_pool_instances"),
    ] {
        let url = format!("{url}/metrics");
        let r = http.get(&url).send().await.expect("scrape");
        assert_eq!(r.status(), 401, "{url} without the token");
        let text = http
            .get(&url)
            .bearer_auth(metrics_token)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        let samples = parse_metrics(&text);
        assert!(
            samples.iter().any(|m| m.name == series),
            "{url} has no {series}:\n{text}"
        );
        if series == "reactor_routing_table_version" {
            assert!(value(&samples, series, &[]) >= 1.0, "{text}");
        }
        if series == "reactor_workers_registered" {
            assert_eq!(
                value(&samples, series, &[("runtime", "bun")]),
                1.0,
                "{text}"
            );
        }
        if series == "reactor_pool_instances" {
            let labels = [
                ("function", "bfront"),
                ("runtime", "bun"),
                ("state", "idle"),
            ];
            assert_eq!(value(&samples, series, &labels), 1.0, "{text}");
        }
    }
    drop(bun);
}

/// A trace sampled out is not exported, unless the invocation fails.
#[tokio::test(flavor = "multi_thread")]
async fn failed_invocations_are_exported_whatever_the_sampling() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let s = Server::start_with(&[
        ("REACTOR_TELEMETRY_OTLP_ENDPOINT", &endpoint),
        ("REACTOR_TELEMETRY_SAMPLE_RATIO", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    s.deploy_live("probe", wasm_probe_bundle(None)).await;
    let ok = s
        .request(Method::GET, "/fn/v1/probe/echo")
        .send()
        .await
        .expect("invoke");
    assert_eq!(ok.status(), 200);
    let crash = s
        .request(Method::GET, "/fn/v1/probe/crash")
        .send()
        .await
        .expect("invoke");
    assert!(crash.status().is_server_error(), "{}", crash.status());
    let failed = wait_until(Duration::from_secs(20), || async {
        let got = receiver.0.lock().expect("spans").clone();
        got.into_iter().find(|s| s.name == "probe")
    })
    .await
    .unwrap_or_else(|| panic!("the failed invocation was not exported\n{}", s.logs()));
    assert!(failed.error, "{failed:#?}");
    assert_eq!(
        failed.attr("http.response.status_code"),
        Some("500"),
        "{failed:#?}"
    );
    // Nothing else: the invocation that succeeded was sampled out, its children too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = receiver.0.lock().expect("spans").clone();
    assert_eq!(all.len(), 1, "{all:#?}");
}

// ---------------------------------------------------------------------------------------
// Metrics: /metrics parsed by the Prometheus client library's own text parser.

#[derive(Debug, serde::Deserialize)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format with `prometheus_client.parser` (PyPI; in `.venv`).
fn parse_metrics(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

/// The value of `name` with (at least) `labels`; 0 when there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_by_a_burst_of_invocations() {
    let s = Server::start();
    s.deploy_live("probe", wasm_probe_bundle(None)).await;
    let scrape = || async {
        let r = reqwest::get(format!("{}/metrics", s.url))
            .await
            .expect("scrape");
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .is_ok_and(|c| c.starts_with("text/plain; version=0.0.4")),
            "{:?}",
            r.headers()
        );
        parse_metrics(&r.text().await.expect("text"))
    };
    // One warm-up: the series exist from here on.
    let warm = s
        .request(Method::GET, "/fn/v1/probe/echo")
        .send()
        .await
        .expect("invoke");
    assert_eq!(warm.status(), 200);
    warm.bytes().await.expect("body");
    let ok = [
        ("function", "probe"),
        ("status", "2xx"),
        ("cold_start", "false"),
    ];
    let probe = [("function", "probe"), ("org", "acme")];
    let before = wait_until(Duration::from_secs(5), || async {
        let m = scrape().await;
        (value(&m, "reactor_invocation_duration_seconds_count", &probe) >= 1.0).then_some(m)
    })
    .await
    .expect("the warm-up's body ended");

    const BURST: usize = 20;
    for _ in 0..BURST {
        let r = s
            .request(Method::GET, "/fn/v1/probe/echo")
            .send()
            .await
            .expect("invoke");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    let missing = s
        .request(Method::GET, "/fn/v1/probe/crash")
        .send()
        .await
        .expect("invoke");
    assert!(missing.status().is_server_error());
    missing.bytes().await.expect("body");
    let after = wait_until(Duration::from_secs(5), || async {
        let m = scrape().await;
        let done = value(&m, "reactor_invocation_duration_seconds_count", &probe)
            - value(&before, "reactor_invocation_duration_seconds_count", &probe);
        (done >= (BURST + 1) as f64).then_some(m)
    })
    .await
    .expect("every body ended");
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta("reactor_invocations_total", &ok), BURST as f64);
    assert_eq!(
        delta(
            "reactor_invocations_total",
            &[("function", "probe"), ("status", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        delta("reactor_invocation_head_duration_seconds_count", &probe),
        (BURST + 1) as f64
    );
    assert_eq!(
        delta("reactor_invocation_duration_seconds_count", &probe),
        (BURST + 1) as f64
    );
    let sum = delta("reactor_invocation_duration_seconds_sum", &probe);
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    // Every bucket is cumulative: the +Inf one counts them all.
    assert_eq!(
        delta(
            "reactor_invocation_duration_seconds_bucket",
            &[("function", "probe"), ("le", "+Inf")]
        ),
        (BURST + 1) as f64
    );
    // The WASM cold start (at promote) and its parts; the deploy; the routing table.
    for phase in ["total", "env", "fetch", "deserialize", "link"] {
        assert!(
            value(
                &after,
                "reactor_cold_start_duration_seconds_count",
                &[("runtime", "wasm"), ("phase", phase)]
            ) >= 1.0,
            "{phase}"
        );
    }
    assert!(value(&after, "reactor_deploy_duration_seconds_count", &[]) >= 1.0);
    assert!(
        value(
            &after,
            "reactor_materialize_duration_seconds_count",
            &[("runtime", "wasm")]
        ) >= 1.0
    );
    assert!(value(&after, "reactor_routing_table_version", &[]) >= 1.0);
    let capacity = value(
        &after,
        "reactor_pool_capacity",
        &[("function", "probe"), ("runtime", "wasm")],
    );
    assert!(capacity >= 1.0, "{capacity}");
    assert_eq!(value(&after, "reactor_log_entries_dropped_total", &[]), 0.0);
}
