//! The Lambda runtime: functions with `runtime: lambda` run in AWS Lambda.
//!
//! - **Deploy** ([`deploy`]): the bundle, Reactor's Bun harness and a `bootstrap` script
//!   are zipped ([`package`]) and uploaded to `bundle_s3_bucket`; the Lambda function
//!   (`provided.al2023`, the Bun and Lambda Web Adapter layers) is created or updated with
//!   the manifest's memory and timeout and the deployment's env and secrets, awaited until
//!   it is active, and a version is published with the deployment id as its description.
//! - **Promote** moves the alias (`live`) to that version, makes sure an `AWS_IAM`,
//!   `RESPONSE_STREAM` Function URL fronts the alias, and sets the reserved concurrency
//!   (`concurrency.max_concurrency`, at most `max_reserved_concurrency`: more fails the
//!   build, and the promote of a deployment built under a higher cap).
//! - **Invoke** ([`invoke`]): the router buffers the body (up to Lambda's 6 MB), signs the
//!   request with SigV4 and streams the Function URL's answer back; the harness marks the
//!   function's own answers, so Lambda's errors (throttling, timeouts, crashes) are told
//!   apart and mapped to Reactor's error codes.
//!
//! [`LambdaRuntime`] plays three roles: the control plane builds ([`Builder`]) and
//! releases ([`Release`]) with it, routers invoke with it ([`RuntimeWorker`]); each role
//! gets it from [`from_config`]. See `docs/lambda.md`.
#![forbid(unsafe_code)]

pub mod deploy;
pub mod invoke;
pub mod package;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use reactor_api::config::{FunctionsConfig, LambdaSettings};
use reactor_api::{
    Builder, DeploymentSpec, EnvSource, Invocation, InvokeError, InvokeFailure, InvokeOutcome,
    Release, Runtime, RuntimeRole, RuntimeWorker,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Lambda's limit on a synchronous request (the Function URL's body included).
pub const MAX_REQUEST_BYTES: u64 = 6 * 1024 * 1024;
/// The Lambda function names Reactor uses are at most this long (Lambda's limit).
const MAX_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// An AWS call failed; the text is AWS's code and message.
    #[error("{operation}: {message}")]
    Aws {
        operation: &'static str,
        message: String,
    },
    #[error("{0}")]
    Package(String),
    #[error("uploading the package: {0}")]
    Upload(#[from] reactor_storage::StorageError),
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Config(#[from] reactor_api::config::ConfigError),
}

impl LambdaError {
    /// Wraps an SDK error with AWS's own code and message when it has them.
    pub(crate) fn aws<E>(operation: &'static str, e: &aws_sdk_lambda::error::SdkError<E>) -> Self
    where
        E: aws_sdk_lambda::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = match e.as_service_error() {
            Some(service) => match (service.code(), service.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_string(),
                (None, Some(msg)) => msg.to_string(),
                (None, None) => aws_sdk_lambda::error::DisplayErrorContext(e).to_string(),
            },
            None => aws_sdk_lambda::error::DisplayErrorContext(e).to_string(),
        };
        LambdaError::Aws { operation, message }
    }
}

/// The Lambda function that runs `function` of `org`: `{prefix}{org}_{function}` (org and
/// function names have no `_`, so two pairs never meet), or, past Lambda's 64
/// characters, a shortened name with a hash of both that keeps it unique.
pub fn lambda_function_name(prefix: &str, org: &str, function: &str) -> String {
    let full = format!("{prefix}{org}_{function}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(format!("{org}/{function}").as_bytes())[..4]);
    let keep = MAX_NAME - hash.len() - 1;
    format!("{}_{hash}", &full[..keep])
}

/// The S3 key of a deployment's package in `bundle_s3_bucket`.
pub fn package_key(org: &str, function: &str, deployment_id: &str) -> String {
    format!("{org}/{function}/{deployment_id}.zip")
}

/// Loads the AWS configuration (standard credential chain) for `settings.region`.
pub(crate) async fn aws_config(settings: &LambdaSettings) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new(settings.region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(4))
        .load()
        .await
}

/// The Lambda API client, at `settings.endpoint` when set (an emulator).
pub(crate) fn lambda_client(
    shared: &aws_config::SdkConfig,
    settings: &LambdaSettings,
) -> aws_sdk_lambda::Client {
    let mut builder = aws_sdk_lambda::config::Builder::from(shared);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    aws_sdk_lambda::Client::from_conf(builder.build())
}

/// The runtime worker for `runtime: lambda`.
pub struct LambdaRuntime {
    deployer: deploy::Deployer,
    invoker: invoke::Invoker,
}

impl LambdaRuntime {
    /// Loads the AWS configuration; `env` gives deployments their env and secrets (the
    /// control plane's store; routers, which only invoke, pass [`reactor_api::invoke::NoEnv`]).
    pub async fn connect(
        settings: LambdaSettings,
        env: Arc<dyn EnvSource>,
    ) -> Result<Arc<Self>, LambdaError> {
        let settings = Arc::new(settings);
        let shared = aws_config(&settings).await;
        let client = lambda_client(&shared, &settings);
        Ok(Arc::new(Self {
            deployer: deploy::Deployer::new(settings.clone(), client.clone(), env),
            invoker: invoke::Invoker::new(settings, client, &shared)?,
        }))
    }

    pub fn deployer(&self) -> &deploy::Deployer {
        &self.deployer
    }
}

impl RuntimeRole for LambdaRuntime {
    fn runtime(&self) -> Runtime {
        Runtime::Lambda
    }
}

/// The Lambda build runs on the control plane (Lambda has no worker service, and packing
/// runs no tenant code): package, upload, create or update, publish a version.
#[async_trait]
impl Builder for LambdaRuntime {
    async fn build(&self, spec: &DeploymentSpec, bundle_dir: &Path) -> Result<(), String> {
        self.deployer
            .materialize(spec, bundle_dir)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The control plane's release step: the alias moves to the deployment's version.
#[async_trait]
impl Release for LambdaRuntime {
    async fn go_live(&self, spec: &DeploymentSpec) -> Result<(), String> {
        self.deployer
            .promote(spec)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Routers invoke through the Function URL; there is nothing to load ahead.
#[async_trait]
impl RuntimeWorker for LambdaRuntime {
    async fn prepare(&self, _spec: &DeploymentSpec) -> Result<(), InvokeError> {
        Ok(())
    }

    async fn invoke(&self, invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
        self.invoker.invoke(invocation).await
    }
}

/// The Lambda runtime when `config.runtimes` enables it: every role builds it here, with
/// `env` giving deployments their env and secrets (routers pass
/// [`reactor_api::invoke::NoEnv`]).
pub async fn from_config(
    config: &FunctionsConfig,
    env: Arc<dyn EnvSource>,
) -> Result<Option<Arc<LambdaRuntime>>, LambdaError> {
    if !config.runtimes.contains(&Runtime::Lambda) {
        return Ok(None);
    }
    let mut settings = config.lambda.settings()?;
    settings.bun_path = config.bun_path.clone();
    LambdaRuntime::connect(settings, env).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_lambda() {
        assert_eq!(
            lambda_function_name("reactor-", "acme", "hello"),
            "reactor-acme_hello"
        );
        // Dashes in org and function names cannot make two pairs meet.
        assert_ne!(
            lambda_function_name("reactor-", "acme-x", "api"),
            lambda_function_name("reactor-", "acme", "x-api")
        );
        let long = "f".repeat(63);
        let a = lambda_function_name("reactor-", "acme", &long);
        let b = lambda_function_name("reactor-", "acmf", &long);
        assert_eq!(a.len(), 64);
        assert_ne!(a, b, "shortened names stay distinct");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
