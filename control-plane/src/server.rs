//! `reactor-control-plane`: the control plane as its own service. Admin HTTP and health
//! on `listen`; gRPC (admin, routing stream, worker registry) on `grpc_listen`.
//!
//! It links no runtime and runs no function code: deployments are built by the worker
//! services of their runtime (see [`crate::build`]), which also load live deployments
//! from storage as the routing table announces them (`reactor_worker_link::prewarm`).
//! Lambda is the exception: with the `lambda` feature it packages, publishes and moves
//! the alias itself (AWS calls, no tenant code), as Lambda has no worker service.

use crate::backends::Backends;
use crate::build::RuntimeRoles;
use crate::env::StoreEnv;
use crate::{ControlPlane, ControlPlaneOptions, grpc};
use anyhow::Context;
use reactor_api::config::{FunctionsConfig, ReactorConfig};
use reactor_service::Lifecycle;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "reactor-control-plane",
    version,
    about = "Reactor control plane: admin API, deployments, routing tables"
)]
pub struct Args {
    #[command(flatten)]
    pub log: reactor_service::LogArgs,
    /// Configuration file (default: `$REACTOR_CONFIG`, else `./reactor.toml` if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Admin HTTP and health address (overrides `control_plane.listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// gRPC address (overrides `control_plane.grpc_listen`).
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// Where metadata and bundles live (overrides `functions.workdir`).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Org to bootstrap.
    #[arg(long, env = "REACTOR_ORG", default_value = "default")]
    pub org: String,
    /// Admin token to bootstrap (generated and printed once when absent).
    #[arg(long, env = "REACTOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
    /// On SIGTERM, milliseconds of answering `/readyz` 503 while still accepting, so that
    /// a load balancer stops sending first.
    #[arg(long, env = "REACTOR_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,
    /// Write the cluster CA and the services' certificates into DIR (keeping those already
    /// there), then exit: what `reactor tls init` does, for an init container.
    #[arg(long, value_name = "DIR")]
    pub tls_init: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.tls_init {
        let done = reactor_service::tls::generate(dir)?;
        for p in &done.created {
            println!("created {}", p.display());
        }
        for p in &done.kept {
            println!("kept    {}", p.display());
        }
        return Ok(());
    }
    let mut config = ReactorConfig::load_service(args.config.as_deref())?;
    let _telemetry = reactor_service::telemetry::init(
        args.log.log_format,
        &config.telemetry,
        "reactor-control-plane",
    )?;
    let tls = reactor_service::tls::InternalTls::from_config(
        &config.internal,
        reactor_service::tls::Role::ControlPlane,
    )?;
    let token = config.internal_token()?.to_string();
    let worker_token = config.worker_token()?.to_string();
    if let Some(admin) = args.admin_token.as_deref() {
        reactor_api::token::check_secret("REACTOR_ADMIN_TOKEN", admin)
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(w) = &args.workdir {
        config.functions.workdir = w.clone();
    }
    let listen = args.listen.unwrap_or(config.control_plane.listen);
    let grpc_listen = args.grpc_listen.unwrap_or(config.control_plane.grpc_listen);
    let workdir = config.functions.workdir.clone();
    let Backends {
        store,
        storage,
        env,
        logs,
    } = Backends::open(&config.functions).await?;
    let runtimes = roles(&config.functions, &env).await?;
    let cp = ControlPlane::start(ControlPlaneOptions {
        config: config.functions,
        store,
        storage,
        runtimes,
        worker_timing: Default::default(),
        remote_workers: Some({
            // Builds on workers: with the workers' credential, which routers do not hold.
            let remote = reactor_worker_link::RemoteWorkers::new(&worker_token)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            match &tls {
                Some(tls) => remote.with_tls(tls).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => remote,
            }
        }),
        env,
        logs,
    })
    .await?;
    let boot = cp
        .bootstrap(&args.org, args.admin_token.as_deref(), None)
        .await
        .map_err(anyhow::Error::new)?;
    if boot.generated {
        println!(
            "bootstrap admin token for org {} (shown once): export REACTOR_TOKEN={} REACTOR_ORG={}",
            boot.org, boot.token, boot.org
        );
    }

    let life = Lifecycle::new();
    life.stop_on_signal(Duration::from_millis(args.drain_delay_ms));
    let http =
        reactor_service::bind_exclusive(listen).with_context(|| format!("binding {listen}"))?;
    let grpc = reactor_service::bind_exclusive(grpc_listen)
        .with_context(|| format!("binding {grpc_listen}"))?;
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let mut grpc_builder = tonic::transport::Server::builder();
    let transport = match &tls {
        Some(tls) => {
            grpc_builder = grpc_builder
                .tls_config(tls.tonic_server())
                .context("gRPC TLS")?;
            grpc::Transport::MutualTls
        }
        None => grpc::Transport::Plain,
    };
    let grpc_server = grpc_builder
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(grpc::routing_service_over(
            cp.clone(),
            token.clone(),
            transport,
        ))
        .add_service(grpc::worker_registry_over(
            cp.clone(),
            token.clone(),
            worker_token.clone(),
            transport,
        ))
        .add_service(crate::grpc_admin::admin_service(cp.clone()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), {
            let life = life.clone();
            async move { life.stopped().await }
        });
    let grpc_task = tokio::spawn(grpc_server);
    {
        let (cp, life) = (cp.clone(), life.clone());
        tokio::spawn(async move {
            life.stopped().await;
            cp.close();
        });
    }
    let app = reactor_service::public_app(
        crate::http::admin_router(cp.clone())
            .merge(life.routes())
            .merge(reactor_service::metrics::routes(
                &config.telemetry,
                reactor_service::metrics::Exposure::Service,
            )),
    );
    tracing::info!(admin_http = %http_addr, grpc = %grpc_addr, workdir = %workdir.display(), "reactor-control-plane listening");
    let grpc_scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "reactor-control-plane listening: admin http://{http_addr} grpc {grpc_scheme}://{grpc_addr}"
    );
    life.set_ready(true);
    reactor_service::serve(http, app, 1, &life, Duration::from_secs(args.grace_secs)).await?;
    match tokio::time::timeout(Duration::from_secs(args.grace_secs), grpc_task).await {
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server failed"),
        Err(_) => tracing::warn!("gRPC streams still open after the grace period"),
        _ => {}
    }
    Ok(())
}

/// What this service does per runtime: Lambda's build and release when it is enabled;
/// every other runtime is built by its worker services.
async fn roles(config: &FunctionsConfig, env: &Arc<StoreEnv>) -> anyhow::Result<RuntimeRoles> {
    let roles = RuntimeRoles::default();
    #[cfg(feature = "lambda")]
    if let Some(lambda) = reactor_lambda::from_config(config, env.clone())
        .await
        .context("the lambda runtime is enabled (functions.runtimes)")?
    {
        return Ok(RuntimeRoles {
            builders: roles.builders.with(lambda.clone()),
            releases: roles.releases.with(lambda),
            workers: roles.workers,
        });
    }
    #[cfg(not(feature = "lambda"))]
    if config.runtimes.contains(&reactor_api::Runtime::Lambda) {
        let _ = env;
        anyhow::bail!(
            "functions.runtimes enables lambda, but this reactor-control-plane was built without the `lambda` feature"
        );
    }
    Ok(roles)
}
