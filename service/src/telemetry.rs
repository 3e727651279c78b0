//! Logs and traces of a service.
//!
//! Logs go to stderr as text or JSON lines ([`LogFormat`]), filtered by `RUST_LOG`. Traces
//! are on only when an OTLP endpoint is configured (`[telemetry] otlp_endpoint`, else
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): then the spans of the `reactor*` crates (whatever
//! `RUST_LOG` says) become OpenTelemetry spans, batched and exported over OTLP (gRPC or
//! `http/protobuf`) from a thread of their own. Off, no OpenTelemetry layer is installed
//! and [`tracing_on`] is false, so the invocation paths skip every step that exists only
//! for traces.
//!
//! Sampling: a trace a caller started keeps the caller's decision (its `traceparent`
//! flags); a new one is kept at `sample_ratio`. An invocation that fails (its server span
//! ends with an error status) is exported whatever the decision: [`ErrorsAlwaysExported`].

use crate::LogFormat;
use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
    SpanData, SpanExporter, SpanProcessor,
};
use reactor_api::calls::TraceParent;
use reactor_api::config::TelemetryConfig;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// A span that exists only for traces: `tracing::info_span!` with traces on, else
/// `Span::none()` (no cost beyond a load of [`tracing_on`]).
#[macro_export]
macro_rules! trace_span {
    ($($t:tt)*) => {
        if $crate::telemetry::tracing_on() {
            ::tracing::info_span!($($t)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

static TRACING_ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured): the paths that only
/// exist for traces check it first.
pub fn tracing_on() -> bool {
    TRACING_ON.load(Ordering::Relaxed)
}

/// Where traces go, resolved from the configuration and the standard `OTEL_*` variables.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceExport {
    pub endpoint: String,
    pub http: bool,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl TraceExport {
    /// `[telemetry]` (already overridden by `REACTOR_TELEMETRY_*`) first, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` and `OTEL_SERVICE_NAME`
    /// read through `env`; none when no endpoint is set.
    pub fn resolve(
        config: &TelemetryConfig,
        default_service: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Self>> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let Some(endpoint) = config
            .otlp_endpoint
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        let protocol = config
            .otlp_protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "grpc".into());
        let http = match protocol.trim() {
            "grpc" => false,
            "http/protobuf" => true,
            other => anyhow::bail!(
                "OTLP protocol {other:?} is not supported: grpc or http/protobuf \
                 (telemetry.otlp_protocol, OTEL_EXPORTER_OTLP_PROTOCOL)"
            ),
        };
        let uri: http::Uri = endpoint
            .trim()
            .parse()
            .with_context(|| format!("the OTLP endpoint {endpoint:?} is not a URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http") && uri.host().is_some(),
            "the OTLP endpoint {endpoint:?} must be an http:// URL with a host (TLS to the \
             collector is not built in: run a Collector beside the service, or a TLS proxy)"
        );
        let mut endpoint = endpoint.trim().trim_end_matches('/').to_string();
        // `http/protobuf` posts each signal to its own path under the base address.
        if http && !endpoint.ends_with("/v1/traces") {
            endpoint.push_str("/v1/traces");
        }
        Ok(Some(Self {
            endpoint,
            http,
            service_name: config
                .service_name
                .clone()
                .or_else(|| env("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| default_service.to_string()),
            sample_ratio: config.sample_ratio,
        }))
    }
}

/// Keeps the trace exporter of a process: dropping it exports what is still queued (for
/// up to 5 seconds).
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            TRACING_ON.store(false, Ordering::Relaxed);
            // Its own thread: the export may block on its runtime.
            let _ = std::thread::spawn(move || {
                let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
            })
            .join();
        }
    }
}

/// Installs the process's logs (`format`, filtered by `RUST_LOG`, default `info`, `sqlx`
/// at `warn`) and, when `config` (or the `OTEL_*` variables) name an endpoint, its trace
/// export as `default_service` unless a service name is set. Once per process; a second
/// call (tests in one process) keeps the first subscriber.
pub fn init(
    format: LogFormat,
    config: &TelemetryConfig,
    default_service: &str,
) -> anyhow::Result<Telemetry> {
    let export = TraceExport::resolve(config, default_service, |n| std::env::var(n).ok())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let Some(export) = export else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(Telemetry { provider: None });
    };
    let provider = tracer_provider(&export)?;
    let tracer = provider.tracer("reactor");
    // The platform's own spans, whatever RUST_LOG says about logs.
    let spans = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span()
            && meta.target().starts_with("reactor")
            && *meta.level() <= tracing::Level::INFO
    });
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(spans);
    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok()
    {
        TRACING_ON.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint = %export.endpoint,
            protocol = if export.http { "http/protobuf" } else { "grpc" },
            service = %export.service_name,
            sample_ratio = export.sample_ratio,
            "exporting traces"
        );
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn tracer_provider(export: &TraceExport) -> anyhow::Result<SdkTracerProvider> {
    // The exporters need a Tokio runtime for their connections; the batch processor
    // exports from a thread of its own, so they get one of their own (one worker).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("reactor-otlp")
        .enable_all()
        .build()
        .context("starting the trace exporter's runtime")?;
    let timeout = Duration::from_secs(10);
    let built = {
        let _entered = runtime.enter();
        if export.http {
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(&export.endpoint)
                .with_timeout(timeout)
                .build()
        } else {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(&export.endpoint)
                .with_timeout(timeout)
                .build()
        }
    };
    let inner = match built {
        Ok(inner) => inner,
        Err(e) => {
            // Not dropped here: this may run on a runtime, where dropping one panics.
            runtime.shutdown_background();
            return Err(e)
                .with_context(|| format!("setting up the OTLP exporter to {}", export.endpoint));
        }
    };
    let exporter = OnRuntime {
        inner,
        runtime: Some(runtime),
        endpoint: export.endpoint.clone(),
        warned: std::sync::atomic::AtomicU64::new(0),
    };
    let batch = BatchSpanProcessor::builder(exporter).build();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", export.service_name.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(ErrorsAlwaysExported(batch))
        .with_sampler(RecordServerSpans(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(export.sample_ratio),
        ))))
        .with_resource(resource)
        .build())
}

/// An exporter whose exports run with a Tokio runtime of its own.
struct OnRuntime<E> {
    inner: E,
    runtime: Option<tokio::runtime::Runtime>,
    endpoint: String,
    /// When a failed export was last logged (seconds since the Unix epoch): once a minute.
    warned: std::sync::atomic::AtomicU64,
}

impl<E: std::fmt::Debug> std::fmt::Debug for OnRuntime<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let Some(rt) = &self.runtime else {
            return Ok(());
        };
        let n = batch.len();
        // Called on the batch processor's thread, never on a runtime's.
        let result = rt.block_on(self.inner.export(batch));
        if let Err(e) = &result {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let last = self.warned.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .warned
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(endpoint = %self.endpoint, spans = n, error = %e,
                    "traces not exported (logged once a minute)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource)
    }
}

impl<E> Drop for OnRuntime<E> {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The sampler, except that a server span it would drop is still recorded (not
/// exported), so that [`ErrorsAlwaysExported`] can export it if the invocation fails.
#[derive(Clone, Debug)]
struct RecordServerSpans(Sampler);

impl ShouldSample for RecordServerSpans {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let mut result = self
            .0
            .should_sample(parent, trace_id, name, kind, attributes, links);
        if matches!(result.decision, SamplingDecision::Drop) && *kind == SpanKind::Server {
            result.decision = SamplingDecision::RecordOnly;
        }
        result
    }
}

/// Passes sampled spans on, and a server span that ended in error whatever the sampling
/// said; drops the rest.
#[derive(Debug)]
struct ErrorsAlwaysExported<P>(P);

impl<P: SpanProcessor> SpanProcessor for ErrorsAlwaysExported<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.0.on_start(span, cx)
    }

    fn on_end(&self, mut span: SpanData) {
        if !span.span_context.is_sampled() {
            if span.span_kind != SpanKind::Server || !matches!(span.status, Status::Error { .. }) {
                return;
            }
            let sc = &span.span_context;
            span.span_context = SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().with_sampled(true),
                sc.is_remote(),
                sc.trace_state().clone(),
            );
        }
        self.0.on_end(span)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource)
    }
}

/// The trace context of `span` as a `traceparent` for the next hop: with traces on, the
/// span's own (its parent `parent`, a remote caller's, set first); off, a span id of our
/// own under `parent`'s trace, or a new trace.
pub fn traceparent_of(span: &tracing::Span, parent: Option<TraceParent>) -> TraceParent {
    if tracing_on() {
        if let Some(p) = parent {
            let _ = span.set_parent(remote_context(p));
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return TraceParent {
                trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
                parent_id: u64::from_be_bytes(sc.span_id().to_bytes()),
                flags: sc.trace_flags().to_u8(),
            };
        }
    }
    match parent {
        Some(p) => p.child(rand::random()),
        None => TraceParent::root(rand::random(), rand::random()),
    }
}

/// [`traceparent_of`], with the ids recorded on `span`'s `trace_id` and `span_id` fields
/// (the JSON log lines written in it carry them).
pub fn traceparent_recorded(span: &tracing::Span, parent: Option<TraceParent>) -> TraceParent {
    let trace = traceparent_of(span, parent);
    span.record(
        "trace_id",
        tracing::field::display(format_args!("{:032x}", trace.trace_id)),
    );
    span.record(
        "span_id",
        tracing::field::display(format_args!("{:016x}", trace.parent_id)),
    );
    trace
}

/// A caller's `traceparent` as the remote parent of a span.
fn remote_context(p: TraceParent) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes(p.trace_id.to_be_bytes()),
        opentelemetry::trace::SpanId::from_bytes(p.parent_id.to_be_bytes()),
        TraceFlags::new(p.flags),
        true,
        TraceState::default(),
    ))
}

/// Names `span` `name` (a server span is named after its function once that is known:
/// a name from the URL before authentication would let anyone add span names).
pub fn rename(span: &tracing::Span, name: &str) {
    if tracing_on() {
        span.context().span().update_name(name.to_string());
    }
}

/// Marks `span` failed (`otel.status_code = ERROR`, so it is exported whatever the
/// sampling) when traces are on.
pub fn set_error(span: &tracing::Span, description: impl Into<std::borrow::Cow<'static, str>>) {
    if tracing_on() {
        span.set_status(Status::error(description));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn no_endpoint_no_traces() {
        let config = TelemetryConfig::default();
        assert_eq!(
            TraceExport::resolve(&config, "svc", env(&[])).expect("valid"),
            None
        );
        // An empty variable is not an endpoint.
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", " ")];
        assert_eq!(
            TraceExport::resolve(&config, "svc", env(&vars)).expect("valid"),
            None
        );
    }

    #[test]
    fn the_standard_variables_apply_when_the_configuration_is_silent() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "edge"),
        ];
        let export = TraceExport::resolve(&TelemetryConfig::default(), "svc", env(&vars))
            .expect("valid")
            .expect("on");
        assert_eq!(export.endpoint, "http://collector:4318/v1/traces");
        assert!(export.http);
        assert_eq!(export.service_name, "edge");
        // The configuration wins over them.
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://otel:4317".into()),
            otlp_protocol: Some("grpc".into()),
            ..Default::default()
        };
        let export = TraceExport::resolve(&config, "svc", env(&vars))
            .expect("valid")
            .expect("on");
        assert_eq!(export.endpoint, "http://otel:4317");
        assert!(!export.http);
    }

    #[test]
    fn bad_endpoints_and_protocols_are_refused() {
        for (endpoint, protocol) in [
            ("collector:4317", "grpc"),
            ("ftp://collector", "grpc"),
            ("https://collector:4317", "grpc"),
            ("http://collector:4317", "http/json"),
        ] {
            let config = TelemetryConfig {
                otlp_endpoint: Some(endpoint.into()),
                otlp_protocol: Some(protocol.into()),
                ..Default::default()
            };
            assert!(
                TraceExport::resolve(&config, "svc", env(&[])).is_err(),
                "{endpoint} {protocol}"
            );
        }
    }

    #[test]
    fn off_a_traceparent_continues_the_callers_trace_or_starts_one() {
        let span = tracing::Span::none();
        let parent = TraceParent::root(7, 9);
        let child = traceparent_of(&span, Some(parent));
        assert_eq!(child.trace_id, 7);
        assert_ne!(child.parent_id, 9);
        assert_eq!(child.flags, parent.flags);
        let root = traceparent_of(&span, None);
        assert_ne!(root.trace_id, 0);
    }

    #[test]
    fn failed_server_spans_are_recorded_whatever_the_ratio() {
        let sampler = RecordServerSpans(Sampler::TraceIdRatioBased(0.0));
        let id = opentelemetry::trace::TraceId::from_bytes([1; 16]);
        let decide = |kind: SpanKind| {
            sampler
                .should_sample(None, id, "x", &kind, &[], &[])
                .decision
        };
        assert!(matches!(
            decide(SpanKind::Server),
            SamplingDecision::RecordOnly
        ));
        assert!(matches!(decide(SpanKind::Internal), SamplingDecision::Drop));
    }
}
