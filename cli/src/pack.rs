//! Packing a function directory into a bundle (tar.gz): with a build step, the manifest
//! and the build output; otherwise the directory minus `.git` and `.reactorignore`.

use anyhow::{Context, bail};
use reactor_api::manifest::{MANIFEST_FILE, Manifest};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

pub struct Packed {
    pub file: tempfile::NamedTempFile,
    pub sha256: String,
    pub size_bytes: u64,
    pub entries: usize,
}

/// Reads `manifest.json` of `dir`, if any.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let manifest =
                Manifest::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            // The policy is checked here too, so a typo fails before a build and an upload.
            reactor_policy::Policy::from_manifest(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Some(manifest))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs the manifest's build command in `dir`, its output going to stderr.
pub fn build(dir: &Path, command: &str) -> anyhow::Result<()> {
    eprintln!("building: {command}");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running the build command {command:?}"))?;
    if !status.success() {
        bail!("the build command {command:?} failed ({status})");
    }
    Ok(())
}

/// The files to pack: (path on disk, path in the bundle).
pub fn select(dir: &Path, manifest: Option<&Manifest>) -> anyhow::Result<Vec<(PathBuf, String)>> {
    if let Some(build) = manifest.and_then(|m| m.build.as_ref()) {
        let output = dir.join(&build.output);
        if !output.is_file() {
            bail!(
                "the build output {} does not exist (run without --no-build?)",
                output.display()
            );
        }
        let entry = manifest
            .and_then(|m| m.entrypoint.clone())
            .unwrap_or_else(|| build.output.clone());
        return Ok(vec![
            (dir.join(MANIFEST_FILE), MANIFEST_FILE.to_string()),
            (output, entry.trim_start_matches("./").to_string()),
        ]);
    }
    let mut files = Vec::new();
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .add_custom_ignore_filename(".reactorignore")
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut left_out = Vec::new();
    for entry in walker {
        let entry = entry.context("walking the function directory")?;
        let ft = match entry.file_type() {
            Some(ft) => ft,
            None => continue,
        };
        if ft.is_dir() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .context("walking the function directory")?;
        let name = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        // Env files hold secrets: they go to `reactor functions env set --env-file`,
        // never into a bundle that the function (and anyone with the bundle) can read.
        let file = entry.file_name().to_string_lossy();
        if file == ".env" || file.starts_with(".env.") {
            left_out.push(name);
            continue;
        }
        files.push((entry.path().to_path_buf(), name));
    }
    if !left_out.is_empty() {
        eprintln!(
            "left out of the bundle: {} (set secrets with `reactor functions env set NAME --env-file FILE --secret`)",
            left_out.join(", ")
        );
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

/// Writes the selected files as a tar.gz and hashes it.
pub fn pack(files: &[(PathBuf, String)]) -> anyhow::Result<Packed> {
    let file = tempfile::NamedTempFile::new().context("creating a temporary bundle")?;
    {
        let gz = flate2::write::GzEncoder::new(file.reopen()?, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        for (path, name) in files {
            tar.append_path_with_name(path, name)
                .with_context(|| format!("adding {}", path.display()))?;
        }
        tar.into_inner()?.finish()?;
    }
    let mut hasher = Sha256::new();
    let mut reader = file.reopen()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(Packed {
        file,
        sha256: hex::encode(hasher.finalize()),
        size_bytes: size,
        entries: files.len(),
    })
}
