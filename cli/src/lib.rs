//! The `reactor` command. `reactor dev` wires the control plane, the data plane and the
//! WASM worker in one process on one port ([`dev`]); every other command is a client of
//! the admin and invoke APIs ([`client`]).
#![forbid(unsafe_code)]

pub mod client;
mod commands;
pub mod credentials;
pub mod dev;
mod env;
pub mod logs;
pub mod pack;

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
    /// Run everything in one process: control plane, router and WASM worker, with SQLite
    /// and local files under the workdir.
    Dev(dev::DevArgs),
    /// Create, deploy, promote and invoke functions.
    #[command(subcommand)]
    Functions(commands::FunctionsCommand),
    /// Manage orgs (admins of the platform org).
    #[command(subcommand)]
    Orgs(commands::OrgsCommand),
    /// Manage the API tokens of your org (admins).
    #[command(subcommand)]
    Tokens(commands::TokensCommand),
    /// The key that encrypts secrets at rest: generate one, rotate to a new one.
    #[command(subcommand, name = "data-key")]
    DataKey(env::DataKeyCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Functions(cmd) => commands::functions(cmd, cli.output).await,
        Command::Orgs(cmd) => commands::orgs(cmd, cli.output).await,
        Command::Tokens(cmd) => commands::tokens(cmd, cli.output).await,
        Command::DataKey(cmd) => env::data_key(cmd).await,
    }
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
