//! The scale-out topology of `docker-compose.yml`, run as processes on loopback: the same
//! commands and environment as the compose file (read from it, so the file cannot drift
//! from what is tested), with only addresses, directories and the database replaced.
//! PostgreSQL and Redis are the machine's; the S3-compatible store is moto's server.

use crate::split::Service;
use crate::{Api, root};
use reactor_control_plane::test_support::TestDatabase;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Reactor services of the compose file, in start order.
pub const SERVICES: [&str; 6] = [
    "control-plane",
    "worker-wasm-1",
    "worker-wasm-2",
    "worker-bun",
    "router-1",
    "router-2",
];

/// Keys the test replaces; each must be in the compose file (else it drifted).
const DATABASE_KEY: &str = "REACTOR_FUNCTIONS_DATABASE_URL";
/// Where the compose file's services read the internal TLS files (its volume `tls`).
const TLS_DIR_KEY: &str = "REACTOR_INTERNAL_TLS_DIR";
/// The one-shot compose service that writes them.
const TLS_INIT: &str = "tls-init";

/// One service of `docker-compose.yml`: its command and environment (anchors merged,
/// `${VAR:-default}` replaced by the default).
#[derive(Clone, Debug)]
pub struct ComposeService {
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
}

/// The parsed compose file.
pub struct Compose {
    pub services: BTreeMap<String, ComposeService>,
    /// Every service name, to check that no address was left unmapped.
    pub names: Vec<String>,
}

/// `${VAR:-default}`, `${VAR-default}` and `${VAR}` as compose reads them when `VAR` is
/// not set: the default, or empty. `${VAR:?message}` (a required secret) takes the value
/// [`test_secret`] generated for this test process.
pub fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 2..start + end];
        if let Some((name, _)) = inner.split_once(":?") {
            out.push_str(&test_secret(name));
        } else {
            let default = inner
                .split_once(":-")
                .or_else(|| inner.split_once('-'))
                .map(|(_, d)| d)
                .unwrap_or("");
            out.push_str(default);
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// A strong value for the compose file's required secret `name`, the same for the whole
/// test process (as `scripts/compose-secrets.sh` would write once).
pub fn test_secret(name: &str) -> String {
    use std::sync::OnceLock;
    static SEED: OnceLock<String> = OnceLock::new();
    let seed = SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        format!("{:x}-{}", h.finish(), std::process::id())
    });
    let hex = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(format!("{seed}/{name}").as_bytes()))
    };
    match name {
        // base64 of 32 bytes.
        "REACTOR_FUNCTIONS_DATA_KEY" => {
            use base64::Engine;
            let bytes = hex::decode(&hex).unwrap_or_default();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
        "REACTOR_ADMIN_TOKEN" => format!("rct_{hex}"),
        _ => hex,
    }
}

impl Compose {
    pub fn load() -> Compose {
        let path = root().join("docker-compose.yml");
        let text = std::fs::read_to_string(&path).expect("docker-compose.yml");
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
        doc.apply_merge().expect("YAML merge keys");
        let services = doc
            .get("services")
            .and_then(|s| s.as_mapping())
            .expect("services");
        let mut names = Vec::new();
        let mut out = BTreeMap::new();
        for (name, service) in services {
            let name = name.as_str().expect("service name").to_string();
            names.push(name.clone());
            let Some(command) = service.get("command").and_then(|c| c.as_sequence()) else {
                continue;
            };
            let command: Vec<String> = command
                .iter()
                .map(|c| c.as_str().expect("command strings").to_string())
                .collect();
            let mut environment = BTreeMap::new();
            if let Some(env) = service.get("environment") {
                let mut env = env.clone();
                env.apply_merge().expect("merge");
                let map = env
                    .as_mapping()
                    .unwrap_or_else(|| panic!("{name}: environment must be a mapping"));
                for (k, v) in map {
                    let k = k.as_str().expect("env key").to_string();
                    let v = match v {
                        serde_yaml::Value::String(s) => s.clone(),
                        serde_yaml::Value::Number(n) => n.to_string(),
                        serde_yaml::Value::Bool(b) => b.to_string(),
                        other => panic!("{name}: {k} has a value that is not a string: {other:?}"),
                    };
                    environment.insert(k, interpolate(&v));
                }
            }
            out.insert(
                name,
                ComposeService {
                    command,
                    environment,
                },
            );
        }
        Compose {
            services: out,
            names,
        }
    }

    pub fn service(&self, name: &str) -> &ComposeService {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?} with a command"))
    }
}

/// moto's S3-compatible server (`python3 -m moto.server`, PyPI `moto[server]`).
pub struct Moto {
    child: Child,
    pub url: String,
    pub addr: String,
}

impl Moto {
    /// Starts moto on a free port.
    pub fn start(log: &std::path::Path) -> Moto {
        Self::start_on(log, free_port())
    }

    /// Starts moto on `port` (a configuration's own, such as the seed's 8003).
    pub fn start_on(log: &std::path::Path, port: u16) -> Moto {
        let probe = Command::new(crate::python())
            .args(["-c", "import moto, flask"])
            .output()
            .expect("python3");
        assert!(
            probe.status.success(),
            "moto's server is needed: run ./scripts/setup.sh, which installs it into .venv ({})",
            String::from_utf8_lossy(&probe.stderr)
        );
        let file = std::fs::File::create(log).expect("moto log");
        let child = Command::new(crate::python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::from(file.try_clone().expect("log")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawning moto");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            url: format!("http://{addr}"),
            addr,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The topology, running.
pub struct Topology {
    pub dir: tempfile::TempDir,
    pub compose: Compose,
    /// `host:port` of the compose network → `127.0.0.1:port` here.
    addresses: HashMap<String, String>,
    /// `0.0.0.0:port` per service → its loopback address here.
    listens: HashMap<(String, String), String>,
    running: HashMap<String, Service>,
    pub db: Option<TestDatabase>,
    pub moto: Moto,
    /// The admin API of the control plane, with the compose file's admin token and org.
    pub admin: Api,
}

impl Topology {
    /// Starts every service of [`SERVICES`] (the database and moto first).
    pub async fn start() -> Topology {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().expect("tempdir");
        let compose = Compose::load();
        let admin_url = std::env::var("REACTOR_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        crate::require_service(
            "Redis",
            "127.0.0.1:6379",
            "start it with `redis-server --daemonize yes`",
        );
        let db = TestDatabase::create(&admin_url).await;
        eprintln!("topology: database at {} ms", t0.elapsed().as_millis());
        let moto = Moto::start(&dir.path().join("moto.log"));
        eprintln!("topology: moto at {} ms", t0.elapsed().as_millis());

        // The compose file's certificates: its tls-init command, into a directory here.
        let tls_there = compose
            .service("control-plane")
            .environment
            .get(TLS_DIR_KEY)
            .unwrap_or_else(|| {
                panic!("the control plane has no {TLS_DIR_KEY} in docker-compose.yml")
            })
            .clone();
        let tls_here = dir.path().join("tls");
        let init = &compose.service(TLS_INIT).command;
        let out = Command::new(crate::service_bin(&init[0]))
            .args(init[1..].iter().map(|a| {
                if *a == tls_there {
                    tls_here.display().to_string()
                } else {
                    a.clone()
                }
            }))
            .output()
            .expect("running the compose file's tls-init command");
        assert!(
            out.status.success() && tls_here.join("ca.pem").exists(),
            "tls-init ({init:?}) wrote no certificates into {}: {}",
            tls_here.display(),
            String::from_utf8_lossy(&out.stderr)
        );

        let mut addresses = HashMap::new();
        addresses.insert("redis:6379".to_string(), "127.0.0.1:6379".to_string());
        addresses.insert("minio:9000".to_string(), moto.addr.clone());
        // Traces go to a port nobody listens on: the export fails quietly, off the path.
        addresses.insert(
            "otel-collector:4317".to_string(),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut listens = HashMap::new();
        for name in SERVICES {
            for value in compose.service(name).environment.values() {
                if let Some(port) = value.strip_prefix("0.0.0.0:") {
                    let here = format!("127.0.0.1:{}", free_port());
                    addresses.insert(format!("{name}:{port}"), here.clone());
                    listens.insert((name.to_string(), value.clone()), here);
                }
            }
        }
        let cp = compose.service("control-plane").environment.clone();
        let admin_port = cp
            .get("REACTOR_CONTROL_PLANE_LISTEN")
            .and_then(|l| l.rsplit(':').next())
            .expect("the control plane's REACTOR_CONTROL_PLANE_LISTEN");
        let admin = Api {
            url: format!(
                "http://{}",
                addresses[&format!("control-plane:{admin_port}")]
            ),
            token: cp
                .get("REACTOR_ADMIN_TOKEN")
                .expect("REACTOR_ADMIN_TOKEN in the compose file")
                .clone(),
            org: cp
                .get("REACTOR_ORG")
                .cloned()
                .unwrap_or_else(|| "default".into()),
            http: reqwest::Client::new(),
        };
        let mut topology = Topology {
            dir,
            compose,
            addresses,
            listens,
            running: HashMap::new(),
            db: Some(db),
            moto,
            admin,
        };
        for name in SERVICES {
            topology.start_service(name);
            eprintln!("topology: {name} at {} ms", t0.elapsed().as_millis());
        }
        topology
    }

    /// The environment of `name` as the compose file gives it, localised.
    pub fn environment(&self, name: &str) -> Vec<(String, String)> {
        let service = self.compose.service(name);
        let db_url = self.db.as_ref().map(|d| d.url.clone()).unwrap_or_default();
        let mut env = Vec::new();
        for (key, value) in &service.environment {
            let value = if key == DATABASE_KEY {
                db_url.clone()
            } else if key == TLS_DIR_KEY {
                self.dir.path().join("tls").display().to_string()
            } else if let Some(here) = self.listens.get(&(name.to_string(), value.clone())) {
                here.clone()
            } else {
                let mut v = value.clone();
                for (there, here) in &self.addresses {
                    v = v.replace(there, here);
                }
                v
            };
            env.push((key.clone(), value));
        }
        for (key, value) in &env {
            for other in &self.compose.names {
                // `host:port` or `scheme://host:port` (a value may start with `redis://`).
                let bare = value.starts_with(&format!("{other}:"))
                    && !value.starts_with(&format!("{other}://"));
                assert!(
                    !value.contains(&format!("//{other}:")) && !bare,
                    "{name}: {key}={value} still names compose host {other}: map it in tests/src/topology.rs"
                );
            }
        }
        assert!(
            name != "control-plane" || service.environment.contains_key(DATABASE_KEY),
            "the control plane has no {DATABASE_KEY} in docker-compose.yml"
        );
        // Each process gets its own directories here (containers each have their own).
        let work = self.dir.path().join(name);
        env.push((
            "REACTOR_FUNCTIONS_WORKDIR".into(),
            work.join("work").display().to_string(),
        ));
        env.push((
            "REACTOR_WORKER_CACHE_DIR".into(),
            work.join("cache").display().to_string(),
        ));
        env.push((
            "REACTOR_FUNCTIONS_BUN_PATH".into(),
            crate::bun_bin().display().to_string(),
        ));
        env
    }

    pub fn start_service(&mut self, name: &str) {
        let env = self.environment(name);
        let command = self.compose.service(name).command.clone();
        let env_refs: Vec<(&str, String)> =
            env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let args: Vec<String> = command[1..].to_vec();
        let service = Service::start(&command[0], &args, &env_refs, &self.log_path(name));
        self.running.insert(name.to_string(), service);
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// SIGKILL: the process dies as on a lost machine.
    pub fn kill(&mut self, name: &str) {
        if let Some(s) = self.running.remove(name) {
            s.kill();
        }
    }

    /// SIGTERM and wait (drains).
    pub fn stop(&mut self, name: &str) {
        if let Some(s) = self.running.remove(name) {
            s.stop();
        }
    }

    /// The loopback address of the compose address `service:port`.
    pub fn address(&self, compose_address: &str) -> String {
        self.addresses
            .get(compose_address)
            .unwrap_or_else(|| panic!("no address for {compose_address}"))
            .clone()
    }

    /// The invoke URL of router `name` (its listen address).
    pub fn router_url(&self, name: &str) -> String {
        let listen = self
            .compose
            .service(name)
            .environment
            .get("REACTOR_DATA_PLANE_LISTEN")
            .expect("REACTOR_DATA_PLANE_LISTEN");
        format!(
            "http://{}",
            self.listens[&(name.to_string(), listen.clone())]
        )
    }

    /// Every service's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in SERVICES {
            let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Stops everything and drops the database.
    pub async fn shutdown(mut self) {
        for name in SERVICES.iter().rev() {
            self.stop(name);
        }
        if let Some(db) = self.db.take() {
            db.drop_now().await;
        }
    }
}
