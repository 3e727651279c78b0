//! `reactor.toml`: the seed's `[functions]` section, every field overridable from the
//! environment, with defaults that make the file optional.
//!
//! Every key is declared once, in a [`keys::section!`] table below: its field, type,
//! default, environment variable and documented default. The full list is generated from
//! those tables into `docs/configuration.md` (a test fails when it is out of date; run it
//! with `REACTOR_BLESS=1` to rewrite it).
//!
//! Paths: a relative path in the file is relative to the file's directory, one from the
//! environment or a flag to the current directory; [`ReactorConfig::load`] makes them
//! absolute once, so nothing later depends on where a process was started.
//!
//! The split topology adds one section per service and the shared internal token (see
//! `[internal]`, `[control_plane]`, `[data_plane]`, `[worker]`); the embedded default needs
//! none of them.

pub mod keys;

use crate::Runtime;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const ENV_CONFIG: &str = "REACTOR_CONFIG";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactorConfig {
    #[serde(default)]
    pub functions: FunctionsConfig,
    #[serde(default)]
    pub internal: InternalConfig,
    #[serde(default)]
    pub control_plane: ControlPlaneConfig,
    #[serde(default)]
    pub data_plane: DataPlaneConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

keys::section! {
    /// `[internal]`: what services use to trust each other.
    pub struct InternalConfig ("internal", env "REACTOR_INTERNAL_") {
        /// Shared secret: routers and workers present it to the control plane, routers to
        /// workers. Never passed to a function.
        token: Option<String> = None, env "TOKEN",
            doc "none: the split services refuse to start without it";
        /// The workers' own credential: only workers and the control plane hold it. It
        /// registers a worker, fetches a deployment's env and asks a worker to build.
        worker_token: Option<String> = None, env "WORKER_TOKEN",
            doc "none: the control plane and the workers refuse to start without it; routers never get it";
        /// Mutual TLS on every internal connection (routers and workers to the control
        /// plane's gRPC, routers and the control plane to workers), with the cluster CA and
        /// role certificates in `tls_dir`. Internal URLs are then `https` (an `http://`
        /// one is taken as `https://`).
        tls: bool = false, env "TLS",
            doc "false (`true`/`false`/`1`/`0`); on in the compose file and the Kubernetes manifests. Off, the control plane sends deployment env only to workers on loopback";
        /// `ca.pem` and each role's `<role>.pem` and `<role>.key` (`reactor tls init`).
        tls_dir: PathBuf = PathBuf::from("tls"), env "TLS_DIR",
            doc "`tls` (relative to the configuration file's directory, else the current one); written by `reactor tls init`";
    }
}

/// The token is shown as set or not.
impl std::fmt::Debug for InternalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalConfig")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("worker_token", &self.worker_token.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls)
            .field("tls_dir", &self.tls_dir)
            .finish()
    }
}

keys::section! {
    /// `[control_plane]` of `reactor-control-plane`.
    #[derive(Debug)]
    pub struct ControlPlaneConfig ("control_plane", env "REACTOR_CONTROL_PLANE_") {
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7070)), env "LISTEN",
            doc "`127.0.0.1:7070` (admin HTTP, health)";
        grpc_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7071)), env "GRPC_LISTEN",
            doc "`127.0.0.1:7071` (admin, routing, workers)";
    }
}

keys::section! {
    /// `[data_plane]` of `reactor-data-plane`.
    #[derive(Debug)]
    pub struct DataPlaneConfig ("data_plane", env "REACTOR_DATA_PLANE_") {
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), env "LISTEN",
            doc "`127.0.0.1:8080` (invoke, health)";
        control_plane_url: String = "http://127.0.0.1:7071".into(), env "CONTROL_PLANE_URL",
            doc "`http://127.0.0.1:7071`";
        /// The internal listener for calls between functions: workers send the calls
        /// their functions make here (never to the public `listen`).
        call_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8081)), env "CALL_LISTEN",
            doc "`127.0.0.1:8081` (calls between functions, from workers only: the internal token, and with `internal.tls` a worker's certificate)";
    }
}

keys::section! {
    /// `[worker]` of the worker services (`reactor-worker-wasm`, `reactor-worker-bun`).
    #[derive(Debug)]
    pub struct WorkerConfig ("worker", env "REACTOR_WORKER_") {
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7080)), env "LISTEN",
            doc "`127.0.0.1:7080`";
        advertise_url: Option<String> = None, env "ADVERTISE_URL",
            doc "`http://` + the bound address (required when listening on 0.0.0.0 or ::)";
        control_plane_url: String = "http://127.0.0.1:7071".into(), env "CONTROL_PLANE_URL",
            doc "`http://127.0.0.1:7071`";
        id: Option<String> = None, env "ID",
            doc "`{runtime}-{host}-{port}` of the advertised URL";
        cache_dir: Option<PathBuf> = None, env "CACHE_DIR",
            doc "`{functions.workdir}/cache/{id}`";
        max_instances: u32 = 1000, env "MAX_INSTANCES", doc "1000";
        router_url: String = "http://127.0.0.1:8081".into(), env "ROUTER_URL",
            doc "`http://127.0.0.1:8081`: a router's `data_plane.call_listen` (a balanced address in front of every router), where calls between functions go";
        loaded_budget_mb: u64 = 512, env "LOADED_BUDGET_MB",
            doc "512: what a WASM worker's loaded deployments (their compiled code, shared between deployments of the same code in an org, and a few KiB each) may take before the least recently used idle ones are unloaded; they load again on their next request, from the local cache. Also read by `reactor dev`";
        prewarm: bool = true, env "PREWARM",
            doc "true (`true`/`false`/`1`/`0`): load each live deployment of its runtime that routers send to this worker (it is among the deployment's 4 top-ranked workers), and unload those it no longer is";
    }
}

keys::section! {
    /// `[telemetry]` of every service and `reactor dev`: traces exported with OTLP, and
    /// Prometheus metrics at `/metrics` (see `docs/observability.md`).
    pub struct TelemetryConfig ("telemetry", env "REACTOR_TELEMETRY_") {
        /// Where traces go (an OpenTelemetry Collector, Jaeger, Tempo...): `http://host:4317`
        /// for OTLP over gRPC, `http://host:4318` for `http/protobuf`.
        otlp_endpoint: Option<String> = None, env "OTLP_ENDPOINT" with keys::non_empty,
            doc "`OTEL_EXPORTER_OTLP_ENDPOINT` when set, else none: no traces are recorded or exported";
        otlp_protocol: Option<String> = None, env "OTLP_PROTOCOL" with keys::non_empty,
            doc "`OTEL_EXPORTER_OTLP_PROTOCOL` when set, else `grpc`; or `http/protobuf`";
        service_name: Option<String> = None, env "SERVICE_NAME" with keys::non_empty,
            doc "`OTEL_SERVICE_NAME` when set, else the service's binary (`reactor-data-plane`, ...; `reactor` for `reactor dev`)";
        /// The share of new traces recorded (a trace a caller started keeps the caller's
        /// decision); an invocation that fails is exported whatever the ratio.
        sample_ratio: f64 = 1.0, env "SAMPLE_RATIO",
            doc "1.0 (every invocation; 0.0 to 1.0); failed invocations are always exported";
        /// `/metrics` in the Prometheus text format, on each service's listener.
        metrics: bool = true, env "METRICS",
            doc "true (`true`/`false`/`1`/`0`)";
        /// A bearer token for `/metrics` (Prometheus: `authorization: credentials`).
        metrics_token: Option<String> = None, env "METRICS_TOKEN" with keys::non_empty,
            doc "none: `reactor dev` answers clients on loopback, the split services nobody";
        /// The `org` and `function` labels of the per-function series.
        metrics_function_labels: bool = true, env "METRICS_FUNCTION_LABELS",
            doc "true; false: per-function series are summed into `function=\"\"`";
        /// Distinct functions that get series of their own; the rest share
        /// `function="_other"` (bounds the cardinality a tenant can create).
        metrics_max_functions: u32 = 500, env "METRICS_MAX_FUNCTIONS",
            doc "500";
    }
}

/// The token is shown as set or not.
impl std::fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("otlp_protocol", &self.otlp_protocol)
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sample_ratio)
            .field("metrics", &self.metrics)
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<set>"),
            )
            .field("metrics_function_labels", &self.metrics_function_labels)
            .field("metrics_max_functions", &self.metrics_max_functions)
            .finish()
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::Invalid(format!(
                "telemetry.sample_ratio {} must be between 0.0 and 1.0",
                self.sample_ratio
            )));
        }
        if let Some(p) = &self.otlp_protocol
            && !matches!(p.as_str(), "grpc" | "http/protobuf")
        {
            return Err(ConfigError::Invalid(format!(
                "telemetry.otlp_protocol {p:?} is not grpc or http/protobuf"
            )));
        }
        if let Some(t) = &self.metrics_token {
            crate::token::check_secret(
                "telemetry.metrics_token (REACTOR_TELEMETRY_METRICS_TOKEN)",
                t,
            )
            .map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

impl ReactorConfig {
    /// Applies the services' environment overrides (`REACTOR_INTERNAL_TOKEN`,
    /// `REACTOR_CONTROL_PLANE_*`, `REACTOR_DATA_PLANE_*`, `REACTOR_WORKER_*`).
    pub fn apply_services_env(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.internal.apply_env_with(&get)?;
        self.control_plane.apply_env_with(&get)?;
        self.data_plane.apply_env_with(&get)?;
        self.worker.apply_env_with(&get)
    }

    /// Every key of every section, in the order of `docs/configuration.md`.
    pub fn keys() -> Vec<keys::Key> {
        let mut all = FunctionsConfig::keys();
        all.extend(InternalConfig::keys());
        all.extend(ControlPlaneConfig::keys());
        all.extend(DataPlaneConfig::keys());
        all.extend(WorkerConfig::keys());
        all.extend(TelemetryConfig::keys());
        all
    }

    /// The workers' credential, required by the control plane and the workers: strong, and
    /// not the internal token (routers hold that one).
    pub fn worker_token(&self) -> Result<&str, ConfigError> {
        let Some(t) = self.internal.worker_token.as_deref() else {
            return Err(ConfigError::Invalid(format!(
                "internal.worker_token (REACTOR_INTERNAL_WORKER_TOKEN) is required by the control \
                 plane and the workers, and must not be given to routers; {}",
                crate::token::GENERATE_HINT
            )));
        };
        crate::token::check_secret("internal.worker_token (REACTOR_INTERNAL_WORKER_TOKEN)", t)
            .map_err(ConfigError::Invalid)?;
        if self.internal.token.as_deref() == Some(t) {
            return Err(ConfigError::Invalid(
                "internal.worker_token must differ from internal.token: routers hold the internal \
                 token and must not be able to act as workers"
                    .into(),
            ));
        }
        Ok(t)
    }

    /// The internal token, required by every split service: no shipped placeholder and
    /// at least 32 bytes of entropy.
    pub fn internal_token(&self) -> Result<&str, ConfigError> {
        match self.internal.token.as_deref() {
            Some(t) => {
                crate::token::check_secret("internal.token (REACTOR_INTERNAL_TOKEN)", t)
                    .map_err(ConfigError::Invalid)?;
                Ok(t)
            }
            None => Err(ConfigError::Invalid(format!(
                "internal.token (REACTOR_INTERNAL_TOKEN) is required by the split services: \
                 the same secret for the control plane, routers and workers; {}",
                crate::token::GENERATE_HINT
            ))),
        }
    }
}

keys::section! {
    /// `[functions]`: the seed's section, for every service.
    pub struct FunctionsConfig ("functions", env "REACTOR_FUNCTIONS_") {
        workdir: PathBuf = default_workdir(), env "WORKDIR",
            doc "`$XDG_DATA_HOME/reactor/functions`, else `~/.local/share/reactor/functions` (one place per user, wherever a command starts)";
        data_key: Option<String> = None, env "DATA_KEY",
            doc "none: the control plane keeps a generated key in `{workdir}/data_key` (0600)";
        data_keys_previous: Vec<String> = Vec::new(), env "DATA_KEYS_PREVIOUS",
            doc "none: older keys (comma-separated) that still decrypt until `reactor data-key rotate` has run";
        invoke_max_body_bytes: u64 = 16 * 1024 * 1024, env "INVOKE_MAX_BODY_BYTES",
            doc "16777216 (16 MiB): larger request bodies get 413 `payload_too_large`";
        log_retention_entries: usize = 1000, env "LOG_RETENTION_ENTRIES", doc "1000 per function";
        log_retention_secs: u64 = 86_400, env "LOG_RETENTION_SECS", doc "86400";
        bundle_max_bytes: u64 = 50 * 1024 * 1024, env "BUNDLE_MAX_BYTES", doc "52428800 (50 MiB)";
        invoke_default_timeout_ms: u64 = 30_000, env "INVOKE_DEFAULT_TIMEOUT_MS", doc "30000";
        invoke_max_timeout_ms: u64 = 300_000, env "INVOKE_MAX_TIMEOUT_MS", doc "300000";
        bun_idle_ttl_secs: u64 = 300, env "BUN_IDLE_TTL_SECS", doc "300";
        bun_max_instances_per_fn: u32 = 8, env "BUN_MAX_INSTANCES_PER_FN", doc "8";
        bun_path: Option<PathBuf> = None, env "BUN_PATH",
            doc "none: `node_modules/.bin/bun` in the repository `reactor` was built from, then here or in a parent directory, else `bun` on `PATH`";
        bun_sandbox: bool = true, env "BUN_SANDBOX",
            doc "true (`true`/`false`/`1`/`0`): Bun runs under bubblewrap";
        bun_concurrency_per_process: u32 = 32, env "BUN_CONCURRENCY_PER_PROCESS", doc "32";
        bun_queue_per_fn: u32 = 64, env "BUN_QUEUE_PER_FN", doc "64";
        runtimes: Vec<Runtime> = vec![Runtime::Wasm, Runtime::Bun], env "RUNTIMES",
            doc "`wasm,bun` (comma-separated in the environment)";
        database_url: Option<String> = None, env "DATABASE_URL" with keys::non_empty,
            doc "none: SQLite at `{workdir}/reactor.db`; `postgres://user:pass@host/db` for PostgreSQL";
        redis_url: Option<String> = None, env "REDIS_URL" with keys::non_empty,
            doc "none: concurrency caps counted per router, logs kept by one control plane";
        max_functions_per_org: usize = 1000, env "MAX_FUNCTIONS_PER_ORG",
            doc "1000: more get 429 `quota_exceeded` (the routing table is bounded per org)";
        max_tokens_per_org: usize = 1000, env "MAX_TOKENS_PER_ORG",
            doc "1000 API tokens: more get 429 `quota_exceeded`";
        max_min_instances: u32 = 10, env "MAX_MIN_INSTANCES",
            doc "10: a manifest's `concurrency.min_instances` (processes each worker keeps started), at most; more get 422 `manifest_invalid`";
        max_warm_instances_per_org: usize = 50, env "MAX_WARM_INSTANCES_PER_ORG",
            doc "50: the `min_instances` of an org's live deployments, summed, at most (checked at upload); more get 429 `quota_exceeded`";
        policy_max_bytes: usize = 64 * 1024, env "POLICY_MAX_BYTES",
            doc "65536: an invoke policy (set on a function or in a manifest) as JSON, at most";
        upload_timeout_secs: u64 = 300, env "UPLOAD_TIMEOUT_SECS",
            doc "300: a bundle upload's body must arrive whole within this; slower ones get 400 `invalid_input`";
        uploads_per_org: usize = 2, env "UPLOADS_PER_ORG",
            doc "2: bundle uploads of one org being received or unpacked at once; more get 429 `too_many_requests`";
        gc_retention_secs: u64 = 604_800, env "GC_RETENTION_SECS",
            doc "604800 (7 days): bundles and pinned env of deployments older than this that are neither live nor among their function's 5 newest ready ones are deleted; 0 keeps everything";
    }
    sections { storage: StorageConfig, lambda: LambdaConfig, calls: CallsConfig, auth: AuthConfig }
}

keys::section! {
    /// `[functions.storage]`: local files unless a bucket is set.
    pub struct StorageConfig ("functions.storage", env "REACTOR_FUNCTIONS_STORAGE_") {
        url: Option<String> = None, env "URL",
            doc "none: local files under `workdir`; else the S3-compatible endpoint";
        api_key: Option<String> = None, env "API_KEY",
            doc "none: credentials from the standard AWS chain; else the secret key (the seed's single `api_key`), or `ACCESS_KEY_ID:SECRET`";
        key_id: Option<String> = None, env "KEY_ID",
            doc "with a single `api_key`: `AWS_ACCESS_KEY_ID` if set, else `reactor`";
        bucket: Option<String> = None, env "BUCKET",
            doc "`reactor-functions` when `url` is set; setting either selects S3 (the bucket is created when missing)";
        region: Option<String> = None, env "REGION", doc "`us-east-1` (or `AWS_REGION`)";
        path_style: Option<bool> = None, env "PATH_STYLE",
            doc "true when `url` is set (MinIO, Ceph, moto), else false";
        prefix: Option<String> = None, env "PREFIX", doc "none: keys at the bucket's root";
    }
}

impl StorageConfig {
    /// The S3 settings when a bucket is configured (`None`: local files).
    pub fn s3(&self) -> Result<Option<S3Settings>, ConfigError> {
        let bucket = match (&self.bucket, &self.url) {
            (Some(b), _) if !b.is_empty() => b.clone(),
            (_, Some(_)) => DEFAULT_BUCKET.to_string(),
            _ => return Ok(None),
        };
        let access_key = match self.api_key.as_deref().map(str::trim) {
            None => None,
            Some("") => {
                return Err(ConfigError::Invalid(
                    "storage.api_key is empty: set the storage secret key (or ACCESS_KEY_ID:SECRET), or remove it for the AWS credential chain"
                        .into(),
                ));
            }
            // `KEYID:SECRET`, as S3-compatible servers issue them in pairs.
            Some(k) if k.contains(':') => Some(
                k.split_once(':')
                    .map(|(id, secret)| (id.to_string(), secret.to_string()))
                    .filter(|(id, secret)| !id.is_empty() && !secret.is_empty())
                    .ok_or_else(|| {
                        ConfigError::Invalid(
                            "storage.api_key must be the secret key, or ACCESS_KEY_ID:SECRET with both parts"
                                .into(),
                        )
                    })?,
            ),
            // The seed's single key: the secret, under `key_id`.
            Some(secret) => {
                let id = self
                    .key_id
                    .clone()
                    .filter(|s| !s.trim().is_empty())
                    .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok().filter(|s| !s.is_empty()))
                    .unwrap_or_else(|| DEFAULT_KEY_ID.to_string());
                Some((id, secret.to_string()))
            }
        };
        Ok(Some(S3Settings {
            endpoint: self.url.clone(),
            bucket,
            region: self
                .region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or_else(|| "us-east-1".into()),
            path_style: self.path_style.unwrap_or(self.url.is_some()),
            access_key,
            prefix: self.prefix.clone().unwrap_or_default(),
        }))
    }
}

/// The access key id that goes with a single `storage.api_key` when nothing else names one.
pub const DEFAULT_KEY_ID: &str = "reactor";

/// The bucket when `storage.url` is set without `storage.bucket`.
pub const DEFAULT_BUCKET: &str = "reactor-functions";

keys::section! {
    /// `[functions.lambda]`: where functions with `runtime: lambda` run (`docs/lambda.md`),
    /// needed only when `runtimes` has `lambda`. Credentials come from the standard AWS
    /// chain (environment, profile, SSO, instance or task role), for the control plane
    /// (deploys) and the routers (signing invocations).
    #[derive(Debug)]
    pub struct LambdaConfig ("functions.lambda", env "REACTOR_FUNCTIONS_LAMBDA_") {
        region: Option<String> = None, env "REGION", doc "`AWS_REGION`, else `us-east-1`";
        role_arn: Option<String> = None, env "ROLE_ARN",
            doc "required: the execution role of the functions";
        bundle_s3_bucket: Option<String> = None, env "BUNDLE_S3_BUCKET",
            doc "required: where deployment packages are uploaded (created when missing)";
        lwa_layer_arn: Option<String> = None, env "LWA_LAYER_ARN",
            doc "required: the Lambda Web Adapter layer for `architecture`";
        bun_layer_arn: Option<String> = None, env "BUN_LAYER_ARN",
            doc "none: a Bun binary on the control plane's host (`functions.bun_path`, for `architecture`) is packed with each function; else a layer with Bun at `/opt/bun` or `/opt/bin/bun`";
        architecture: Option<String> = None, env "ARCHITECTURE",
            doc "`x86_64` (or `arm64`; the layers must match)";
        function_prefix: Option<String> = None, env "FUNCTION_PREFIX",
            doc "`reactor-`: Lambda functions are `{prefix}{org}_{function}`";
        alias: Option<String> = None, env "ALIAS",
            doc "`live`: the alias that promote moves and the Function URL fronts";
        endpoint: Option<String> = None, env "ENDPOINT",
            doc "none: AWS; else the Lambda API endpoint (an emulator)";
        s3_endpoint: Option<String> = None, env "S3_ENDPOINT",
            doc "none: AWS; else the S3 endpoint for `bundle_s3_bucket` (path-style)";
        function_url_endpoint: Option<String> = None, env "FUNCTION_URL_ENDPOINT",
            doc "none: the Function URL AWS returned; else requests go to this base URL";
        max_reserved_concurrency: u32 = 100, env "MAX_RESERVED_CONCURRENCY",
            doc "100: the most a deployment's `concurrency.max_concurrency` may reserve of the account's Lambda concurrency; more fails the deployment";
        /// Routers: where Lambda functions send the calls they make to other functions,
        /// each with its invocation's capability (never the public listener).
        call_listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8082)), env "CALL_LISTEN",
            doc "`127.0.0.1:8082` (routers: calls that Lambda functions make, each with its invocation's capability)";
        call_url: Option<String> = None, env "CALL_URL",
            doc "`http://` + `call_listen`: the base URL (no path) Lambda functions are given for their calls: this router's own address as they reach it (each router its own); in production `https://`";
    }
}

impl LambdaConfig {
    /// The base URL Lambda functions call back on: `call_url`, else `call_listen`'s.
    pub fn call_url(&self) -> Result<String, ConfigError> {
        let url = match self.call_url.as_deref().map(str::trim) {
            Some(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
            _ => format!("http://{}", self.call_listen),
        };
        let invalid = || {
            ConfigError::Invalid(format!(
                "functions.lambda.call_url {url:?} is not an http(s) base URL with no path (the functions call {{call_url}}/call/...)"
            ))
        };
        let uri = url.parse::<http::Uri>().map_err(|_| invalid())?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        let bare = uri.path() == "/" || uri.path().is_empty();
        if !scheme_ok || uri.host().is_none() || !bare || uri.query().is_some() {
            return Err(invalid());
        }
        Ok(url)
    }

    /// Why `call_url` will not serve Lambda functions in AWS, if it will not: a loopback
    /// or unspecified host (the function's own), or plain HTTP off this host (capabilities
    /// in clear). Only with real AWS (no `function_url_endpoint`).
    pub fn call_url_warning(&self) -> Option<String> {
        if self.function_url_endpoint.is_some() {
            return None;
        }
        let url = self.call_url().ok()?;
        let uri = url.parse::<http::Uri>().ok()?;
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let local = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        if local {
            return Some(format!(
                "functions.lambda.call_url is {url}, which Lambda functions in AWS cannot reach: their calls to other functions will fail until it is set to this router's own address as they see it"
            ));
        }
        (uri.scheme_str() == Some("http")).then(|| format!(
            "functions.lambda.call_url {url} is plain HTTP: each invocation's call capability crosses the network in clear; put TLS in front (https://)"
        ))
    }
}

keys::section! {
    /// `[functions.calls]`: calls between functions (`http://NAME.reactor.internal`, see
    /// [`crate::calls`]).
    #[derive(Debug)]
    pub struct CallsConfig ("functions.calls", env "REACTOR_FUNCTIONS_CALLS_") {
        max_depth: u32 = 16, env "MAX_DEPTH",
            doc "16 (at most 32): hops in a chain of calls, an outside request being the first; a call past it gets 508 `call_depth_exceeded`";
        max_calls_per_invocation: u32 = 50, env "MAX_CALLS_PER_INVOCATION",
            doc "50: calls one invocation may start; more get 429 `too_many_requests`";
        max_in_flight_per_org: u32 = 1000, env "MAX_IN_FLIGHT_PER_ORG",
            doc "1000: calls between functions of one org running at once (across routers with `functions.redis_url`), however a tree of calls branches; more get 429 `too_many_requests`";
        deadline_margin_ms: u64 = 10, env "DEADLINE_MARGIN_MS",
            doc "10: taken off the caller's remaining time at each hop; a call started with no more left gets 504 `deadline_exceeded`";
    }
}

keys::section! {
    /// `[functions.auth]`: users who sign in with an email and a password
    /// (`POST /fn/v1/_admin/auth/token`); API tokens are unaffected.
    #[derive(Debug)]
    pub struct AuthConfig ("functions.auth", env "REACTOR_FUNCTIONS_AUTH_") {
        access_token_ttl_secs: u64 = 900, env "ACCESS_TOKEN_TTL_SECS",
            doc "900 (15 minutes, at least 60): an access token's lifetime; removing a member or deleting a user takes effect at once, a revoked sign-in when its access tokens expire";
        refresh_token_ttl_secs: u64 = 2_592_000, env "REFRESH_TOKEN_TTL_SECS",
            doc "2592000 (30 days): a refresh token's lifetime, renewed on every refresh";
        refresh_reuse_grace_secs: u64 = 30, env "REFRESH_REUSE_GRACE_SECS",
            doc "30: a refresh token spent this recently and presented again is refused (two refreshes racing); later, the whole sign-in ends (the token was copied)";
        failed_signins_per_account: u32 = 5, env "FAILED_SIGNINS_PER_ACCOUNT",
            doc "5: failed sign-ins to one account before each further attempt waits (1 s, doubling to 5 minutes; 429 `too_many_requests` with `Retry-After`)";
        failed_signins_per_address: u32 = 20, env "FAILED_SIGNINS_PER_ADDRESS",
            doc "20: failed sign-ins from one client address, to any accounts, before the same backoff applies to the address";
    }
}

impl CallsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cap = crate::calls::MAX_DEPTH_CAP;
        if !(1..=cap).contains(&self.max_depth) {
            return Err(ConfigError::Invalid(format!(
                "functions.calls.max_depth {} is out of range (1-{cap})",
                self.max_depth
            )));
        }
        if self.max_in_flight_per_org == 0 {
            return Err(ConfigError::Invalid(
                "functions.calls.max_in_flight_per_org must be at least 1".into(),
            ));
        }
        if self.max_calls_per_invocation == 0 {
            return Err(ConfigError::Invalid(
                "functions.calls.max_calls_per_invocation must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What the Lambda runtime needs, resolved from [`LambdaConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LambdaSettings {
    pub region: String,
    pub role_arn: String,
    pub bundle_s3_bucket: String,
    pub lwa_layer_arn: String,
    /// `None`: Bun is packed into every deployment package ([`LambdaSettings::bun_path`]).
    pub bun_layer_arn: Option<String>,
    /// The Bun binary to pack when there is no Bun layer: `functions.bun_path`, set by the
    /// service that deploys (`None`: found as worker-bun finds it).
    pub bun_path: Option<PathBuf>,
    pub architecture: String,
    pub function_prefix: String,
    pub alias: String,
    pub endpoint: Option<String>,
    pub s3_endpoint: Option<String>,
    pub function_url_endpoint: Option<String>,
    /// The most reserved concurrency a deployment may set (`concurrency.max_concurrency`).
    pub max_reserved_concurrency: u32,
}

impl LambdaConfig {
    /// The settings, or why they are incomplete (called when `runtimes` has `lambda`).
    pub fn settings(&self) -> Result<LambdaSettings, ConfigError> {
        fn required(value: &Option<String>, key: &str, what: &str) -> Result<String, ConfigError> {
            match value.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(ConfigError::Invalid(format!(
                    "the lambda runtime is enabled but functions.lambda.{key} is not set ({what}; env REACTOR_FUNCTIONS_LAMBDA_{})",
                    key.to_ascii_uppercase()
                ))),
            }
        }
        let arn = |value: &Option<String>, key: &str, what: &str| -> Result<String, ConfigError> {
            let v = required(value, key, what)?;
            if !v.starts_with("arn:") || v.ends_with(":...") || v.contains(":...:") {
                return Err(ConfigError::Invalid(format!(
                    "functions.lambda.{key} {v:?} is not a usable ARN ({what}); the example's placeholder must be replaced"
                )));
            }
            Ok(v)
        };
        let optional = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let architecture = optional(&self.architecture).unwrap_or_else(|| "x86_64".into());
        if architecture != "x86_64" && architecture != "arm64" {
            return Err(ConfigError::Invalid(format!(
                "functions.lambda.architecture must be x86_64 or arm64, not {architecture:?}"
            )));
        }
        let alias = optional(&self.alias).unwrap_or_else(|| "live".into());
        if alias.is_empty()
            || alias.len() > 128
            || alias.chars().all(|c| c.is_ascii_digit())
            || !alias
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid(format!(
                "functions.lambda.alias {alias:?} is not a Lambda alias name (letters, digits, - and _, not only digits)"
            )));
        }
        let function_prefix = self
            .function_prefix
            .clone()
            .unwrap_or_else(|| "reactor-".into());
        if function_prefix.len() > 30
            || !function_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid(format!(
                "functions.lambda.function_prefix {function_prefix:?} must be at most 30 letters, digits, - or _"
            )));
        }
        Ok(LambdaSettings {
            region: optional(&self.region)
                .or_else(|| std::env::var("AWS_REGION").ok())
                .unwrap_or_else(|| "us-east-1".into()),
            role_arn: arn(&self.role_arn, "role_arn", "the functions' execution role")?,
            bundle_s3_bucket: required(
                &self.bundle_s3_bucket,
                "bundle_s3_bucket",
                "the bucket for deployment packages",
            )?,
            lwa_layer_arn: arn(
                &self.lwa_layer_arn,
                "lwa_layer_arn",
                "the Lambda Web Adapter layer",
            )?,
            bun_layer_arn: match optional(&self.bun_layer_arn) {
                Some(_) => Some(arn(
                    &self.bun_layer_arn,
                    "bun_layer_arn",
                    "a layer with the Bun binary, see docs/lambda.md",
                )?),
                None => None,
            },
            bun_path: None,
            architecture,
            function_prefix,
            alias,
            endpoint: optional(&self.endpoint),
            s3_endpoint: optional(&self.s3_endpoint),
            function_url_endpoint: optional(&self.function_url_endpoint),
            max_reserved_concurrency: self.max_reserved_concurrency,
        })
    }
}

/// What an S3 backend needs, resolved from [`StorageConfig`] (also the Lambda runtime's
/// package bucket): the one description of an S3 bucket, used by `reactor_storage`.
#[derive(Clone)]
pub struct S3Settings {
    /// A custom endpoint (`http://127.0.0.1:9000` for MinIO); `None` is AWS.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Path-style addressing, which MinIO, moto and Ceph need.
    pub path_style: bool,
    /// A static key id and secret; `None` uses the standard AWS credential chain.
    pub access_key: Option<(String, String)>,
    /// A key prefix inside the bucket, `""` for none; a `/` is added when it lacks one.
    pub prefix: String,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|(id, _)| (id, "<redacted>")),
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &self.url)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("prefix", &self.prefix)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Everything but the data keys, which are shown as set or not.
impl std::fmt::Debug for FunctionsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionsConfig")
            .field("workdir", &self.workdir)
            .field("data_key", &self.data_key.as_ref().map(|_| "<set>"))
            .field("data_keys_previous", &self.data_keys_previous.len())
            .field("bundle_max_bytes", &self.bundle_max_bytes)
            .field("invoke_max_body_bytes", &self.invoke_max_body_bytes)
            .field("invoke_default_timeout_ms", &self.invoke_default_timeout_ms)
            .field("invoke_max_timeout_ms", &self.invoke_max_timeout_ms)
            .field("runtimes", &self.runtimes)
            .finish_non_exhaustive()
    }
}

/// Where state lives when nothing says: one place per user, `$XDG_DATA_HOME/reactor/functions`
/// (else `~/.local/share/reactor/functions`; without a home, `./.reactor/functions`).
pub fn default_workdir() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local").join("share"))
        });
    match data {
        Some(d) => d.join("reactor").join("functions"),
        None => absolute(Path::new("./.reactor/functions")),
    }
}

/// `path` made absolute against the current directory (lexically; it need not exist).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The seed's placeholder for `data_key`: a key everybody has read is no key.
const DATA_KEY_PLACEHOLDER: &str = "base64-32-byte-key";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}={value:?} is not valid: {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ReactorConfig {
    /// Loads `path` if given, else `$REACTOR_CONFIG`, else `./reactor.toml` when it exists,
    /// else the defaults; then applies environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(ENV_CONFIG).map(PathBuf::from));
        let candidate = explicit.clone().or_else(|| {
            let p = PathBuf::from("reactor.toml");
            p.exists().then_some(p)
        });
        let mut config = match candidate {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let mut config: ReactorConfig =
                    toml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                // Relative paths in the file are relative to the file.
                let base = absolute(&path);
                let base = base.parent().unwrap_or(Path::new("/"));
                config.resolve_paths(base);
                config
            }
            None => ReactorConfig::default(),
        };
        config
            .functions
            .apply_env(|name| std::env::var(name).ok())?;
        config.functions.validate()?;
        config
            .telemetry
            .apply_env_with(&|name| std::env::var(name).ok())?;
        config.telemetry.validate()?;
        Ok(config)
    }

    /// Makes the configured paths absolute against `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let f = &mut self.functions;
        f.workdir = base.join(&f.workdir);
        if let Some(p) = &mut f.bun_path {
            *p = base.join(&*p);
        }
        if let Some(p) = &mut self.worker.cache_dir {
            *p = base.join(&*p);
        }
        self.internal.tls_dir = base.join(&self.internal.tls_dir);
    }

    /// [`ReactorConfig::load`] plus the split services' environment overrides (the
    /// embedded default ignores those sections, so a stray variable cannot stop it).
    pub fn load_service(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = Self::load(path)?;
        config.apply_services_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }
}

impl FunctionsConfig {
    /// Applies `REACTOR_FUNCTIONS_*` overrides read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        self.apply_env_with(&get)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bundle_max_bytes == 0 {
            return Err(ConfigError::Invalid(
                "bundle_max_bytes must be positive".into(),
            ));
        }
        if self.invoke_default_timeout_ms == 0
            || self.invoke_default_timeout_ms > self.invoke_max_timeout_ms
        {
            return Err(ConfigError::Invalid(format!(
                "invoke_default_timeout_ms {} must be between 1 and invoke_max_timeout_ms {}",
                self.invoke_default_timeout_ms, self.invoke_max_timeout_ms
            )));
        }
        if self.invoke_max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "invoke_max_body_bytes must be positive".into(),
            ));
        }
        if self.log_retention_entries == 0 || self.log_retention_secs == 0 {
            return Err(ConfigError::Invalid(
                "log_retention_entries and log_retention_secs must be positive".into(),
            ));
        }
        if self.bun_max_instances_per_fn == 0 {
            return Err(ConfigError::Invalid(
                "bun_max_instances_per_fn must be at least 1".into(),
            ));
        }
        if self.bun_concurrency_per_process == 0 {
            return Err(ConfigError::Invalid(
                "bun_concurrency_per_process must be at least 1".into(),
            ));
        }
        if self.runtimes.is_empty() {
            return Err(ConfigError::Invalid(
                "runtimes must name at least one runtime".into(),
            ));
        }
        if self.data_key.as_deref().map(str::trim) == Some(DATA_KEY_PLACEHOLDER) {
            return Err(ConfigError::Invalid(format!(
                "functions.data_key is the example's placeholder {DATA_KEY_PLACEHOLDER:?}: \
                 generate a key with `reactor data-key generate` and put it there (or in \
                 REACTOR_FUNCTIONS_DATA_KEY), or remove data_key to let the server keep one in its workdir"
            )));
        }
        if let Some(key) = self.data_key.as_deref() {
            crate::token::check_secret("functions.data_key (REACTOR_FUNCTIONS_DATA_KEY)", key)
                .map_err(|e| {
                    ConfigError::Invalid(format!("{e}; or `reactor data-key generate`"))
                })?;
        }
        if self.storage.s3()?.is_some()
            && std::env::var("AWS_SECRET_ACCESS_KEY")
                .is_ok_and(|k| crate::token::is_placeholder(&k))
        {
            return Err(ConfigError::Invalid(
                "AWS_SECRET_ACCESS_KEY is a placeholder from an example or a deployment file: \
                 set the storage's real credentials"
                    .into(),
            ));
        }
        if self.runtimes.contains(&Runtime::Lambda) {
            self.lambda.settings()?;
            self.lambda.call_url()?;
        }
        self.calls.validate()?;
        if self.calls.deadline_margin_ms >= self.invoke_max_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "functions.calls.deadline_margin_ms {} must be less than invoke_max_timeout_ms {}",
                self.calls.deadline_margin_ms, self.invoke_max_timeout_ms
            )));
        }
        Ok(())
    }

    pub fn manifest_bounds(&self) -> crate::manifest::ManifestBounds {
        crate::manifest::ManifestBounds {
            default_timeout_ms: self.invoke_default_timeout_ms,
            max_timeout_ms: self.invoke_max_timeout_ms,
            max_min_instances: self.max_min_instances,
            per_instance: self.bun_concurrency_per_process,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS_START: &str =
        "<!-- keys: generated from api/src/config by its tests; do not edit -->\n";
    const KEYS_END: &str = "<!-- /keys -->";

    #[test]
    fn the_documented_keys_are_the_declared_keys() {
        let keys = ReactorConfig::keys();
        let mut envs: Vec<&str> = keys.iter().map(|k| k.env).collect();
        envs.sort_unstable();
        envs.dedup();
        assert_eq!(
            envs.len(),
            keys.len(),
            "two keys share an environment variable"
        );
        // A key's variable is its path in upper case: `functions.storage.url` is
        // `REACTOR_FUNCTIONS_STORAGE_URL` (a nested section's literals must agree).
        for k in &keys {
            let expected = format!("REACTOR_{}", k.key.replace('.', "_").to_uppercase());
            assert_eq!(k.env, expected, "{}", k.key);
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).expect("reading docs/configuration.md");
        let start = doc
            .find(KEYS_START)
            .expect("the keys marker in docs/configuration.md")
            + KEYS_START.len();
        let end = start + doc[start..].find(KEYS_END).expect("the end-of-keys marker");
        let table = keys::markdown_table(&keys);
        if doc[start..end] != table {
            if std::env::var_os("REACTOR_BLESS").is_some() {
                let fresh = format!("{}{table}{}", &doc[..start], &doc[end..]);
                std::fs::write(&path, fresh).expect("writing docs/configuration.md");
            } else {
                panic!(
                    "docs/configuration.md lists other keys than api/src/config declares: \
                     rewrite it with REACTOR_BLESS=1 cargo test --release -p reactor-api"
                );
            }
        }
    }

    #[test]
    fn every_declared_variable_overrides_its_key() {
        // A value each type accepts; a sample of keys of every type and section is checked.
        let mut config = ReactorConfig::default();
        let get = |name: &str| -> Option<String> {
            Some(match name {
                n if n.ends_with("LISTEN") => "127.0.0.1:1".into(),
                n if n.ends_with("RUNTIMES") => "wasm".into(),
                n if n.ends_with("_RATIO") => "0.25".into(),
                n if n.ends_with("SANDBOX")
                    || n.ends_with("_METRICS")
                    || n.ends_with("_LABELS")
                    || n.ends_with("PREWARM")
                    || n.ends_with("PATH_STYLE") =>
                {
                    "0".into()
                }
                n if n.ends_with("_TLS") => "1".into(),
                n if n.ends_with("_BYTES")
                    || n.ends_with("_MS")
                    || n.ends_with("_SECS")
                    || n.ends_with("_ENTRIES")
                    || n.ends_with("_FN")
                    || n.ends_with("_PROCESS")
                    || n.ends_with("_ORG")
                    || n.ends_with("_CONCURRENCY")
                    || n.ends_with("_INSTANCES")
                    || n.ends_with("_DEPTH")
                    || n.ends_with("_INVOCATION")
                    || n.ends_with("_ACCOUNT")
                    || n.ends_with("_ADDRESS")
                    || n.ends_with("_FUNCTIONS")
                    || n.ends_with("_MB") =>
                {
                    "7".into()
                }
                _ => "/set-from-env".into(),
            })
        };
        config.functions.apply_env(get).expect("functions");
        config.apply_services_env(get).expect("services");
        config.telemetry.apply_env_with(&get).expect("telemetry");
        let t = &config.telemetry;
        assert_eq!(t.otlp_endpoint.as_deref(), Some("/set-from-env"));
        assert_eq!(t.sample_ratio, 0.25);
        assert!(!t.metrics && !t.metrics_function_labels);
        assert_eq!(t.metrics_max_functions, 7);
        let f = &config.functions;
        assert_eq!(f.workdir, PathBuf::from("/set-from-env"));
        assert_eq!(f.bundle_max_bytes, 7);
        assert_eq!(f.log_retention_entries, 7);
        assert_eq!(f.bun_queue_per_fn, 7);
        assert_eq!(f.max_min_instances, 7);
        assert_eq!(f.manifest_bounds().max_min_instances, 7);
        assert_eq!(f.max_warm_instances_per_org, 7);
        assert!(!f.bun_sandbox);
        assert_eq!(f.runtimes, vec![Runtime::Wasm]);
        assert_eq!(f.database_url.as_deref(), Some("/set-from-env"));
        assert_eq!(f.storage.path_style, Some(false));
        assert_eq!(
            f.lambda.function_url_endpoint.as_deref(),
            Some("/set-from-env")
        );
        assert_eq!(f.calls.max_depth, 7);
        assert_eq!(f.calls.max_calls_per_invocation, 7);
        assert_eq!(f.calls.deadline_margin_ms, 7);
        assert_eq!(f.auth.access_token_ttl_secs, 7);
        assert_eq!(f.auth.failed_signins_per_account, 7);
        assert_eq!(f.auth.failed_signins_per_address, 7);
        assert_eq!(f.auth.refresh_reuse_grace_secs, 7);
        assert_eq!(config.internal.token.as_deref(), Some("/set-from-env"));
        assert!(config.internal.tls);
        assert_eq!(config.internal.tls_dir, PathBuf::from("/set-from-env"));
        assert_eq!(config.control_plane.grpc_listen.port(), 1);
        assert_eq!(config.worker.max_instances, 7);
        assert_eq!(config.worker.loaded_budget_mb, 7);
        assert!(!config.worker.prewarm);
        assert_eq!(
            config.worker.cache_dir,
            Some(PathBuf::from("/set-from-env"))
        );
        // Empty URLs mean "not set".
        let mut f = FunctionsConfig::default();
        f.apply_env(|n| (n == "REACTOR_FUNCTIONS_REDIS_URL").then(String::new))
            .expect("empty redis url");
        assert_eq!(f.redis_url, None);
    }

    #[test]
    fn seed_config_parses_and_env_overrides() {
        let text = r#"
[functions]
workdir = "./.reactor/functions"
data_key = "base64-32-byte-key"
bundle_max_bytes = 52428800 # 50 MiB
invoke_default_timeout_ms = 30000
invoke_max_timeout_ms = 300000
bun_idle_ttl_secs = 300
bun_max_instances_per_fn = 8
runtimes = ["wasm", "bun"]

[functions.storage]
url = "http://localhost:8003"
api_key = "storage-api-key-for-system-bucket"

[functions.lambda]
region = "us-east-1"
"#;
        let mut config: ReactorConfig = toml::from_str(text).expect("seed config parses");
        assert_eq!(config.functions.runtimes, vec![Runtime::Wasm, Runtime::Bun]);
        config
            .functions
            .apply_env(|name| match name {
                "REACTOR_FUNCTIONS_BUNDLE_MAX_BYTES" => Some("1024".into()),
                "REACTOR_FUNCTIONS_RUNTIMES" => Some("wasm".into()),
                _ => None,
            })
            .expect("valid env");
        assert_eq!(config.functions.bundle_max_bytes, 1024);
        assert_eq!(config.functions.runtimes, vec![Runtime::Wasm]);
        let err = config
            .functions
            .apply_env(|name| {
                (name == "REACTOR_FUNCTIONS_INVOKE_MAX_TIMEOUT_MS").then(|| "soon".into())
            })
            .expect_err("not a number");
        assert!(
            err.to_string()
                .contains("REACTOR_FUNCTIONS_INVOKE_MAX_TIMEOUT_MS")
        );
    }

    #[test]
    fn storage_database_and_redis_keys_select_the_scale_out_backends() {
        let mut config = FunctionsConfig::default();
        assert!(
            config.storage.s3().expect("valid").is_none(),
            "local files by default"
        );
        assert!(config.database_url.is_none() && config.redis_url.is_none());
        config
            .apply_env(|name| match name {
                "REACTOR_FUNCTIONS_STORAGE_URL" => Some("http://minio:9000".into()),
                "REACTOR_FUNCTIONS_STORAGE_API_KEY" => Some("id:secret".into()),
                "REACTOR_FUNCTIONS_DATABASE_URL" => Some("postgres://r@db/r".into()),
                "REACTOR_FUNCTIONS_REDIS_URL" => Some("redis://redis:6379".into()),
                _ => None,
            })
            .expect("valid env");
        let s3 = config.storage.s3().expect("valid").expect("s3");
        assert_eq!(s3.bucket, DEFAULT_BUCKET);
        assert!(
            s3.path_style,
            "path-style by default with a custom endpoint"
        );
        assert_eq!(s3.access_key, Some(("id".into(), "secret".into())));
        assert_eq!(config.database_url.as_deref(), Some("postgres://r@db/r"));
        assert_eq!(config.redis_url.as_deref(), Some("redis://redis:6379"));
        config.validate().expect("valid");
        // The seed's single api_key is the secret, under `key_id` (else AWS_ACCESS_KEY_ID,
        // else `reactor`).
        config.storage.api_key = Some("storage-api-key-for-system-bucket".into());
        config.storage.key_id = Some("minio-user".into());
        let s3 = config.storage.s3().expect("a single key").expect("s3");
        assert_eq!(
            s3.access_key,
            Some((
                "minio-user".into(),
                "storage-api-key-for-system-bucket".into()
            ))
        );
        config.storage.key_id = None;
        let (id, _) = config
            .storage
            .s3()
            .expect("valid")
            .expect("s3")
            .access_key
            .expect("key");
        let from_env = std::env::var("AWS_ACCESS_KEY_ID")
            .ok()
            .filter(|s| !s.is_empty());
        assert_eq!(id, from_env.unwrap_or_else(|| DEFAULT_KEY_ID.into()));
        assert!(!format!("{:?}", config.storage).contains("system-bucket"));
        let mut services = ReactorConfig::default();
        services.internal.token = Some("internal-token-never-printed".into());
        assert!(!format!("{services:?}").contains("never-printed"));
        // Half a pair, or nothing, is refused with the key's name.
        for bad in [":secret", "id:", "  "] {
            config.storage.api_key = Some(bad.into());
            let err = config.validate().expect_err("refused");
            assert!(
                err.to_string().contains("storage.api_key"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn the_seed_example_verbatim_is_accepted_but_its_placeholder_data_key() {
        let text = include_str!("../../../tests/fixtures/seed-reactor.toml");
        let mut config: ReactorConfig = toml::from_str(text).expect("the seed's example parses");
        config.resolve_paths(Path::new("/etc/reactor"));
        let f = &mut config.functions;
        assert_eq!(f.workdir, Path::new("/etc/reactor/./.reactor/functions"));
        let err = f.validate().expect_err("the placeholder data key");
        assert!(
            err.to_string().contains("functions.data_key")
                && err.to_string().contains("reactor data-key generate"),
            "{err}"
        );
        f.data_key = Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
        f.validate().expect("the rest of the example is accepted");
        let s3 = f.storage.s3().expect("valid").expect("s3");
        assert_eq!(s3.endpoint.as_deref(), Some("http://localhost:8003"));
        assert_eq!(s3.bucket, DEFAULT_BUCKET);
        assert_eq!(
            s3.access_key.map(|(_, secret)| secret).as_deref(),
            Some("storage-api-key-for-system-bucket")
        );
        // With lambda enabled, its four keys are enough but for the `...` placeholder.
        f.runtimes.push(Runtime::Lambda);
        let err = f.validate().expect_err("the placeholder layer version");
        assert!(err.to_string().contains("lwa_layer_arn"), "{err}");
        f.lambda.lwa_layer_arn =
            Some("arn:aws:lambda:us-east-1:753240598075:layer:LambdaAdapterLayerX86:26".into());
        let lambda = f.lambda.settings().expect("the seed's four keys");
        assert_eq!(lambda.bun_layer_arn, None, "Bun is packed");
    }

    #[test]
    fn relative_paths_from_the_environment_are_made_absolute() {
        let mut config = FunctionsConfig::default();
        assert!(config.workdir.is_absolute(), "{:?}", config.workdir);
        config
            .apply_env(|name| match name {
                "REACTOR_FUNCTIONS_WORKDIR" => Some("state".into()),
                "REACTOR_FUNCTIONS_BUN_PATH" => Some("bin/bun".into()),
                _ => None,
            })
            .expect("valid env");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(config.workdir, cwd.join("state"));
        assert_eq!(config.bun_path, Some(cwd.join("bin/bun")));
    }

    #[test]
    fn bun_keys_default_override_and_validate() {
        let mut config = FunctionsConfig::default();
        assert_eq!(config.runtimes, vec![Runtime::Wasm, Runtime::Bun]);
        assert_eq!(config.bun_path, None);
        assert!(config.bun_sandbox);
        assert_eq!(
            (config.bun_concurrency_per_process, config.bun_queue_per_fn),
            (32, 64)
        );
        config
            .apply_env(|name| match name {
                "REACTOR_FUNCTIONS_BUN_PATH" => Some("/opt/bun/bin/bun".into()),
                "REACTOR_FUNCTIONS_BUN_SANDBOX" => Some("0".into()),
                "REACTOR_FUNCTIONS_BUN_CONCURRENCY_PER_PROCESS" => Some("4".into()),
                "REACTOR_FUNCTIONS_BUN_QUEUE_PER_FN" => Some("0".into()),
                _ => None,
            })
            .expect("valid env");
        assert_eq!(
            config.bun_path.as_deref(),
            Some(Path::new("/opt/bun/bin/bun"))
        );
        assert!(!config.bun_sandbox);
        assert_eq!(config.bun_concurrency_per_process, 4);
        assert_eq!(config.bun_queue_per_fn, 0);
        config.validate().expect("an empty queue is allowed");
        let err = config
            .apply_env(|name| (name == "REACTOR_FUNCTIONS_BUN_SANDBOX").then(|| "yes".into()))
            .expect_err("not a flag");
        assert!(err.to_string().contains("REACTOR_FUNCTIONS_BUN_SANDBOX"));
        config.bun_concurrency_per_process = 0;
        assert!(config.validate().is_err());
        config.bun_concurrency_per_process = 1;
        config.bun_max_instances_per_fn = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn service_sections_parse_and_env_overrides() {
        let text = r#"
[internal]
token = "3f1c9a7be2d04856a1c3e5f7092b4d6e8a0c2e4f6b8d0f1a3c5e7092b4d6e8a0"

[data_plane]
listen = "0.0.0.0:9000"
control_plane_url = "http://cp:7071"

[worker]
prewarm = false
"#;
        let mut config: ReactorConfig = toml::from_str(text).expect("parses");
        assert_eq!(config.data_plane.listen.port(), 9000);
        assert!(!config.worker.prewarm);
        assert_eq!(
            config.internal_token().expect("strong enough"),
            "3f1c9a7be2d04856a1c3e5f7092b4d6e8a0c2e4f6b8d0f1a3c5e7092b4d6e8a0"
        );
        config
            .apply_services_env(|name| match name {
                "REACTOR_WORKER_LISTEN" => Some("127.0.0.1:7999".into()),
                "REACTOR_INTERNAL_TOKEN" => Some("short".into()),
                _ => None,
            })
            .expect("valid env");
        assert_eq!(config.worker.listen.port(), 7999);
        assert!(config.internal_token().is_err(), "a short token is refused");
        let err = config
            .apply_services_env(|name| (name == "REACTOR_WORKER_PREWARM").then(|| "maybe".into()))
            .expect_err("not a bool");
        assert!(err.to_string().contains("REACTOR_WORKER_PREWARM"));
    }

    #[test]
    fn calls_keys_default_override_and_validate() {
        let mut config = FunctionsConfig::default();
        let c = &config.calls;
        assert_eq!(
            (
                c.max_depth,
                c.max_calls_per_invocation,
                c.deadline_margin_ms
            ),
            (16, 50, 10)
        );
        config.validate().expect("the defaults are valid");
        let text = "[functions.calls]\nmax_depth = 32\nmax_calls_per_invocation = 5\n";
        let parsed: ReactorConfig = toml::from_str(text).expect("parses");
        assert_eq!(parsed.functions.calls.max_depth, 32);
        assert_eq!(parsed.functions.calls.max_calls_per_invocation, 5);
        assert_eq!(
            parsed.functions.calls.deadline_margin_ms, 10,
            "default kept"
        );
        parsed
            .functions
            .validate()
            .expect("the hard cap itself is allowed");
        assert!(toml::from_str::<ReactorConfig>("[functions.calls]\ndepth = 3\n").is_err());
        config
            .apply_env(|name| match name {
                "REACTOR_FUNCTIONS_CALLS_MAX_DEPTH" => Some("33".into()),
                "REACTOR_FUNCTIONS_CALLS_DEADLINE_MARGIN_MS" => Some("25".into()),
                _ => None,
            })
            .expect("valid env");
        assert_eq!(config.calls.deadline_margin_ms, 25);
        let err = config.validate().expect_err("past the hard cap");
        assert!(
            err.to_string().contains("functions.calls.max_depth 33")
                && err.to_string().contains("1-32"),
            "{err}"
        );
        config.calls.max_depth = 0;
        assert!(config.validate().is_err(), "no depth at all");
        config.calls.max_depth = 1;
        config.validate().expect("outside requests only");
        config.calls.max_calls_per_invocation = 0;
        let err = config.validate().expect_err("no calls at all");
        assert!(
            err.to_string().contains("max_calls_per_invocation"),
            "{err}"
        );
        config.calls.max_calls_per_invocation = 1;
        config.calls.deadline_margin_ms = config.invoke_max_timeout_ms;
        let err = config
            .validate()
            .expect_err("a margin that eats every deadline");
        assert!(err.to_string().contains("deadline_margin_ms"), "{err}");
        let err = config
            .apply_env(|name| {
                (name == "REACTOR_FUNCTIONS_CALLS_MAX_CALLS_PER_INVOCATION").then(|| "-1".into())
            })
            .expect_err("not a count");
        assert!(
            err.to_string()
                .contains("REACTOR_FUNCTIONS_CALLS_MAX_CALLS_PER_INVOCATION"),
            "{err}"
        );
    }

    #[test]
    fn the_lambda_call_url_is_a_bare_base_url_and_warned_when_aws_cannot_use_it() {
        let mut l = LambdaConfig::default();
        assert_eq!(l.call_url().expect("default"), "http://127.0.0.1:8082");
        assert!(
            l.call_url_warning()
                .expect("loopback")
                .contains("cannot reach")
        );
        l.function_url_endpoint = Some("http://127.0.0.1:9000".into());
        assert_eq!(l.call_url_warning(), None, "an emulator on this host");
        l.function_url_endpoint = None;
        l.call_url = Some("https://r1.calls.example.com/".into());
        assert_eq!(l.call_url().expect("https"), "https://r1.calls.example.com");
        assert_eq!(l.call_url_warning(), None);
        l.call_url = Some("http://10.0.0.7:8082".into());
        assert!(l.call_url_warning().expect("clear").contains("plain HTTP"));
        for bad in [
            "ftp://x",
            "https://lb/r1",
            "https://lb?x=1",
            "calls.example.com",
            "http://",
        ] {
            l.call_url = Some(bad.into());
            assert!(l.call_url().is_err(), "{bad}");
        }
    }

    #[test]
    fn lambda_settings_need_the_seed_keys_and_refuse_its_placeholder() {
        let text = r#"
[functions]
runtimes = ["wasm", "bun", "lambda"]

[functions.lambda]
region = "us-east-1"
role_arn = "arn:aws:iam::123456789012:role/reactor-lambda"
bundle_s3_bucket = "reactor-function-bundles"
lwa_layer_arn = "arn:aws:lambda:us-east-1:753240598075:layer:LambdaAdapterLayerX86:..."
"#;
        let mut config: ReactorConfig = toml::from_str(text).expect("seed lambda section parses");
        let err = config
            .functions
            .validate()
            .expect_err("placeholder refused");
        assert!(err.to_string().contains("lwa_layer_arn"), "{err}");
        config
            .functions
            .apply_env(|name| match name {
                "REACTOR_FUNCTIONS_LAMBDA_LWA_LAYER_ARN" => Some(
                    "arn:aws:lambda:us-east-1:753240598075:layer:LambdaAdapterLayerX86:26".into(),
                ),
                "REACTOR_FUNCTIONS_LAMBDA_ENDPOINT" => Some("http://127.0.0.1:5000".into()),
                _ => None,
            })
            .expect("valid env");
        // The seed's four keys are enough: without a Bun layer, Bun is packed.
        let s = config.functions.lambda.settings().expect("the seed's keys");
        assert_eq!(s.bun_layer_arn, None);
        config.functions.lambda.bun_layer_arn =
            Some("arn:aws:lambda:us-east-1:1:layer:bun:...".into());
        let err = config
            .functions
            .validate()
            .expect_err("placeholder bun layer");
        assert!(err.to_string().contains("bun_layer_arn"), "{err}");
        config.functions.lambda.bun_layer_arn =
            Some("arn:aws:lambda:us-east-1:123456789012:layer:bun:1".into());
        config.functions.validate().expect("complete");
        let s = config.functions.lambda.settings().expect("settings");
        assert_eq!(s.alias, "live");
        assert_eq!(s.function_prefix, "reactor-");
        assert_eq!(s.architecture, "x86_64");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        config.functions.lambda.alias = Some("123".into());
        assert!(
            config.functions.lambda.settings().is_err(),
            "digits-only alias"
        );
        // Without the lambda runtime the section is not checked.
        config.functions.runtimes = vec![Runtime::Wasm];
        config.functions.validate().expect("lambda not enabled");
    }
}
