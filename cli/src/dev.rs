//! The embedded default: control plane, router and the WASM and Bun workers in one process
//! on one port, SQLite and local files under the workdir, no other service needed.

use crate::credentials::{self, Credentials};
use anyhow::Context;
use axum::Router;
use reactor_api::config::ReactorConfig;
use reactor_api::{Builders, CallLink, Releases, Runtime, Runtimes};
use reactor_control_plane::backends::Backends;
use reactor_control_plane::{Bootstrap, ControlPlane, ControlPlaneOptions, RuntimeRoles};
use reactor_data_plane::{DataPlane, LambdaCallListener, LambdaCalls, RouterOptions};
use reactor_service::Lifecycle;
use reactor_worker_bun::{BunWorker, BunWorkerOptions};
use reactor_worker_link::calls::CallLimits;
use reactor_worker_wasm::{WasmWorker, WasmWorkerOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    #[command(flatten)]
    pub log: reactor_service::LogArgs,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "REACTOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where metadata, bundles and caches live (overrides `functions.workdir`; default
    /// `~/.local/share/reactor/functions`, or under `$XDG_DATA_HOME`).
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
    /// Where the state is (absolute).
    pub workdir: PathBuf,
    /// What is off and why (a runtime that could not start), for the person at the terminal.
    pub notes: Vec<String>,
    pub bootstrap: Bootstrap,
    pub app: Router,
    pub listener: tokio::net::TcpListener,
    /// With the Lambda runtime: where its functions' calls come back.
    pub lambda_calls: Option<LambdaCallListener>,
    pub life: Lifecycle,
}

/// Builds every service from the configuration and binds the listener.
pub async fn start(args: &DevArgs) -> anyhow::Result<DevServer> {
    let full = ReactorConfig::load(args.config.as_deref())?;
    let telemetry = full.telemetry;
    // The one `[worker]` key the embedded WASM worker reads (the section's other keys
    // and their variables are the split services').
    let loaded_budget_mb = match std::env::var("REACTOR_WORKER_LOADED_BUDGET_MB") {
        Ok(v) => v.trim().parse::<u64>().map_err(|_| {
            anyhow::anyhow!("REACTOR_WORKER_LOADED_BUDGET_MB={v:?}: expected a number of MiB")
        })?,
        Err(_) => full.worker.loaded_budget_mb,
    };
    let mut config = full.functions;
    if let Some(admin) = args.admin_token.as_deref() {
        reactor_api::token::check_secret("REACTOR_ADMIN_TOKEN", admin)
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(w) = &args.workdir {
        config.workdir = reactor_api::config::absolute(w);
    }
    let workdir = config.workdir.clone();
    let mut notes = Vec::new();
    let max_body_bytes = config.invoke_max_body_bytes;
    let Backends {
        store,
        storage,
        env,
        logs,
    } = Backends::open(&config).await?;
    // Calls between functions go to the router below, in process, once it is built.
    let calls = CallLink::new();
    let call_limits = CallLimits::from(&config.calls);
    // Every role of every runtime in this process: each builds, runs (and for Lambda,
    // releases) its own deployments.
    let wasm = Arc::new(
        WasmWorker::new(WasmWorkerOptions {
            storage: storage.clone(),
            cache_dir: workdir.join("cache").join("wasm"),
            max_instances: 1000,
            env: env.clone(),
            logs: logs.clone(),
        })?
        .with_calls(calls.clone(), call_limits)
        .with_loaded_budget(loaded_budget_mb.saturating_mul(1 << 20))
        .with_seal(artifact_seal(&workdir)?),
    );
    wasm.report_pools();
    let wasm_inline = wasm.clone();
    let mut roles = RuntimeRoles {
        builders: Builders::new().with(wasm.clone()),
        releases: Releases::new(),
        workers: Runtimes::new().with(wasm),
    };
    if config.runtimes.contains(&Runtime::Bun) {
        // Bun missing, or a host where its sandbox cannot start, turns Bun functions off,
        // not the server: WASM functions still run, and the note says how to fix it.
        let bun = async {
            let mut options = BunWorkerOptions::from_config(
                &config,
                storage.clone(),
                workdir.join("cache").join("bun"),
                env.clone(),
                logs.clone(),
            )?;
            options.calls = calls.clone();
            BunWorker::new(options).await
        };
        match bun.await {
            Ok(bun) => {
                roles.builders = roles.builders.with(bun.clone());
                roles.workers = roles.workers.with(bun);
            }
            Err(e) => {
                tracing::warn!(error = %e, "bun functions are off");
                notes.push(bun_off_note(&e.to_string()));
                config.runtimes.retain(|r| *r != Runtime::Bun);
            }
        }
    }
    let mut lambda_calls = None;
    if let Some(lambda) = reactor_lambda::from_config(&config, env.clone())
        .await
        .context("the lambda runtime is enabled (functions.runtimes)")?
    {
        // Lambda functions run out of reach: their calls come back on a listener of
        // their own, each with its invocation's capability.
        let (door, listener) = LambdaCalls::bind(&config.lambda, calls.clone(), call_limits)?;
        lambda_calls = Some(listener);
        roles.builders = roles.builders.with(lambda.clone());
        roles.releases = roles.releases.with(lambda.clone());
        roles.workers = roles.workers.with(door.wrap(lambda));
    }
    let runtimes = roles.workers.clone();
    let call_config = config.calls.clone();
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store,
        storage,
        runtimes: roles,
        worker_timing: Default::default(),
        remote_workers: None,
        env,
        logs: logs.clone(),
    })
    .await?;
    let dp = DataPlane::build(
        runtimes,
        None,
        RouterOptions {
            logs,
            max_body_bytes,
            calls: call_config,
            ..Default::default()
        },
    );
    calls.set(dp.call_forwarder());
    dp.follow(cp.routing().subscribe());
    // Calls to inline WASM callees run in the WASM worker, without the router.
    wasm_inline.enable_inline(cp.routing().subscribe());

    let reuse = credentials::load()
        .filter(|c| c.org == args.org)
        .map(|c| c.token);
    let bootstrap = cp
        .bootstrap(&args.org, args.admin_token.as_deref(), reuse.as_deref())
        .await
        .map_err(anyhow::Error::new)?;
    dp.wait_for_version(cp.routing().current().version).await;

    let life = Lifecycle::new();
    {
        // On shutdown, end log streams so that draining does not wait for them.
        let (cp, life) = (cp.clone(), life.clone());
        tokio::spawn(async move {
            life.stopped().await;
            cp.close();
        });
    }
    let app = reactor_service::public_app(
        Router::new()
            .merge(reactor_control_plane::http::admin_router(cp.clone()))
            .merge(reactor_data_plane::invoke_router(dp))
            .merge(life.routes())
            .merge(reactor_service::metrics::routes(
                &telemetry,
                reactor_service::metrics::Exposure::Embedded,
            )),
    );
    let listener = reactor_service::bind_exclusive(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    Ok(DevServer {
        addr,
        workdir,
        notes,
        bootstrap,
        app,
        listener,
        lambda_calls,
        life,
    })
}

/// What a person reads when Bun functions are off: why, and how to turn them on.
fn bun_off_note(reason: &str) -> String {
    let how = if reason.contains("bubblewrap") {
        "to run them without the sandbox (functions can then read your files): \
         REACTOR_FUNCTIONS_BUN_SANDBOX=false reactor dev"
    } else {
        "install Bun with ./scripts/setup.sh in the repository, or set REACTOR_FUNCTIONS_BUN_PATH"
    };
    format!("Bun functions are OFF: {reason}\n  WASM functions run; {how}")
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let telemetry = reactor_api::config::ReactorConfig::load(args.config.as_deref())?.telemetry;
    let _telemetry = reactor_service::telemetry::init(args.log.log_format, &telemetry, "reactor")?;
    let server = start(&args).await?;
    let url = format!("http://{}", server.addr);
    let b = &server.bootstrap;
    let saved = credentials::save(&Credentials {
        url: url.clone(),
        token: b.token.clone(),
        org: b.org.clone(),
    });
    // Commands go to this server now, not to one signed in to earlier (`reactor login`).
    if let Err(e) = crate::login::forget_current() {
        tracing::warn!(error = %e, "could not update the sessions file");
    }
    tracing::info!(%url, org = %b.org, "reactor dev listening: admin API and invoke on one port");
    println!("Reactor is running at {url} (embedded: SQLite and local files)");
    println!("State: {}", server.workdir.display());
    for note in &server.notes {
        println!("{note}");
    }
    if let Some(l) = &server.lambda_calls {
        println!("Lambda functions call back on {}", l.url);
    }
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

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish for `grace_secs`
/// (see [`reactor_service::serve`]).
pub async fn serve(
    server: DevServer,
    threads: Option<usize>,
    grace_secs: u64,
) -> anyhow::Result<()> {
    let life = server.life.clone();
    life.stop_on_signal(Duration::ZERO);
    life.set_ready(true);
    let threads = reactor_service::thread_count(threads);
    let grace = Duration::from_secs(grace_secs);
    // Lambda functions' calls come back until the invoke listener has drained.
    let calls_life = Lifecycle::new();
    let invoke = async {
        let served =
            reactor_service::serve(server.listener, server.app, threads, &life, grace).await;
        calls_life.stop();
        served
    };
    let lambda = async {
        match server.lambda_calls {
            Some(l) => reactor_service::serve(l.listener, l.app, threads, &calls_life, grace).await,
            None => Ok(()),
        }
    };
    tokio::try_join!(invoke, lambda)?;
    Ok(())
}

/// The seal of the artifacts this workdir's storage holds: from a key kept beside the
/// data key (created on first start, private to the user), so that artifacts built before
/// a restart are still trusted after it when the local cache is gone, instead of rebuilt.
fn artifact_seal(workdir: &std::path::Path) -> anyhow::Result<reactor_storage::seal::ArtifactSeal> {
    let path = workdir.join(ARTIFACT_KEY_FILE);
    reactor_control_plane::secrets::load_or_create_key_file(&path)
        .with_context(|| format!("the artifact seal key {}", path.display()))?;
    let secret = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the artifact seal key {}", path.display()))?;
    Ok(reactor_storage::seal::ArtifactSeal::from_secret(
        secret.trim(),
    ))
}

/// The key file of [`artifact_seal`], in the workdir.
const ARTIFACT_KEY_FILE: &str = "artifact_key";
