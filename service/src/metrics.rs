//! The process's Prometheus metrics, at `/metrics` (text format 0.0.4) on each service's
//! listener, beside `/healthz` and `/readyz` (`docs/observability.md` lists them).
//!
//! One registry per process: the embedded `reactor dev` shows the router's, the workers'
//! and the control plane's series together. What a service counts as it goes (an
//! invocation, a cold start) is in [`Metrics`]; what it holds (pools, queues, workers) it
//! reports at scrape time through a [`Collector`] of its own ([`register`]).
//!
//! Labels naming a function are bounded: `[telemetry] metrics_function_labels = false`
//! sums every function into one series, and past `metrics_max_functions` distinct
//! functions the rest share `function="_other"` (a tenant cannot grow the scrape without
//! end). `/metrics` answers `Authorization: Bearer <metrics_token>`, and without a token
//! set only `reactor dev`'s clients on loopback ([`Exposure`]): the series name other
//! tenants' functions.

pub use prometheus_client;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use reactor_api::config::TelemetryConfig;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex, RwLock};
use std::time::Duration;

/// A function's series: its org and name (bounded: see the module).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub org: String,
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InvocationLabels {
    pub org: String,
    pub function: String,
    /// `2xx` ... `5xx`.
    pub status: &'static str,
    pub cold_start: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ColdStartLabels {
    pub runtime: String,
    /// `total`, or one part: `env`, `fetch`, `compile`, `deserialize`, `link` (WASM); `unpack`,
    /// `spawn`, `import` (Bun).
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuntimeLabels {
    pub runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConcurrencyLabels {
    pub org: String,
    pub function: String,
    /// `function` (its `max_concurrency`) or `calls` (the org's calls in flight).
    pub cap: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ])
}

fn slow() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        300.0,
    ])
}

/// What the services count as they go.
pub struct Metrics {
    /// Invocations answered by a function or refused on its behalf (routers).
    pub invocations: Family<InvocationLabels, Counter>,
    /// Time to the response's headers (routers).
    pub head_duration: HistogramFamily<FunctionLabels>,
    /// Time to the end of the response's body, or until the client went away (routers).
    pub duration: HistogramFamily<FunctionLabels>,
    /// Requests in flight under a concurrency cap (routers), and the cap.
    pub concurrency_in_use: Family<ConcurrencyLabels, Gauge>,
    pub concurrency_limit: Family<ConcurrencyLabels, Gauge>,
    /// Cold starts and their parts (workers).
    pub cold_starts: HistogramFamily<ColdStartLabels>,
    /// A deployment made ready to run on a worker (fetched, built or compiled).
    pub materialize_duration: HistogramFamily<RuntimeLabels>,
    /// An upload taken, checked and stored (control plane).
    pub deploy_duration: Histogram,
    /// Function log entries a full queue dropped before they reached the control plane.
    pub log_entries_dropped: Counter,
    /// WASM deployments loaded on a worker, what they are charged against
    /// `[worker] loaded_budget_mb`, and those unloaded to stay under it.
    pub wasm_loaded: Gauge,
    pub wasm_loaded_bytes: Gauge,
    pub wasm_unloaded: Counter,
    /// The routing table a router serves.
    pub routing_table_version: Gauge,
    /// When that table arrived, in seconds since the Unix epoch.
    pub routing_table_updated: Gauge<f64, std::sync::atomic::AtomicU64>,
    labels: Labels,
    registry: Mutex<Registry>,
}

/// The bound on function labels.
struct Labels {
    /// `telemetry.metrics`: off, nothing is recorded.
    recording: AtomicBool,
    on: AtomicBool,
    max: AtomicU32,
    seen: RwLock<HashSet<(String, String)>>,
}

impl Labels {
    fn of(&self, org: &str, function: &str) -> (String, String) {
        if !self.on.load(Ordering::Relaxed) {
            return (String::new(), String::new());
        }
        let key = (org.to_string(), function.to_string());
        if let Ok(seen) = self.seen.read()
            && seen.contains(&key)
        {
            return key;
        }
        let Ok(mut seen) = self.seen.write() else {
            return (String::new(), OTHER.to_string());
        };
        if seen.contains(&key) || seen.len() < self.max.load(Ordering::Relaxed) as usize {
            seen.insert(key.clone());
            key
        } else {
            (String::new(), OTHER.to_string())
        }
    }
}

/// The function label of the functions past `metrics_max_functions`.
pub const OTHER: &str = "_other";

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Adds `collector`, asked for its series at every scrape (hold weak references in it:
/// a collector lives as long as the process).
pub fn register(collector: impl Collector) {
    if let Ok(mut r) = METRICS.registry.lock() {
        r.register_collector(Box::new(collector));
    }
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            invocations: Family::default(),
            head_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            duration: Family::new_with_constructor(latency as fn() -> Histogram),
            concurrency_in_use: Family::default(),
            concurrency_limit: Family::default(),
            cold_starts: Family::new_with_constructor(slow as fn() -> Histogram),
            materialize_duration: Family::new_with_constructor(slow as fn() -> Histogram),
            deploy_duration: slow(),
            log_entries_dropped: Counter::default(),
            wasm_loaded: Gauge::default(),
            wasm_loaded_bytes: Gauge::default(),
            wasm_unloaded: Counter::default(),
            routing_table_version: Gauge::default(),
            routing_table_updated: Gauge::default(),
            labels: Labels {
                recording: AtomicBool::new(true),
                on: AtomicBool::new(true),
                max: AtomicU32::new(500),
                seen: RwLock::new(HashSet::new()),
            },
            registry: Mutex::new(Registry::with_prefix("reactor")),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register(
                "invocations",
                "Invocations by function, status class and cold start (routers)",
                m.invocations.clone(),
            );
            r.register(
                "invocation_head_duration_seconds",
                "Time from the request to the response's headers (routers)",
                m.head_duration.clone(),
            );
            r.register(
                "invocation_duration_seconds",
                "Time from the request to the end of the response's body (routers)",
                m.duration.clone(),
            );
            r.register(
                "concurrency_in_use",
                "Requests in flight under a concurrency cap, on this router",
                m.concurrency_in_use.clone(),
            );
            r.register(
                "concurrency_limit",
                "The concurrency cap (max_concurrency, or functions.calls.max_in_flight_per_org)",
                m.concurrency_limit.clone(),
            );
            r.register(
                "cold_start_duration_seconds",
                "Cold starts by runtime: the whole (phase=total) and each part (workers)",
                m.cold_starts.clone(),
            );
            r.register(
                "materialize_duration_seconds",
                "A deployment fetched and made ready to run: built, compiled or unpacked",
                m.materialize_duration.clone(),
            );
            r.register(
                "deploy_duration_seconds",
                "An upload received, checked and stored (control plane)",
                m.deploy_duration.clone(),
            );
            r.register(
                "log_entries_dropped",
                "Function log entries dropped by a full queue before the control plane got them",
                m.log_entries_dropped.clone(),
            );
            r.register(
                "wasm_loaded_deployments",
                "WASM deployments loaded on this worker (their compiled code mapped, ready to instantiate)",
                m.wasm_loaded.clone(),
            );
            r.register(
                "wasm_loaded_bytes",
                "What the loaded WASM deployments are charged against worker.loaded_budget_mb",
                m.wasm_loaded_bytes.clone(),
            );
            r.register(
                "wasm_unloaded_for_budget",
                "Idle WASM deployments unloaded, least recently used first, to stay under worker.loaded_budget_mb",
                m.wasm_unloaded.clone(),
            );
            r.register(
                "routing_table_version",
                "The routing table's version this router serves",
                m.routing_table_version.clone(),
            );
            r.register(
                "routing_table_updated_timestamp_seconds",
                "When this router got its routing table (Unix time; age = time() - this)",
                m.routing_table_updated.clone(),
            );
        }
        m
    }

    /// The labels of `org`'s `function`, as configured.
    pub fn function(&self, org: &str, function: &str) -> FunctionLabels {
        if !self.recording() {
            return FunctionLabels {
                org: String::new(),
                function: String::new(),
            };
        }
        let (org, function) = self.labels.of(org, function);
        FunctionLabels { org, function }
    }

    /// Whether anything is recorded (`telemetry.metrics`).
    pub fn recording(&self) -> bool {
        self.labels.recording.load(Ordering::Relaxed)
    }

    /// An invocation's answer reached its headers after `head`.
    pub fn invoked(&self, org: &str, function: &str, status: u16, cold: bool, head: Duration) {
        if !self.recording() {
            return;
        }
        let labels = self.function(org, function);
        self.head_duration
            .get_or_create(&labels)
            .observe(head.as_secs_f64());
        self.invocations
            .get_or_create(&InvocationLabels {
                org: labels.org,
                function: labels.function,
                status: status_class(status),
                cold_start: cold,
            })
            .inc();
    }

    /// An invocation's body ended (or its client left) after `total`.
    pub fn finished(&self, org: &str, function: &str, total: Duration) {
        if !self.recording() {
            return;
        }
        self.duration
            .get_or_create(&self.function(org, function))
            .observe(total.as_secs_f64());
    }

    /// A cold start's `phase` took `took`.
    pub fn cold_start(&self, runtime: &str, phase: &'static str, took: Duration) {
        if !self.recording() {
            return;
        }
        self.cold_starts
            .get_or_create(&ColdStartLabels {
                runtime: runtime.to_string(),
                phase,
            })
            .observe(took.as_secs_f64());
    }

    /// A router installed routing table `version`.
    pub fn routing_table(&self, version: u64) {
        self.routing_table_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.routing_table_updated.set(now);
    }

    /// Applies `[telemetry]`'s label settings.
    pub fn configure(&self, config: &TelemetryConfig) {
        self.labels
            .recording
            .store(config.metrics, Ordering::Relaxed);
        self.labels
            .on
            .store(config.metrics_function_labels, Ordering::Relaxed);
        self.labels
            .max
            .store(config.metrics_max_functions, Ordering::Relaxed);
    }

    /// The text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
        }
        out
    }
}

/// One function's instances on a worker, reported at scrape time.
#[derive(Clone, Debug, Default)]
pub struct PoolStat {
    pub org: String,
    pub function: String,
    /// Instances (WASM) or processes (Bun) serving requests now.
    pub busy: u64,
    /// Processes started and waiting for a request (Bun; a WASM instance lives for one
    /// request, so none).
    pub idle: u64,
    /// How many it may have at once.
    pub capacity: u64,
    /// Requests waiting for one.
    pub queued: u64,
}

/// A worker runtime's pools, for `reactor_pool_*`.
pub trait PoolSource: Send + Sync {
    fn runtime(&self) -> &'static str;
    fn pools(&self) -> Vec<PoolStat>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    org: String,
    function: String,
    runtime: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    org: String,
    function: String,
    runtime: &'static str,
    state: &'static str,
}

/// Every registered [`PoolSource`], asked at each scrape.
#[derive(Default)]
struct Pools(Mutex<Vec<std::sync::Weak<dyn PoolSource>>>);

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools")
    }
}

static POOLS: LazyLock<std::sync::Arc<Pools>> = LazyLock::new(|| {
    let pools = std::sync::Arc::new(Pools::default());
    register(pools.clone());
    pools
});

/// Reports `source`'s pools while it lives.
pub fn register_pools(source: std::sync::Weak<dyn PoolSource>) {
    if let Ok(mut sources) = POOLS.0.lock() {
        sources.retain(|s| s.strong_count() > 0);
        sources.push(source);
    }
}

impl Collector for Pools {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let instances = Family::<PoolStateLabels, Gauge>::default();
        let capacity = Family::<PoolLabels, Gauge>::default();
        let queued = Family::<PoolLabels, Gauge>::default();
        let sources: Vec<_> = match self.0.lock() {
            Ok(s) => s.iter().filter_map(|s| s.upgrade()).collect(),
            Err(_) => Vec::new(),
        };
        let m = get();
        for source in sources {
            let runtime = source.runtime();
            for p in source.pools() {
                let f = m.function(&p.org, &p.function);
                let labels = PoolLabels {
                    org: f.org,
                    function: f.function,
                    runtime,
                };
                for (state, n) in [("busy", p.busy), ("idle", p.idle)] {
                    instances
                        .get_or_create(&PoolStateLabels {
                            org: labels.org.clone(),
                            function: labels.function.clone(),
                            runtime,
                            state,
                        })
                        .inc_by(n as i64);
                }
                capacity.get_or_create(&labels).inc_by(p.capacity as i64);
                queued.get_or_create(&labels).inc_by(p.queued as i64);
            }
        }
        for (name, help, family) in [
            (
                "pool_capacity",
                "Instances or processes a function may have at once on this worker",
                &capacity,
            ),
            (
                "pool_queued",
                "Requests waiting for an instance or process on this worker",
                &queued,
            ),
        ] {
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        instances.encode(encoder.encode_descriptor(
            "pool_instances",
            "A function's instances (WASM) or processes (Bun) on this worker, busy or idle",
            None,
            instances.metric_type(),
        )?)
    }
}

/// `2xx` for 200..=299, and so on.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Who may read `/metrics`, from `[telemetry]`.
#[derive(Clone)]
struct Access {
    on: bool,
    /// Compared by hash ([`reactor_api::token::InternalToken`]).
    token: Option<reactor_api::token::InternalToken>,
    /// Without a token, clients on loopback (`reactor dev` only: behind a reverse proxy on
    /// the same host every client is on loopback).
    loopback: bool,
}

/// Where `/metrics` is served, which decides who may read it without a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// `reactor dev`: clients on loopback, or the token.
    Embedded,
    /// A split service: the token only (none set: `/metrics` refuses everyone).
    Service,
}

/// `GET /metrics`, to merge beside a service's health routes.
pub fn routes(config: &TelemetryConfig, exposure: Exposure) -> Router {
    get().configure(config);
    let access = Access {
        on: config.metrics,
        token: config
            .metrics_token
            .as_deref()
            .map(reactor_api::token::InternalToken::new),
        loopback: exposure == Exposure::Embedded,
    };
    Router::new().route(
        "/metrics",
        axum::routing::get(move |peer: Peer, headers: HeaderMap| {
            let access = access.clone();
            async move { scrape(&access, peer.0, &headers) }
        }),
    )
}

fn scrape(access: &Access, peer: Option<SocketAddr>, headers: &HeaderMap) -> Response {
    use reactor_api::{ApiError, ErrorCode};
    if !access.on {
        return ApiError::new(
            ErrorCode::NotFound,
            "metrics are off on this service (telemetry.metrics)",
        )
        .into_response();
    }
    let allowed = match &access.token {
        Some(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(reactor_api::token::bearer)
            .is_some_and(|given| token.matches(given.as_bytes())),
        None => access.loopback && peer.is_some_and(|p| p.ip().is_loopback()),
    };
    if !allowed {
        let why = match (&access.token, access.loopback) {
            (Some(_), _) => "metrics need the bearer token of telemetry.metrics_token",
            (None, true) => {
                "metrics answer clients on loopback only; set telemetry.metrics_token to scrape from elsewhere"
            }
            (None, false) => {
                "metrics need a bearer token: set telemetry.metrics_token (REACTOR_TELEMETRY_METRICS_TOKEN) on this service and give it to Prometheus"
            }
        };
        return ApiError::new(ErrorCode::Unauthorized, why).into_response();
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        get().encode(),
    )
        .into_response()
}

/// The client's address, on a plain or a TLS listener.
struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let plain = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let tls = parts
            .extensions
            .get::<ConnectInfo<crate::tls::Peer>>()
            .map(|c| c.0.addr);
        Ok(Peer(plain.or(tls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_labels_are_bounded() {
        let labels = Labels {
            recording: AtomicBool::new(true),
            on: AtomicBool::new(true),
            max: AtomicU32::new(2),
            seen: RwLock::new(HashSet::new()),
        };
        assert_eq!(labels.of("o", "a"), ("o".into(), "a".into()));
        assert_eq!(labels.of("o", "b"), ("o".into(), "b".into()));
        assert_eq!(labels.of("o", "c"), (String::new(), OTHER.into()));
        // Those already seen keep their own.
        assert_eq!(labels.of("o", "a"), ("o".into(), "a".into()));
        labels.on.store(false, Ordering::Relaxed);
        assert_eq!(labels.of("o", "a"), (String::new(), String::new()));
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(101), "1xx");
    }

    #[test]
    fn scrapes_need_loopback_or_the_token() {
        let open = Access {
            on: true,
            token: None,
            loopback: true,
        };
        let local: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let remote: SocketAddr = "10.0.0.1:9".parse().expect("addr");
        let none = HeaderMap::new();
        assert_eq!(scrape(&open, Some(local), &none).status(), 200);
        assert_eq!(scrape(&open, Some(remote), &none).status(), 401);
        assert_eq!(scrape(&open, None, &none).status(), 401);
        let token = Access {
            on: true,
            token: Some(reactor_api::token::InternalToken::new("s3cret")),
            loopback: true,
        };
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            "Bearer s3cret".parse().expect("header"),
        );
        assert_eq!(scrape(&token, Some(remote), &bearer).status(), 200);
        assert_eq!(scrape(&token, Some(local), &none).status(), 401);
        let off = Access {
            on: false,
            token: None,
            loopback: true,
        };
        assert_eq!(scrape(&off, Some(local), &none).status(), 404);
        // A split service without a token answers nobody, loopback included.
        let service = Access {
            on: true,
            token: None,
            loopback: false,
        };
        assert_eq!(scrape(&service, Some(local), &none).status(), 401);
    }
}
