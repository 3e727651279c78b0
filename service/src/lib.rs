//! Process plumbing shared by every Reactor service (the embedded `reactor dev` and the
//! split `reactor-control-plane`, `reactor-data-plane`, `reactor-worker-wasm`):
//!
//! - [`serve`]: HTTP (HTTP/1.1 and h2c) on one single-threaded runtime per core, all
//!   accepting on the same port (`SO_REUSEPORT`), until the [`Lifecycle`] says stop; then
//!   in-flight requests drain for a grace period.
//! - [`Lifecycle`]: readiness (`/readyz` answers 503 until ready and again while draining),
//!   liveness (`/healthz`), and the shutdown signal (SIGINT, SIGTERM).
//! - [`telemetry`]: logs to stderr as text or JSON lines ([`LogArgs`]: `--log-format`),
//!   filtered by `RUST_LOG`, and traces exported with OTLP when configured.
//! - [`metrics`]: the Prometheus metrics of the process, served at `/metrics`.
//! - [`tls`]: mutual TLS between the services (`[internal] tls`).
#![forbid(unsafe_code)]

pub mod metrics;
pub mod telemetry;
pub mod tls;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Readiness and the stop signal of one process.
#[derive(Clone)]
pub struct Lifecycle {
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub fn new() -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            stop: watch::channel(false).0,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.stopping()
    }

    /// Starts draining: not ready any more, servers stop accepting.
    pub fn stop(&self) {
        self.ready.store(false, Ordering::Relaxed);
        self.stop.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once [`Lifecycle::stop`] was called.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// On SIGINT or SIGTERM: `/readyz` turns 503 at once, and after `delay` (the time a
    /// load balancer needs to see that) the servers stop accepting and drain.
    pub fn stop_on_signal(&self, delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            this.set_ready(false);
            if !delay.is_zero() {
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "shutdown requested: not ready; still accepting for the drain delay"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("draining in-flight requests");
            this.stop();
        });
    }

    /// `/healthz` (the process answers) and `/readyz` (it should get traffic).
    pub fn routes(&self) -> Router {
        let this = self.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let ready = this.is_ready();
                    async move {
                        if ready {
                            (StatusCode::OK, "ready")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                        }
                    }
                }),
            )
    }
}

/// A listening socket with `SO_REUSEPORT`, so that each server thread can have its own.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The first listener of a service: refuses a port another process listens on (a plain
/// bind first, since `SO_REUSEPORT` alone would silently share it), then binds with
/// `SO_REUSEPORT` so that [`serve`] can add one socket per thread.
pub fn bind_exclusive(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    bind_reuseport(addr)
}

/// Server threads to use: `threads` when positive, else one per core.
pub fn thread_count(threads: Option<usize>) -> usize {
    threads.filter(|n| *n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Serves `app` on `listener` (and one more socket on the same port per extra thread)
/// until `life` stops, then lets in-flight requests finish for up to `grace`.
///
/// Each thread runs its own single-threaded runtime: a request, its guest instance and
/// its response body stay on one thread, which on small machines serves far more
/// requests than handing work between the threads of one shared runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    threads: usize,
    life: &Lifecycle,
    grace: Duration,
) -> anyhow::Result<()> {
    serve_with(listener, app, threads, life, grace, None).await
}

/// TLS for [`serve_with`]: the server config, and the roles whose certificates may connect.
#[derive(Clone)]
pub struct ServeTls {
    pub config: Arc<rustls::ServerConfig>,
    pub allowed: Vec<tls::Role>,
}

/// [`serve`], over mutual TLS when `tls` is given (internal ports: see [`tls`]).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    threads: usize,
    life: &Lifecycle,
    grace: Duration,
    tls: Option<ServeTls>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let mut listeners = vec![listener.into_std().context("detaching the listener")?];
    for _ in 1..threads.max(1) {
        // One socket per thread on the same port: the kernel spreads connections evenly.
        let l = bind_reuseport(addr).with_context(|| format!("binding {addr} again"))?;
        listeners.push(l.into_std()?);
    }
    let mut handles = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (app, stop, tls) = (app.clone(), life.clone(), tls.clone());
        let handle = std::thread::Builder::new()
            .name(format!("reactor-serve-{i}"))
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    if let Some(tls) = tls {
                        let listener = tls::TlsListener::new(listener, tls.config, &tls.allowed);
                        let app =
                            app.layer(axum::middleware::from_fn(tls::only_health_without_a_role));
                        axum::serve(
                            listener,
                            app.into_make_service_with_connect_info::<tls::Peer>(),
                        )
                        .with_graceful_shutdown(async move { stop.stopped().await })
                        .await?;
                        return anyhow::Ok(());
                    }
                    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                        // Small streamed chunks (SSE) must not wait for Nagle.
                        let _ = tcp.set_nodelay(true);
                    });
                    // The peer's address reaches handlers as `ConnectInfo<SocketAddr>` (the
                    // sign-in backoff per client address).
                    axum::serve(
                        listener,
                        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
                    )
                    .with_graceful_shutdown(async move { stop.stopped().await })
                    .await?;
                    anyhow::Ok(())
                })
            })
            .context("starting a server thread")?;
        handles.push(handle);
    }
    life.stopped().await;
    let joined = tokio::task::spawn_blocking(move || {
        for h in handles {
            match h.join() {
                Ok(Err(e)) => tracing::error!(error = %e, "server thread failed"),
                Err(_) => tracing::error!("server thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    });
    if tokio::time::timeout(grace, joined).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "grace period over; closing remaining connections"
        );
    } else {
        tracing::info!("drained; stopped");
    }
    Ok(())
}

pub async fn shutdown_signal() {
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

/// How a service writes its own logs (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (the default), coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields
    /// (`message` among them) and `span`, the fields of the span it happened in (an
    /// invocation's `trace_id`, `span_id`, `function` and `request_id`).
    Json,
}

/// `--log-format` / `REACTOR_LOG_FORMAT`, on every service and `reactor dev`.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct LogArgs {
    /// How the service writes its own logs (not command output, which is `--output`):
    /// text, or JSON lines; the lines written during an invocation carry its trace and
    /// span ids.
    #[arg(
        long,
        env = "REACTOR_LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// Finishes a public app: the platform's JSON 404 and 405 for what no route takes, and a
/// request id on every response (errors included).
pub fn public_app(app: Router) -> Router {
    app.method_not_allowed_fallback(
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
    ))
}
