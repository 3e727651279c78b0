//! The `reactor` command. `reactor dev` wires the control plane, the data plane and the
//! WASM and Bun workers in one process on one port ([`dev`]); `reactor init` writes a new
//! function from a template ([`init`]); `reactor functions dev` redeploys a directory on
//! every save ([`watch`]); every other command is a client of the admin and invoke APIs
//! ([`client`]).
#![forbid(unsafe_code)]

pub mod client;
mod commands;
pub mod contracts;
pub mod credentials;
pub mod dev;
mod env;
pub mod init;
pub mod login;
pub mod logs;
pub mod pack;
mod table;
pub mod watch;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "reactor",
    version,
    about = "Reactor: serverless functions, self-hosted"
)]
pub struct Cli {
    /// Output format of client commands.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run everything in one process: control plane, router, WASM and Bun workers, with
    /// SQLite and local files under the workdir.
    Dev(dev::DevArgs),
    /// Write a new function directory from a template: manifest, handler, .reactorignore
    /// and a test.
    Init(init::InitArgs),
    /// Create, deploy, promote and invoke functions.
    #[command(subcommand)]
    Functions(commands::FunctionsCommand),
    /// Named, versioned contracts (`email.sender@1`): their schemas, the function bound
    /// to each, their OpenAPI documents.
    #[command(subcommand)]
    Contracts(contracts::ContractsCommand),
    /// Manage orgs (admins of the platform org).
    #[command(subcommand)]
    Orgs(commands::OrgsCommand),
    /// Manage the API tokens of your org (admins).
    #[command(subcommand)]
    Tokens(commands::TokensCommand),
    /// Sign in to a server with your email and password; the sign-in is kept per server
    /// and renewed as needed.
    Login(login::LoginArgs),
    /// End the sign-in to a server (here and on the server).
    Logout(login::LogoutArgs),
    /// Users who sign in with an email and a password (admins of the platform org).
    #[command(subcommand)]
    Users(login::UsersCommand),
    /// The key that encrypts secrets at rest: generate one, rotate to a new one.
    #[command(subcommand, name = "data-key")]
    DataKey(env::DataKeyCommand),
    /// Certificates for mutual TLS between the split services (`[internal] tls`).
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Print a shell completion script: `reactor completion bash > /etc/bash_completion.d/reactor`,
    /// `reactor completion zsh > "${fpath[1]}/_reactor"`, `reactor completion fish >
    /// ~/.config/fish/completions/reactor.fish`.
    Completion { shell: clap_complete::Shell },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Init(args) => init::run(&args, cli.output),
        Command::Functions(cmd) => commands::functions(cmd, cli.output).await,
        Command::Contracts(cmd) => contracts::run(cmd, cli.output).await,
        Command::Orgs(cmd) => commands::orgs(cmd, cli.output).await,
        Command::Tokens(cmd) => commands::tokens(cmd, cli.output).await,
        Command::Login(args) => login::login(args, cli.output).await,
        Command::Logout(args) => login::logout(args, cli.output).await,
        Command::Users(cmd) => login::users(cmd, cli.output).await,
        Command::DataKey(cmd) => env::data_key(cmd, cli.output).await,
        Command::Tls(TlsCommand::Init { dir }) => tls_init(&dir, cli.output),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "reactor", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// An error as a person reads it: `code: message`, then the details the server sent
/// (request id, deployment id, ...) and a hint on what to do, one per line.
pub fn describe(e: &anyhow::Error) -> String {
    let Some(api) = e.downcast_ref::<reactor_api::ApiError>() else {
        return one_line(e);
    };
    let mut out = api.to_string();
    let mut details: Vec<_> = api.details.iter().collect();
    // The request id last: it is what to quote when asking for help.
    details.sort_by_key(|(k, _)| (k.as_str() == "request_id", k.as_str()));
    for (key, value) in details {
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(&format!("\n  {key}: {value}"));
    }
    if let Some(hint) = hint(api.code) {
        out.push_str(&format!("\n  hint: {hint}"));
    }
    out
}

/// What to try next, for the errors a person can act on.
fn hint(code: reactor_api::ErrorCode) -> Option<&'static str> {
    use reactor_api::ErrorCode as C;
    Some(match code {
        C::Unauthorized => {
            "the token is not valid on this server: use the export line `reactor dev` printed, \
             or unset REACTOR_TOKEN to use the credentials file it wrote"
        }
        C::Forbidden => "your token's role cannot do this (see `reactor tokens list`)",
        C::FunctionNotFound => {
            "create it first: `reactor functions create NAME --runtime bun|wasm` (or check REACTOR_ORG)"
        }
        C::DeploymentNotReady => {
            "deploy and promote it: `reactor functions deploy NAME --dir DIR`, then `reactor functions promote NAME`"
        }
        C::ManifestInvalid => {
            "fix manifest.json (every env_keys/secret_keys entry must be set with `reactor functions env set`)"
        }
        C::FunctionCrashed => "see what it printed: `reactor functions logs NAME`",
        C::FunctionTimeout => {
            "raise limits.timeout_ms in manifest.json, or make the handler answer sooner"
        }
        C::RuntimeDisabled => {
            "that runtime is off on this server: see what `reactor dev` printed when it started"
        }
        C::TooManyRequests => {
            "the concurrency cap was hit: retry, or raise concurrency.max_concurrency"
        }
        _ => return None,
    })
}

/// An error on one line: the API's `code: message` when it is one, else the context chain.
pub fn one_line(e: &anyhow::Error) -> String {
    if let Some(api) = e.downcast_ref::<reactor_api::ApiError>() {
        return api.to_string();
    }
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Write a cluster CA and the control plane's, routers' and workers' certificates into
    /// DIR, keeping every file already there (run it again: nothing changes). Give each
    /// service `ca.pem` and its role's pair; keep `ca.key` off the services' hosts.
    Init {
        /// Where to write (`internal.tls_dir`).
        #[arg(long, default_value = "tls")]
        dir: std::path::PathBuf,
    },
}

fn tls_init(dir: &std::path::Path, output: Output) -> anyhow::Result<()> {
    let done = reactor_service::tls::generate(dir)?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dir": dir,
                "created": done.created,
                "kept": done.kept,
            }))?
        );
        return Ok(());
    }
    for p in &done.created {
        println!("created {}", p.display());
    }
    for p in &done.kept {
        println!("kept    {}", p.display());
    }
    if done.created.is_empty() {
        println!("nothing to do: every file was already there");
    } else {
        println!(
            "set internal.tls = true and internal.tls_dir = {:?} (REACTOR_INTERNAL_TLS=1 REACTOR_INTERNAL_TLS_DIR) on every service",
            dir.display().to_string()
        );
    }
    Ok(())
}
