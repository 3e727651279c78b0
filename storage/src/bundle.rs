//! Bundles: receiving an upload (streamed to a file while hashed and counted) and
//! unpacking it safely. An archive is refused, with the entry named, when it has an
//! absolute path, a `..` component, a link leaving the bundle, a device or FIFO, more
//! than [`MAX_ENTRIES`] entries or more than [`MAX_EXPANDED_BYTES`] once expanded.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reactor_api::{ApiError, ErrorCode};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncWriteExt;

pub const MAX_ENTRIES: usize = 10_000;
pub const MAX_EXPANDED_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is larger than bundle_max_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("reading the upload: {0}")]
    Upload(String),
    #[error("the bundle is not a valid tar.gz archive: {0}")]
    Archive(String),
    #[error("unsafe archive entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("the bundle has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("the bundle expands to more than {MAX_EXPANDED_BYTES} bytes")]
    TooLargeExpanded,
    #[error("bundle i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The public error of a refused bundle (mapped here, once, for every service).
impl From<BundleError> for ApiError {
    fn from(e: BundleError) -> Self {
        match &e {
            BundleError::TooLarge { limit } => {
                ApiError::new(ErrorCode::BundleTooLarge, e.to_string())
                    .with_detail("bundle_max_bytes", *limit)
            }
            BundleError::Upload(_) => ApiError::new(ErrorCode::InvalidInput, e.to_string()),
            BundleError::Io(_) => {
                tracing::error!(error = %e, "bundle i/o");
                ApiError::internal(e.to_string())
            }
            BundleError::Unsafe { entry, .. } => {
                ApiError::new(ErrorCode::ManifestInvalid, e.to_string())
                    .with_detail("entry", entry.clone())
            }
            _ => ApiError::new(ErrorCode::ManifestInvalid, e.to_string()),
        }
    }
}

/// A received upload: where it was written, its SHA-256 and size.
pub struct Received {
    pub sha256: String,
    pub size_bytes: u64,
}

/// Writes `body` to `dest`, hashing it and refusing it past `limit` bytes.
pub async fn receive<S, E>(mut body: S, dest: &Path, limit: u64) -> Result<Received, BundleError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut file = tokio::fs::File::create(dest).await?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| BundleError::Upload(e.to_string()))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(BundleError::TooLarge { limit });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(Received {
        sha256: hex::encode(hasher.finalize()),
        size_bytes: size,
    })
}

/// The SHA-256 (hex) of the file at `path`, read in chunks. Blocking.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What an unpacked bundle holds.
#[derive(Debug)]
pub struct Unpacked {
    /// Relative paths (with `/`) of its regular files.
    pub files: Vec<String>,
}

/// Most bytes the whole archive may decompress to (headers, long names and file data).
const MAX_DECOMPRESSED_BYTES: u64 = MAX_EXPANDED_BYTES + 64 * 1024 * 1024;

/// Unpacks the tar.gz at `archive` into the empty directory `dest`. Blocking: call it
/// from `spawn_blocking`.
///
/// Nothing is ever written through a symlink: directories and files are written first,
/// symlinks are created last (each checked to have no symlink above it), and each must
/// then resolve, physically, to a path inside `dest`.
pub fn unpack(archive: &Path, dest: &Path) -> Result<Unpacked, BundleError> {
    let file = std::fs::File::open(archive)?;
    let decoded = Budget {
        inner: flate2::read::GzDecoder::new(file),
        left: MAX_DECOMPRESSED_BYTES,
    };
    let mut tar = tar::Archive::new(decoded);
    let entries = tar.entries().map_err(archive_error)?;
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut symlinks: Vec<(String, PathBuf, String)> = Vec::new();
    let mut expanded: u64 = 0;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            return Err(BundleError::TooManyEntries);
        }
        let mut entry = entry.map_err(archive_error)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let unsafe_entry = |reason: &str| BundleError::Unsafe {
            entry: name.clone(),
            reason: reason.to_string(),
        };
        let rel = safe_relative(&name).map_err(unsafe_entry)?;
        let Some(rel) = rel else { continue }; // "." or "./"
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        if !seen.insert(rel.clone()) && kind != tar::EntryType::Directory {
            return Err(unsafe_entry("the path appears twice in the archive"));
        }
        let target = dest.join(&rel);
        // Writes go into what the archive itself created: describe clashes as its fault.
        let clash = |e: std::io::Error| BundleError::Archive(format!("{name}: {e}"));
        match kind {
            tar::EntryType::Directory => std::fs::create_dir_all(&target).map_err(clash)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(clash)?;
                }
                let budget = MAX_EXPANDED_BYTES - expanded;
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(clash)?;
                let written = std::io::copy(&mut (&mut entry).take(budget + 1), &mut out)
                    .map_err(|e| read_or_write_error(&name, e))?;
                expanded += written;
                if expanded > MAX_EXPANDED_BYTES {
                    return Err(BundleError::TooLargeExpanded);
                }
                files.push(path_string(&rel));
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| unsafe_entry("link without a target"))?;
                if Path::new(&link).is_absolute() || !stays_inside(&rel, Path::new(&link)) {
                    return Err(unsafe_entry("symlink leaves the bundle"));
                }
                symlinks.push((name.clone(), rel, link));
            }
            tar::EntryType::Link => {
                return Err(unsafe_entry("hard links are not supported in bundles"));
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry("device files are not allowed"));
            }
            tar::EntryType::Fifo => return Err(unsafe_entry("FIFOs are not allowed")),
            other => {
                return Err(unsafe_entry(&format!(
                    "entry type {other:?} is not allowed"
                )));
            }
        }
    }
    for (name, rel, link) in &symlinks {
        let unsafe_entry = |reason: &str| BundleError::Unsafe {
            entry: name.clone(),
            reason: reason.to_string(),
        };
        if has_symlink_above(dest, rel) {
            return Err(unsafe_entry("symlink inside a symlinked directory"));
        }
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| BundleError::Archive(format!("{name}: {e}")))?;
        }
        std::os::unix::fs::symlink(link, &target)
            .map_err(|e| BundleError::Archive(format!("{name}: {e}")))?;
    }
    let root = dest.canonicalize()?;
    for (name, rel, _) in &symlinks {
        let resolved = dest.join(rel).canonicalize();
        if !resolved.is_ok_and(|r| r.starts_with(&root)) {
            return Err(BundleError::Unsafe {
                entry: name.clone(),
                reason: "symlink leaves the bundle or points to nothing".into(),
            });
        }
    }
    files.sort();
    Ok(Unpacked { files })
}

fn archive_error(e: std::io::Error) -> BundleError {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        BundleError::TooLargeExpanded
    } else {
        BundleError::Archive(e.to_string())
    }
}

/// Errors while copying an entry: reading is the archive's fault, a full disk is ours.
fn read_or_write_error(name: &str, e: std::io::Error) -> BundleError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => BundleError::Io(e),
        std::io::ErrorKind::FileTooLarge => BundleError::TooLargeExpanded,
        _ => BundleError::Archive(format!("{name}: {e}")),
    }
}

/// Whether any directory between `dest` and `rel` is a symlink.
fn has_symlink_above(dest: &Path, rel: &Path) -> bool {
    let mut at = dest.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        at.push(part);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// A reader that fails once more than `left` bytes were read (a decompression bomb).
struct Budget<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "the archive expands past the limit",
            )
        })?;
        Ok(n)
    }
}

/// A relative, normalised path, or why not; `None` for the archive root itself.
fn safe_relative(name: &str) -> Result<Option<PathBuf>, &'static str> {
    let path = Path::new(name);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Whether a symlink at `rel` pointing to `link` resolves inside the bundle.
fn stays_inside(rel: &Path, link: &Path) -> bool {
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn path_string(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let gz = flate2::write::GzEncoder::new(
            file.reopen().expect("reopen"),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            // Write the name raw: the builder itself refuses the unsafe names under test.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("finish").finish().expect("gzip");
        file
    }

    fn unpack_entries(
        entries: &[(&str, tar::EntryType, &[u8], Option<&str>)],
    ) -> Result<Unpacked, BundleError> {
        let a = archive(entries);
        let dir = tempfile::tempdir().expect("tempdir");
        unpack(a.path(), dir.path())
    }

    #[test]
    fn ordinary_bundle_unpacks() {
        let u = unpack_entries(&[
            ("./", tar::EntryType::Directory, b"", None),
            (
                "code/index.ts",
                tar::EntryType::Regular,
                b"export default {}",
                None,
            ),
            ("manifest.json", tar::EntryType::Regular, b"{}", None),
            (
                "code/link.ts",
                tar::EntryType::Symlink,
                b"",
                Some("index.ts"),
            ),
        ])
        .expect("valid");
        assert_eq!(
            u.files,
            vec!["code/index.ts".to_string(), "manifest.json".to_string()]
        );
    }

    #[test]
    fn unsafe_entries_are_refused() {
        let cases: Vec<(&str, tar::EntryType, Option<&str>, &str)> = vec![
            ("../evil", tar::EntryType::Regular, None, "'..'"),
            ("/etc/evil", tar::EntryType::Regular, None, "absolute"),
            ("a/../../evil", tar::EntryType::Regular, None, "'..'"),
            (
                "link",
                tar::EntryType::Symlink,
                Some("/etc/passwd"),
                "leaves",
            ),
            (
                "code/link",
                tar::EntryType::Symlink,
                Some("../../x"),
                "leaves",
            ),
            ("dev", tar::EntryType::Char, None, "device"),
            ("fifo", tar::EntryType::Fifo, None, "FIFO"),
        ];
        for (name, kind, link, reason) in cases {
            let err = unpack_entries(&[(name, kind, b"", link)]).expect_err(name);
            assert!(err.to_string().contains(reason), "{name}: {err}");
        }
    }

    #[test]
    fn chained_symlinks_cannot_escape() {
        // a -> . then a/b -> .. would put b at the bundle root pointing outside it.
        let err = unpack_entries(&[
            ("a", tar::EntryType::Symlink, b"", Some(".")),
            ("a/b", tar::EntryType::Symlink, b"", Some("..")),
            ("a/b/evil", tar::EntryType::Regular, b"x", None),
        ])
        .expect_err("escapes");
        assert!(
            matches!(err, BundleError::Unsafe { .. } | BundleError::Archive(_)),
            "{err}"
        );
        // A link to a link that climbs out.
        let err = unpack_entries(&[
            ("a", tar::EntryType::Symlink, b"", Some(".")),
            ("b", tar::EntryType::Symlink, b"", Some("a/a/../x")),
        ])
        .expect_err("escapes");
        assert!(err.to_string().contains("symlink"), "{err}");
        // Duplicates are refused, so the code checked is the code stored.
        let err = unpack_entries(&[
            ("a.wasm", tar::EntryType::Regular, b"one", None),
            ("a.wasm", tar::EntryType::Regular, b"two", None),
        ])
        .expect_err("duplicate");
        assert!(err.to_string().contains("twice"), "{err}");
        // A file where the archive already put a file of the same directory name.
        let err = unpack_entries(&[
            ("a", tar::EntryType::Regular, b"x", None),
            ("a/b", tar::EntryType::Regular, b"y", None),
        ])
        .expect_err("clash");
        assert!(matches!(err, BundleError::Archive(_)), "{err}");
    }

    #[test]
    fn too_many_entries_are_refused() {
        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("f{i}")).collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), tar::EntryType::Regular, &b""[..], None))
            .collect();
        assert!(matches!(
            unpack_entries(&entries),
            Err(BundleError::TooManyEntries)
        ));
    }
}
