//! `reactor contracts`: named, versioned contracts of the org (`email.sender@1`), the
//! function bound to each, and their OpenAPI 3.1 documents.

use crate::Output;
use crate::client::Client;
use anyhow::Context;
use reactor_api::contract::{BindContract, ContractInfo, CreateContract};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum ContractsCommand {
    /// Create a contract version from JSON Schema files (2020-12). A version never
    /// changes: a new schema is a new version (`email.sender@2`).
    Create {
        /// `NAME@VERSION`, like `email.sender@1`.
        name: String,
        /// The schema of the request body (a JSON file).
        #[arg(long)]
        input: Option<PathBuf>,
        /// The schema of a 2xx answer's body (a JSON file).
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long)]
        description: Option<String>,
        /// Validate the answers of calls made through the contract (502 invalid_output).
        #[arg(long)]
        validate_output: bool,
    },
    /// List the org's contracts and the functions bound to them.
    List,
    /// Show a contract with its schemas.
    Get { name: String },
    /// Delete an unbound contract.
    Delete { name: String },
    /// Bind a contract to the function that implements it; its callers reach that
    /// function from the next request on.
    Bind {
        contract: String,
        function: String,
        /// Bind even when the function's live deployment breaks the contract's schemas.
        #[arg(long)]
        force: bool,
    },
    /// Unbind a contract: its callers get function_not_found until it is bound again.
    Unbind { contract: String },
    /// Print a contract's OpenAPI 3.1 document.
    Openapi { name: String },
}

fn path(rest: &str) -> String {
    format!("/fn/v1/_admin/contracts{rest}")
}

fn schema(file: &Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

pub async fn run(cmd: ContractsCommand, output: Output) -> anyhow::Result<()> {
    let client = Client::connect().await?;
    let json = output == Output::Json;
    let print = |c: &ContractInfo| -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(c)?);
        } else {
            println!(
                "{}: {}",
                c.name,
                c.function
                    .as_deref()
                    .map(|f| format!("bound to {f}"))
                    .unwrap_or_else(|| "unbound".into())
            );
        }
        Ok(())
    };
    match cmd {
        ContractsCommand::Create {
            name,
            input,
            output,
            description,
            validate_output,
        } => {
            let req = CreateContract {
                name,
                description,
                input: input.as_deref().map(schema).transpose()?,
                output: output.as_deref().map(schema).transpose()?,
                validate_output,
            };
            let c: ContractInfo = client.post(&path(""), &req).await?;
            if json {
                return print(&c);
            }
            println!("Created contract {} in org {}", c.name, c.org);
            println!("Bind it: reactor contracts bind {} FUNCTION", c.name);
        }
        ContractsCommand::List => {
            let list: Vec<ContractInfo> = client.get(&path("")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            crate::table::print(
                ["CONTRACT", "FUNCTION", "INPUT", "OUTPUT", "CREATED"],
                list.into_iter().map(|c| {
                    let has = |s: &Option<serde_json::Value>| {
                        if s.is_some() { "schema" } else { "-" }.to_string()
                    };
                    [
                        c.name.clone(),
                        c.function.clone().unwrap_or_else(|| "-".into()),
                        has(&c.input),
                        if c.validate_output {
                            "validated".into()
                        } else {
                            has(&c.output)
                        },
                        c.created_at.clone(),
                    ]
                }),
            );
        }
        ContractsCommand::Get { name } => {
            let c: ContractInfo = client.get(&path(&format!("/{name}"))).await?;
            println!("{}", serde_json::to_string_pretty(&c)?);
        }
        ContractsCommand::Delete { name } => {
            client
                .send_empty(client.request(reqwest::Method::DELETE, &path(&format!("/{name}"))))
                .await?;
            if json {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                println!("Deleted contract {name}");
            }
        }
        ContractsCommand::Bind {
            contract,
            function,
            force,
        } => {
            let c: ContractInfo = client
                .send(
                    client
                        .request(reqwest::Method::PUT, &path(&format!("/{contract}/binding")))
                        .json(&BindContract { function, force }),
                )
                .await?;
            print(&c)?;
        }
        ContractsCommand::Unbind { contract } => {
            let c: ContractInfo = client
                .send(client.request(
                    reqwest::Method::DELETE,
                    &path(&format!("/{contract}/binding")),
                ))
                .await?;
            print(&c)?;
        }
        ContractsCommand::Openapi { name } => {
            let doc: serde_json::Value =
                client.get(&path(&format!("/{name}/openapi.json"))).await?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}
