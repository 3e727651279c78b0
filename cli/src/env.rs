//! `reactor functions env …`, `reactor functions policy …` and `reactor data-key …`.
//!
//! A secret's value never comes from the command line (it would stay in shell history and
//! in process listings): it is typed at a hidden prompt, or read from stdin when stdin is
//! not a terminal.

use crate::Output;
use crate::client::Client;
use crate::commands::{admin, print_json};
use anyhow::{Context, bail};
use reactor_api::config::ReactorConfig;
use reactor_api::model::{EnvVarInfo, SetEnv};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum EnvCommand {
    /// Set an env value; with --secret it is encrypted at rest and never shown again.
    /// Without VALUE it is read from a hidden prompt, or from stdin when piped. With
    /// --env-file, every `KEY=VALUE` line of a dotenv file at once.
    Set {
        name: String,
        #[arg(required_unless_present = "env_file")]
        key: Option<String>,
        #[arg(conflicts_with = "env_file")]
        value: Option<String>,
        #[arg(long)]
        secret: bool,
        /// A dotenv file (`KEY=VALUE` lines, `#` comments, optional `export` and quotes).
        #[arg(long, conflicts_with = "key")]
        env_file: Option<PathBuf>,
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
    let client = Client::connect().await?;
    let json = output == Output::Json;
    match cmd {
        EnvCommand::Set {
            name,
            env_file: Some(file),
            secret,
            ..
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let pairs = parse_dotenv(&text).with_context(|| format!("{}", file.display()))?;
            if pairs.is_empty() {
                bail!("{} has no KEY=VALUE lines", file.display());
            }
            let mut set = Vec::new();
            for (key, value) in pairs {
                let info: EnvVarInfo = client
                    .send(
                        client
                            .request(
                                reqwest::Method::PUT,
                                &admin(&format!("/functions/{name}/env/{key}")),
                            )
                            .json(&SetEnv { value, secret }),
                    )
                    .await
                    .with_context(|| format!("setting {key}"))?;
                set.push(info);
            }
            if json {
                return print_json(&set);
            }
            println!(
                "Set {} {} for {name} from {} (deploy to use them): {}",
                set.len(),
                if secret { "secrets" } else { "values" },
                file.display(),
                set.iter()
                    .map(|i| i.key.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        EnvCommand::Set {
            name,
            key,
            value,
            secret,
            env_file: None,
        } => {
            let key = key.context("KEY is required without --env-file")?;
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
            crate::table::print(
                ["KEY", "SECRET", "UPDATED", "VALUE"],
                list.into_iter().map(|e| {
                    let value = if e.secret {
                        "(hidden)".to_string()
                    } else {
                        e.value.unwrap_or_default()
                    };
                    [
                        e.key,
                        if e.secret { "yes" } else { "no" }.to_string(),
                        e.updated_at,
                        value,
                    ]
                }),
            );
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

/// The `KEY=VALUE` pairs of a dotenv file, in order: blank lines and `#` comments are
/// skipped, `export ` is allowed, values may be quoted ('...' as is, "..." with `\n`,
/// `\"` and `\\` escapes); an unquoted value ends at ` #`.
pub fn parse_dotenv(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (key, raw) = line
            .split_once('=')
            .with_context(|| format!("line {}: expected KEY=VALUE", n + 1))?;
        let key = key.trim();
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            // The text is not echoed: a pasted secret may be what is on this line.
            bail!(
                "line {}: the text before '=' is not an env key (letters, digits and _)",
                n + 1
            );
        }
        let raw = raw.trim();
        let (value, rest) = if let Some(quoted) = raw.strip_prefix('"') {
            // Up to the first quote not escaped, with \n, \t, \" and \\ understood.
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next().map(|(_, c)| c) {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(other) => value.push(other),
                        None => value.push('\\'),
                    },
                    c => value.push(c),
                }
            }
            let end = end.with_context(|| format!("line {}: unterminated \" quote", n + 1))?;
            (value, &quoted[end..])
        } else if let Some(quoted) = raw.strip_prefix('\'') {
            let end = quoted
                .find('\'')
                .with_context(|| format!("line {}: unterminated ' quote", n + 1))?;
            (quoted[..end].to_string(), &quoted[end + 1..])
        } else {
            // Unquoted: up to a `#` that follows whitespace (a comment).
            let end = raw
                .char_indices()
                .find(|&(i, c)| c == '#' && i > 0 && raw[..i].ends_with(char::is_whitespace))
                .map_or(raw.len(), |(i, _)| i);
            (raw[..end].trim_end().to_string(), "")
        };
        let rest = rest.trim_start();
        if !rest.is_empty() && !rest.starts_with('#') {
            bail!("line {}: unexpected text after the closing quote", n + 1);
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

pub async fn policy(cmd: PolicyCommand, output: crate::Output) -> anyhow::Result<()> {
    let client = Client::connect().await?;
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
            if output == crate::Output::Json {
                return print_json(&serde_json::json!({"cleared": name}));
            }
            println!("Cleared the invoke policy of {name}");
            return Ok(());
        }
    };
    print_json(&policy)
}

pub async fn data_key(cmd: DataKeyCommand, output: crate::Output) -> anyhow::Result<()> {
    let json = output == crate::Output::Json;
    match cmd {
        DataKeyCommand::Generate => {
            let (key, b64) = reactor_control_plane::secrets::DataKey::generate();
            if json {
                return print_json(&serde_json::json!({"id": key.id(), "data_key": b64}));
            }
            eprintln!("new data key {} (keep it secret):", key.id());
            println!("{b64}");
        }
        DataKeyCommand::Rotate { config, workdir } => {
            let mut config = ReactorConfig::load(config.as_deref())?.functions;
            if let Some(w) = workdir {
                config.workdir = reactor_api::config::absolute(&w);
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
            if json {
                return print_json(&serde_json::json!({
                    "key_id": report.key_id,
                    "resealed": report.resealed,
                    "current": report.current,
                }));
            }
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

#[cfg(test)]
mod tests {
    use super::parse_dotenv;

    #[test]
    fn dotenv_lines_quotes_and_comments() {
        let text = "# c\n\nA=1\nexport B = two words # note\nC=\"x \\\"y\\\" \\n\" # say \"hi\"\nD='a # b' # c\nE=\nF=x#y\n";
        let got = parse_dotenv(text).expect("parses");
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x \"y\" \n"),
            ("D", "a # b"),
            ("E", ""),
            ("F", "x#y"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        for (bad, why) in [
            ("K=\"abc\\\"", "unterminated"),
            ("K='abc", "unterminated"),
            ("K=\"a\" b", "after the closing quote"),
            ("sk_live_123", "expected KEY=VALUE"),
            ("my-key=1", "not an env key"),
        ] {
            let err = parse_dotenv(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("sk_live") && !err.contains("my-key"), "{err}");
        }
    }
}
