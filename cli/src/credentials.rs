//! The credentials file `reactor dev` writes and the CLI reads when `REACTOR_URL`,
//! `REACTOR_TOKEN` or `REACTOR_ORG` are not set: `$REACTOR_CREDENTIALS`, else
//! `$XDG_CONFIG_HOME/reactor/credentials.json`, else `~/.config/reactor/credentials.json`.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Credentials {
    pub url: String,
    pub token: String,
    pub org: String,
}

pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REACTOR_CREDENTIALS") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("reactor").join("credentials.json"))
}

pub fn load() -> Option<Credentials> {
    let text = std::fs::read_to_string(path()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes the file readable by its owner only.
pub fn save(c: &Credentials) -> anyhow::Result<PathBuf> {
    let path =
        path().context("no HOME, XDG_CONFIG_HOME or REACTOR_CREDENTIALS to keep credentials in")?;
    write_private(&path, &serde_json::to_string_pretty(c)?)?;
    Ok(path)
}

/// Writes `text` to `path` readable by its owner only, whole or not at all (a temporary
/// file renamed over it), creating its directory.
pub fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
