//! Deploy and promote against the Lambda API (aws-sdk-lambda) and S3.
//!
//! One deployment = one published Lambda version, found again by its description (the
//! deployment id). Every deployment's environment holds `REACTOR_DEPLOYMENT_ID`, so its
//! configuration always differs from the previous version's and Lambda always publishes
//! a new one. Deployments of one function are made one at a time in this process
//! (`$LATEST` is shared), and the publish names the revision it saw, so a concurrent
//! update from elsewhere fails the publish instead of publishing someone else's code.

use crate::{LambdaError, lambda_function_name, package, package_key};
use aws_sdk_lambda::types::{
    Architecture, Environment, FunctionUrlAuthType, InvokeMode, LastUpdateStatus, PackageType,
    Runtime as LambdaRuntimeKind, State,
};
use reactor_api::config::LambdaSettings;
use reactor_api::{DeploymentSpec, EnvSource};
use reactor_storage::Storage;
use reactor_storage::s3::{S3Config, S3Storage};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OnceCell};

/// Lambda's runtime for the functions: Bun comes from the Bun layer.
pub const LAMBDA_RUNTIME: &str = "provided.al2023";
/// How long a function may take to become active or finish an update.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Lambda's timeout range, in seconds.
const MAX_TIMEOUT_SECS: u64 = 900;

/// What materialization published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub function_name: String,
    pub version: String,
    pub package_key: String,
    pub package_bytes: u64,
}

/// What promote set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    pub function_name: String,
    pub version: String,
    pub function_url: String,
}

pub struct Deployer {
    settings: Arc<LambdaSettings>,
    lambda: aws_sdk_lambda::Client,
    env: Arc<dyn EnvSource>,
    bucket: OnceCell<S3Storage>,
    /// One deploy at a time per Lambda function.
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Deployer {
    pub fn new(
        settings: Arc<LambdaSettings>,
        lambda: aws_sdk_lambda::Client,
        env: Arc<dyn EnvSource>,
    ) -> Self {
        Self {
            settings,
            lambda,
            env,
            bucket: OnceCell::new(),
            locks: Default::default(),
        }
    }

    pub fn function_name(&self, spec: &DeploymentSpec) -> String {
        lambda_function_name(&self.settings.function_prefix, &spec.org, &spec.function)
    }

    fn lock(&self, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    async fn bucket(&self) -> Result<&S3Storage, LambdaError> {
        self.bucket
            .get_or_try_init(|| {
                S3Storage::connect(S3Config {
                    endpoint: self.settings.s3_endpoint.clone(),
                    bucket: self.settings.bundle_s3_bucket.clone(),
                    region: self.settings.region.clone(),
                    path_style: self.settings.s3_endpoint.is_some(),
                    access_key: None,
                    prefix: String::new(),
                })
            })
            .await
            .map_err(LambdaError::Upload)
    }

    /// Packages and uploads the bundle, creates or updates the function, waits until it
    /// is active and publishes a version described by the deployment id.
    pub async fn materialize(
        &self,
        spec: &DeploymentSpec,
        bundle_dir: &Path,
    ) -> Result<Published, LambdaError> {
        check_reserved(spec.max_concurrency, self.settings.max_reserved_concurrency)?;
        let name = self.function_name(spec);
        let work = tempfile::tempdir()
            .map_err(|e| LambdaError::Package(format!("creating a work directory: {e}")))?;
        let zip = work.path().join("package.zip");
        let package_bytes = {
            let (dir, entry, function, zip) = (
                bundle_dir.to_path_buf(),
                spec.entrypoint.clone(),
                spec.function.clone(),
                zip.clone(),
            );
            let settings = self.settings.clone();
            tokio::task::spawn_blocking(move || {
                let bun = match settings.bun_layer_arn {
                    Some(_) => None,
                    None => Some(package::bun_to_pack(
                        settings.bun_path.as_deref(),
                        &settings.architecture,
                    )?),
                };
                package::build(&dir, &entry, &function, bun.as_deref(), &zip)
            })
            .await
            .map_err(|e| LambdaError::Package(format!("packaging stopped: {e}")))??
        };
        let key = package_key(&spec.org, &spec.function, &spec.deployment_id);
        self.bucket().await?.put_file(&key, &zip).await?;
        let variables = self.environment(spec).await?;
        let memory = spec.memory_mb.clamp(128, 10_240) as i32;
        let timeout = timeout_secs(spec.timeout_ms);

        let lock = self.lock(&name);
        let _one_at_a_time = lock.lock().await;
        let exists = match self.lambda.get_function().function_name(&name).send().await {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(LambdaError::aws("GetFunction", &e)),
        };
        let env = Environment::builder()
            .set_variables(Some(variables))
            .build();
        let layers: Vec<String> = self
            .settings
            .bun_layer_arn
            .iter()
            .chain([&self.settings.lwa_layer_arn])
            .cloned()
            .collect();
        let description = format!("Reactor function {}/{}", spec.org, spec.function);
        if !exists {
            self.lambda
                .create_function()
                .function_name(&name)
                .runtime(LambdaRuntimeKind::from(LAMBDA_RUNTIME))
                .role(&self.settings.role_arn)
                .handler("bootstrap")
                .package_type(PackageType::Zip)
                .code(
                    aws_sdk_lambda::types::FunctionCode::builder()
                        .s3_bucket(&self.settings.bundle_s3_bucket)
                        .s3_key(&key)
                        .build(),
                )
                .architectures(Architecture::from(self.settings.architecture.as_str()))
                .memory_size(memory)
                .timeout(timeout)
                .environment(env)
                .set_layers(Some(layers))
                .description(description)
                .publish(false)
                .send()
                .await
                .map_err(|e| LambdaError::aws("CreateFunction", &e))?;
        } else {
            self.settle(&name).await?;
            self.lambda
                .update_function_configuration()
                .function_name(&name)
                .runtime(LambdaRuntimeKind::from(LAMBDA_RUNTIME))
                .role(&self.settings.role_arn)
                .handler("bootstrap")
                .memory_size(memory)
                .timeout(timeout)
                .environment(env)
                .set_layers(Some(layers))
                .description(description)
                .send()
                .await
                .map_err(|e| LambdaError::aws("UpdateFunctionConfiguration", &e))?;
            self.settle(&name).await?;
            self.lambda
                .update_function_code()
                .function_name(&name)
                .s3_bucket(&self.settings.bundle_s3_bucket)
                .s3_key(&key)
                .architectures(Architecture::from(self.settings.architecture.as_str()))
                .send()
                .await
                .map_err(|e| LambdaError::aws("UpdateFunctionCode", &e))?;
        }
        let revision = self.settle(&name).await?;
        let published = self
            .lambda
            .publish_version()
            .function_name(&name)
            .description(&spec.deployment_id)
            .set_revision_id(revision)
            .send()
            .await
            .map_err(|e| LambdaError::aws("PublishVersion", &e))?;
        let version = published
            .version()
            .ok_or_else(|| LambdaError::State("PublishVersion returned no version".into()))?
            .to_string();
        if published.description() != Some(spec.deployment_id.as_str()) {
            return Err(LambdaError::State(format!(
                "Lambda published version {version} of {name} for another deployment ({:?})",
                published.description()
            )));
        }
        tracing::info!(function = %name, version, package_bytes, deployment_id = %spec.deployment_id, "published to Lambda");
        Ok(Published {
            function_name: name,
            version,
            package_key: key,
            package_bytes,
        })
    }

    /// The function's environment: the deployment's env and secrets, the adapter's
    /// settings and the deployment id.
    async fn environment(
        &self,
        spec: &DeploymentSpec,
    ) -> Result<HashMap<String, String>, LambdaError> {
        let pinned = self
            .env
            .deployment_env(spec)
            .await
            .map_err(|e| LambdaError::State(format!("reading the deployment's env: {e}")))?;
        check_env(pinned.iter())?;
        let mut vars: HashMap<String, String> =
            pinned.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in [
            // LWA: run the bootstrap as the handler (managed runtimes) and stream answers.
            ("AWS_LAMBDA_EXEC_WRAPPER", "/opt/bootstrap"),
            ("AWS_LWA_INVOKE_MODE", "response_stream"),
            ("AWS_LWA_PORT", "8080"),
            // Ready when the harness listens: no request reaches the function before.
            ("AWS_LWA_READINESS_CHECK_PROTOCOL", "tcp"),
        ] {
            vars.insert(k.to_string(), v.to_string());
        }
        vars.insert("REACTOR_DEPLOYMENT_ID".into(), spec.deployment_id.clone());
        let size: usize = vars.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_ENV_BYTES {
            return Err(LambdaError::State(format!(
                "the function's environment is {size} bytes with Reactor's own variables; Lambda takes at most {MAX_ENV_BYTES} (4 KB): move large values elsewhere"
            )));
        }
        Ok(vars)
    }

    /// Waits until the function is no longer pending and no update is in progress;
    /// returns its revision. A failed state or update is an error with Lambda's reason.
    async fn settle(&self, name: &str) -> Result<Option<String>, LambdaError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            let c = self
                .lambda
                .get_function_configuration()
                .function_name(name)
                .send()
                .await
                .map_err(|e| LambdaError::aws("GetFunctionConfiguration", &e))?;
            match (c.state(), c.last_update_status()) {
                (Some(State::Failed), _) => {
                    return Err(LambdaError::State(format!(
                        "Lambda function {name} failed: {}",
                        c.state_reason().unwrap_or("no reason given")
                    )));
                }
                (_, Some(LastUpdateStatus::Failed)) => {
                    return Err(LambdaError::State(format!(
                        "the update of Lambda function {name} failed: {}",
                        c.last_update_status_reason().unwrap_or("no reason given")
                    )));
                }
                // Active, or Inactive (idle for weeks: an update reactivates it).
                (state, update)
                    if state != Some(&State::Pending)
                        && update != Some(&LastUpdateStatus::InProgress) =>
                {
                    return Ok(c.revision_id().map(str::to_string));
                }
                _ => {}
            }
            if started.elapsed() > SETTLE_TIMEOUT {
                return Err(LambdaError::State(format!(
                    "Lambda function {name} was not active after {} s (state {:?}, update {:?})",
                    SETTLE_TIMEOUT.as_secs(),
                    c.state(),
                    c.last_update_status()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// The version published for `spec`'s deployment.
    pub async fn version_of(&self, spec: &DeploymentSpec) -> Result<String, LambdaError> {
        let name = self.function_name(spec);
        let mut pages = self
            .lambda
            .list_versions_by_function()
            .function_name(&name)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| LambdaError::aws("ListVersionsByFunction", &e))?;
            for v in page.versions() {
                if v.description() == Some(spec.deployment_id.as_str())
                    && v.version() != Some("$LATEST")
                    && let Some(version) = v.version()
                {
                    return Ok(version.to_string());
                }
            }
        }
        Err(LambdaError::State(format!(
            "Lambda function {name} has no version for deployment {} (was it materialized here?)",
            spec.deployment_id
        )))
    }

    /// Points the alias at the deployment's version (promote and rollback alike), makes
    /// sure the Function URL fronts the alias, and sets the reserved concurrency.
    pub async fn promote(&self, spec: &DeploymentSpec) -> Result<Promoted, LambdaError> {
        // Again here: the cap may have been lowered since the deployment was built.
        check_reserved(spec.max_concurrency, self.settings.max_reserved_concurrency)?;
        let name = self.function_name(spec);
        // One promote at a time per function (deploys have their own lock: a promote
        // need not wait for an upload).
        let lock = self.lock(&format!("{name}#alias"));
        let _one_at_a_time = lock.lock().await;
        let version = self.version_of(spec).await?;
        let alias = self.settings.alias.as_str();
        let found = self
            .lambda
            .get_alias()
            .function_name(&name)
            .name(alias)
            .send()
            .await;
        let exists = match found {
            Ok(_) => true,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                false
            }
            Err(e) => return Err(LambdaError::aws("GetAlias", &e)),
        };
        if !exists {
            // The first promote: the alias must exist before a Function URL can front it.
            self.lambda
                .create_alias()
                .function_name(&name)
                .name(alias)
                .function_version(&version)
                .description("Reactor: the live deployment")
                .send()
                .await
                .map_err(|e| LambdaError::aws("CreateAlias", &e))?;
        }
        // What can fail comes before the alias moves: a refused concurrency leaves the
        // live version as it was, on AWS and in Reactor alike.
        let function_url = self.function_url(&name).await?;
        self.reserve(&name, spec.max_concurrency).await?;
        if exists {
            self.lambda
                .update_alias()
                .function_name(&name)
                .name(alias)
                .function_version(&version)
                .send()
                .await
                .map_err(|e| LambdaError::aws("UpdateAlias", &e))?;
        }
        tracing::info!(function = %name, version, alias, url = %function_url, deployment_id = %spec.deployment_id, "alias moved");
        Ok(Promoted {
            function_name: name,
            version,
            function_url,
        })
    }

    /// Sets the reserved concurrency to `max_concurrency`, or removes it.
    async fn reserve(&self, name: &str, max_concurrency: Option<u32>) -> Result<(), LambdaError> {
        match max_concurrency {
            Some(n) => {
                self.lambda
                    .put_function_concurrency()
                    .function_name(name)
                    .reserved_concurrent_executions(n.min(i32::MAX as u32) as i32)
                    .send()
                    .await
                    .map_err(|e| LambdaError::aws("PutFunctionConcurrency", &e))?;
            }
            None => match self
                .lambda
                .delete_function_concurrency()
                .function_name(name)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) => {}
                Err(e) => return Err(LambdaError::aws("DeleteFunctionConcurrency", &e)),
            },
        }
        Ok(())
    }

    /// The alias's Function URL (`AWS_IAM`, `RESPONSE_STREAM`), created or corrected.
    async fn function_url(&self, name: &str) -> Result<String, LambdaError> {
        let alias = self.settings.alias.as_str();
        let found = self
            .lambda
            .get_function_url_config()
            .function_name(name)
            .qualifier(alias)
            .send()
            .await;
        match found {
            Ok(c)
                if c.auth_type() == &FunctionUrlAuthType::AwsIam
                    && c.invoke_mode() == Some(&InvokeMode::ResponseStream) =>
            {
                Ok(c.function_url().to_string())
            }
            Ok(_) => {
                let c = self
                    .lambda
                    .update_function_url_config()
                    .function_name(name)
                    .qualifier(alias)
                    .auth_type(FunctionUrlAuthType::AwsIam)
                    .invoke_mode(InvokeMode::ResponseStream)
                    .send()
                    .await
                    .map_err(|e| LambdaError::aws("UpdateFunctionUrlConfig", &e))?;
                Ok(c.function_url().to_string())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                let c = self
                    .lambda
                    .create_function_url_config()
                    .function_name(name)
                    .qualifier(alias)
                    .auth_type(FunctionUrlAuthType::AwsIam)
                    .invoke_mode(InvokeMode::ResponseStream)
                    .send()
                    .await
                    .map_err(|e| LambdaError::aws("CreateFunctionUrlConfig", &e))?;
                Ok(c.function_url().to_string())
            }
            Err(e) => Err(LambdaError::aws("GetFunctionUrlConfig", &e)),
        }
    }
}

/// Lambda's limit on a function's environment, keys and values together.
const MAX_ENV_BYTES: usize = 4 * 1024;

/// Keys Lambda sets itself and refuses in a function's environment.
const RESERVED_ENV: [&str; 18] = [
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
];

/// The env keys Lambda would refuse, named before any AWS call: its reserved keys, and
/// keys that are not a letter followed by at least one letter, digit or `_`.
pub fn check_env<'a>(
    vars: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<(), LambdaError> {
    for (key, _) in vars {
        if RESERVED_ENV.contains(&key.as_str()) {
            return Err(LambdaError::State(format!(
                "env key {key} is reserved by Lambda (it sets it itself): rename it"
            )));
        }
        let mut chars = key.chars();
        let valid = key.len() >= 2
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(LambdaError::State(format!(
                "env key {key} is not valid on Lambda (a letter, then at least one letter, digit or _)"
            )));
        }
    }
    Ok(())
}

/// Refuses a reserved concurrency above the operator's cap: what one function reserves,
/// every other function of the AWS account loses.
pub fn check_reserved(max_concurrency: Option<u32>, cap: u32) -> Result<(), LambdaError> {
    match max_concurrency {
        Some(n) if n > cap => Err(LambdaError::State(format!(
            "concurrency.max_concurrency {n} would reserve more Lambda concurrency than this server allows ({cap}, functions.lambda.max_reserved_concurrency): lower it, or ask the operator to raise the limit"
        ))),
        _ => Ok(()),
    }
}

/// Lambda's timeout for a deployment: whole seconds, at least the manifest's limit.
pub fn timeout_secs(timeout_ms: u64) -> i32 {
    timeout_ms.div_ceil(1000).clamp(1, MAX_TIMEOUT_SECS) as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_keys_lambda_refuses_are_named() {
        let ok = [("STRIPE_KEY".to_string(), "v".to_string())];
        assert!(super::check_env(ok.iter().map(|(k, v)| (k, v))).is_ok());
        for bad in ["AWS_REGION", "_HANDLER", "X", "_X", "1A"] {
            let vars = [(bad.to_string(), "v".to_string())];
            let err = super::check_env(vars.iter().map(|(k, v)| (k, v)))
                .expect_err(bad)
                .to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn timeouts_round_up_within_lambda_range() {
        assert_eq!(super::timeout_secs(1), 1);
        assert_eq!(super::timeout_secs(30_000), 30);
        assert_eq!(super::timeout_secs(30_001), 31);
        assert_eq!(super::timeout_secs(2_000_000), 900);
    }

    #[test]
    fn reserved_concurrency_up_to_the_cap_is_accepted() {
        assert!(super::check_reserved(None, 0).is_ok());
        assert!(super::check_reserved(Some(100), 100).is_ok());
        assert!(super::check_reserved(Some(101), 100).is_err());
    }

    /// A deployment reserving more than `max_reserved_concurrency` fails to build and to
    /// promote, before any packaging or AWS call (the endpoint here answers nothing).
    #[tokio::test]
    async fn reserved_concurrency_over_the_cap_is_refused_before_aws() {
        use aws_sdk_lambda::config::{BehaviorVersion, Region};
        use reactor_api::config::LambdaSettings;
        use reactor_api::{DeploymentSpec, Runtime};
        use std::sync::Arc;

        let settings = LambdaSettings {
            region: "us-east-1".into(),
            role_arn: "arn:aws:iam::123456789012:role/test".into(),
            bundle_s3_bucket: "packages".into(),
            lwa_layer_arn: "arn:aws:lambda:us-east-1:1:layer:lwa:1".into(),
            bun_layer_arn: Some("arn:aws:lambda:us-east-1:1:layer:bun:1".into()),
            bun_path: None,
            architecture: "x86_64".into(),
            function_prefix: "reactor-".into(),
            alias: "live".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            s3_endpoint: Some("http://127.0.0.1:9".into()),
            function_url_endpoint: None,
            max_reserved_concurrency: 100,
        };
        let client = aws_sdk_lambda::Client::from_conf(
            aws_sdk_lambda::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url("http://127.0.0.1:9")
                .build(),
        );
        let deployer = super::Deployer::new(
            Arc::new(settings),
            client,
            Arc::new(reactor_api::invoke::NoEnv),
        );
        let spec = DeploymentSpec {
            org: "acme".into(),
            function: "hello".into(),
            deployment_id: "dep_1".into(),
            runtime: Runtime::Lambda,
            entrypoint: "index.ts".into(),
            bundle_key: "acme/hello/dep_1.tar.gz".into(),
            sha256: "0".repeat(64),
            timeout_ms: 1000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: Some(101),
            calls: None,
            pool: None,
        };
        let missing = std::path::Path::new("/nonexistent/bundle");
        let built = deployer
            .materialize(&spec, missing)
            .await
            .expect_err("over the cap")
            .to_string();
        assert!(built.contains("max_reserved_concurrency"), "{built}");
        let promoted = deployer
            .promote(&spec)
            .await
            .expect_err("over the cap")
            .to_string();
        assert!(promoted.contains("max_reserved_concurrency"), "{promoted}");
    }
}
