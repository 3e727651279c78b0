//! What every worker service does around its runtime: read `[worker]`, listen, register
//! with the control plane and heartbeat, prewarm live deployments, and on SIGTERM leave the
//! table, wait for routers to see it, then drain. `reactor-worker-wasm` and
//! `reactor-worker-bun` are this plus the runtime they build.

use crate::server::BuildHost;
use crate::{Registration, register, worker_app};
use anyhow::Context;
use reactor_api::config::ReactorConfig;
use reactor_api::{Builder, Runtime, RuntimeWorker};
use reactor_proto::client::ControlPlaneEndpoint;
use reactor_service::Lifecycle;
use reactor_storage::Storage;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags every worker service takes.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub log: reactor_service::LogArgs,
    /// Configuration file (default: `$REACTOR_CONFIG`, else `./reactor.toml` if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address routers reach (overrides `worker.listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The control plane's gRPC URL (overrides `worker.control_plane_url`).
    #[arg(long)]
    pub control_plane_url: Option<String>,
    /// Server threads, each with its own single-threaded runtime (default: one per core).
    #[arg(long, env = "REACTOR_SERVE_THREADS")]
    pub threads: Option<usize>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
}

/// What a runtime is built from.
pub struct WorkerContext {
    pub config: ReactorConfig,
    pub storage: Arc<dyn Storage>,
    /// This worker's local cache directory (`worker.cache_dir`, else under the workdir).
    pub cache_dir: PathBuf,
    pub worker_id: String,
    /// Deployment env (and decrypted secrets), asked of the control plane.
    pub env: Arc<dyn reactor_api::EnvSource>,
    /// Function logs, pushed to the control plane.
    pub logs: Arc<dyn reactor_api::logs::LogSink>,
    /// Where the calls functions make go: a router's call listener (`worker.router_url`).
    pub calls: reactor_api::CallLink,
    /// `[functions.calls]`: what bounds each invocation's calls.
    pub call_limits: crate::calls::CallLimits,
    /// The routing table as the control plane streams it (empty until the first).
    pub tables: tokio::sync::watch::Receiver<Arc<reactor_proto::routing::RoutingTable>>,
}

/// How long a draining worker waits, once out of the table, for routers to see it gone.
const LEAVE_DELAY: Duration = Duration::from_millis(300);

/// Runs a worker service for `runtime` until SIGTERM, with the runtime `build` returns:
/// it runs the functions and builds the deployments of its runtime.
pub async fn run_worker<F, Fut, W>(
    args: WorkerArgs,
    runtime: Runtime,
    build: F,
) -> anyhow::Result<()>
where
    F: FnOnce(WorkerContext) -> Fut,
    Fut: Future<Output = anyhow::Result<Arc<W>>>,
    W: RuntimeWorker + Builder,
{
    let name = format!("reactor-worker-{runtime}");
    let config = ReactorConfig::load_service(args.config.as_deref())?;
    let _telemetry =
        reactor_service::telemetry::init(args.log.log_format, &config.telemetry, &name)?;
    let metrics = reactor_service::metrics::routes(
        &config.telemetry,
        reactor_service::metrics::Exposure::Service,
    );
    let token = config.internal_token()?.to_string();
    let worker_token = config.worker_token()?.to_string();
    let w = config.worker.clone();
    let tls = reactor_service::tls::InternalTls::from_config(
        &config.internal,
        reactor_service::tls::Role::Worker,
    )?;
    let listen = args.listen.unwrap_or(w.listen);
    let cp_url = args
        .control_plane_url
        .unwrap_or_else(|| w.control_plane_url.clone());
    let workdir = config.functions.workdir.clone();
    let storage = reactor_storage::open(&config.functions)
        .await
        .context("opening bundle storage")?;
    let listener =
        reactor_service::bind_exclusive(listen).with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let url = match &w.advertise_url {
        Some(u) => u.clone(),
        None if addr.ip().is_unspecified() => anyhow::bail!(
            "worker.listen is {addr}: set worker.advertise_url (REACTOR_WORKER_ADVERTISE_URL) \
             to the address routers reach this worker at"
        ),
        None => format!("http://{addr}"),
    };
    // Over TLS, routers and the control plane reach it as https (another scheme is left
    // for the control plane to refuse, naming it).
    let url = match &tls {
        Some(_) => reactor_proto::client::https_url(&url).unwrap_or(url),
        None => url,
    };
    let worker_id = w.id.clone().unwrap_or_else(|| {
        let authority = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        format!("{runtime}-{}", authority.replace([':', '/', '[', ']'], "-"))
    });
    let cache_dir = w
        .cache_dir
        .clone()
        .unwrap_or_else(|| workdir.join("cache").join(&worker_id));
    let endpoint = ControlPlaneEndpoint {
        url: cp_url.clone(),
        internal_token: token.clone(),
        router_id: worker_id.clone(),
        tls: tls.as_ref().map(|t| t.tonic_client()),
    };
    // Registering and fetching env take the workers' own credential.
    let registry = ControlPlaneEndpoint {
        internal_token: worker_token.clone(),
        ..endpoint.clone()
    };
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let env =
        crate::control::ControlPlaneEnv::new(registry.clone(), worker_id.clone(), secret.clone())
            .with_context(|| format!("control plane url {cp_url}"))?;
    let logs = crate::control::PushLogs::start(endpoint.clone(), worker_id.clone())
        .with_context(|| format!("control plane url {cp_url}"))?;
    let router_calls = crate::calls::RouterCalls::new(&w.router_url, &token, tls.as_ref())
        .map_err(anyhow::Error::msg)
        .context("worker.router_url")?;
    let call_limits = crate::calls::CallLimits::from(&config.functions.calls);
    let (tables_tx, tables) = tokio::sync::watch::channel(Arc::default());
    let runtime_impl = build(WorkerContext {
        calls: reactor_api::CallLink::to(Arc::new(router_calls)),
        call_limits,
        tables,
        config,
        storage: storage.clone(),
        cache_dir: cache_dir.clone(),
        worker_id: worker_id.clone(),
        env,
        logs,
    })
    .await?;
    let worker: Arc<dyn RuntimeWorker> = runtime_impl.clone();
    let builds = BuildHost::new(runtime_impl, storage, cache_dir.join("build"));
    let life = Lifecycle::new();
    let app = worker_app(worker.clone(), builds, &token, &worker_token)
        .merge(life.routes())
        .merge(metrics);
    crate::register::follow(
        endpoint.clone(),
        w.prewarm.then(|| worker.clone()),
        Some(tables_tx),
    );
    let registered = register(
        registry,
        Registration {
            worker_id: worker_id.clone(),
            runtime,
            url: url.clone(),
            secret,
        },
    )?;
    {
        let (life, mut rx) = (life.clone(), registered.registered.clone());
        tokio::spawn(async move {
            if rx.wait_for(|r| *r).await.is_ok() {
                life.set_ready(true);
            }
        });
    }
    {
        // Draining: leave the table first, give routers a moment to see it, then stop
        // accepting and let in-flight invocations finish.
        let life = life.clone();
        tokio::spawn(async move {
            reactor_service::shutdown_signal().await;
            tracing::info!("shutdown requested: leaving the routing table, then draining");
            life.set_ready(false);
            registered.deregister().await;
            tokio::time::sleep(LEAVE_DELAY).await;
            life.stop();
        });
    }
    tracing::info!(%addr, %url, worker_id, control_plane = %cp_url, cache = %cache_dir.display(), "{name} listening");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("{name} listening: {scheme}://{addr} as {worker_id}");
    // Over TLS, only routers and the control plane may connect.
    let serve_tls = match &tls {
        Some(tls) => Some(reactor_service::ServeTls {
            config: tls.server_config()?,
            allowed: vec![
                reactor_service::tls::Role::Router,
                reactor_service::tls::Role::ControlPlane,
            ],
        }),
        None => None,
    };
    reactor_service::serve_with(
        listener,
        app,
        reactor_service::thread_count(args.threads),
        &life,
        Duration::from_secs(args.grace_secs),
        serve_tls,
    )
    .await
}
