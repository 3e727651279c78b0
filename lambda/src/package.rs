//! The deployment package: what a Lambda function of Reactor's runs.
//!
//! ```text
//! bootstrap             starts Bun on the harness (the provided.al2023 entry point; also
//!                       the handler that LWA's exec wrapper runs)
//! reactor-harness.js    worker-bun's harness, in its "lambda" mode
//! reactor-lambda.json   the harness's configuration: the entrypoint, the function's name
//! bundle/...            the bundle as uploaded
//! bin/bun               Bun itself, when no Bun layer is configured (the seed's four
//!                       `[functions.lambda]` keys name none)
//! ```
//!
//! The Lambda Web Adapter (a layer) starts with the function, waits until the harness
//! listens on `AWS_LWA_PORT` and turns each Function URL request into an HTTP request to it.

use crate::LambdaError;
use std::io::Write;
use std::path::Path;
use zip::write::SimpleFileOptions;

/// Finds Bun in the Bun layer and runs the harness; the port comes from LWA's variables.
pub const BOOTSTRAP: &str = r#"#!/bin/sh
# Reactor: runs the function's harness under Bun, for the Lambda Web Adapter to call.
set -eu
ROOT=$(cd "$(dirname "$0")" && pwd)
BUN=""
for candidate in "${REACTOR_BUN:-}" "$ROOT/bin/bun" /opt/bun /opt/bin/bun "$(command -v bun 2>/dev/null || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then BUN=$candidate; break; fi
done
if [ -z "$BUN" ]; then
  echo "reactor: no Bun binary: neither packed (bin/bun) nor in the layer functions.lambda.bun_layer_arn (/opt/bun or /opt/bin/bun)" >&2
  exit 127
fi
export HOME="${HOME:-/tmp}"
export BUN_RUNTIME_TRANSPILER_CACHE_PATH=0
cd "$ROOT"
exec "$BUN" "$ROOT/reactor-harness.js" < "$ROOT/reactor-lambda.json"
"#;

/// Zips `bundle_dir` under `bundle/` with the bootstrap and the harness into `dest`, and
/// `bun` as `bin/bun` when given. Returns the package's size in bytes. Blocking: run it
/// off the async threads.
pub fn build(
    bundle_dir: &Path,
    entrypoint: &str,
    function: &str,
    bun: Option<&Path>,
    dest: &Path,
) -> Result<u64, LambdaError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        LambdaError::Package(format!("building the Lambda package: {what}: {e}"))
    };
    let file = std::fs::File::create(dest).map_err(|e| failed("creating the zip", &e))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let deflated = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    let executable = deflated.unix_permissions(0o755);
    let config = serde_json::json!({
        "mode": "lambda",
        "entry": format!("./bundle/{entrypoint}"),
        "name": function,
    })
    .to_string();
    let fixed: [(&str, &[u8], SimpleFileOptions); 3] = [
        ("bootstrap", BOOTSTRAP.as_bytes(), executable),
        (
            "reactor-harness.js",
            reactor_bun_dist::HARNESS.as_bytes(),
            deflated,
        ),
        ("reactor-lambda.json", config.as_bytes(), deflated),
    ];
    for (name, bytes, options) in fixed {
        zip.start_file(name, options)
            .and_then(|()| zip.write_all(bytes).map_err(Into::into))
            .map_err(|e| failed(name, &e))?;
    }
    add_dir(&mut zip, bundle_dir, "bundle", deflated).map_err(|e| failed("the bundle", &e))?;
    if let Some(bun) = bun {
        zip.start_file("bin/bun", executable)
            .map_err(|e| failed("bin/bun", &e))?;
        let mut f = std::fs::File::open(bun).map_err(|e| failed("reading Bun", &e))?;
        std::io::copy(&mut f, &mut zip).map_err(|e| failed("bin/bun", &e))?;
    }
    let out = zip.finish().map_err(|e| failed("finishing the zip", &e))?;
    let file = out
        .into_inner()
        .map_err(|e| failed("writing the zip", &e.into_error()))?;
    file.sync_all().map_err(|e| failed("writing the zip", &e))?;
    Ok(file.metadata().map_err(|e| failed("the zip", &e))?.len())
}

/// Adds the regular files under `dir` (sorted, so a package is reproducible) as `prefix/...`.
fn add_dir<W: Write + std::io::Seek>(
    zip: &mut zip::ZipWriter<W>,
    dir: &Path,
    prefix: &str,
    options: SimpleFileOptions,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| format!("{:?} is not a UTF-8 name", entry.path()))?;
        let path = format!("{prefix}/{name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            zip.add_directory(path.as_str(), options.unix_permissions(0o755))?;
            add_dir(zip, &entry.path(), &path, options)?;
        } else if kind.is_file() {
            let mode = file_mode(&entry.metadata()?);
            zip.start_file(path.as_str(), options.unix_permissions(mode))?;
            let mut f = std::fs::File::open(entry.path())?;
            std::io::copy(&mut f, zip)?;
        }
        // Symbolic links (the unpacker keeps those that stay inside the bundle,
        // storage/src/bundle.rs) are not packed: a function that needs one breaks on Lambda.
    }
    Ok(())
}

#[cfg(unix)]
fn file_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[cfg(not(unix))]
fn file_mode(_meta: &std::fs::Metadata) -> u32 {
    0o644
}

/// The Lambda architecture an ELF binary is built for (`x86_64` or `arm64`).
pub fn elf_architecture(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    match u16::from_le_bytes([header[18], header[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("arm64"),
        _ => None,
    }
}

/// The Bun binary to pack for `architecture`, checked to be one (a Bun built for another
/// machine would only fail at the first invocation, in AWS).
pub fn bun_to_pack(
    configured: Option<&Path>,
    architecture: &str,
) -> Result<std::path::PathBuf, LambdaError> {
    let bun = reactor_bun_dist::find_bun(configured).map_err(|e| {
        LambdaError::Package(format!(
            "no functions.lambda.bun_layer_arn, so Bun is packed with the function, but {e}"
        ))
    })?;
    let mut header = [0u8; 20];
    let read =
        std::fs::File::open(&bun).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header));
    let found = read.ok().and_then(|()| elf_architecture(&header));
    if found != Some(architecture) {
        return Err(LambdaError::Package(format!(
            "{} is not a Linux {architecture} binary (found {}): set functions.lambda.bun_layer_arn to a Bun layer, \
             or functions.bun_path to Bun for {architecture} (npm package @oven/bun-linux-{})",
            bun.display(),
            found.unwrap_or("another format"),
            if architecture == "arm64" {
                "aarch64"
            } else {
                "x64"
            }
        )));
    }
    Ok(bun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_has_bootstrap_harness_and_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("b");
        std::fs::create_dir_all(bundle.join("code")).expect("mkdir");
        std::fs::write(bundle.join("code/index.ts"), "export default {}").expect("write");
        std::fs::write(bundle.join("reactor.json"), "{}").expect("write");
        let dest = dir.path().join("p.zip");
        let size = build(&bundle, "code/index.ts", "hello", None, &dest).expect("package");
        assert!(size > 0);
        let mut archive =
            zip::ZipArchive::new(std::fs::File::open(&dest).expect("open")).expect("zip");
        let names: Vec<String> = archive
            .file_names()
            .map(|n| n.expect("a name").to_string())
            .collect();
        for want in [
            "bootstrap",
            "reactor-harness.js",
            "reactor-lambda.json",
            "bundle/code/index.ts",
            "bundle/reactor.json",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let boot = archive.by_name("bootstrap").expect("bootstrap");
        assert_eq!(boot.unix_mode().map(|m| m & 0o777), Some(0o755));
        drop(boot);
        let mut config = String::new();
        std::io::Read::read_to_string(
            &mut archive.by_name("reactor-lambda.json").expect("config"),
            &mut config,
        )
        .expect("read");
        assert!(config.contains("./bundle/code/index.ts"), "{config}");
        assert!(
            !names.iter().any(|n| n == "bin/bun"),
            "no Bun without asking"
        );

        // Without a Bun layer, Bun itself is packed, executable, where bootstrap looks.
        let fake_bun = dir.path().join("bun");
        std::fs::write(&fake_bun, b"\x7fELF fake bun").expect("write");
        build(&bundle, "code/index.ts", "hello", Some(&fake_bun), &dest).expect("package");
        let mut archive =
            zip::ZipArchive::new(std::fs::File::open(&dest).expect("open")).expect("zip");
        let bun = archive.by_name("bin/bun").expect("bin/bun packed");
        assert_eq!(bun.unix_mode().map(|m| m & 0o777), Some(0o755));
        assert!(BOOTSTRAP.contains("$ROOT/bin/bun"));
    }

    #[test]
    fn architecture_of_an_elf_binary() {
        let mut header = vec![0u8; 20];
        header[..4].copy_from_slice(b"\x7fELF");
        header[18] = 0x3e;
        assert_eq!(elf_architecture(&header), Some("x86_64"));
        header[18] = 0xb7;
        assert_eq!(elf_architecture(&header), Some("arm64"));
        assert_eq!(elf_architecture(b"#!/bin/sh"), None);
    }
}
