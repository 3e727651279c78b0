//! The client commands: `functions`, `orgs`, `tokens`.

use crate::Output;
use crate::client::Client;
use crate::pack;
use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reactor_api::model::{
    CreateFunction, CreateOrg, CreateToken, DeploymentInfo, DeploymentStatus, FunctionInfo,
    OrgCreated, PromoteRequest, Role, RollbackRequest, TokenCreated, TokenInfo,
};
use reactor_api::{Runtime, headers};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(clap::Subcommand, Debug)]
pub enum FunctionsCommand {
    /// Create a function.
    Create {
        name: String,
        #[arg(long)]
        runtime: Runtime,
    },
    /// List the org's functions.
    List,
    /// Show a function.
    Get { name: String },
    /// Delete a function and its deployments (admins).
    Delete { name: String },
    /// Build (if the manifest says how), pack and upload a bundle, then wait until it is
    /// ready or failed.
    Deploy {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// Do not run the manifest's build command.
        #[arg(long)]
        no_build: bool,
        /// Return once uploaded, without waiting for materialization.
        #[arg(long)]
        no_wait: bool,
    },
    /// Deployments of a function.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// Env values and secrets of a function (pinned by each deployment).
    #[command(subcommand)]
    Env(crate::env::EnvCommand),
    /// The invoke policy of a function: allow or deny by method, path, time, CEL rules.
    #[command(subcommand)]
    Policy(crate::env::PolicyCommand),
    /// Print a function's logs: output, invocations and platform events.
    Logs(crate::logs::LogsArgs),
    /// Make a deployment live (the newest when none is named).
    Promote {
        name: String,
        #[arg(long)]
        deployment: Option<String>,
        /// Promote even when the deployment's schemas break a contract the function is
        /// bound to (its callers may then get answers the contract does not promise).
        #[arg(long)]
        force: bool,
    },
    /// Make an earlier deployment live again: the one named, else the newest ready
    /// deployment older than the live one (whether or not it was ever promoted).
    Rollback {
        name: String,
        #[arg(long = "to-deployment")]
        to_deployment: Option<String>,
    },
    /// Watch a function directory: on every save rebuild, deploy and promote it to the
    /// server, printing the invoke URL or the first error in full.
    Dev(crate::watch::WatchArgs),
    /// Call a function and stream its response to stdout.
    Invoke {
        name: String,
        /// JSON body (sets Content-Type: application/json; method defaults to POST).
        #[arg(long, conflicts_with = "data")]
        json: Option<String>,
        /// Raw body (`@file` reads a file).
        #[arg(long)]
        data: Option<String>,
        /// HTTP method (default: POST with a body, else GET).
        #[arg(long, short = 'X')]
        method: Option<String>,
        /// Path below the function's mount, e.g. `/a/b?x=1`.
        #[arg(long, default_value = "/")]
        path: String,
        /// Extra header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Print the status line and the response headers to stderr.
        #[arg(long, short = 'i')]
        include: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum DeploymentsCommand {
    /// List deployments, newest first.
    List { name: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum OrgsCommand {
    /// Create an org and print its first admin token.
    Create { name: String },
    /// The users who are members of an org, and their roles (admins of the org or of the
    /// platform).
    #[command(subcommand)]
    Members(crate::login::MembersCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token in your org and print it (shown once).
    Create {
        #[arg(long)]
        role: RoleArg,
        #[arg(long)]
        name: Option<String>,
    },
    /// List your org's tokens (never their secrets).
    List,
    /// Revoke a token.
    Revoke { id: String },
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    Developer,
    Invoker,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Developer => Role::Developer,
            RoleArg::Invoker => Role::Invoker,
        }
    }
}

/// The admin API path of `path` (`/functions` → `/fn/v1/_admin/functions`).
pub(crate) fn admin(path: &str) -> String {
    format!("/fn/v1/_admin{path}")
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn print_deployments(list: &[DeploymentInfo]) {
    crate::table::print(
        ["ID", "STATUS", "CREATED", "SHA256", "SIZE", "LIVE", "ERROR"],
        list.iter().map(|d| {
            [
                d.id.clone(),
                d.status.as_str().to_string(),
                d.created_at.clone(),
                short(&d.sha256).to_string(),
                human_bytes(d.size_bytes),
                if d.live { "*" } else { "" }.to_string(),
                d.error.as_deref().unwrap_or("").replace('\n', " "),
            ]
        }),
    );
}

pub async fn functions(cmd: FunctionsCommand, output: Output) -> anyhow::Result<()> {
    let cmd = match cmd {
        FunctionsCommand::Env(cmd) => return crate::env::env(cmd, output).await,
        FunctionsCommand::Policy(cmd) => return crate::env::policy(cmd, output).await,
        other => other,
    };
    let client = Client::connect().await?;
    let json = output == Output::Json;
    match cmd {
        FunctionsCommand::Env(_) | FunctionsCommand::Policy(_) => {}
        FunctionsCommand::Logs(mut args) => {
            args.json |= json;
            crate::logs::run(&client, &args).await?
        }
        FunctionsCommand::Create { name, runtime } => {
            let f: FunctionInfo = client
                .post(&admin("/functions"), &CreateFunction { name, runtime })
                .await?;
            if json {
                return print_json(&f);
            }
            println!(
                "Created function {} (runtime {}) in org {}",
                f.name, f.runtime, f.org
            );
        }
        FunctionsCommand::List => {
            let list: Vec<FunctionInfo> = client.get(&admin("/functions")).await?;
            if json {
                return print_json(&list);
            }
            crate::table::print(
                ["NAME", "RUNTIME", "LIVE", "CREATED"],
                list.into_iter().map(|f| {
                    [
                        f.name,
                        f.runtime.to_string(),
                        f.live_deployment_id.unwrap_or_else(|| "-".into()),
                        f.created_at,
                    ]
                }),
            );
        }
        FunctionsCommand::Get { name } => {
            let f: FunctionInfo = client.get(&admin(&format!("/functions/{name}"))).await?;
            if json {
                return print_json(&f);
            }
            println!(
                "name:    {}\norg:     {}\nruntime: {}\nlive:    {}\ncreated: {}",
                f.name,
                f.org,
                f.runtime,
                f.live_deployment_id.as_deref().unwrap_or("-"),
                f.created_at
            );
        }
        FunctionsCommand::Delete { name } => {
            client
                .send_empty(client.request(
                    reqwest::Method::DELETE,
                    &admin(&format!("/functions/{name}")),
                ))
                .await?;
            if json {
                return print_json(&serde_json::json!({"deleted": name}));
            }
            println!("Deleted function {name}");
        }
        FunctionsCommand::Deploy {
            name,
            dir,
            no_build,
            no_wait,
        } => deploy(&client, &name, &dir, no_build, no_wait, json).await?,
        FunctionsCommand::Deployments(DeploymentsCommand::List { name }) => {
            let list: Vec<DeploymentInfo> = client
                .get(&admin(&format!("/functions/{name}/deployments")))
                .await?;
            if json {
                return print_json(&list);
            }
            print_deployments(&list);
        }
        FunctionsCommand::Promote {
            name,
            deployment,
            force,
        } => {
            let d: DeploymentInfo = client
                .post(
                    &admin(&format!("/functions/{name}/promote")),
                    &PromoteRequest {
                        deployment_id: deployment,
                        force,
                    },
                )
                .await?;
            if json {
                return print_json(&d);
            }
            println!("Promoted {} to live for {name}", d.id);
            println!("Invoke: {}", invoke_url(&client, &name));
        }
        FunctionsCommand::Dev(args) => crate::watch::run(&client, &args, json).await?,
        FunctionsCommand::Rollback {
            name,
            to_deployment,
        } => {
            let to_deployment = match to_deployment {
                Some(id) => id,
                None => previous_deployment(&client, &name).await?,
            };
            let d: DeploymentInfo = client
                .post(
                    &admin(&format!("/functions/{name}/rollback")),
                    &RollbackRequest {
                        to_deployment_id: to_deployment,
                    },
                )
                .await?;
            if json {
                return print_json(&d);
            }
            println!("Rolled {name} back to {}", d.id);
        }
        FunctionsCommand::Invoke {
            name,
            json: body_json,
            data,
            method,
            path,
            headers,
            include,
        } => {
            invoke(
                &client, &name, body_json, data, method, &path, &headers, include,
            )
            .await?
        }
    }
    Ok(())
}

async fn deploy(
    client: &Client,
    name: &str,
    dir: &std::path::Path,
    no_build: bool,
    no_wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let d = upload(client, name, dir, no_build, !no_wait, true).await?;
    if json {
        print_json(&d)?;
    } else {
        match d.status {
            DeploymentStatus::Ready => {
                println!("Deployed {name}: {} is ready (promote it to go live)", d.id)
            }
            DeploymentStatus::Materializing => {
                println!("Uploaded {name}: {} is materializing", d.id)
            }
            DeploymentStatus::Failed => {}
        }
        if let Some(g) = d.call_graph.as_ref().filter(|g| g.depth > 1) {
            println!(
                "Calls: worst-case depth {} ({})",
                g.depth,
                g.path.join(" -> ")
            );
            if let Some(cycle) = &g.cycle {
                println!(
                    "Calls can loop: {} (stopped at functions.calls.max_depth)",
                    cycle.join(" -> ")
                );
            }
        }
    }
    if d.status == DeploymentStatus::Failed {
        bail!(
            "deployment {} failed: {}",
            d.id,
            d.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(())
}

/// The newest ready deployment older than the live one: what a rollback with no
/// `--to-deployment` goes back to.
async fn previous_deployment(client: &Client, name: &str) -> anyhow::Result<String> {
    let list: Vec<DeploymentInfo> = client
        .get(&admin(&format!("/functions/{name}/deployments")))
        .await?;
    let live = list
        .iter()
        .position(|d| d.live)
        .with_context(|| format!("{name} has no live deployment to roll back from"))?;
    list[live + 1..]
        .iter()
        .find(|d| d.status == DeploymentStatus::Ready)
        .map(|d| d.id.clone())
        .with_context(|| {
            format!(
                "{name} has no ready deployment older than the live one {}",
                list[live].id
            )
        })
}

/// The URL that invokes `name` on the client's server.
pub(crate) fn invoke_url(client: &Client, name: &str) -> String {
    format!("{}/fn/v1/{name}", client.url)
}

/// Builds (when the manifest says how, unless `no_build`), packs and uploads `dir`;
/// with `wait`, until the deployment is ready or failed. `progress` shows the upload bar
/// and the spinner.
pub(crate) async fn upload(
    client: &Client,
    name: &str,
    dir: &std::path::Path,
    no_build: bool,
    wait: bool,
    progress: bool,
) -> anyhow::Result<DeploymentInfo> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let manifest = pack::read_manifest(dir)?;
    if let Some(build) = manifest.as_ref().and_then(|m| m.build.as_ref())
        && !no_build
    {
        let (dir, command) = (dir.to_path_buf(), build.command.clone());
        tokio::task::spawn_blocking(move || pack::build(&dir, &command)).await??;
    }
    let (dir_owned, manifest_owned) = (dir.to_path_buf(), manifest.clone());
    let packed = tokio::task::spawn_blocking(move || {
        let files = pack::select(&dir_owned, manifest_owned.as_ref())?;
        pack::pack(&files)
    })
    .await??;
    eprintln!(
        "packed {} files: {} (sha256 {})",
        packed.entries,
        human_bytes(packed.size_bytes),
        short(&packed.sha256)
    );

    let bar = if progress {
        ProgressBar::new(packed.size_bytes)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let file = tokio::fs::File::open(packed.file.path())
        .await
        .context("opening the bundle")?;
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(c) = chunk {
            counter.inc(c.len() as u64);
        }
    });
    let req = client
        .request(
            reqwest::Method::POST,
            &admin(&format!("/functions/{name}/deployments")),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .header(reqwest::header::CONTENT_LENGTH, packed.size_bytes)
        .header(headers::BUNDLE_SHA256, &packed.sha256)
        .body(reqwest::Body::wrap_stream(stream));
    let uploaded: anyhow::Result<DeploymentInfo> = client.send(req).await;
    bar.finish_and_clear();
    let mut d = uploaded?;
    // Said once, at upload: later reads of the deployment do not carry it.
    let call_graph = d.call_graph.take();
    if wait {
        let spinner = if progress {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        spinner.set_message(format!("materializing {}", d.id));
        spinner.enable_steady_tick(Duration::from_millis(100));
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        while d.status == DeploymentStatus::Materializing {
            if std::time::Instant::now() > deadline {
                spinner.finish_and_clear();
                bail!(
                    "deployment {} is still materializing after 10 minutes",
                    d.id
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            d = client
                .get(&admin(&format!("/functions/{name}/deployments/{}", d.id)))
                .await?;
        }
        spinner.finish_and_clear();
    }
    d.call_graph = call_graph;
    Ok(d)
}

#[allow(clippy::too_many_arguments)]
async fn invoke(
    client: &Client,
    name: &str,
    json: Option<String>,
    data: Option<String>,
    method: Option<String>,
    path: &str,
    headers: &[String],
    include: bool,
) -> anyhow::Result<()> {
    let body: Option<Vec<u8>> = match (&json, data) {
        (Some(j), _) => {
            serde_json::from_str::<serde_json::Value>(j).context("--json is not valid JSON")?;
            Some(j.clone().into_bytes())
        }
        (None, Some(d)) => Some(match d.strip_prefix('@') {
            Some(file) => std::fs::read(file).with_context(|| format!("reading {file}"))?,
            None => d.into_bytes(),
        }),
        (None, None) => None,
    };
    let method = match method {
        Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .context("--method is not a valid HTTP method")?,
        None if body.is_some() => reqwest::Method::POST,
        None => reqwest::Method::GET,
    };
    let sub = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let sub = if sub == "/" { String::new() } else { sub };
    let mut req = client.request(method, &format!("/fn/v1/{name}{sub}"));
    if json.is_some() {
        req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
    }
    for h in headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not `Name: value`"))?;
        req = req.header(k.trim(), v.trim());
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = client.execute(req).await?;
    let status = resp.status();
    if include {
        eprintln!("HTTP {status}");
        for (k, v) in resp.headers() {
            eprintln!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
    }
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        // A platform error (the router's JSON error body) is one line; anything else is
        // the function's own answer and goes to stdout as it is.
        let platform = serde_json::from_str(&text)
            .ok()
            .and_then(|v| reactor_api::ApiError::from_body(&v));
        if let Some(err) = platform {
            return Err(err.into());
        }
        print!("{text}");
        std::io::stdout().flush()?;
        bail!("the function answered HTTP {status}");
    }
    let mut out = tokio::io::stdout();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the response body")?;
        out.write_all(&chunk).await?;
        out.flush().await?;
    }
    Ok(())
}

pub async fn orgs(cmd: OrgsCommand, output: Output) -> anyhow::Result<()> {
    if let OrgsCommand::Members(cmd) = cmd {
        return crate::login::members(cmd, output).await;
    }
    let client = Client::connect().await?;
    match cmd {
        OrgsCommand::Members(_) => {}
        OrgsCommand::Create { name } => {
            let o: OrgCreated = client.post(&admin("/orgs"), &CreateOrg { name }).await?;
            if output == Output::Json {
                return print_json(&o);
            }
            println!(
                "Created org {}. Its admin token (shown once):\n{}",
                o.name, o.admin_token.token
            );
        }
    }
    Ok(())
}

pub async fn tokens(cmd: TokensCommand, output: Output) -> anyhow::Result<()> {
    let client = Client::connect().await?;
    let json = output == Output::Json;
    match cmd {
        TokensCommand::Create { role, name } => {
            let t: TokenCreated = client
                .post(
                    &admin("/tokens"),
                    &CreateToken {
                        role: role.into(),
                        name,
                    },
                )
                .await?;
            if json {
                return print_json(&t);
            }
            println!(
                "Created {} token {} in org {} (shown once):\n{}",
                t.role.as_str(),
                t.id,
                t.org,
                t.token
            );
        }
        TokensCommand::List => {
            let list: Vec<TokenInfo> = client.get(&admin("/tokens")).await?;
            if json {
                return print_json(&list);
            }
            crate::table::print(
                ["ID", "ROLE", "NAME", "CREATED"],
                list.into_iter().map(|t| {
                    [
                        t.id,
                        t.role.as_str().to_string(),
                        t.name.unwrap_or_else(|| "-".into()),
                        t.created_at,
                    ]
                }),
            );
        }
        TokensCommand::Revoke { id } => {
            client
                .send_empty(
                    client.request(reqwest::Method::DELETE, &admin(&format!("/tokens/{id}"))),
                )
                .await?;
            if json {
                return print_json(&serde_json::json!({"revoked": id}));
            }
            println!("Revoked token {id}");
        }
    }
    Ok(())
}
