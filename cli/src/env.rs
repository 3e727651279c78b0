//! `reactor functions env …`, `reactor functions policy …` and `reactor data-key …`.
//!
//! A secret's value never comes from the command line (it would stay in shell history and
//! in process listings): it is typed at a hidden prompt, or read from stdin when stdin is
//! not a terminal.

use crate::Output;
use crate::client::Client;
use anyhow::{Context, bail};
use reactor_api::config::ReactorConfig;
use reactor_api::model::{EnvVarInfo, SetEnv};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum EnvCommand {
    /// Set an env value; with --secret it is encrypted at rest and never shown again.
    /// Without VALUE it is read from a hidden prompt, or from stdin when piped.
    Set {
        name: String,
        key: String,
        value: Option<String>,
        #[arg(long)]
        secret: bool,
    },
    /// List a function's env keys (secret values are never shown).
    List { name: String },
    /// Remove an env key.
    Unset { name: String, key: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Show the function's invoke policy.
    Get { name: String },
    /// Set the function's invoke policy from a JSON file (`-` reads stdin).
    Set {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove the function's invoke policy (everything is allowed again).
    Clear { name: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum DataKeyCommand {
    /// Print a new random data key (base64, 32 bytes) for `functions.data_key`.
    Generate,
    /// Re-encrypt every secret under the configured `data_key`, decrypting with
    /// `data_keys_previous`. Run it with the server stopped, after setting the new key;
    /// then remove the old key from the configuration.
    Rotate {
        /// Configuration file (default: `$REACTOR_CONFIG`, else `./reactor.toml`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the metadata lives (overrides `functions.workdir`).
        #[arg(long)]
        workdir: Option<PathBuf>,
    },
}

fn admin(path: &str) -> String {
    format!("/fn/v1/_admin{path}")
}

/// A value from stdin (one trailing newline dropped) or a hidden prompt.
fn read_value(key: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let value = rpassword::prompt_password(format!("value for {key} (hidden): "))
            .context("reading the value from the terminal")?;
        return Ok(value);
    }
    let mut value = String::new();
    stdin
        .lock()
        .take(64 * 1024)
        .read_to_string(&mut value)
        .context("reading the value from stdin")?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}

pub async fn env(cmd: EnvCommand, output: Output) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let json = output == Output::Json;
    match cmd {
        EnvCommand::Set {
            name,
            key,
            value,
            secret,
        } => {
            let value = match value {
                Some(_) if secret => bail!(
                    "a secret's value is not taken from the command line (it would stay in shell history and process lists): omit VALUE and type it at the prompt, or pipe it on stdin"
                ),
                Some(v) => v,
                None => read_value(&key)?,
            };
            let info: EnvVarInfo = client
                .send(
                    client
                        .request(
                            reqwest::Method::PUT,
                            &admin(&format!("/functions/{name}/env/{key}")),
                        )
                        .json(&SetEnv { value, secret }),
                )
                .await?;
            if json {
                return print_json(&info);
            }
            println!(
                "Set {}{} for {name} (deploy to use it)",
                info.key,
                if info.secret { " (secret)" } else { "" }
            );
        }
        EnvCommand::List { name } => {
            let list: Vec<EnvVarInfo> = client
                .get(&admin(&format!("/functions/{name}/env")))
                .await?;
            if json {
                return print_json(&list);
            }
            println!("{:<32} {:<7} {:<25} VALUE", "KEY", "SECRET", "UPDATED");
            for e in list {
                println!(
                    "{:<32} {:<7} {:<25} {}",
                    e.key,
                    if e.secret { "yes" } else { "no" },
                    e.updated_at,
                    if e.secret {
                        "(hidden)"
                    } else {
                        e.value.as_deref().unwrap_or("")
                    }
                );
            }
        }
        EnvCommand::Unset { name, key } => {
            client
                .send_empty(client.request(
                    reqwest::Method::DELETE,
                    &admin(&format!("/functions/{name}/env/{key}")),
                ))
                .await?;
            if json {
                return print_json(&serde_json::json!({"unset": key}));
            }
            println!("Unset {key} for {name}");
        }
    }
    Ok(())
}

pub async fn policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let policy: serde_json::Value = match cmd {
        PolicyCommand::Get { name } => {
            client
                .get(&admin(&format!("/functions/{name}/policy")))
                .await?
        }
        PolicyCommand::Set { name, file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the policy from stdin")?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let body: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            client
                .send(
                    client
                        .request(
                            reqwest::Method::PUT,
                            &admin(&format!("/functions/{name}/policy")),
                        )
                        .json(&body),
                )
                .await?
        }
        PolicyCommand::Clear { name } => {
            client
                .send_empty(client.request(
                    reqwest::Method::DELETE,
                    &admin(&format!("/functions/{name}/policy")),
                ))
                .await?;
            println!("Cleared the invoke policy of {name}");
            return Ok(());
        }
    };
    print_json(&policy)
}

pub async fn data_key(cmd: DataKeyCommand) -> anyhow::Result<()> {
    match cmd {
        DataKeyCommand::Generate => {
            let (key, b64) = reactor_control_plane::secrets::DataKey::generate();
            eprintln!("new data key {} (keep it secret):", key.id());
            println!("{b64}");
        }
        DataKeyCommand::Rotate { config, workdir } => {
            let mut config = ReactorConfig::load(config.as_deref())?.functions;
            if let Some(w) = workdir {
                config.workdir = w;
            }
            let db = config
                .workdir
                .join(reactor_control_plane::backends::DATABASE_FILE);
            if config.database_url.is_none() && !db.exists() {
                bail!("no database at {}: is the workdir right?", db.display());
            }
            let keyring = reactor_control_plane::env::keyring_from_config(&config)
                .context("functions.data_key")?;
            let store = reactor_control_plane::backends::open_store(&config).await?;
            let report = reactor_control_plane::env::rotate(&store, &keyring)
                .await
                .context("re-encrypting secrets")?;
            println!(
                "Re-encrypted {} secret values under data key {} ({} already were).",
                report.resealed, report.key_id, report.current
            );
            if !config.data_keys_previous.is_empty() {
                println!(
                    "Every secret is now under {}: remove data_keys_previous from the configuration.",
                    report.key_id
                );
            }
        }
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
