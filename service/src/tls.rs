//! Mutual TLS between the services (`[internal] tls`), with a cluster CA.
//!
//! Each service holds the CA certificate and the certificate of its role. A role's
//! certificate names `<role>.reactor.internal`, and a peer is verified against that name,
//! not the host or address it was dialled at: one worker certificate serves every worker
//! (no certificate per pod), and a router's certificate can neither serve as a worker nor
//! register as one. Clients always present their certificate; which roles a server
//! accepts is the server's call ([`TlsListener`] for the workers' HTTP, [`peer_role`] for
//! the control plane's gRPC, whose admin API also takes callers without one).
//!
//! [`generate`] writes a CA and the three roles' certificates into a directory once
//! (`reactor tls init`, `reactor-control-plane --tls-init`), keeping what is there.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The domain every role's name is under.
pub const DOMAIN: &str = "reactor.internal";
/// The CA certificate's file in the TLS directory.
pub const CA_FILE: &str = "ca.pem";
/// The CA key's file: only [`generate`] reads it; no service needs it.
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress on one listener at most; more connections wait in the backlog.
const MAX_HANDSHAKES: usize = 1024;

/// What a service is to the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    ControlPlane,
    Router,
    Worker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::ControlPlane, Role::Router, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Router => "router",
            Role::Worker => "worker",
        }
    }

    /// The name its certificate carries, e.g. `worker.reactor.internal`.
    pub fn dns_name(self) -> String {
        format!("{}.{DOMAIN}", self.as_str())
    }

    fn server_name(self) -> ServerName<'static> {
        // The names are fixed and valid.
        ServerName::try_from(self.dns_name()).unwrap_or_else(|_| {
            ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
        })
    }

    pub fn cert_file(self) -> String {
        format!("{}.pem", self.as_str())
    }

    pub fn key_file(self) -> String {
        format!("{}.key", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "internal.tls is on but {path} is missing; generate the cluster's certificates once with `reactor tls init --dir {dir}` (or `reactor-control-plane --tls-init {dir}`), or set internal.tls_dir (REACTOR_INTERNAL_TLS_DIR) to where they are"
    )]
    Missing { path: PathBuf, dir: String },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("generating certificates: {0}")]
    Generate(String),
}

/// The connector routers and the control plane reach workers with.
pub type Connector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A connector for plain `http` URLs (`[internal] tls` off). It trusts no certificate, so
/// an `https` URL fails rather than reaching an unverified peer.
pub fn plain_connector(
    mut http: hyper_util::client::legacy::connect::HttpConnector,
) -> Result<Connector, TlsError> {
    http.enforce_http(false);
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnector::new(
        http,
        config,
        false,
        Arc::new(hyper_rustls::DefaultServerNameResolver::default()),
    ))
}

/// One service's TLS material: the cluster CA, and its role's certificate and key.
#[derive(Clone)]
pub struct InternalTls {
    role: Role,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

/// Shows the role, never the key.
impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalTls")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, dir: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            TlsError::Missing {
                path: path.to_path_buf(),
                dir: dir.display().to_string(),
            }
        } else {
            TlsError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("not a PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

impl InternalTls {
    /// `ca.pem` and the role's `<role>.pem` and `<role>.key` from `dir`. Checked now: the
    /// certificate must chain to the CA, name the role and match the key, so that a
    /// mistake stops the service at start, not at its first connection.
    pub fn load(dir: &Path, role: Role) -> Result<Self, TlsError> {
        // tonic's server builds its rustls config with the process's provider, which
        // cannot be inferred when the AWS SDK links a second one: make it ring, as here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_path = dir.join(CA_FILE);
        let cert_path = dir.join(role.cert_file());
        let key_path = dir.join(role.key_file());
        let ca_pem = read(&ca_path, dir)?;
        let cert_pem = read(&cert_path, dir)?;
        let key_pem = read(&key_path, dir)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&ca_path, &ca_pem)? {
            roots.add(ca).map_err(|e| TlsError::Invalid {
                path: ca_path.clone(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let chain = certs(&cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
            path: key_path.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let tls = Self {
            role,
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            ca_pem,
            cert_pem,
            key_pem,
        };
        tls.check(&cert_path)?;
        Ok(tls)
    }

    /// `Some` when `config.tls` is on.
    pub fn from_config(
        config: &reactor_api::config::InternalConfig,
        role: Role,
    ) -> Result<Option<Self>, TlsError> {
        if !config.tls {
            return Ok(None);
        }
        let dir = reactor_api::config::absolute(&config.tls_dir);
        Self::load(&dir, role).map(Some)
    }

    fn check(&self, cert_path: &Path) -> Result<(), TlsError> {
        let invalid = |reason: String| TlsError::Invalid {
            path: cert_path.to_path_buf(),
            reason,
        };
        let Some(leaf) = self.chain.first() else {
            return Err(invalid("holds no certificate".into()));
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(
                leaf,
                self.chain.get(1..).unwrap_or_default(),
                &self.role.server_name(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map_err(|e| {
                invalid(format!(
                    "not a valid {} certificate of this cluster's CA ({e}); it must be signed by ca.pem and name {}",
                    self.role,
                    self.role.dns_name()
                ))
            })?;
        if peer_role(&self.chain) != Some(self.role) {
            return Err(invalid(format!(
                "names more than the {} role (a wildcard?): each role needs its own certificate",
                self.role
            )));
        }
        // The key must be the certificate's.
        self.server_config()
            .map(|_| ())
            .map_err(|e| invalid(format!("does not match its key: {e}")))
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// A rustls server config that verifies client certificates against the cluster's CA
    /// and speaks HTTP/2 and HTTP/1.1. A client without a certificate gets through the
    /// handshake (health probes have none); what it may ask for is [`TlsListener`]'s and
    /// [`only_health_without_a_role`]'s call.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A rustls client config that trusts the cluster's CA only, presents this service's
    /// certificate and speaks HTTP/2. The peer's name is the caller's to give (its role).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// An HTTPS-only connector to services of role `peer`, verified by that role's name.
    pub fn https_connector(
        &self,
        mut http: hyper_util::client::legacy::connect::HttpConnector,
        peer: Role,
    ) -> Result<Connector, TlsError> {
        // The connector below wraps it: it must let `https` URLs through.
        http.enforce_http(false);
        Ok(hyper_rustls::HttpsConnector::new(
            http,
            self.client_config()?,
            true,
            Arc::new(hyper_rustls::FixedServerNameResolver::new(
                peer.server_name(),
            )),
        ))
    }

    /// gRPC client TLS to the control plane, verified by its role's name.
    pub fn tonic_client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(Role::ControlPlane.dns_name())
    }

    /// gRPC server TLS: clients of the cluster's CA are verified when they present a
    /// certificate; those that do not (admin API callers) are let through to the
    /// services, which check [`peer_role`] themselves.
    pub fn tonic_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// The role a verified peer certificate names, if any. The chain was verified by the TLS
/// handshake; this reads the leaf's name.
pub fn peer_role(chain: &[CertificateDer<'_>]) -> Option<Role> {
    let leaf = chain.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let mut named = Role::ALL.into_iter().filter(|role| {
        cert.verify_is_valid_for_subject_name(&role.server_name())
            .is_ok()
    });
    // A certificate naming several roles (a wildcard) is no role's.
    match (named.next(), named.next()) {
        (Some(role), None) => Some(role),
        _ => None,
    }
}

/// Who is on the other end of a TLS connection: its address, and the role its verified
/// certificate names (none: it presented no certificate).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub role: Option<Role>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// Paths a client without a certificate may ask for: the health checks (a load balancer
/// or the kubelet has no certificate) and `/metrics` (Prometheus has none either; it
/// checks its own bearer token or loopback: [`crate::metrics`]).
pub const HEALTH_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Middleware for a TLS app: a peer without a certificate gets the health checks only.
pub async fn only_health_without_a_role(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<Peer>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if peer.role.is_none() && !HEALTH_PATHS.contains(&req.uri().path()) {
        return reactor_api::ApiError::new(
            reactor_api::ErrorCode::Forbidden,
            "a client certificate of this cluster is required here",
        )
        .into_response();
    }
    next.run(req).await
}

/// Accepts TLS connections for `axum::serve`: handshakes run concurrently (a slow client
/// holds up no other) and time out after 10 s; a client whose certificate is of a role
/// not `allowed` is dropped, one without a certificate is let in with no role.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    allowed: Vec<Role>,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, Peer)>>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>, allowed: &[Role]) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            allowed: allowed.to_vec(),
            handshakes: JoinSet::new(),
        }
    }

    fn start(&mut self, tcp: TcpStream, addr: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let acceptor = self.acceptor.clone();
        let allowed = self.allowed.clone();
        self.handshakes.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                // A TCP probe (connect, close) is no failure worth a warning.
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::debug!(peer = %addr, "connection closed before the TLS handshake");
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %addr, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::warn!(peer = %addr, "TLS handshake timed out");
                    return None;
                }
            };
            let certs = tls.get_ref().1.peer_certificates();
            let role = certs.and_then(peer_role);
            match (certs.is_some(), role) {
                (false, _) => Some((tls, Peer { addr, role: None })),
                (true, Some(role)) if allowed.contains(&role) => Some((
                    tls,
                    Peer {
                        addr,
                        role: Some(role),
                    },
                )),
                (true, role) => {
                    tracing::warn!(peer = %addr, role = ?role, "connection refused: its certificate is not of a role allowed here");
                    None
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => {
                    match accepted {
                        Ok((tcp, addr)) => self.start(tcp, addr),
                        Err(e) => {
                            // Out of descriptors and the like: wait a little, as axum does.
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.tcp.local_addr()?,
            role: None,
        })
    }
}

/// What [`generate`] did with each file.
#[derive(Debug, Default)]
pub struct Generated {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// How long the generated CA and role certificates are valid.
const CA_DAYS: i64 = 3650;
const ROLE_DAYS: i64 = 1825;

fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Reactor cluster CA");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Reactor");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes `path` whole or not at all (a temporary file renamed over it), with `mode`.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn remove(path: &Path) -> Result<(), TlsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TlsError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes into `dir` a cluster CA (`ca.pem`, `ca.key`) and each role's certificate and
/// key, keeping every file already there: run once, it is done; run again, nothing
/// changes. A missing role pair (or half of one, as a crash may leave) is issued from the
/// CA in the directory, so a role is reissued by deleting its pair. Only a CA this
/// function made can issue: the role certificates of another CA come from its own PKI.
/// Keys are written 0600, a directory it creates 0700.
pub fn generate(dir: &Path) -> Result<Generated, TlsError> {
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    {
        use std::os::unix::fs::DirBuilderExt;
        let write_err = |source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(write_err)?;
        }
    }
    let mut done = Generated::default();
    let ca_path = dir.join(CA_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let now = time_now();
    let mut pending: Vec<Role> = Vec::new();
    for role in Role::ALL {
        let (cert, key) = (dir.join(role.cert_file()), dir.join(role.key_file()));
        match (cert.exists(), key.exists()) {
            (true, true) => done.kept.extend([cert, key]),
            (false, false) => pending.push(role),
            // Half a pair (an interrupted run): issued again whole.
            (true, false) | (false, true) => {
                remove(&cert)?;
                remove(&key)?;
                pending.push(role);
            }
        }
    }
    let ca_key = match (ca_path.exists(), ca_key_path.exists()) {
        (true, true) => {
            done.kept.extend([ca_path.clone(), ca_key_path.clone()]);
            if pending.is_empty() {
                return Ok(done);
            }
            let pem = read(&ca_key_path, dir)?;
            let pem = String::from_utf8(pem).map_err(|_| TlsError::Invalid {
                path: ca_key_path.clone(),
                reason: "not PEM".into(),
            })?;
            rcgen::KeyPair::from_pem(&pem).map_err(|e| TlsError::Invalid {
                path: ca_key_path.clone(),
                reason: format!("not a usable CA key: {e}"),
            })?
        }
        (true, false) if pending.is_empty() => {
            done.kept.push(ca_path);
            return Ok(done);
        }
        (true, false) => {
            return Err(TlsError::Invalid {
                path: ca_key_path,
                reason: "is needed to issue the missing certificates from ca.pem (or provide them yourself)".into(),
            });
        }
        (false, true) if !done.kept.is_empty() => {
            return Err(TlsError::Invalid {
                path: ca_path,
                reason: "is missing while ca.key and role certificates are there".into(),
            });
        }
        (false, _) => {
            if !done.kept.is_empty() {
                return Err(TlsError::Invalid {
                    path: ca_path,
                    reason: "is missing while role certificates are there: they were issued by a CA this directory does not hold".into(),
                });
            }
            // A CA key alone (an interrupted first run): start over.
            remove(&ca_key_path)?;
            let key = rcgen::KeyPair::generate().map_err(gen_err)?;
            let mut params = ca_params();
            params.not_before = now;
            params.not_after = now + time::Duration::days(CA_DAYS);
            let cert = params.self_signed(&key).map_err(gen_err)?;
            write_new(&ca_key_path, &key.serialize_pem(), 0o600)?;
            write_new(&ca_path, &cert.pem(), 0o644)?;
            done.created.extend([ca_path.clone(), ca_key_path.clone()]);
            key
        }
    };
    let issuer = rcgen::Issuer::new(ca_params(), ca_key);
    for role in pending {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let mut params = rcgen::CertificateParams::new(vec![role.dns_name()]).map_err(gen_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, role.dns_name());
        params.not_before = now;
        params.not_after = now + time::Duration::days(ROLE_DAYS);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        let (cert_path, key_path) = (dir.join(role.cert_file()), dir.join(role.key_file()));
        write_new(&key_path, &key.serialize_pem(), 0o600)?;
        write_new(&cert_path, &cert.pem(), 0o644)?;
        // Issued from a ca.pem this function did not make, it would not chain to it.
        if let Err(e) = InternalTls::load(dir, role) {
            remove(&cert_path)?;
            remove(&key_path)?;
            return Err(TlsError::Invalid {
                path: ca_path,
                reason: format!(
                    "cannot issue from this CA ({e}); it was not made by `reactor tls init`: issue each role's certificate from your own PKI (docs/operations.md)"
                ),
            });
        }
        done.created.extend([cert_path, key_path]);
    }
    Ok(done)
}

/// Now, a minute back so that clocks slightly behind still accept a fresh certificate.
fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::minutes(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_and_each_role_loads_with_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generate(dir.path()).expect("generate");
        assert_eq!(first.created.len(), 8, "{first:?}");
        let again = generate(dir.path()).expect("generate again");
        assert!(again.created.is_empty(), "{again:?}");
        for role in Role::ALL {
            let tls = InternalTls::load(dir.path(), role).expect("loads");
            assert_eq!(peer_role(&tls.chain), Some(role));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("worker.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_reissued_role_chains_to_the_same_ca_and_a_foreign_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate(dir.path()).expect("generate");
        std::fs::remove_file(dir.path().join("router.pem")).expect("rm");
        std::fs::remove_file(dir.path().join("router.key")).expect("rm");
        let again = generate(dir.path()).expect("reissue");
        assert_eq!(again.created.len(), 2, "{again:?}");
        InternalTls::load(dir.path(), Role::Router).expect("reissued router loads");

        // Another cluster's worker certificate is not this cluster's.
        let other = tempfile::tempdir().expect("tempdir");
        generate(other.path()).expect("generate");
        for f in ["worker.pem", "worker.key"] {
            std::fs::copy(other.path().join(f), dir.path().join(f)).expect("copy");
        }
        let err = InternalTls::load(dir.path(), Role::Worker).expect_err("foreign CA");
        assert!(
            err.to_string().contains("not a valid worker certificate"),
            "{err}"
        );
        // A router's certificate does not pass as a worker's.
        std::fs::copy(dir.path().join("router.pem"), dir.path().join("worker.pem")).expect("copy");
        std::fs::copy(dir.path().join("router.key"), dir.path().join("worker.key")).expect("copy");
        let err = InternalTls::load(dir.path(), Role::Worker).expect_err("wrong role");
        assert!(
            err.to_string().contains("name worker.reactor.internal"),
            "{err}"
        );
    }

    #[test]
    fn half_a_pair_is_reissued_and_a_ca_it_did_not_make_issues_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate(dir.path()).expect("generate");
        std::fs::remove_file(dir.path().join("worker.pem")).expect("rm");
        let again = generate(dir.path()).expect("reissue");
        assert_eq!(again.created.len(), 2, "{again:?}");
        InternalTls::load(dir.path(), Role::Worker).expect("whole again");

        // ca.pem of another CA (as an operator's own would be): nothing is issued.
        let other = tempfile::tempdir().expect("tempdir");
        generate(other.path()).expect("generate");
        std::fs::copy(other.path().join("ca.pem"), dir.path().join("ca.pem")).expect("copy");
        std::fs::remove_file(dir.path().join("router.pem")).expect("rm");
        std::fs::remove_file(dir.path().join("router.key")).expect("rm");
        let err = generate(dir.path()).expect_err("foreign CA");
        assert!(err.to_string().contains("own PKI"), "{err}");
        assert!(!dir.path().join("router.pem").exists());
        assert!(!dir.path().join("router.key").exists());
    }

    #[test]
    fn a_missing_file_says_how_to_generate_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = InternalTls::load(dir.path(), Role::Router).expect_err("nothing there");
        let msg = err.to_string();
        assert!(msg.contains("ca.pem is missing"), "{msg}");
        assert!(msg.contains("reactor tls init"), "{msg}");
    }
}
