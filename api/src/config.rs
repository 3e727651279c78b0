//! `reactor.toml`: the seed's `[functions]` section, every field overridable from the
//! environment, with defaults that make the file optional.
//!
//! | key | env | default |
//! |---|---|---|
//! | `workdir` | `REACTOR_FUNCTIONS_WORKDIR` | `$XDG_DATA_HOME/reactor/functions`, else `~/.local/share/reactor/functions` (one place per user, wherever a command starts) |
//! | `data_key` | `REACTOR_FUNCTIONS_DATA_KEY` | none: the control plane keeps a generated key in `{workdir}/data_key` (0600) |
//! | `data_keys_previous` | `REACTOR_FUNCTIONS_DATA_KEYS_PREVIOUS` (comma-separated) | none: older keys that still decrypt until `reactor data-key rotate` has run |
//! | `invoke_max_body_bytes` | `REACTOR_FUNCTIONS_INVOKE_MAX_BODY_BYTES` | 16777216 (16 MiB): larger request bodies get 413 `payload_too_large` |
//! | `log_retention_entries` | `REACTOR_FUNCTIONS_LOG_RETENTION_ENTRIES` | 1000 per function |
//! | `log_retention_secs` | `REACTOR_FUNCTIONS_LOG_RETENTION_SECS` | 86400 |
//! | `bundle_max_bytes` | `REACTOR_FUNCTIONS_BUNDLE_MAX_BYTES` | 52428800 (50 MiB) |
//! | `invoke_default_timeout_ms` | `REACTOR_FUNCTIONS_INVOKE_DEFAULT_TIMEOUT_MS` | 30000 |
//! | `invoke_max_timeout_ms` | `REACTOR_FUNCTIONS_INVOKE_MAX_TIMEOUT_MS` | 300000 |
//! | `bun_idle_ttl_secs` | `REACTOR_FUNCTIONS_BUN_IDLE_TTL_SECS` | 300 |
//! | `bun_max_instances_per_fn` | `REACTOR_FUNCTIONS_BUN_MAX_INSTANCES_PER_FN` | 8 |
//! | `bun_path` | `REACTOR_FUNCTIONS_BUN_PATH` | none: `node_modules/.bin/bun` here or in a parent directory, then in the repository `reactor` was built from, else `bun` on `PATH` |
//! | `bun_sandbox` | `REACTOR_FUNCTIONS_BUN_SANDBOX` (`true`/`false`/`1`/`0`) | true: Bun runs under bubblewrap |
//! | `bun_concurrency_per_process` | `REACTOR_FUNCTIONS_BUN_CONCURRENCY_PER_PROCESS` | 32 |
//! | `bun_queue_per_fn` | `REACTOR_FUNCTIONS_BUN_QUEUE_PER_FN` | 64 |
//! | `runtimes` | `REACTOR_FUNCTIONS_RUNTIMES` (comma-separated) | `["wasm", "bun"]` |
//! | `database_url` | `REACTOR_FUNCTIONS_DATABASE_URL` | none: SQLite at `{workdir}/reactor.db`; `postgres://user:pass@host/db` for PostgreSQL |
//! | `redis_url` | `REACTOR_FUNCTIONS_REDIS_URL` | none: concurrency caps counted per router, logs kept by one control plane |
//! | `storage.url` | `REACTOR_FUNCTIONS_STORAGE_URL` | none: local files under `workdir`; else the S3-compatible endpoint |
//! | `storage.bucket` | `REACTOR_FUNCTIONS_STORAGE_BUCKET` | `reactor-functions` when `url` is set; setting either selects S3 (the bucket is created when missing) |
//! | `storage.region` | `REACTOR_FUNCTIONS_STORAGE_REGION` | `us-east-1` (or `AWS_REGION`) |
//! | `storage.path_style` | `REACTOR_FUNCTIONS_STORAGE_PATH_STYLE` | true when `url` is set (MinIO, Ceph, moto), else false |
//! | `storage.prefix` | `REACTOR_FUNCTIONS_STORAGE_PREFIX` | none: keys at the bucket's root |
//! | `storage.api_key` | `REACTOR_FUNCTIONS_STORAGE_API_KEY` | none: credentials from the standard AWS chain; else the secret key (the seed's single `api_key`), or `ACCESS_KEY_ID:SECRET` |
//! | `storage.key_id` | `REACTOR_FUNCTIONS_STORAGE_KEY_ID` | with a single `api_key`: `AWS_ACCESS_KEY_ID` if set, else `reactor` |
//! | `lambda.*` | `REACTOR_FUNCTIONS_LAMBDA_*` | see [`LambdaConfig`]; needed only when `runtimes` has `lambda` |
//!
//! Paths: a relative path in the file is relative to the file's directory, one from the
//! environment or a flag to the current directory; [`ReactorConfig::load`] makes them
//! absolute once, so nothing later depends on where a process was started.
//!
//! The split topology adds one section per service and the shared internal token (see
//! [`ServicesConfig`]); the embedded default needs none of them.

use crate::Runtime;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const ENV_CONFIG: &str = "REACTOR_CONFIG";
const ENV_PREFIX: &str = "REACTOR_FUNCTIONS_";

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
}

/// `[internal]`: what services use to trust each other.
///
/// | key | env | default |
/// |---|---|---|
/// | `token` | `REACTOR_INTERNAL_TOKEN` | none: the split services refuse to start without it |
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InternalConfig {
    /// Shared secret: routers and workers present it to the control plane, routers to
    /// workers. Never passed to a function.
    pub token: Option<String>,
}

/// `[control_plane]` of `reactor-control-plane`.
///
/// | key | env | default |
/// |---|---|---|
/// | `listen` | `REACTOR_CONTROL_PLANE_LISTEN` | `127.0.0.1:7070` (admin HTTP, health) |
/// | `grpc_listen` | `REACTOR_CONTROL_PLANE_GRPC_LISTEN` | `127.0.0.1:7071` (admin, routing, workers) |
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
        }
    }
}

/// `[data_plane]` of `reactor-data-plane`.
///
/// | key | env | default |
/// |---|---|---|
/// | `listen` | `REACTOR_DATA_PLANE_LISTEN` | `127.0.0.1:8080` (invoke, health) |
/// | `control_plane_url` | `REACTOR_DATA_PLANE_CONTROL_PLANE_URL` | `http://127.0.0.1:7071` |
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataPlaneConfig {
    pub listen: SocketAddr,
    pub control_plane_url: String,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            control_plane_url: "http://127.0.0.1:7071".into(),
        }
    }
}

/// `[worker]` of `reactor-worker-wasm` (and later the other runtimes' workers).
///
/// | key | env | default |
/// |---|---|---|
/// | `listen` | `REACTOR_WORKER_LISTEN` | `127.0.0.1:7080` |
/// | `advertise_url` | `REACTOR_WORKER_ADVERTISE_URL` | `http://` + the bound address (required when listening on 0.0.0.0 or ::) |
/// | `control_plane_url` | `REACTOR_WORKER_CONTROL_PLANE_URL` | `http://127.0.0.1:7071` |
/// | `id` | `REACTOR_WORKER_ID` | `{runtime}-{host}-{port}` of the advertised URL |
/// | `cache_dir` | `REACTOR_WORKER_CACHE_DIR` | `{functions.workdir}/cache/{id}` |
/// | `max_instances` | `REACTOR_WORKER_MAX_INSTANCES` | 1000 |
/// | `prewarm` | `REACTOR_WORKER_PREWARM` | true: load every live deployment of its runtime |
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    pub listen: SocketAddr,
    pub advertise_url: Option<String>,
    pub control_plane_url: String,
    pub id: Option<String>,
    pub cache_dir: Option<PathBuf>,
    pub max_instances: u32,
    pub prewarm: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            advertise_url: None,
            control_plane_url: "http://127.0.0.1:7071".into(),
            id: None,
            cache_dir: None,
            max_instances: 1000,
            prewarm: true,
        }
    }
}

impl ReactorConfig {
    /// Applies the services' environment overrides (`REACTOR_INTERNAL_TOKEN`,
    /// `REACTOR_CONTROL_PLANE_*`, `REACTOR_DATA_PLANE_*`, `REACTOR_WORKER_*`).
    pub fn apply_services_env(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        fn parsed<T: std::str::FromStr>(name: &str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                name: name.to_string(),
                value: value.clone(),
                reason: e.to_string(),
            })
        }
        let var = |name: &'static str| get(name).map(|v| (name, v));
        if let Some((_, v)) = var("REACTOR_INTERNAL_TOKEN") {
            self.internal.token = Some(v);
        }
        if let Some((n, v)) = var("REACTOR_CONTROL_PLANE_LISTEN") {
            self.control_plane.listen = parsed(n, v)?;
        }
        if let Some((n, v)) = var("REACTOR_CONTROL_PLANE_GRPC_LISTEN") {
            self.control_plane.grpc_listen = parsed(n, v)?;
        }
        if let Some((n, v)) = var("REACTOR_DATA_PLANE_LISTEN") {
            self.data_plane.listen = parsed(n, v)?;
        }
        if let Some((_, v)) = var("REACTOR_DATA_PLANE_CONTROL_PLANE_URL") {
            self.data_plane.control_plane_url = v;
        }
        if let Some((n, v)) = var("REACTOR_WORKER_LISTEN") {
            self.worker.listen = parsed(n, v)?;
        }
        if let Some((_, v)) = var("REACTOR_WORKER_ADVERTISE_URL") {
            self.worker.advertise_url = Some(v);
        }
        if let Some((_, v)) = var("REACTOR_WORKER_CONTROL_PLANE_URL") {
            self.worker.control_plane_url = v;
        }
        if let Some((_, v)) = var("REACTOR_WORKER_ID") {
            self.worker.id = Some(v);
        }
        if let Some((_, v)) = var("REACTOR_WORKER_CACHE_DIR") {
            self.worker.cache_dir = Some(absolute(Path::new(&v)));
        }
        if let Some((n, v)) = var("REACTOR_WORKER_MAX_INSTANCES") {
            self.worker.max_instances = parsed(n, v)?;
        }
        if let Some((n, v)) = var("REACTOR_WORKER_PREWARM") {
            self.worker.prewarm = parsed(n, v)?;
        }
        Ok(())
    }

    /// The internal token, required by every split service.
    pub fn internal_token(&self) -> Result<&str, ConfigError> {
        match self.internal.token.as_deref() {
            Some(t) if t.len() >= 16 => Ok(t),
            Some(_) => Err(ConfigError::Invalid(
                "internal.token (REACTOR_INTERNAL_TOKEN) must have at least 16 characters".into(),
            )),
            None => Err(ConfigError::Invalid(
                "internal.token (REACTOR_INTERNAL_TOKEN) is required by the split services: \
                 the same secret for the control plane, routers and workers"
                    .into(),
            )),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    pub workdir: PathBuf,
    pub data_key: Option<String>,
    pub data_keys_previous: Vec<String>,
    pub bundle_max_bytes: u64,
    pub invoke_max_body_bytes: u64,
    pub log_retention_entries: usize,
    pub log_retention_secs: u64,
    pub invoke_default_timeout_ms: u64,
    pub invoke_max_timeout_ms: u64,
    pub bun_idle_ttl_secs: u64,
    pub bun_max_instances_per_fn: u32,
    pub bun_path: Option<PathBuf>,
    pub bun_sandbox: bool,
    pub bun_concurrency_per_process: u32,
    pub bun_queue_per_fn: u32,
    pub runtimes: Vec<Runtime>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub storage: StorageConfig,
    pub lambda: LambdaConfig,
}

/// `[functions.storage]`: local files unless a bucket is set.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub url: Option<String>,
    pub api_key: Option<String>,
    pub key_id: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub prefix: Option<String>,
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

/// `[functions.lambda]`: where functions with `runtime: lambda` run (`docs/lambda.md`).
/// Credentials come from the standard AWS chain (environment, profile, SSO, instance or
/// task role), for the control plane (deploys) and the routers (signing invocations).
///
/// | key | env (`REACTOR_FUNCTIONS_LAMBDA_`...) | default |
/// |---|---|---|
/// | `region` | `REGION` | `AWS_REGION`, else `us-east-1` |
/// | `role_arn` | `ROLE_ARN` | required: the execution role of the functions |
/// | `bundle_s3_bucket` | `BUNDLE_S3_BUCKET` | required: where deployment packages are uploaded (created when missing) |
/// | `lwa_layer_arn` | `LWA_LAYER_ARN` | required: the Lambda Web Adapter layer for `architecture` |
/// | `bun_layer_arn` | `BUN_LAYER_ARN` | none: the control plane's own Bun binary (`functions.bun_path`, for `architecture`) is packed with each function; else a layer with Bun at `/opt/bun` or `/opt/bin/bun` |
/// | `architecture` | `ARCHITECTURE` | `x86_64` (or `arm64`; the layers must match) |
/// | `function_prefix` | `FUNCTION_PREFIX` | `reactor-`: Lambda functions are `{prefix}{org}-{function}` |
/// | `alias` | `ALIAS` | `live`: the alias that promote moves and the Function URL fronts |
/// | `endpoint` | `ENDPOINT` | none: AWS; else the Lambda API endpoint (an emulator) |
/// | `s3_endpoint` | `S3_ENDPOINT` | none: AWS; else the S3 endpoint for `bundle_s3_bucket` (path-style) |
/// | `function_url_endpoint` | `FUNCTION_URL_ENDPOINT` | none: the Function URL AWS returned; else requests go to this base URL |
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LambdaConfig {
    pub region: Option<String>,
    pub role_arn: Option<String>,
    pub bundle_s3_bucket: Option<String>,
    pub lwa_layer_arn: Option<String>,
    pub bun_layer_arn: Option<String>,
    pub architecture: Option<String>,
    pub function_prefix: Option<String>,
    pub alias: Option<String>,
    pub endpoint: Option<String>,
    pub s3_endpoint: Option<String>,
    pub function_url_endpoint: Option<String>,
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

impl Default for FunctionsConfig {
    fn default() -> Self {
        Self {
            workdir: default_workdir(),
            data_key: None,
            data_keys_previous: Vec::new(),
            bundle_max_bytes: 50 * 1024 * 1024,
            invoke_max_body_bytes: 16 * 1024 * 1024,
            log_retention_entries: 1000,
            log_retention_secs: 86_400,
            invoke_default_timeout_ms: 30_000,
            invoke_max_timeout_ms: 300_000,
            bun_idle_ttl_secs: 300,
            bun_max_instances_per_fn: 8,
            bun_path: None,
            bun_sandbox: true,
            bun_concurrency_per_process: 32,
            bun_queue_per_fn: 64,
            runtimes: vec![Runtime::Wasm, Runtime::Bun],
            database_url: None,
            redis_url: None,
            storage: StorageConfig::default(),
            lambda: LambdaConfig::default(),
        }
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
        fn num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigError> {
            value.trim().parse().map_err(|_| ConfigError::Env {
                name: name.to_string(),
                value: value.to_string(),
                reason: "expected a non-negative integer".to_string(),
            })
        }
        fn flag(name: &str, value: &str) -> Result<bool, ConfigError> {
            match value.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ConfigError::Env {
                    name: name.to_string(),
                    value: value.to_string(),
                    reason: "expected true, false, 1 or 0".to_string(),
                }),
            }
        }
        let var = |key: &str| {
            let name = format!("{ENV_PREFIX}{key}");
            get(&name).map(|v| (name, v))
        };
        if let Some((_, v)) = var("WORKDIR") {
            self.workdir = absolute(Path::new(&v));
        }
        if let Some((_, v)) = var("DATA_KEY") {
            self.data_key = Some(v);
        }
        if let Some((_, v)) = var("DATA_KEYS_PREVIOUS") {
            self.data_keys_previous = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some((n, v)) = var("INVOKE_MAX_BODY_BYTES") {
            self.invoke_max_body_bytes = num(&n, &v)?;
        }
        if let Some((n, v)) = var("LOG_RETENTION_ENTRIES") {
            self.log_retention_entries = num(&n, &v)?;
        }
        if let Some((n, v)) = var("LOG_RETENTION_SECS") {
            self.log_retention_secs = num(&n, &v)?;
        }
        if let Some((n, v)) = var("BUNDLE_MAX_BYTES") {
            self.bundle_max_bytes = num(&n, &v)?;
        }
        if let Some((n, v)) = var("INVOKE_DEFAULT_TIMEOUT_MS") {
            self.invoke_default_timeout_ms = num(&n, &v)?;
        }
        if let Some((n, v)) = var("INVOKE_MAX_TIMEOUT_MS") {
            self.invoke_max_timeout_ms = num(&n, &v)?;
        }
        if let Some((n, v)) = var("BUN_IDLE_TTL_SECS") {
            self.bun_idle_ttl_secs = num(&n, &v)?;
        }
        if let Some((n, v)) = var("BUN_MAX_INSTANCES_PER_FN") {
            self.bun_max_instances_per_fn = num(&n, &v)?;
        }
        if let Some((_, v)) = var("BUN_PATH") {
            self.bun_path = Some(absolute(Path::new(&v)));
        }
        if let Some((n, v)) = var("BUN_SANDBOX") {
            self.bun_sandbox = flag(&n, &v)?;
        }
        if let Some((n, v)) = var("BUN_CONCURRENCY_PER_PROCESS") {
            self.bun_concurrency_per_process = num(&n, &v)?;
        }
        if let Some((n, v)) = var("BUN_QUEUE_PER_FN") {
            self.bun_queue_per_fn = num(&n, &v)?;
        }
        if let Some((n, v)) = var("RUNTIMES") {
            let mut runtimes = Vec::new();
            for part in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let rt =
                    part.parse()
                        .map_err(|e: crate::runtime::UnknownRuntime| ConfigError::Env {
                            name: n.clone(),
                            value: v.clone(),
                            reason: e.to_string(),
                        })?;
                runtimes.push(rt);
            }
            self.runtimes = runtimes;
        }
        if let Some((_, v)) = var("STORAGE_URL") {
            self.storage.url = Some(v);
        }
        if let Some((_, v)) = var("STORAGE_API_KEY") {
            self.storage.api_key = Some(v);
        }
        if let Some((_, v)) = var("STORAGE_KEY_ID") {
            self.storage.key_id = Some(v);
        }
        if let Some((_, v)) = var("STORAGE_BUCKET") {
            self.storage.bucket = Some(v);
        }
        if let Some((_, v)) = var("STORAGE_REGION") {
            self.storage.region = Some(v);
        }
        if let Some((n, v)) = var("STORAGE_PATH_STYLE") {
            self.storage.path_style = Some(flag(&n, &v)?);
        }
        if let Some((_, v)) = var("STORAGE_PREFIX") {
            self.storage.prefix = Some(v);
        }
        if let Some((_, v)) = var("DATABASE_URL") {
            self.database_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some((_, v)) = var("REDIS_URL") {
            self.redis_url = Some(v).filter(|v| !v.is_empty());
        }
        let lambda = &mut self.lambda;
        for (key, field) in [
            ("LAMBDA_REGION", &mut lambda.region),
            ("LAMBDA_ROLE_ARN", &mut lambda.role_arn),
            ("LAMBDA_BUNDLE_S3_BUCKET", &mut lambda.bundle_s3_bucket),
            ("LAMBDA_LWA_LAYER_ARN", &mut lambda.lwa_layer_arn),
            ("LAMBDA_BUN_LAYER_ARN", &mut lambda.bun_layer_arn),
            ("LAMBDA_ARCHITECTURE", &mut lambda.architecture),
            ("LAMBDA_FUNCTION_PREFIX", &mut lambda.function_prefix),
            ("LAMBDA_ALIAS", &mut lambda.alias),
            ("LAMBDA_ENDPOINT", &mut lambda.endpoint),
            ("LAMBDA_S3_ENDPOINT", &mut lambda.s3_endpoint),
            (
                "LAMBDA_FUNCTION_URL_ENDPOINT",
                &mut lambda.function_url_endpoint,
            ),
        ] {
            if let Some((_, v)) = var(key) {
                *field = Some(v);
            }
        }
        Ok(())
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
        self.storage.s3()?;
        if self.runtimes.contains(&Runtime::Lambda) {
            self.lambda.settings()?;
        }
        Ok(())
    }

    pub fn timeouts(&self) -> crate::manifest::TimeoutDefaults {
        crate::manifest::TimeoutDefaults {
            default_timeout_ms: self.invoke_default_timeout_ms,
            max_timeout_ms: self.invoke_max_timeout_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = include_str!("../../tests/fixtures/seed-reactor.toml");
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
token = "0123456789abcdef"

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
            config.internal_token().expect("long enough"),
            "0123456789abcdef"
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
