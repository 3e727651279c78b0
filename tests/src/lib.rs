//! Harness for the end-to-end tests: builds and starts the real `reactor` binary on a
//! free loopback port with its own workdir, runs CLI commands against it, and builds the
//! WASM components the tests deploy. Everything it starts is stopped on drop.
#![forbid(unsafe_code)]

use anyhow::Context;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `target/<profile>` directory this test binary was built into.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> for tests, target/<profile>/<bin> for binaries.
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The Python that has the test tools (moto, boto3): the repository's `.venv`, where
/// `scripts/setup.sh` installs them, else `python3`.
pub fn python() -> PathBuf {
    let venv = root().join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Bun as the set-up command installs it (`npm install` in the repo).
pub fn bun_bin() -> PathBuf {
    root().join("node_modules/.bin/bun")
}

/// Path of the `reactor` binary, built once per test run with this test's profile.
pub fn reactor_bin() -> PathBuf {
    service_bin("reactor")
}

/// Path of one of the workspace's binaries (`reactor`, `reactor-control-plane`,
/// `reactor-data-plane`, `reactor-worker-wasm`, `reactor-worker-bun`).
///
/// `cargo test --workspace` builds them all before running any test (each of their
/// packages has an integration test, so Cargo builds its binary for it). Once per test
/// process this asks Cargo, with that same command (`cargo test --workspace --no-run`,
/// this test's profile), to bring them up to date: after the README's test command it
/// finds everything fresh and builds nothing; a test run on its own
/// (`cargo test -p reactor-tests --test e2e`) gets binaries built from the current
/// sources. Any other command would resolve some dependencies' features differently
/// (rustls's crypto providers, for one) and rebuild them.
pub fn service_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let profile = profile_dir();
    BUILT.get_or_init(|| {
        let target = profile.parent().expect("target dir").to_path_buf();
        let started = Instant::now();
        let mut cmd = cargo();
        cmd.current_dir(root())
            .args(["test", "--quiet", "--workspace", "--no-run"]);
        cmd.arg("--target-dir").arg(&target);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo test --no-run for the binaries");
        assert!(status.success(), "building the binaries failed");
        let took = started.elapsed();
        if took > Duration::from_secs(10) {
            eprintln!("reactor-tests: the binaries were out of date: built in {took:.0?}");
        }
    });
    profile.join(name)
}

/// Fails the test with a message naming `service`, where it was looked for and `how` to
/// start it, when nothing answers at `addr` (a test that needs a real service says which
/// one is missing instead of failing somewhere further on).
pub fn require_service(service: &str, addr: &str, how: &str) {
    use std::net::ToSocketAddrs;
    let reachable = addr
        .to_socket_addrs()
        .map(|mut all| {
            all.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        })
        .unwrap_or(false);
    assert!(
        reachable,
        "{service} is not reachable at {addr}, and this test needs it: {how}"
    );
}

/// Cargo, without the variables Cargo sets for a test process (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, `OUT_DIR`, ...). Build scripts such as ring's rerun when those
/// change (`rerun-if-env-changed`), so a cargo started with them would rebuild ring and
/// everything above it, and the next `cargo test` would rebuild it all back.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_CFG_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if set_by_cargo || key == "OUT_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Builds a guest crate for wasm32-wasip2 (once per run and profile) and returns the
/// component's path.
pub fn build_component(dir: &str, release: bool) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<(String, bool), PathBuf>>> =
        OnceLock::new();
    let map = BUILT.get_or_init(Default::default);
    let mut map = map.lock().expect("build lock");
    if let Some(p) = map.get(&(dir.to_string(), release)) {
        return p.clone();
    }
    let crate_dir = root().join(dir);
    let mut cmd = cargo();
    cmd.current_dir(&crate_dir)
        .args(["build", "--quiet", "--target", "wasm32-wasip2"]);
    if release {
        cmd.arg("--release");
    }
    // Never inherit the workspace's target dir: the guest has its own.
    cmd.env_remove("CARGO_TARGET_DIR");
    let status = cmd.status().expect("running cargo build for a component");
    assert!(status.success(), "building {dir} for wasm32-wasip2 failed");
    let name = Path::new(dir)
        .file_name()
        .expect("crate name")
        .to_string_lossy()
        .replace('-', "_");
    let profile = if release { "release" } else { "debug" };
    let path = crate_dir
        .join("target/wasm32-wasip2")
        .join(profile)
        .join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    map.insert((dir.to_string(), release), path.clone());
    path
}

/// A running `reactor dev`; its admin API and invoke share [`Server::url`].
pub struct Server {
    child: Child,
    pub api: Api,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl std::ops::Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// The admin API of a server, with the admin's credentials.
pub struct Api {
    pub url: String,
    pub token: String,
    pub org: String,
    pub http: reqwest::Client,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts `reactor dev` on a free port with `env` added.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, env)
    }

    /// Starts `reactor dev` with the workdir and credentials under `dir`.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        let workdir = dir.path().join("work").to_string_lossy().into_owned();
        Self::start_args(dir, &["--workdir", &workdir], env)
    }

    /// Starts `reactor dev --listen 127.0.0.1:0` with `args` added, run from `dir` (which
    /// holds its log and credentials).
    pub fn start_args(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = dir.path().join("reactor.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = Command::new(reactor_bin());
        cmd.args(["dev", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("REACTOR_ORG", "acme")
            .env("REACTOR_CREDENTIALS", dir.path().join("credentials.json"))
            .env("RUST_LOG", "info,sqlx=warn")
            .env("REACTOR_FUNCTIONS_BUN_PATH", bun_bin())
            .env_remove("REACTOR_ADMIN_TOKEN")
            .env_remove("REACTOR_CONFIG")
            .env_remove("REACTOR_LOG_FORMAT")
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning reactor dev");
        let stdout = child.stdout.take().expect("stdout");
        // Read stdout on a thread (kept draining it so the server never blocks on a full
        // pipe) and wait for the export line with a bound.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("export ") {
                    let _ = tx.send(line);
                }
            }
        });
        let export = rx.recv_timeout(Duration::from_secs(30)).ok();
        let Some(export) = export else {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("reactor dev did not start:\n{log}");
        };
        let var = |name: &str| {
            export
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing from {export:?}"))
                .to_string()
        };
        Server {
            api: Api {
                url: var("REACTOR_URL"),
                token: var("REACTOR_TOKEN"),
                org: var("REACTOR_ORG"),
                http: reqwest::Client::new(),
            },
            child,
            dir,
            log,
        }
    }

    /// The process id of `reactor dev` (to profile it, or read its memory in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server, keeping its directory for a restart.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn kill(&mut self) {
        terminate(&mut self.child);
    }

    /// Runs the `reactor` CLI against this server with `token` (default: the admin's).
    pub fn cli_as(&self, token: &str, org: &str, args: &[&str]) -> CliOutput {
        self.cli_in_as(&root(), token, org, args)
    }

    /// Runs the `reactor` CLI as the admin from directory `cwd`.
    pub fn cli_in(&self, cwd: &Path, args: &[&str]) -> CliOutput {
        self.cli_in_as(cwd, &self.token, &self.org, args)
    }

    /// The `reactor` CLI pointed at this server as `token`/`org`, run from `cwd`.
    fn cli_command(&self, cwd: &Path, token: &str, org: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(reactor_bin());
        cmd.args(args)
            .env("REACTOR_URL", &self.url)
            .env("REACTOR_TOKEN", token)
            .env("REACTOR_ORG", org)
            .env(
                "REACTOR_CREDENTIALS",
                self.dir.path().join("no-credentials.json"),
            )
            .current_dir(cwd);
        cmd
    }

    fn cli_in_as(&self, cwd: &Path, token: &str, org: &str, args: &[&str]) -> CliOutput {
        let out = self
            .cli_command(cwd, token, org, args)
            .stdin(Stdio::null())
            .output()
            .expect("running the reactor CLI");
        CliOutput::from(out)
    }

    /// Runs the `reactor` CLI as the admin with `input` on its stdin (not a terminal).
    pub fn cli_with_input(&self, args: &[&str], input: &str) -> CliOutput {
        let mut child = self
            .cli_command(&root(), &self.token, &self.org, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the reactor CLI");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("writing stdin");
        }
        CliOutput::from(child.wait_with_output().expect("reactor CLI output"))
    }

    /// Starts the `reactor` CLI as the admin with stdout piped, for commands that run
    /// until stopped (`logs --follow`).
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        self.cli_command(&root(), &self.token, &self.org, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the reactor CLI")
    }

    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_as(&self.token, &self.org, args)
    }

    /// Like [`Server::cli`], failing the test when the command fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.success,
            "reactor {args:?} failed:\nstdout: {}\nstderr: {}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// SIGTERM, then SIGKILL after 10 s.
fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Api {
    /// A request with the admin's credentials.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_as(&self.token, &self.org, method, path)
    }

    pub fn request_as(
        &self,
        token: &str,
        org: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("X-Reactor-Org", org)
    }

    /// Uploads a bundle (tar.gz bytes) with its sha256.
    pub async fn upload(&self, function: &str, bundle: Vec<u8>) -> reqwest::Response {
        let sha = sha256_hex(&bundle);
        self.request(
            reqwest::Method::POST,
            &format!("/fn/v1/_admin/functions/{function}/deployments"),
        )
        .header("content-type", "application/gzip")
        .header("x-reactor-bundle-sha256", sha)
        .body(bundle)
        .send()
        .await
        .expect("upload")
    }

    /// Waits until a deployment leaves `materializing`; returns its JSON.
    pub async fn wait_deployment(&self, function: &str, id: &str) -> serde_json::Value {
        let path = format!("/fn/v1/_admin/functions/{function}/deployments/{id}");
        wait_until(Duration::from_secs(60), || async {
            let d: serde_json::Value = self
                .request(reqwest::Method::GET, &path)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (d["status"] != "materializing").then_some(d)
        })
        .await
        .expect("deployment left materializing")
    }

    /// Creates a WASM function, uploads `bundle`, waits for it and promotes it.
    pub async fn deploy_live(&self, function: &str, bundle: Vec<u8>) -> String {
        self.deploy_live_runtime(function, "wasm", bundle).await
    }

    /// Creates a function of `runtime` (if new), uploads `bundle`, waits for it and
    /// promotes it.
    pub async fn deploy_live_runtime(
        &self,
        function: &str,
        runtime: &str,
        bundle: Vec<u8>,
    ) -> String {
        self.create(function, runtime).await;
        let id = self.deploy_ready(function, bundle).await;
        self.promote(function, &id).await;
        id
    }

    /// Creates a function (an existing one is fine).
    pub async fn create(&self, function: &str, runtime: &str) {
        let created = self
            .request(reqwest::Method::POST, "/fn/v1/_admin/functions")
            .json(&serde_json::json!({"name": function, "runtime": runtime}))
            .send()
            .await
            .expect("create");
        assert!(
            created.status() == 201 || created.status() == 409,
            "create {function}: {}",
            created.status()
        );
    }

    /// Uploads `bundle` and waits until it is ready; returns the deployment id.
    pub async fn deploy_ready(&self, function: &str, bundle: Vec<u8>) -> String {
        let up = self.upload(function, bundle).await;
        assert_eq!(
            up.status(),
            202,
            "upload {function}: {}",
            up.text().await.unwrap_or_default()
        );
        let dep: serde_json::Value = up.json().await.expect("json");
        let id = dep["id"].as_str().expect("id").to_string();
        let d = self.wait_deployment(function, &id).await;
        assert_eq!(d["status"], "ready", "{d}");
        id
    }

    /// Promotes deployment `id`.
    pub async fn promote(&self, function: &str, id: &str) {
        let p = self
            .request(
                reqwest::Method::POST,
                &format!("/fn/v1/_admin/functions/{function}/promote"),
            )
            .json(&serde_json::json!({"deployment_id": id}))
            .send()
            .await
            .expect("promote");
        assert_eq!(
            p.status(),
            200,
            "promote: {}",
            p.text().await.unwrap_or_default()
        );
    }
}

pub mod split;
pub mod topology;

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for CliOutput {
    fn from(out: std::process::Output) -> Self {
        CliOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The WASM probe fixture (`tests/fixtures/probe-wasm`), with `manifest.json` when given.
pub fn wasm_probe_bundle(manifest: Option<&serde_json::Value>) -> Vec<u8> {
    let wasm = read(&build_component("tests/fixtures/probe-wasm", true));
    match manifest.map(|m| m.to_string()) {
        Some(m) => bundle(&[("probe.wasm", &wasm), ("manifest.json", m.as_bytes())]),
        None => bundle(&[("probe.wasm", &wasm)]),
    }
}

/// The Bun probe fixture (`tests/fixtures/probe-bun`, `__VERSION__` replaced by
/// `version`) with the `node_modules` package it imports, and `manifest.json` when given.
pub fn bun_probe_bundle(version: &str, manifest: Option<&serde_json::Value>) -> Vec<u8> {
    let source = String::from_utf8(read(&root().join("tests/fixtures/probe-bun/index.ts")))
        .expect("utf-8")
        .replace("__VERSION__", version);
    let manifest = manifest.map(|m| m.to_string());
    let mut files: Vec<(&str, &[u8])> = vec![
        ("index.ts", source.as_bytes()),
        (
            "node_modules/tiny-greet/package.json",
            br#"{"name":"tiny-greet","version":"1.0.0","type":"module","main":"index.js"}"#,
        ),
        (
            "node_modules/tiny-greet/index.js",
            b"export const greet = (name) => `greetings, ${name}, from node_modules`;\n",
        ),
    ];
    if let Some(m) = &manifest {
        files.push(("manifest.json", m.as_bytes()));
    }
    bundle(&files)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A tar.gz of `(path, bytes)` regular files.
pub fn bundle(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, *data).expect("append");
    }
    tar.into_inner().and_then(|gz| gz.finish()).expect("finish")
}

/// A tar.gz with one raw entry whose name, type and link target are written as given
/// (bypassing the tar builder's own checks), to test what the server refuses.
pub fn raw_bundle(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append(&h, &b""[..]).expect("append");
    tar.into_inner().and_then(|gz| gz.finish()).expect("finish")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A directory holding only `file` (a bundle without a manifest).
pub fn dir_with(name: &str, bytes: &[u8]) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::File::create(dir.path().join(name))?.write_all(bytes)?;
    Ok(dir)
}

/// The trace of the tests' outside requests that make calls
/// (`traceparent: 00-{CALL_TRACE}-{CALL_PARENT}-01`).
pub const CALL_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const CALL_PARENT: &str = "00f067aa0ba902b7";

/// Checks what a called function saw (`h`: its request headers as JSON) of a call made by
/// `caller` = (function, deployment) for an outside request of `org` by `identity` =
/// (token id, role), sent with [`CALL_TRACE`] and `baggage`; the caller had less than
/// `max_deadline_ms` in all.
pub fn check_call_context(
    h: &serde_json::Value,
    org: &str,
    (token, role): (&str, &str),
    (caller, caller_dep): (&str, &str),
    baggage: &str,
    max_deadline_ms: u64,
) {
    let traceparent = h["traceparent"].as_str().expect("traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], CALL_TRACE, "the caller's trace goes on: {h}");
    assert_ne!(parts[2], CALL_PARENT, "in a span of its own: {h}");
    assert_eq!(h["baggage"], baggage, "{h}");
    assert_eq!(h["x-reactor-caller-org"], org, "{h}");
    assert_eq!(h["x-reactor-caller-token"], token, "{h}");
    assert_eq!(h["x-reactor-caller-role"], role, "{h}");
    assert_eq!(h["x-reactor-caller-function"], caller, "{h}");
    assert_eq!(h["x-reactor-caller-deployment"], caller_dep, "{h}");
    assert_eq!(h["x-reactor-call-depth"], "2", "{h}");
    let deadline: u64 = h["x-reactor-deadline-ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a deadline");
    assert!(
        deadline > 0 && deadline < max_deadline_ms,
        "less than the caller's {max_deadline_ms} ms: {h}"
    );
    assert!(h.get("x-forwarded-prefix").is_none(), "{h}");
}

/// An HTTPS client that trusts the CA under `tls` (`ca.pem`), reaches `name` at `addr`,
/// and presents the certificate of `role` (`{role}.pem`, `{role}.key`) when given.
pub fn tls_client(
    tls: &Path,
    name: &str,
    addr: std::net::SocketAddr,
    role: Option<&str>,
) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&read(&tls.join("ca.pem"))).expect("ca");
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve(name, addr)
        .timeout(Duration::from_secs(5));
    if let Some(role) = role {
        let mut pem = read(&tls.join(format!("{role}.pem")));
        pem.extend(read(&tls.join(format!("{role}.key"))));
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    b.build().expect("client")
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path)
        .with_context(|| path.display().to_string())
        .expect("read")
}
