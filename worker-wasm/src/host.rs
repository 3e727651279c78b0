//! What an instance's store holds: WASI and wasi:http state, the resource limiter that
//! enforces the deployment's memory limit, and the outbound HTTP policy
//! ([`OutboundPolicy`], in `outbound.rs`).
//!
//! Besides memory, an instance is bounded in what it takes of the worker's file
//! descriptors and host memory: at most [`MAX_RESOURCES`] (4096) entries in its resource
//! table (streams, pollables, requests, fields) and [`MAX_OUTGOING_REQUESTS`] (32)
//! outgoing HTTP requests at once, each counted from its send until its connection ends.

use crate::outbound::OutboundPolicy;
use http::HeaderName;
use http::uri::Scheme;
use http_body_util::BodyExt;
use reactor_worker_link::calls::CallScope;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Semaphore;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, ForbiddenHeaderFilter, RequestOptions, WasiBody, WasiHttpCtx,
    WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// Most entries one instance may hold in its resource table.
pub const MAX_RESOURCES: usize = 4096;

/// Most outgoing HTTP requests one instance may have in flight.
pub const MAX_OUTGOING_REQUESTS: usize = 32;

/// A fresh instance's resource table, bounded to [`MAX_RESOURCES`].
pub fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

pub struct Host {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub limits: Limits,
    pub outbound: Outbound,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// [`OutboundPolicy`] with at most [`MAX_OUTGOING_REQUESTS`] requests in flight: one
/// more fails at once with `connection-limit-reached`.
pub struct Outbound {
    policy: OutboundPolicy,
    in_flight: Arc<Semaphore>,
    /// The invocation's calls between functions: requests to `*.reactor.internal` go
    /// there, before any address check, and never to the network.
    calls: Option<Arc<CallScope>>,
}

impl Outbound {
    pub fn new(policy: OutboundPolicy) -> Self {
        Self {
            policy,
            in_flight: Arc::new(Semaphore::new(MAX_OUTGOING_REQUESTS)),
            calls: None,
        }
    }

    /// Sends requests to `*.reactor.internal` as calls of `scope`'s invocation.
    pub fn with_calls(mut self, scope: Arc<CallScope>) -> Self {
        self.calls = Some(scope);
        self
    }
}

/// A call between functions: the guest's request through the invocation's scope, the
/// callee's answer (or the platform's refusal) back as an ordinary response.
fn call(
    scope: Option<Arc<CallScope>>,
    host: String,
    request: http::Request<WasiBody>,
) -> Box<dyn Future<Output = SendResult> + Send> {
    Box::new(async move {
        let Some(scope) = scope else {
            // No invocation to act for (never so while serving a request).
            return Err(HttpError::DestinationNotFound);
        };
        let request = request.map(|body| {
            axum::body::Body::new(body.map_err(|e| std::io::Error::other(format!("{e:?}"))))
        });
        let response = scope.call(&host, request).await;
        let response = response.map(|body| {
            body.map_err(|e| HttpError::InternalError(Some(e.to_string())))
                .boxed_unsync()
        });
        let io = async { Ok::<(), HttpError>(()) };
        Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
    })
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
)>;

/// Every hook goes to the policy; `send_request` first takes a permit, which the
/// exchange holds until its connection ends (or fails).
impl WasiHttpHooks for Outbound {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        self.policy.is_forbidden_header(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        self.policy.forbidden_header_filter()
    }

    fn is_supported_scheme(&mut self, scheme: &Scheme) -> bool {
        self.policy.is_supported_scheme(scheme)
    }

    fn set_host_header(&mut self) -> bool {
        self.policy.set_host_header()
    }

    fn default_scheme(&mut self) -> Option<Scheme> {
        self.policy.default_scheme()
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!(
                limit = MAX_OUTGOING_REQUESTS,
                "outgoing request refused: too many in flight"
            );
            let refused: SendResult = Err(HttpError::ConnectionLimitReached);
            return Box::new(std::future::ready(refused));
        };
        let sent = match reactor_worker_link::calls::internal_host(&request) {
            Some(host) => {
                drop(fut);
                call(self.calls.clone(), host, request)
            }
            None => self.policy.send_request(request, options, fut),
        };
        Box::new(async move {
            let (response, io) = Pin::from(sent).await?;
            let io = async move {
                let _permit = permit;
                Pin::from(io).await
            };
            Ok::<_, HttpError>((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

/// Most resources one instance may create.
const MAX_INSTANCES: usize = 128;
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 64;
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// The deployment's memory limit over all the linear memories of the instance together
/// (wasmtime's `StoreLimits` bounds each memory on its own).
pub struct Limits {
    max_bytes: usize,
    used: usize,
}

impl Limits {
    pub fn new(memory_mb: u32) -> Self {
        Self {
            max_bytes: (memory_mb as usize) << 20,
            used: 0,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.used.saturating_add(grow) > self.max_bytes {
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::SystemResolver;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_util::task::AbortOnDropHandle;

    #[test]
    fn an_instance_holds_at_most_4096_resources() {
        let mut table = resource_table();
        // Fills until refused, or one past the bound of 4096.
        let held = (0..=4096).take_while(|_| table.push(()).is_ok()).count();
        assert_eq!(held, MAX_RESOURCES);
        assert_eq!(
            held, 4096,
            "the resource table of an instance is bounded to 4096"
        );
    }

    /// A server that answers each request with headers and a body it never ends: every
    /// exchange keeps its connection open.
    async fn hanging_server() -> (u16, AbortOnDropHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                    if stream.write_all(reply.as_bytes()).await.is_ok() {
                        // Until the client closes.
                        let _ = stream.read(&mut buf).await;
                    }
                });
            }
        });
        (port, AbortOnDropHandle::new(task))
    }

    fn loopback(ip: IpAddr) -> bool {
        ip.is_loopback()
    }

    async fn send(hooks: &mut Outbound, port: u16) -> SendResult {
        let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(
                Empty::<Bytes>::new()
                    .map_err(HttpError::from)
                    .boxed_unsync(),
            )
            .expect("request");
        Pin::from(hooks.send_request(request, None, Box::new(async { Ok(()) }))).await
    }

    #[tokio::test]
    async fn outgoing_requests_past_32_in_flight_are_refused() {
        let (port, _server) = hanging_server().await;
        let mut hooks = Outbound::new(OutboundPolicy::new(Arc::new(SystemResolver), loopback));
        let mut open = Vec::new();
        for i in 0..32 {
            match send(&mut hooks, port).await {
                Ok(exchange) => open.push(exchange),
                Err(e) => panic!("outgoing request {i} failed: {e}"),
            }
        }

        let over = send(&mut hooks, port).await;
        assert!(
            matches!(over, Err(HttpError::ConnectionLimitReached)),
            "the 33rd request in flight: {:?}",
            over.as_ref().err()
        );

        // An exchange that ends frees its slot.
        drop(open.pop());
        let again = send(&mut hooks, port).await;
        assert!(again.is_ok(), "after one ended: {:?}", again.as_ref().err());
    }

    #[test]
    fn memory_is_limited_across_memories() {
        let mut l = Limits::new(64);
        assert!(l.memory_growing(0, 40 << 20, None).expect("ok"));
        assert!(
            !l.memory_growing(0, 40 << 20, None).expect("ok"),
            "a second memory may not exceed the total"
        );
        assert!(l.memory_growing(0, 20 << 20, None).expect("ok"));
    }
}
