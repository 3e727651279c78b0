//! The split topology for tests and benchmarks: `reactor-control-plane`,
//! `reactor-data-plane` and `reactor-worker-wasm` as separate processes on loopback ports,
//! sharing one internal token and one storage directory (what S3 is in production).

use crate::{Api, service_bin, terminate};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const INTERNAL_TOKEN: &str = "9d41c7e2b85a3f06e1d4c8b7a29f5e30c6b1d8a47e2f9c05b3a6d1e8f7c42a90";
pub const WORKER_TOKEN: &str = "5b8e2d71c04a9f36e7d1b5c8a30f9e42d6c1b7a85e3f0d29c4a6b1e8f7d53c01";
pub const ADMIN_TOKEN: &str = "rct_Sp1itAdm1nT0kenF0rTestsQx7Rk2Lm9Vb4Nc8Zw3Hj6";
/// The control plane's `functions.bun_path`: nowhere.
pub const NO_BUN: &str = "/nonexistent/reactor-tests/bun";

/// One running service process; stopped (SIGTERM) on drop.
pub struct Service {
    child: Child,
    /// The line it printed when listening.
    pub banner: String,
    pub log: PathBuf,
}

impl Service {
    /// Starts `bin` with `args` and `env`, logging to `log`, and waits for the line of
    /// stdout that says it listens.
    pub fn start(bin: &str, args: &[String], env: &[(&str, String)], log: &Path) -> Service {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = Command::new(service_bin(bin));
        cmd.args(args)
            .env("REACTOR_INTERNAL_TOKEN", INTERNAL_TOKEN)
            .env("RUST_LOG", "info,sqlx=warn")
            .env("REACTOR_FUNCTIONS_BUN_PATH", crate::bun_bin())
            .env_remove("REACTOR_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        // The workers' credential: the control plane and workers hold it, routers never.
        if bin == "reactor-data-plane" {
            cmd.env_remove("REACTOR_INTERNAL_WORKER_TOKEN");
        } else {
            cmd.env("REACTOR_INTERNAL_WORKER_TOKEN", WORKER_TOKEN);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(" listening") {
                    let _ = tx.send(line);
                }
            }
        });
        let Ok(banner) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{bin} did not start:\n{log}");
        };
        Service {
            child,
            banner,
            log: log.to_path_buf(),
        }
    }

    /// The process id (to read its memory in `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `http://host:port` after `label` in the banner.
    pub fn url_after(&self, label: &str) -> String {
        self.banner
            .split(label)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} in {:?}", self.banner))
            .to_string()
    }

    /// SIGTERM and wait (graceful: drains).
    pub fn stop(mut self) {
        terminate(&mut self.child);
    }

    /// SIGKILL: the process dies without a goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The three services, with the admin API of the control plane and the router's URL.
pub struct Split {
    pub dir: tempfile::TempDir,
    pub cp: Option<Service>,
    pub router: Option<Service>,
    pub worker: Option<Service>,
    /// Admin API (control plane HTTP) with the bootstrap admin token.
    pub admin: Api,
    /// The control plane's gRPC URL.
    pub grpc_url: String,
    /// The router's invoke URL.
    pub invoke_url: String,
    /// The router's call listener, where workers send calls between functions.
    pub call_url: String,
    /// What every service's environment has on top of its own.
    env: Vec<(String, String)>,
}

impl Split {
    /// Starts a control plane, a router and a worker on free ports.
    pub fn start() -> Split {
        Self::start_with(&[])
    }

    /// Like [`Split::start`], with `worker_env` added to the worker's environment.
    pub fn start_with(worker_env: &[(&str, String)]) -> Split {
        Self::start_in(tempfile::tempdir().expect("tempdir"), worker_env, &[])
    }

    /// Like [`Split::start`], with `env` added to every service's environment (and kept
    /// for the workers [`Split::start_worker`] and [`Split::start_bun_worker`] add).
    pub fn start_env(env: &[(&str, String)]) -> Split {
        Self::start_in(tempfile::tempdir().expect("tempdir"), &[], env)
    }

    /// Like [`Split::start`], with mutual TLS between the services: certificates written
    /// by `reactor-control-plane --tls-init` into `{dir}/tls`, `internal.tls` on for all.
    pub fn start_tls() -> Split {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(service_bin("reactor-control-plane"))
            .arg("--tls-init")
            .arg(dir.path().join("tls"))
            .output()
            .expect("reactor-control-plane --tls-init");
        assert!(
            out.status.success(),
            "--tls-init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start_in(dir, &[], &[])
    }

    /// `internal.tls` for every service when `{dir}/tls` holds certificates.
    fn tls_env(dir: &Path) -> Vec<(&'static str, String)> {
        let tls = dir.join("tls");
        if !tls.join("ca.pem").exists() {
            return Vec::new();
        }
        vec![
            ("REACTOR_INTERNAL_TLS", "1".into()),
            ("REACTOR_INTERNAL_TLS_DIR", tls.display().to_string()),
        ]
    }

    fn start_in(
        dir: tempfile::TempDir,
        worker_env: &[(&str, String)],
        env: &[(&str, String)],
    ) -> Split {
        let owned: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let env = env.to_vec();
        let cp = Self::start_cp(dir.path(), "127.0.0.1:0", "127.0.0.1:0", &env);
        let admin_url = cp.url_after("admin ");
        let grpc_url = cp.url_after("grpc ");
        let router = Self::start_router_in(dir.path(), &grpc_url, &env, "router");
        let invoke_url = router.url_after("invoke ");
        let call_url = router.url_after("calls ");
        let mut all_worker_env = env.clone();
        all_worker_env.extend(worker_env.iter().cloned());
        let worker = Self::start_worker_in(
            dir.path(),
            &grpc_url,
            &call_url,
            "reactor-worker-wasm",
            "worker",
            &all_worker_env,
        );
        Split {
            admin: Api {
                url: admin_url,
                token: ADMIN_TOKEN.into(),
                org: "acme".into(),
                http: reqwest::Client::new(),
            },
            grpc_url,
            invoke_url,
            call_url,
            cp: Some(cp),
            router: Some(router),
            worker: Some(worker),
            dir,
            env: owned,
        }
    }

    fn start_cp(dir: &Path, listen: &str, grpc: &str, extra: &[(&str, String)]) -> Service {
        let mut env = vec![
            ("REACTOR_ORG", "acme".into()),
            ("REACTOR_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            // The control plane runs no function code: Bun deployments are built
            // on Bun workers, so it never needs Bun on its host.
            ("REACTOR_FUNCTIONS_BUN_PATH", NO_BUN.into()),
        ];
        env.extend(Self::tls_env(dir));
        env.extend(extra.iter().cloned());
        Service::start(
            "reactor-control-plane",
            &[
                "--listen".into(),
                listen.into(),
                "--grpc-listen".into(),
                grpc.into(),
                "--workdir".into(),
                dir.join("work").display().to_string(),
            ],
            &env,
            &dir.join("control-plane.log"),
        )
    }

    /// Starts another router named `name` (its log: `{name}.log`), following the same
    /// control plane.
    pub fn start_router(&self, name: &str) -> Service {
        let env = self.shared_env();
        Self::start_router_in(self.dir.path(), &self.grpc_url, &env, name)
    }

    fn start_router_in(
        dir: &Path,
        grpc_url: &str,
        extra: &[(&str, String)],
        name: &str,
    ) -> Service {
        let mut env = vec![("REACTOR_DATA_PLANE_CALL_LISTEN", "127.0.0.1:0".to_string())];
        env.extend(Self::tls_env(dir));
        env.extend(extra.iter().cloned());
        Service::start(
            "reactor-data-plane",
            &[
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--control-plane-url".into(),
                grpc_url.into(),
            ],
            &env,
            &dir.join(format!("{name}.log")),
        )
    }

    fn start_worker_in(
        dir: &Path,
        grpc_url: &str,
        call_url: &str,
        bin: &str,
        name: &str,
        env: &[(&str, String)],
    ) -> Service {
        let mut all: Vec<(&str, String)> = vec![
            (
                "REACTOR_FUNCTIONS_WORKDIR",
                dir.join("work").display().to_string(),
            ),
            (
                "REACTOR_WORKER_CACHE_DIR",
                dir.join(format!("{name}-cache")).display().to_string(),
            ),
            ("REACTOR_WORKER_ID", name.to_string()),
            ("REACTOR_WORKER_ROUTER_URL", call_url.to_string()),
        ];
        all.extend(Self::tls_env(dir));
        all.extend(env.iter().cloned());
        Service::start(
            bin,
            &[
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--control-plane-url".into(),
                grpc_url.into(),
            ],
            &all,
            &dir.join(format!("{name}.log")),
        )
    }

    /// Starts (another) WASM worker named `name` with its own cache.
    pub fn start_worker(&mut self, name: &str, env: &[(&str, String)]) -> Service {
        let mut all = self.shared_env();
        all.extend(env.iter().cloned());
        Self::start_worker_in(
            self.dir.path(),
            &self.grpc_url,
            &self.call_url,
            "reactor-worker-wasm",
            name,
            &all,
        )
    }

    /// Starts a Bun worker named `name` with its own cache.
    pub fn start_bun_worker(&mut self, name: &str, env: &[(&str, String)]) -> Service {
        let mut all = self.shared_env();
        all.extend(env.iter().cloned());
        Self::start_worker_in(
            self.dir.path(),
            &self.grpc_url,
            &self.call_url,
            "reactor-worker-bun",
            name,
            &all,
        )
    }

    fn shared_env(&self) -> Vec<(&str, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect()
    }

    /// Starts the control plane again on the same ports.
    pub fn restart_cp(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.stop();
        }
        let admin = self.admin.url.trim_start_matches("http://").to_string();
        let grpc = self
            .grpc_url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        let env = self.shared_env();
        self.cp = Some(Self::start_cp(self.dir.path(), &admin, &grpc, &env));
    }

    /// A request to the router with the admin's credentials.
    pub fn invoke(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.admin
            .http
            .request(method, format!("{}{path}", self.invoke_url))
            .bearer_auth(&self.admin.token)
            .header("X-Reactor-Org", &self.admin.org)
    }

    /// Waits (up to 5 s) until the router routes `function` to a live deployment: a
    /// promote reaches the router over its stream a few milliseconds after the admin
    /// call answers, and its first table only once the control plane has let workers
    /// register again (twice the heartbeat interval after it started).
    pub async fn wait_routable(&self, function: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let resp = self
                .invoke(reqwest::Method::GET, &format!("/fn/v1/{function}/"))
                .send()
                .await
                .expect("send");
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            // Not in the router's table yet (404), or not live there yet (503).
            let unrouted = (status == 404 && body.contains("function_not_found"))
                || (status == 503
                    && (body.contains("deployment_not_ready")
                        || body.contains("no_worker_available")));
            if !unrouted {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{function} is not routed after 5 s: {status} {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Every service's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["control-plane", "router", "worker"] {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            out.push_str(&format!("--- {name}\n{text}\n"));
        }
        out
    }
}
