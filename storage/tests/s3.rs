//! The S3 backend against a real S3-compatible server: moto's (`./scripts/setup.sh`,
//! which CI does). Each test starts its own server on a free loopback port and a bucket
//! that does not exist yet, and stops the server when it ends, failed or not.

use bytes::Bytes;
use reactor_storage::{S3Config, S3Storage, Storage, StorageError, contract};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

/// A moto server, killed and reaped on drop.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    // Dropped after `drop` has stopped the server.
    _dir: tempfile::TempDir,
}

impl Moto {
    async fn start() -> Self {
        require_moto();
        let dir = tempfile::tempdir().expect("creating a dir for the moto log");
        let log = dir.path().join("moto.log");
        let stdout = std::fs::File::create(&log).expect("creating the moto log");
        let stderr = stdout.try_clone().expect("sharing the moto log");
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawning python3 -m moto.server");
        let mut moto = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        moto.wait_until_ready().await;
        moto
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the moto process") {
                panic!(
                    "moto exited ({status}) before answering; its log:\n{}",
                    self.log_text()
                );
            }
            if answers_http(self.port).await {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "moto did not answer on 127.0.0.1:{} within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(unreadable: {e})"))
    }

    fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            bucket: bucket.to_string(),
            region: "us-east-1".to_string(),
            path_style: true,
            access_key: Some(("testing".to_string(), "testing".to_string())),
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python that has moto: the repository's `.venv` (where `scripts/setup.sh` installs
/// it), else `python3`.
fn python() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

/// Fails (rather than skips) when moto is missing, saying how to install it.
fn require_moto() {
    let probe = Command::new(python())
        .args(["-c", "import moto.server"])
        .stdin(Stdio::null())
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the S3 tests need moto's server: run `./scripts/setup.sh` \
             (python3 -c 'import moto.server' failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "the S3 tests need python3 and moto's server (`./scripts/setup.sh`): \
             running python3 failed: {e}"
        ),
    }
}

fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a free loopback port");
    listener.local_addr().expect("reading the free port").port()
}

/// Whether `GET http://127.0.0.1:port/` gets an HTTP answer.
async fn answers_http(port: u16) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(&head == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// A fresh bucket name (lowercase, as S3 wants).
fn bucket_name() -> String {
    format!(
        "reactor-test-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_storage_meets_the_contract() {
    let moto = Moto::start().await;
    let storage = S3Storage::connect(moto.config(&bucket_name(), ""))
        .await
        .expect("connecting creates the missing bucket");
    let scratch = tempfile::tempdir().expect("scratch dir");
    contract::run(&storage, scratch.path()).await;

    // An object named exactly like the prefix goes with the folder.
    for key in ["bundles/o/g", "bundles/o/g/1.tar.gz"] {
        storage
            .put_bytes(key, Bytes::from_static(b"x"))
            .await
            .expect("put_bytes");
    }
    storage
        .delete_prefix("bundles/o/g")
        .await
        .expect("delete_prefix");
    for key in ["bundles/o/g", "bundles/o/g/1.tar.gz"] {
        assert!(
            !storage.exists(key).await.expect("exists"),
            "{key} survived delete_prefix of bundles/o/g"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_files_go_up_in_parts() {
    let moto = Moto::start().await;
    let storage = S3Storage::connect(moto.config(&bucket_name(), ""))
        .await
        .expect("connecting")
        .with_multipart_threshold(5 * MIB as u64);
    let scratch = tempfile::tempdir().expect("scratch dir");
    // An 8 MiB part and a 3 MiB one.
    let data = contract::pseudo_random(11 * MIB + 123, 7);
    let src = scratch.path().join("big.bin");
    tokio::fs::write(&src, &data)
        .await
        .expect("writing the big file");
    let key = "bundles/o/f/big.tar.gz";
    storage
        .put_file(key, &src)
        .await
        .expect("multipart put_file");

    // The ETag of a multipart object ends with its number of parts.
    let head = storage
        .client()
        .head_object()
        .bucket(storage.bucket())
        .key(key)
        .send()
        .await
        .expect("head_object of the big file");
    let etag = head.e_tag().unwrap_or_default().trim_matches('"');
    assert!(
        etag.ends_with("-2"),
        "expected a 2-part upload, the ETag is {etag:?}"
    );

    let dest_dir = scratch.path().join("back");
    let dest = dest_dir.join("big.bin");
    storage
        .get_to_file(key, &dest)
        .await
        .expect("get_to_file of the big file");
    let back = tokio::fs::read(&dest)
        .await
        .expect("reading the big file back");
    assert!(
        back == data,
        "the big file came back different ({} bytes, {} put)",
        back.len(),
        data.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dest_dir)
        .expect("listing the download dir")
        .map(|entry| entry.expect("a dir entry").file_name())
        .filter(|name| name != "big.bin")
        .collect();
    assert!(
        leftovers.is_empty(),
        "get_to_file left files behind: {leftovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_keeps_tenants_apart() {
    let moto = Moto::start().await;
    let bucket = bucket_name();
    let root = S3Storage::connect(moto.config(&bucket, ""))
        .await
        .expect("connecting creates the bucket");
    let tenant = S3Storage::connect(moto.config(&bucket, "tenant-a/"))
        .await
        .expect("connecting to the existing bucket");
    let key = "bundles/o/f/1.tar.gz";

    root.put_bytes(key, Bytes::from_static(b"root"))
        .await
        .expect("root put_bytes");
    assert!(
        !tenant.exists(key).await.expect("tenant exists"),
        "the tenant sees the root's object"
    );
    assert!(
        matches!(tenant.get_bytes(key).await, Err(StorageError::NotFound(_))),
        "the tenant can read the root's object"
    );

    tenant
        .put_bytes(key, Bytes::from_static(b"tenant"))
        .await
        .expect("tenant put_bytes");
    assert_eq!(
        root.get_bytes(key).await.expect("root get_bytes"),
        Bytes::from_static(b"root"),
        "the tenant's write reached the root's object"
    );
    assert_eq!(
        root.get_bytes(&format!("tenant-a/{key}"))
            .await
            .expect("the tenant's object under its prefix"),
        Bytes::from_static(b"tenant")
    );

    tenant
        .delete_prefix("bundles/o/f")
        .await
        .expect("tenant delete_prefix");
    assert!(
        !tenant.exists(key).await.expect("tenant exists"),
        "the tenant's object survived its delete_prefix"
    );
    assert!(
        root.exists(key).await.expect("root exists"),
        "the tenant's delete_prefix removed the root's object"
    );
}
