//! The deployment package: what a Lambda function of Reactor's runs.
//!
//! ```text
//! bootstrap             starts Bun on the harness (the provided.al2023 entry point; also
//!                       the handler that LWA's exec wrapper runs)
//! reactor-harness.js    worker-bun's harness, in its "lambda" mode
//! reactor-lambda.json   the harness's configuration: the entrypoint, the function's name
//! bundle/...            the bundle as uploaded
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
for candidate in "${REACTOR_BUN:-}" /opt/bun /opt/bin/bun "$(command -v bun 2>/dev/null || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then BUN=$candidate; break; fi
done
if [ -z "$BUN" ]; then
  echo "reactor: no Bun binary: the layer functions.lambda.bun_layer_arn must provide /opt/bun or /opt/bin/bun" >&2
  exit 127
fi
export HOME="${HOME:-/tmp}"
export BUN_RUNTIME_TRANSPILER_CACHE_PATH=0
cd "$ROOT"
exec "$BUN" "$ROOT/reactor-harness.js" < "$ROOT/reactor-lambda.json"
"#;

/// Zips `bundle_dir` under `bundle/` with the bootstrap and the harness into `dest`.
/// Returns the package's size in bytes. Blocking: run it off the async threads.
pub fn build(
    bundle_dir: &Path,
    entrypoint: &str,
    function: &str,
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
            reactor_worker_bun::HARNESS.as_bytes(),
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
        // Symbolic links are not unpacked from bundles (control-plane/src/bundle.rs).
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
        let size = build(&bundle, "code/index.ts", "hello", &dest).expect("package");
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
    }
}
