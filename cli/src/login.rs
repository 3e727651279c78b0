//! Signing in: `reactor login` keeps one sign-in per server in `sessions.json` beside the
//! credentials file (readable by its owner only), renews its access token when it is
//! about to expire, and `reactor logout` ends it on the server. `reactor users` and
//! `reactor orgs members` manage who may sign in and where.

use crate::Output;
use crate::client::{Client, api_error};
use crate::commands::{admin, print_json};
use crate::credentials;
use anyhow::{Context, bail};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reactor_api::model::Role;
use reactor_api::users::{
    CreateUser, MemberInfo, RevokeRefresh, SetMember, TokenGranted, TokenRequest, UserInfo,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

/// Renew an access token this long before it expires.
const RENEW_MARGIN_SECS: u64 = 60;

/// One server's sign-in.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    pub email: String,
    pub org: Option<String>,
    pub access_token: String,
    /// Seconds since the Unix epoch.
    pub access_expires_at: u64,
    pub refresh_token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("email", &self.email)
            .field("org", &self.org)
            .field("access_expires_at", &self.access_expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sessions {
    /// The server commands use when `REACTOR_URL` is not set.
    pub current: Option<String>,
    /// By server URL.
    #[serde(default)]
    pub servers: BTreeMap<String, Session>,
}

/// `sessions.json` beside the credentials file.
pub fn path() -> Option<PathBuf> {
    Some(credentials::path()?.with_file_name("sessions.json"))
}

pub fn load() -> Sessions {
    path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The sessions file's lock (an advisory lock on `sessions.lock` beside it), held while a
/// sign-in is read, renewed and written: two commands renewing at once would otherwise
/// both spend the same refresh token, and one of them lose the sign-in.
fn lock() -> anyhow::Result<std::fs::File> {
    let path = path()
        .context("no HOME, XDG_CONFIG_HOME or REACTOR_CREDENTIALS to keep sessions in")?
        .with_file_name("sessions.lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

fn save(s: &Sessions) -> anyhow::Result<PathBuf> {
    let path =
        path().context("no HOME, XDG_CONFIG_HOME or REACTOR_CREDENTIALS to keep sessions in")?;
    credentials::write_private(&path, &serde_json::to_string_pretty(s)?)?;
    Ok(path)
}

/// Makes no sign-in the current server (`reactor dev` does, as it writes the credentials
/// file: commands then go to it, not to a server signed in to earlier).
pub fn forget_current() -> anyhow::Result<()> {
    if load().current.is_none() {
        return Ok(());
    }
    let _lock = lock()?;
    let mut sessions = load();
    if sessions.current.take().is_some() {
        save(&sessions)?;
    }
    Ok(())
}

fn now() -> u64 {
    reactor_api::access::now_secs()
}

fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

async fn post_token(
    http: &reqwest::Client,
    url: &str,
    req: &TokenRequest,
) -> anyhow::Result<TokenGranted> {
    let resp = http
        .post(format!("{url}/fn/v1/_admin/auth/token"))
        .json(req)
        .send()
        .await
        .with_context(|| format!("cannot reach the Reactor server at {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(api_error(status, &text).into());
    }
    serde_json::from_str(&text).context("reading the token response")
}

/// The access token and org of the sign-in to `url`, renewed first when it is about to
/// expire (the renewal is saved). None: not signed in there.
pub async fn token_for(url: &str) -> anyhow::Result<Option<(String, Option<String>)>> {
    let url = normalize_url(url);
    if !load().servers.contains_key(&url) {
        return Ok(None);
    }
    // Read again under the lock: another command may have renewed it meanwhile.
    let _lock = lock()?;
    let mut sessions = load();
    let Some(session) = sessions.servers.get(&url).cloned() else {
        return Ok(None);
    };
    if session.access_expires_at > now() + RENEW_MARGIN_SECS {
        return Ok(Some((session.access_token, session.org)));
    }
    let granted = post_token(
        &reqwest::Client::new(),
        &url,
        &TokenRequest::RefreshToken {
            refresh_token: session.refresh_token.clone(),
        },
    )
    .await
    .with_context(|| {
        format!(
            "renewing the sign-in to {url} ({}): run `reactor login` again",
            session.email
        )
    })?;
    let renewed = Session {
        access_token: granted.access_token.clone(),
        access_expires_at: now() + granted.expires_in,
        refresh_token: granted.refresh_token,
        ..session
    };
    let org = renewed.org.clone();
    sessions.servers.insert(url, renewed);
    save(&sessions)?;
    Ok(Some((granted.access_token, org)))
}

/// A password from a hidden prompt, or the first line of stdin when it is no terminal.
fn read_password(prompt: &str, confirm: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let password = rpassword::prompt_password(prompt).context("reading the password")?;
        if confirm
            && rpassword::prompt_password("again: ").context("reading the password")? != password
        {
            bail!("the two passwords differ");
        }
        return Ok(password);
    }
    let mut text = String::new();
    stdin
        .lock()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .context("reading the password from stdin")?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The server (default: `$REACTOR_URL`, else the credentials file's, else
    /// http://127.0.0.1:8080).
    #[arg(long)]
    pub url: Option<String>,
    /// Asked for when not given.
    #[arg(long)]
    pub email: Option<String>,
    /// The org commands act in (default: your only org, else your first).
    #[arg(long)]
    pub org: Option<String>,
}

fn default_url() -> String {
    std::env::var("REACTOR_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| credentials::load().map(|c| c.url))
        .unwrap_or_else(|| "http://127.0.0.1:8080".into())
}

pub async fn login(args: LoginArgs, output: Output) -> anyhow::Result<()> {
    let url = normalize_url(&args.url.unwrap_or_else(default_url));
    let email = match args.email {
        Some(e) => e,
        None => {
            if !std::io::stdin().is_terminal() {
                bail!(
                    "--email is needed when stdin is not a terminal (the password is read from it)"
                );
            }
            eprint!("email: ");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim().to_string()
        }
    };
    let password = read_password(&format!("password for {email} on {url}: "), false)?;
    let granted = post_token(
        &reqwest::Client::new(),
        &url,
        &TokenRequest::Password {
            email: email.clone(),
            password,
        },
    )
    .await?;
    let orgs: Vec<&str> = granted.orgs.iter().map(|m| m.org.as_str()).collect();
    let picked = match args.org {
        Some(org) if !orgs.contains(&org.as_str()) => {
            Err(format!("{email} is not a member of org {org} on {url}"))
        }
        Some(org) => Ok(Some(org)),
        // Several: the user says which, rather than the CLI guessing.
        None if orgs.len() > 1 => Err(format!(
            "{email} is a member of several orgs ({}): pick one with --org",
            orgs.join(", ")
        )),
        None => Ok(orgs.first().map(|o| o.to_string())),
    };
    let org = match picked {
        Ok(org) => org,
        Err(message) => {
            // The sign-in just made is ended, not left behind.
            revoke(&url, &granted.refresh_token).await;
            bail!(message);
        }
    };
    let _lock = lock()?;
    let mut sessions = load();
    sessions.servers.insert(
        url.clone(),
        Session {
            email: granted.user.email.clone(),
            org: org.clone(),
            access_token: granted.access_token,
            access_expires_at: now() + granted.expires_in,
            refresh_token: granted.refresh_token,
        },
    );
    sessions.current = Some(url.clone());
    let path = save(&sessions)?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "url": url,
                "email": granted.user.email,
                "org": org,
                "orgs": granted.orgs,
                "sessions": path,
            }))?
        );
        return Ok(());
    }
    println!("Signed in to {url} as {}.", granted.user.email);
    match &org {
        Some(org) => println!("Org: {org} (pick another with --org or REACTOR_ORG)."),
        None => println!("You are a member of no org yet: ask an org admin to add you."),
    }
    for m in &granted.orgs {
        println!("  {} ({})", m.org, m.role.as_str());
    }
    println!(
        "Saved in {} (unset REACTOR_TOKEN for it to be used).",
        path.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The server (default: the one signed in to last).
    #[arg(long)]
    pub url: Option<String>,
}

pub async fn logout(args: LogoutArgs, output: Output) -> anyhow::Result<()> {
    let lock = lock()?;
    let mut sessions = load();
    let Some(url) = args
        .url
        .map(|u| normalize_url(&u))
        .or_else(|| sessions.current.clone())
    else {
        bail!("not signed in anywhere");
    };
    let Some(session) = sessions.servers.remove(&url) else {
        bail!("not signed in to {url}");
    };
    if sessions.current.as_deref() == Some(url.as_str()) {
        sessions.current = None;
    }
    save(&sessions)?;
    drop(lock);
    // Ended on the server too; a server that cannot be reached is said, not fatal.
    let ended = revoke(&url, &session.refresh_token).await;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"url": url, "email": session.email, "revoked": ended})
        );
    } else if ended {
        println!("Signed out of {url} ({}).", session.email);
    } else {
        println!(
            "Signed out of {url} ({}) here; the server could not be told (its sign-in ends when its refresh token expires).",
            session.email
        );
    }
    Ok(())
}

/// Ends the sign-in of `refresh_token` on the server at `url`; false when it could not be
/// told.
async fn revoke(url: &str, refresh_token: &str) -> bool {
    reqwest::Client::new()
        .post(format!("{url}/fn/v1/_admin/auth/revoke"))
        .json(&RevokeRefresh {
            refresh_token: refresh_token.to_string(),
        })
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn segment(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

#[derive(clap::Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user who signs in with EMAIL and a password (read from a hidden prompt,
    /// or from stdin): admins of the platform org.
    Create { email: String },
    /// List users and their orgs.
    List,
    /// Delete a user: their sign-ins end at once.
    Delete { email: String },
}

pub async fn users(cmd: UsersCommand, output: Output) -> anyhow::Result<()> {
    let client = Client::connect().await?;
    let json = output == Output::Json;
    match cmd {
        UsersCommand::Create { email } => {
            let password = read_password(&format!("password for {email}: "), true)?;
            let user: UserInfo = client
                .post(&admin("/users"), &CreateUser { email, password })
                .await?;
            if json {
                return print_json(&user);
            }
            println!(
                "Created user {} ({}). Add them to an org: reactor orgs members add ORG {} --role developer",
                user.email, user.id, user.email
            );
        }
        UsersCommand::List => {
            let list: Vec<UserInfo> = client.get(&admin("/users")).await?;
            if json {
                return print_json(&list);
            }
            crate::table::print(
                ["EMAIL", "ID", "ORGS", "CREATED"],
                list.into_iter().map(|u| {
                    let orgs = u
                        .orgs
                        .iter()
                        .map(|m| format!("{}:{}", m.org, m.role.as_str()))
                        .collect::<Vec<_>>()
                        .join(",");
                    [
                        u.email,
                        u.id,
                        if orgs.is_empty() { "-".into() } else { orgs },
                        u.created_at,
                    ]
                }),
            );
        }
        UsersCommand::Delete { email } => {
            client
                .send_empty(client.request(
                    reqwest::Method::DELETE,
                    &admin(&format!("/users/{}", segment(&email))),
                ))
                .await?;
            if json {
                return print_json(&serde_json::json!({"deleted": email}));
            }
            println!("Deleted user {email}.");
        }
    }
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum MembersCommand {
    /// Add a user to an org, or change their role there.
    Add {
        org: String,
        email: String,
        #[arg(long)]
        role: crate::commands::RoleArg,
    },
    /// Remove a user from an org.
    Remove { org: String, email: String },
    /// The members of an org.
    List { org: String },
}

pub async fn members(cmd: MembersCommand, output: Output) -> anyhow::Result<()> {
    let client = Client::connect().await?;
    let json = output == Output::Json;
    match cmd {
        MembersCommand::Add { org, email, role } => {
            let role: Role = role.into();
            let m: MemberInfo = client
                .send(
                    client
                        .request(
                            reqwest::Method::PUT,
                            &admin(&format!(
                                "/orgs/{}/members/{}",
                                segment(&org),
                                segment(&email)
                            )),
                        )
                        .json(&SetMember { role }),
                )
                .await?;
            if json {
                return print_json(&m);
            }
            println!("{} is {} of org {}.", m.email, m.role.as_str(), m.org);
        }
        MembersCommand::Remove { org, email } => {
            client
                .send_empty(client.request(
                    reqwest::Method::DELETE,
                    &admin(&format!(
                        "/orgs/{}/members/{}",
                        segment(&org),
                        segment(&email)
                    )),
                ))
                .await?;
            if json {
                return print_json(&serde_json::json!({"org": org, "removed": email}));
            }
            println!("Removed {email} from org {org}.");
        }
        MembersCommand::List { org } => {
            let list: Vec<MemberInfo> = client
                .get(&admin(&format!("/orgs/{}/members", segment(&org))))
                .await?;
            if json {
                return print_json(&list);
            }
            crate::table::print(
                ["EMAIL", "ROLE", "USER", "SINCE"],
                list.into_iter().map(|m| {
                    [
                        m.email,
                        m.role.as_str().to_string(),
                        m.user_id,
                        m.created_at,
                    ]
                }),
            );
        }
    }
    Ok(())
}
