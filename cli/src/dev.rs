//! The embedded default: control plane, router and WASM worker in one process on one
//! port, SQLite and local files under the workdir, no other service needed.

use crate::credentials::{self, Credentials};
use anyhow::Context;
use axum::Router;
use axum::routing::get;
use reactor_api::Runtimes;
use reactor_api::config::ReactorConfig;
use reactor_control_plane::store::SqliteStore;
use reactor_control_plane::{Bootstrap, ControlPlane, ControlPlaneOptions};
use reactor_data_plane::DataPlane;
use reactor_storage::LocalStorage;
use reactor_worker_wasm::{WasmWorker, WasmWorkerOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "REACTOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where metadata, bundles and caches live (overrides `functions.workdir`).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Configuration file (default: `$REACTOR_CONFIG`, else `./reactor.toml` if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Org to bootstrap.
    #[arg(long, env = "REACTOR_ORG", default_value = "default")]
    pub org: String,
    /// Admin token to bootstrap (generated when absent).
    #[arg(long, env = "REACTOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Server threads, each with its own single-threaded runtime (default: one per core).
    #[arg(long, env = "REACTOR_SERVE_THREADS")]
    pub threads: Option<usize>,
    /// Seconds to let in-flight requests finish on shutdown.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
}

/// A started embedded server.
pub struct DevServer {
    pub addr: SocketAddr,
    pub bootstrap: Bootstrap,
    pub app: Router,
    pub listener: tokio::net::TcpListener,
}

/// Builds every service from the configuration and binds the listener.
pub async fn start(args: &DevArgs) -> anyhow::Result<DevServer> {
    let mut config = ReactorConfig::load(args.config.as_deref())?.functions;
    if let Some(w) = &args.workdir {
        config.workdir = w.clone();
    }
    let workdir = config.workdir.clone();
    tokio::fs::create_dir_all(&workdir)
        .await
        .with_context(|| format!("creating workdir {}", workdir.display()))?;
    let store = Arc::new(SqliteStore::open(&workdir.join("reactor.db")).await?);
    let storage = Arc::new(LocalStorage::open(workdir.join("storage")).await?);
    let wasm = WasmWorker::new(WasmWorkerOptions {
        storage: storage.clone(),
        cache_dir: workdir.join("cache").join("wasm"),
        max_instances: 1000,
    })?;
    let runtimes = Runtimes::new().with(Arc::new(wasm));
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store,
        storage,
        runtimes: runtimes.clone(),
        worker_timing: Default::default(),
    })
    .await?;
    let dp = DataPlane::new(runtimes);
    dp.follow(cp.routing().subscribe());

    let reuse = credentials::load()
        .filter(|c| c.org == args.org)
        .map(|c| c.token);
    let bootstrap = cp
        .bootstrap(&args.org, args.admin_token.as_deref(), reuse.as_deref())
        .await
        .map_err(anyhow::Error::new)?;
    dp.wait_for_version(cp.routing().current().version).await;

    let app = Router::new()
        .merge(reactor_control_plane::http::admin_router(cp.clone()))
        .merge(reactor_data_plane::invoke_router(dp))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                reactor_api::ApiError::new(
                    reactor_api::ErrorCode::MethodNotAllowed,
                    format!("{method} is not allowed on {}", uri.path()),
                )
            },
        )
        .fallback(|uri: axum::http::Uri| async move {
            reactor_api::ApiError::new(
                reactor_api::ErrorCode::NotFound,
                format!("nothing at {}", uri.path()),
            )
        })
        // Outermost: every response, errors included, carries its request id.
        .layer(axum::middleware::from_fn(
            reactor_api::error::request_id::middleware,
        ));
    let listener =
        bind_reuseport(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    Ok(DevServer {
        addr,
        bootstrap,
        app,
        listener,
    })
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    init_tracing();
    let server = start(&args).await?;
    let url = format!("http://{}", server.addr);
    let b = &server.bootstrap;
    let saved = credentials::save(&Credentials {
        url: url.clone(),
        token: b.token.clone(),
        org: b.org.clone(),
    });
    tracing::info!(%url, org = %b.org, "reactor dev listening: admin API and invoke on one port");
    println!("Reactor is running at {url} (embedded: SQLite and local files)");
    println!(
        "export REACTOR_URL={url} REACTOR_TOKEN={} REACTOR_ORG={}",
        b.token, b.org
    );
    match saved {
        Ok(path) => println!("(also written to {})", path.display()),
        Err(e) => tracing::warn!(error = %e, "credentials not saved"),
    }
    serve(server, args.threads, args.grace_secs).await
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish for `grace_secs`.
///
/// Connections are served by one single-threaded runtime per core, all accepting on the
/// same socket: a request, its guest instance and its response body stay on one thread,
/// which on small machines serves far more requests than handing work between the
/// threads of one shared runtime.
pub async fn serve(
    server: DevServer,
    threads: Option<usize>,
    grace_secs: u64,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let threads = threads.filter(|n| *n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut listeners = vec![
        server
            .listener
            .into_std()
            .context("detaching the listener")?,
    ];
    for _ in 1..threads {
        // One socket per thread on the same port: the kernel spreads connections evenly.
        let l = bind_reuseport(server.addr)
            .with_context(|| format!("binding {} again", server.addr))?;
        listeners.push(l.into_std()?);
    }
    let mut handles = Vec::with_capacity(threads);
    for (i, listener) in listeners.into_iter().enumerate() {
        let (app, mut stop) = (server.app.clone(), stop_rx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("reactor-serve-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        // Small streamed chunks (SSE) must not wait for Nagle.
                        let _ = tcp.set_nodelay(true);
                    });
                    let graceful = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    axum::serve(listener, app)
                        .with_graceful_shutdown(graceful)
                        .await?;
                    anyhow::Ok(())
                })
            })
            .context("starting a server thread")?;
        handles.push(handle);
    }
    shutdown_signal().await;
    tracing::info!(grace_secs, "shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        for h in handles {
            match h.join() {
                Ok(Err(e)) => tracing::error!(error = %e, "server thread failed"),
                Err(_) => tracing::error!("server thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    });
    if tokio::time::timeout(Duration::from_secs(grace_secs), joined)
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// A listening socket with `SO_REUSEPORT`, so that each server thread can have its own.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
