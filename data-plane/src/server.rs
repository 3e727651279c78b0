//! `reactor-data-plane`: a router as its own service. Invocations and health on `listen`,
//! calls between functions from workers on `call_listen` (`calls.rs`), and with the Lambda
//! runtime those of Lambda functions on `functions.lambda.call_listen` (`lambda_calls.rs`);
//! the routing table from the control plane's gRPC stream; functions run on the worker
//! services that table lists.

use crate::admission::{Admission, LocalAdmission};
use crate::admission_redis::{RedisAdmission, RedisAdmissionConfig};
use crate::{
    ControlPlaneEndpoint, DataPlane, RouterOptions, call_router, follow_control_plane,
    invoke_router,
};
use anyhow::Context;
use reactor_api::config::ReactorConfig;
use reactor_service::Lifecycle;
use reactor_worker_link::RemoteWorkers;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "reactor-data-plane",
    version,
    about = "Reactor router: authenticates, routes and forwards invocations to workers"
)]
pub struct Args {
    #[command(flatten)]
    pub log: reactor_service::LogArgs,
    /// Configuration file (default: `$REACTOR_CONFIG`, else `./reactor.toml` if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Invoke and health address (overrides `data_plane.listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the listener for calls between functions, from workers only
    /// (overrides `data_plane.call_listen`).
    #[arg(long)]
    pub call_listen: Option<SocketAddr>,
    /// The control plane's gRPC URL (overrides `data_plane.control_plane_url`).
    #[arg(long)]
    pub control_plane_url: Option<String>,
    /// Names this router in the control plane's logs (default: router-{port}).
    #[arg(long, env = "REACTOR_ROUTER_ID")]
    pub router_id: Option<String>,
    /// Server threads, each with its own single-threaded runtime (default: one per core).
    #[arg(long, env = "REACTOR_SERVE_THREADS")]
    pub threads: Option<usize>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
    /// On SIGTERM, milliseconds of answering `/readyz` 503 while still accepting, so that
    /// a load balancer stops sending first.
    #[arg(long, env = "REACTOR_DRAIN_DELAY_MS", default_value_t = 1000)]
    pub drain_delay_ms: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = ReactorConfig::load_service(args.config.as_deref())?;
    let _telemetry = reactor_service::telemetry::init(
        args.log.log_format,
        &config.telemetry,
        "reactor-data-plane",
    )?;
    let token = config.internal_token()?.to_string();
    let call_token = token.clone();
    let listen = args.listen.unwrap_or(config.data_plane.listen);
    let cp_url = args
        .control_plane_url
        .unwrap_or(config.data_plane.control_plane_url);
    let tls = reactor_service::tls::InternalTls::from_config(
        &config.internal,
        reactor_service::tls::Role::Router,
    )?;
    let listener =
        reactor_service::bind_exclusive(listen).with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let call_listen = args.call_listen.unwrap_or(config.data_plane.call_listen);
    let call_listener = reactor_service::bind_exclusive(call_listen)
        .with_context(|| format!("binding {call_listen} (data_plane.call_listen)"))?;
    let call_addr = call_listener.local_addr()?;
    let mut remote = RemoteWorkers::new(&token).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(tls) = &tls {
        remote = remote.with_tls(tls).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let router_id = args
        .router_id
        .unwrap_or_else(|| format!("router-{}", addr.port()));
    let endpoint = ControlPlaneEndpoint {
        url: cp_url.clone(),
        internal_token: token,
        router_id: router_id.clone(),
        tls: tls.as_ref().map(|t| t.tonic_client()),
    };
    let logs = reactor_worker_link::control::PushLogs::start(endpoint.clone(), router_id.clone())
        .with_context(|| format!("control plane url {cp_url}"))?;
    let admission = build_admission(config.functions.redis_url.as_deref(), &router_id).await?;
    // Calls that Lambda functions make come back to this router, once it is built.
    let lambda_link = reactor_api::CallLink::new();
    let (runtimes, lambda_calls) = lambda_runtimes(&config.functions, lambda_link.clone()).await?;
    let dp = DataPlane::build(
        runtimes,
        Some(remote),
        RouterOptions {
            logs,
            max_body_bytes: config.functions.invoke_max_body_bytes,
            admission,
            calls: config.functions.calls.clone(),
        },
    );
    lambda_link.set(dp.call_forwarder());
    follow_control_plane(dp.clone(), endpoint);
    let life = Lifecycle::new();
    life.stop_on_signal(Duration::from_millis(args.drain_delay_ms));
    {
        // Ready once it holds a routing table; it stays ready on it while the control
        // plane is away.
        let (dp, life) = (dp.clone(), life.clone());
        tokio::spawn(async move {
            dp.wait_for_version(1).await;
            life.set_ready(true);
            tracing::info!(version = dp.version(), "routing table received; ready");
        });
    }
    let calls_app =
        reactor_service::public_app(call_router(dp.clone(), &call_token).merge(life.routes()));
    let app = reactor_service::public_app(invoke_router(dp).merge(life.routes()).merge(
        reactor_service::metrics::routes(
            &config.telemetry,
            reactor_service::metrics::Exposure::Service,
        ),
    ));
    // Calls between functions: from workers only, over mutual TLS when it is on.
    let call_tls = match &tls {
        Some(tls) => Some(reactor_service::ServeTls {
            config: tls.server_config()?,
            allowed: vec![reactor_service::tls::Role::Worker],
        }),
        None => None,
    };
    tracing::info!(%addr, %call_addr, control_plane = %cp_url, router_id, "reactor-data-plane listening");
    let call_scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "reactor-data-plane listening: invoke http://{addr} calls {call_scheme}://{call_addr}"
    );
    let threads = reactor_service::thread_count(args.threads);
    let grace = Duration::from_secs(args.grace_secs);
    // The call listeners stop once the invoke listener has drained: invocations still
    // running in its grace period may go on making calls.
    let calls_life = Lifecycle::new();
    let invoke = async {
        let served = reactor_service::serve(listener, app, threads, &life, grace).await;
        calls_life.stop();
        served
    };
    let lambda = async {
        match lambda_calls {
            Some(l) => {
                let app = l.app.merge(life.routes());
                println!(
                    "reactor-data-plane: Lambda functions call back on {} (listening on {})",
                    l.url,
                    l.listener.local_addr()?
                );
                reactor_service::serve(l.listener, app, threads, &calls_life, grace).await
            }
            None => Ok(()),
        }
    };
    tokio::try_join!(
        invoke,
        reactor_service::serve_with(
            call_listener,
            calls_app,
            threads,
            &calls_life,
            grace,
            call_tls
        ),
        lambda,
    )?;
    Ok(())
}

/// The runtimes this router runs itself: Lambda, when enabled (it signs and sends each
/// invocation to the Function URL; there is no Lambda worker service), with the listener
/// its functions' calls come back on, made through `link` (`lambda_calls.rs`). Every
/// other runtime runs on the worker services the routing table lists.
pub async fn lambda_runtimes(
    config: &reactor_api::config::FunctionsConfig,
    link: reactor_api::CallLink,
) -> anyhow::Result<(reactor_api::Runtimes, Option<crate::LambdaCallListener>)> {
    let runtimes = reactor_api::Runtimes::new();
    #[cfg(feature = "lambda")]
    if let Some(lambda) = reactor_lambda::from_config(config, Arc::new(reactor_api::invoke::NoEnv))
        .await
        .context("the lambda runtime is enabled (functions.runtimes)")?
    {
        let (calls, listener) = crate::LambdaCalls::bind(
            &config.lambda,
            link,
            reactor_worker_link::calls::CallLimits::from(&config.calls),
        )?;
        return Ok((runtimes.with(calls.wrap(lambda)), Some(listener)));
    }
    #[cfg(not(feature = "lambda"))]
    let _ = link;
    #[cfg(not(feature = "lambda"))]
    if config.runtimes.contains(&reactor_api::Runtime::Lambda) {
        anyhow::bail!(
            "functions.runtimes enables lambda, but this reactor-data-plane was built without the `lambda` feature"
        );
    }
    Ok((runtimes, None))
}

/// The concurrency cap's counter: across routers in Redis when `functions.redis_url` is
/// set, else per router.
async fn build_admission(
    redis_url: Option<&str>,
    router_id: &str,
) -> anyhow::Result<Arc<dyn Admission>> {
    let Some(url) = redis_url else {
        tracing::info!(
            admission = "local",
            "concurrency caps counted per router (no functions.redis_url)"
        );
        return Ok(LocalAdmission::new());
    };
    let redis = RedisAdmission::connect(RedisAdmissionConfig::new(url, router_id))
        .await
        .context("functions.redis_url")?;
    tracing::info!(
        admission = "redis",
        degraded = redis.degraded(),
        "concurrency caps counted across routers in redis"
    );
    Ok(redis)
}
