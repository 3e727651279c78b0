//! Outgoing HTTP from functions: allowed to public addresses only, so that user code
//! cannot reach the platform, its metadata services or the private network.
//!
//! The host name is resolved once and the connection goes to the very addresses that
//! were checked: a DNS answer that changes between check and connect (rebinding, TTL 0)
//! cannot redirect it. This module must not hand the request to anything that resolves
//! the name again (such as `wasmtime_wasi_http::default_send_request`).

use futures::future::{BoxFuture, Either};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::Connection;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Timeouts when the guest sets none (those of wasmtime's `default_send_request`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Turns a host name into addresses. A trait so that tests can play a rebinding DNS.
pub trait Resolve: Send + Sync {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo`, through tokio).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Where outgoing requests may go: every resolved address must pass `allowed`.
#[derive(Clone)]
pub struct OutboundPolicy {
    resolver: Arc<dyn Resolve>,
    allowed: fn(IpAddr) -> bool,
}

impl Default for OutboundPolicy {
    /// The system resolver, public addresses only.
    fn default() -> Self {
        Self::new(Arc::new(SystemResolver), is_public)
    }
}

/// Whether an address is on the public internet: not loopback, private, link-local,
/// multicast, documentation, benchmarking or reserved, and not a v6 form that embeds or
/// translates to an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0 // "this network" 0/8
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
                || o[0] >= 240) // reserved 240/4
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(s[..6] == [0; 6] // ::/96: unspecified, loopback, IPv4-compatible
                || v6.is_multicast()
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) // NAT64 64:ff9b::/96
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local NAT64 64:ff9b:1::/48
                || (s[0] == 0x100 && s[1..4] == [0; 3]) // discard 100::/64
                || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
                || (s[0] == 0x2001 && s[1] == 2 && s[2] == 0) // benchmarking 2001:2::/48
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x10) // ORCHID 2001:10::/28
                || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x20) // ORCHIDv2 2001:20::/28
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
                || (s[0] == 0x3fff && (s[1] & 0xf000) == 0) // documentation 3fff::/20
                || s[0] == 0x2002 // 6to4 2002::/16
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0) // site local fec0::/10
        }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
)>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let policy = self.clone();
        Box::new(async move { policy.send(request, options.unwrap_or_default()).await })
    }
}

/// The connection under HTTP: plain TCP or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

type Conn = Pin<Box<Connection<TokioIo<Box<dyn Stream>>, WasiBody>>>;

impl OutboundPolicy {
    pub fn new(resolver: Arc<dyn Resolve>, allowed: fn(IpAddr) -> bool) -> Self {
        Self { resolver, allowed }
    }

    async fn send(
        self,
        mut request: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> SendResult {
        let uri = request.uri();
        let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let first_byte_timeout = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let between_bytes_timeout = options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT);

        let addrs = self.addresses(&host, port, connect_timeout).await?;
        if let Some(denied) = addrs.iter().find(|a| !(self.allowed)(a.ip())) {
            tracing::info!(host, address = %denied.ip(), "outgoing request to a non-public address denied");
            return Err(HttpError::DestinationIpProhibited);
        }
        let stream = tokio::time::timeout(connect_timeout, open(&host, &addrs, https))
            .await
            .map_err(|_| HttpError::ConnectionTimeout)??;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(HttpError::Hyper)?;

        // Origin form on the wire: scheme and authority only go to proxies.
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = http::Uri::from(path);

        let sent = Box::pin(sender.send_request(request));
        let (response, conn) =
            tokio::time::timeout(first_byte_timeout, first_response(sent, Box::pin(conn)))
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout)??;
        let response = response.map(|incoming| {
            ResponseBody {
                incoming,
                idle: between_bytes_timeout,
                timer: Box::pin(tokio::time::sleep(between_bytes_timeout)),
            }
            .boxed_unsync()
        });
        // The rest of the exchange (the response body) flows while wasmtime drives this.
        let io = async move {
            match conn {
                Some(conn) => conn.await.map_err(connection_error),
                None => Ok(()),
            }
        };
        Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
    }

    /// The addresses of `host` (an IP literal is its own), from one query.
    async fn addresses(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, HttpError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs = tokio::time::timeout(timeout, self.resolver.resolve(host, port))
            .await
            .map_err(|_| HttpError::DnsTimeout)?
            .map_err(|error| {
                tracing::debug!(host, %error, "outgoing request host lookup failed");
                HttpError::DnsError {
                    rcode: None,
                    info_code: None,
                }
            })?;
        if addrs.is_empty() {
            return Err(HttpError::DestinationNotFound);
        }
        Ok(addrs)
    }
}

/// A connection to the checked `addrs`, with TLS for `host` if `https`.
async fn open(host: &str, addrs: &[SocketAddr], https: bool) -> Result<Box<dyn Stream>, HttpError> {
    let tcp = connect_any(addrs).await?;
    if https {
        tls(host, tcp).await
    } else {
        Ok(Box::new(tcp))
    }
}

/// A TCP connection to the first of `addrs` that accepts, in order.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, HttpError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(*addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(last.map_or(HttpError::DestinationNotFound, HttpError::Connect))
}

/// TLS over `tcp`, the certificate checked against `host` with the webpki roots.
async fn tls(host: &str, tcp: TcpStream) -> Result<Box<dyn Stream>, HttpError> {
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(host.to_string())?,
    };
    let connector = tokio_rustls::TlsConnector::from(tls_config()?);
    let stream = connector.connect(name, tcp).await.map_err(HttpError::Tls)?;
    Ok(Box::new(stream))
}

/// One client configuration for the process: building the root store is not free.
fn tls_config() -> Result<Arc<ClientConfig>, HttpError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    // An explicit provider: with both ring and aws-lc-rs linked, rustls has no default.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| HttpError::InternalError(Some(format!("tls configuration: {error}"))))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

/// Waits for the response head while driving the connection; hands the connection back
/// unless it already finished.
async fn first_response<F>(
    sent: F,
    conn: Conn,
) -> Result<(http::Response<Incoming>, Option<Conn>), HttpError>
where
    F: Future<Output = hyper::Result<http::Response<Incoming>>> + Unpin,
{
    match futures::future::select(sent, conn).await {
        Either::Left((response, conn)) => Ok((response.map_err(HttpError::Hyper)?, Some(conn))),
        Either::Right((closed, sent)) => {
            closed.map_err(connection_error)?;
            Ok((sent.await.map_err(HttpError::Hyper)?, None))
        }
    }
}

fn connection_error(error: hyper::Error) -> HttpError {
    if error.is_timeout() {
        HttpError::HttpResponseTimeout
    } else {
        HttpError::Hyper(error)
    }
}

/// The response body; fails when the server pauses longer than `idle` between frames.
struct ResponseBody {
    incoming: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.timer.set(tokio::time::sleep(this.idle));
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(connection_error(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Empty;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_util::task::AbortOnDropHandle;

    #[test]
    fn only_public_addresses_are_allowed() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.254",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:db8::1",
            "2002:a9fe:a9fe::1",
            "3fff::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "100.128.0.1",
            "192.88.100.1",
            "198.20.0.1",
            "::ffff:1.1.1.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2001:200::1",
        ] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }

    /// A DNS that answers `first`, then `then` to every later query (rebinding).
    struct Flipping {
        first: IpAddr,
        then: IpAddr,
        queries: AtomicUsize,
    }

    impl Flipping {
        fn new(first: IpAddr, then: IpAddr) -> Arc<Self> {
            Arc::new(Self {
                first,
                then,
                queries: AtomicUsize::new(0),
            })
        }
    }

    impl Resolve for Flipping {
        fn resolve<'a>(
            &'a self,
            _host: &'a str,
            port: u16,
        ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
            let ip = if self.queries.fetch_add(1, Ordering::SeqCst) == 0 {
                self.first
            } else {
                self.then
            };
            Box::pin(async move { Ok(vec![SocketAddr::new(ip, port)]) })
        }
    }

    /// A DNS that always gives the same answer.
    struct Fixed(Vec<IpAddr>);

    impl Resolve for Fixed {
        fn resolve<'a>(
            &'a self,
            _host: &'a str,
            port: u16,
        ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
            let addrs = self.0.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            Box::pin(async move { Ok(addrs) })
        }
    }

    const ALLOWED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

    fn only_127_0_0_2(ip: IpAddr) -> bool {
        ip == IpAddr::V4(ALLOWED)
    }

    /// An HTTP/1 server answering every request with its own address as the body.
    struct Server {
        port: u16,
        hits: Arc<AtomicUsize>,
        _task: AbortOnDropHandle<()>,
    }

    fn serve(listener: TcpListener) -> Server {
        let local = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = local.ip().to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Server {
            port: local.port(),
            hits,
            _task: AbortOnDropHandle::new(task),
        }
    }

    fn request(uri: &str) -> http::Request<WasiBody> {
        http::Request::builder()
            .uri(uri)
            .header(http::header::HOST, "rebind.test")
            .body(
                Empty::<Bytes>::new()
                    .map_err(HttpError::from)
                    .boxed_unsync(),
            )
            .expect("request")
    }

    async fn send(policy: &mut OutboundPolicy, uri: &str) -> SendResult {
        let fut = policy.send_request(request(uri), None, Box::new(async { Ok(()) }));
        Pin::from(fut).await
    }

    async fn body_of(result: SendResult) -> String {
        let (response, io) = result.expect("response");
        assert_eq!(response.status(), http::StatusCode::OK);
        let _io = AbortOnDropHandle::new(tokio::spawn(Pin::from(io)));
        let body = response.into_body().collect().await.expect("body");
        String::from_utf8(body.to_bytes().to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn connects_to_the_address_it_checked() {
        let allowed = serve(TcpListener::bind((ALLOWED, 0)).await.expect("bind"));
        let port = allowed.port;
        // Where a second lookup would lead; the port may be taken, then only the first
        // server's answer tells.
        let forbidden = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(listener) => Some(serve(listener)),
            Err(_) => None,
        };
        let dns = Flipping::new(ALLOWED.into(), Ipv4Addr::LOCALHOST.into());
        let mut policy = OutboundPolicy::new(dns.clone(), only_127_0_0_2);

        let body = body_of(send(&mut policy, &format!("http://rebind.test:{port}/")).await).await;

        assert_eq!(body, "127.0.0.2");
        assert_eq!(dns.queries.load(Ordering::SeqCst), 1, "resolved once");
        assert_eq!(allowed.hits.load(Ordering::SeqCst), 1);
        if let Some(forbidden) = forbidden {
            assert_eq!(forbidden.hits.load(Ordering::SeqCst), 0);
        }
    }

    #[tokio::test]
    async fn ip_literals_are_not_looked_up() {
        let allowed = serve(TcpListener::bind((ALLOWED, 0)).await.expect("bind"));
        let dns = Flipping::new(Ipv4Addr::LOCALHOST.into(), Ipv4Addr::LOCALHOST.into());
        let mut policy = OutboundPolicy::new(dns.clone(), only_127_0_0_2);

        let uri = format!("http://127.0.0.2:{}/", allowed.port);
        assert_eq!(body_of(send(&mut policy, &uri).await).await, "127.0.0.2");
        assert_eq!(dns.queries.load(Ordering::SeqCst), 0);

        let refused = send(&mut policy, "http://169.254.169.254/latest/meta-data/").await;
        assert!(matches!(refused, Err(HttpError::DestinationIpProhibited)));
        assert_eq!(dns.queries.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn any_forbidden_address_refuses_without_connecting() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let uri = format!("http://metadata.test:{port}/");
        for answer in [
            vec!["169.254.169.254"],
            vec!["64:ff9b::a9fe:a9fe"],
            vec!["1.1.1.1", "127.0.0.1"],
        ] {
            let answer = answer.iter().map(|ip| ip.parse().expect("ip")).collect();
            let mut policy = OutboundPolicy::new(Arc::new(Fixed(answer)), is_public);
            let refused = send(&mut policy, &uri).await;
            assert!(matches!(refused, Err(HttpError::DestinationIpProhibited)));
        }
        // A connect would be in the accept queue by now.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "nothing connected");
    }

    #[tokio::test]
    async fn a_mixed_answer_is_refused_whole() {
        let allowed = serve(TcpListener::bind((ALLOWED, 0)).await.expect("bind"));
        let dns = Fixed(vec![ALLOWED.into(), Ipv4Addr::LOCALHOST.into()]);
        let mut policy = OutboundPolicy::new(Arc::new(dns), only_127_0_0_2);

        let uri = format!("http://rebind.test:{}/", allowed.port);
        let refused = send(&mut policy, &uri).await;

        assert!(matches!(refused, Err(HttpError::DestinationIpProhibited)));
        assert_eq!(allowed.hits.load(Ordering::SeqCst), 0);
    }
}
