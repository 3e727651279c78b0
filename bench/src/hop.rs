//! `reactor-bench hop`: plain HTTP/2 against gRPC for the router-to-worker hop.
//!
//! A router forwards each invocation over one HTTP/2 connection per worker (h2c, see
//! `worker-link`): the request's headers travel as HTTP/2 headers (HPACK, so repeated ones
//! cost a few bytes after the first request) and its body as DATA frames. Over gRPC the
//! headers would have to ride inside a protobuf message (`map<string,string>`, converted
//! from and back into a `HeaderMap` on each side), the body would be copied into
//! length-prefixed messages, and every call would end with trailers. This measures what
//! that costs with everything else taken out: in-process echo servers on loopback TCP,
//! ~10 forwarded request headers, 8 response headers, and one shared client (so one
//! connection) per protocol, as a router has per worker:
//!
//! - HTTP/2: hyper's legacy client, `http2_only`, configured as `worker-link/src/client.rs`
//!   does, against a hyper h2c server that collects the body and echoes it back;
//! - gRPC unary (tonic): one message each way;
//! - gRPC bidi stream (tonic `Exchange`): streaming both ways, as an invocation whose
//!   bodies stream would need; one message each way, the response ends with the request.
//!
//! Each runs `requests` sequential calls after 500 warm-up calls (latency at concurrency
//! 1), then `concurrency` callers on the shared client for `seconds` (requests/s). The
//! three alternate twice and each figure is the better of its two rounds. Clients and
//! servers share this process's runtime, so the figures include both ends: compare the
//! rows, not the absolute values.
//!
//! Run: `cargo run --release -p reactor-bench -- hop [--body-bytes 16384]`.

use anyhow::{Context, ensure};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use reactor_proto::bench::Chunk;
use reactor_proto::bench::hop_client::HopClient;
use reactor_proto::bench::hop_server::{Hop, HopServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Status, Streaming};

const WARMUP: usize = 500;

#[derive(clap::Args, Debug, Clone)]
pub struct HopArgs {
    /// Sequential calls for the concurrency-1 latency (after 500 warm-up calls).
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Concurrent callers sharing the one connection, for the throughput run.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Bytes of the request body (echoed back).
    #[arg(long, default_value_t = 1024)]
    pub body_bytes: usize,
}

/// base64url JSON of a deployment spec, the size `worker-link` sends.
const SPEC: &str = "eyJvcmciOiJhY21lIiwiZnVuY3Rpb24iOiJoZWxsbyIsImRlcGxveW1lbnRfaWQiOiIwMUpCWDdRMk00TjZQOFIwUzJUNFY2VzhZMCIsInJ1bnRpbWUiOiJ3YXNtIiwiZW50cnlwb2ludCI6ImhlbGxvLndhc20iLCJidW5kbGVfa2V5IjoiYnVuZGxlcy9hY21lL2hlbGxvLzAxSkJYN1EyTTRONlA4UjBTMlQ0VjZXOFkwLnRhci5neiIsInNoYTI1NiI6IjlmODZkMDgxODg0YzdkNjU5YTJmZWFhMGM1NWFkMDE1YTNiZjRmMWIyYjBiODIyY2QxNWQ2YzE1YjBmMDBhMDgiLCJ0aW1lb3V0X21zIjozMDAwMCwibWVtb3J5X21iIjoxMjh9";

/// A forwarded invocation's headers: the caller's, the router's and the internal ones.
const REQUEST_HEADERS: [(&str, &str); 10] = [
    ("content-type", "application/json"),
    ("accept", "application/json"),
    ("user-agent", "reactor-bench/0.1"),
    ("x-forwarded-for", "203.0.113.7"),
    ("x-request-id", "01JBX7Q2M4N6P8R0S2T4V6W8Y0"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    ("x-reactor-caller-org", "acme"),
    (
        "x-reactor-internal-auth",
        "rx_int_3q9Zk2vW8mN4pL7sT1yB6cF0hJ5dG2",
    ),
    ("x-reactor-internal-spec", SPEC),
    ("x-reactor-internal-timeout-ms", "29998"),
];

/// What a function and the worker send back.
const RESPONSE_HEADERS: [(&str, &str); 8] = [
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    ("vary", "accept-encoding"),
    ("x-request-id", "01JBX7Q2M4N6P8R0S2T4V6W8Y0"),
    ("server-timing", "handler;dur=0.412"),
    ("x-powered-by", "reactor"),
    ("x-reactor-internal-cold-start", "false"),
    ("x-reactor-internal-worker-ms", "0.412"),
];

fn header_map(list: &[(&'static str, &'static str)]) -> HeaderMap {
    list.iter()
        .map(|&(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect()
}

/// Headers into the gRPC message (a map: repeated headers would need more than this).
fn to_map(h: &HeaderMap) -> HashMap<String, String> {
    h.iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// The gRPC message's headers back into an HTTP request or response.
fn to_headers(m: &HashMap<String, String>) -> anyhow::Result<HeaderMap> {
    let mut h = HeaderMap::with_capacity(m.len());
    for (k, v) in m {
        h.insert(
            HeaderName::from_bytes(k.as_bytes())?,
            HeaderValue::from_str(v)?,
        );
    }
    Ok(h)
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = req.into_body().collect().await?.to_bytes();
    let mut response = Response::new(Full::new(body));
    *response.headers_mut() = header_map(&RESPONSE_HEADERS);
    Ok(response)
}

async fn serve_http2() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    eprintln!("http/2 echo: accept failed: {e}");
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(tcp);
                if let Err(e) = builder.serve_connection(io, service_fn(echo)).await {
                    eprintln!("http/2 echo: connection failed: {e}");
                }
            });
        }
    });
    Ok(addr)
}

struct Echo;

/// What a worker would do: rebuild the function's request headers, answer with its
/// response headers turned into the map, and the body.
fn reply(chunk: Chunk) -> Result<Chunk, Status> {
    let headers =
        to_headers(&chunk.headers).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let _ = std::hint::black_box(headers);
    Ok(Chunk {
        headers: to_map(&header_map(&RESPONSE_HEADERS)),
        data: chunk.data,
    })
}

type Replies = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl Hop for Echo {
    async fn unary(
        &self,
        request: tonic::Request<Chunk>,
    ) -> Result<tonic::Response<Chunk>, Status> {
        reply(request.into_inner()).map(tonic::Response::new)
    }

    type ExchangeStream = Replies;

    async fn exchange(
        &self,
        request: tonic::Request<Streaming<Chunk>>,
    ) -> Result<tonic::Response<Self::ExchangeStream>, Status> {
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no request message"))?;
        let answer = reply(first)?;
        // Answer at once; the response ends when the request does (or with its error).
        let rest = requests.filter_map(|m| m.err().map(Err::<Chunk, Status>));
        let replies: Replies = Box::pin(tokio_stream::once(Ok(answer)).chain(rest));
        Ok(tonic::Response::new(replies))
    }
}

async fn serve_grpc() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .add_service(HopServer::new(Echo))
        .serve_with_incoming(incoming);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("grpc echo: {e}");
        }
    });
    Ok(addr)
}

async fn grpc_client(addr: SocketAddr) -> anyhow::Result<HopClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .connect()
        .await?;
    Ok(HopClient::new(channel))
}

struct Load {
    headers: HeaderMap,
    body: Bytes,
}

impl Load {
    /// What a router would send over gRPC: the headers into the map, the body copied.
    fn chunk(&self) -> Chunk {
        Chunk {
            headers: to_map(&self.headers),
            data: self.body.to_vec(),
        }
    }
}

/// One protocol's client; clones share its one connection.
#[allow(clippy::large_enum_variant)] // three of them, cloned once per caller
#[derive(Clone)]
enum Caller {
    Http2 {
        client: Client<HttpConnector, Full<Bytes>>,
        uri: Uri,
    },
    Unary(HopClient<Channel>),
    Exchange(HopClient<Channel>),
}

impl Caller {
    fn name(&self) -> &'static str {
        match self {
            Caller::Http2 { .. } => "HTTP/2 h2c (hyper)",
            Caller::Unary(_) => "gRPC unary (tonic)",
            Caller::Exchange(_) => "gRPC bidi stream (tonic)",
        }
    }

    /// One invocation, its whole response read and checked.
    async fn call(&mut self, load: &Load) -> anyhow::Result<()> {
        let (headers, len) = match self {
            Caller::Http2 { client, uri } => {
                let mut req = Request::new(Full::new(load.body.clone()));
                *req.method_mut() = Method::POST;
                *req.uri_mut() = uri.clone();
                *req.version_mut() = http::Version::HTTP_2;
                *req.headers_mut() = load.headers.clone();
                let (parts, body) = client.request(req).await?.into_parts();
                ensure!(
                    parts.status == StatusCode::OK,
                    "echo answered {}",
                    parts.status
                );
                (parts.headers, body.collect().await?.to_bytes().len())
            }
            Caller::Unary(client) => {
                let reply = client.unary(load.chunk()).await?.into_inner();
                (to_headers(&reply.headers)?, reply.data.len())
            }
            Caller::Exchange(client) => {
                let request = tokio_stream::once(load.chunk());
                let mut replies = client.exchange(request).await?.into_inner();
                let reply = replies.message().await?.context("no reply")?;
                ensure!(replies.message().await?.is_none(), "more than one reply");
                (to_headers(&reply.headers)?, reply.data.len())
            }
        };
        ensure!(
            len == load.body.len() && headers.len() >= RESPONSE_HEADERS.len(),
            "wrong echo: {len} bytes, {} headers",
            headers.len()
        );
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
    rps: f64,
}

impl Figures {
    fn best(self, o: Figures) -> Figures {
        Figures {
            p50: self.p50.min(o.p50),
            p99: self.p99.min(o.p99),
            rps: self.rps.max(o.rps),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn measure(caller: &Caller, load: &Arc<Load>, args: &HopArgs) -> anyhow::Result<Figures> {
    let mut one = caller.clone();
    for _ in 0..WARMUP {
        one.call(load).await?;
    }
    let mut lat = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let started = Instant::now();
        one.call(load).await?;
        lat.push(started.elapsed());
    }
    lat.sort_unstable();

    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (mut caller, load) = (caller.clone(), load.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                caller.call(&load).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok(Figures {
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        rps: done as f64 / started.elapsed().as_secs_f64(),
    })
}

pub async fn run(args: HopArgs) -> anyhow::Result<()> {
    ensure!(
        args.requests > 0 && args.concurrency > 0,
        "--requests and --concurrency must be at least 1"
    );
    let http_addr = serve_http2().await.context("starting the HTTP/2 server")?;
    let grpc_addr = serve_grpc().await.context("starting the gRPC server")?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_adaptive_window(true)
        .build(connector);
    let callers = [
        Caller::Http2 {
            client: http,
            uri: format!("http://{http_addr}/invoke/echo").parse()?,
        },
        Caller::Unary(grpc_client(grpc_addr).await?),
        Caller::Exchange(grpc_client(grpc_addr).await?),
    ];
    let load = Arc::new(Load {
        headers: header_map(&REQUEST_HEADERS),
        body: Bytes::from(vec![b'x'; args.body_bytes]),
    });

    let mut best: [Option<Figures>; 3] = [None; 3];
    for round in 1..=2 {
        for (caller, slot) in callers.iter().zip(best.iter_mut()) {
            eprintln!("round {round}/2: {} ...", caller.name());
            let f = measure(caller, &load, &args)
                .await
                .with_context(|| format!("measuring {}", caller.name()))?;
            eprintln!(
                "  p50 {:.3} ms, p99 {:.3} ms, {:.0} req/s",
                f.p50, f.p99, f.rps
            );
            *slot = Some(slot.map_or(f, |b| b.best(f)));
        }
    }

    println!(
        "| protocol | p50 c=1 | p99 c=1 | req/s c={} |",
        args.concurrency
    );
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for (caller, f) in callers.iter().zip(best) {
        let f = f.context("a protocol was not measured")?;
        println!(
            "| {} | {:.3} ms | {:.3} ms | {:.0} |",
            caller.name(),
            f.p50,
            f.p99,
            f.rps
        );
        rows.push((caller.name(), f));
    }
    let by_rps = rows.iter().max_by(|a, b| a.1.rps.total_cmp(&b.1.rps));
    let by_p50 = rows.iter().min_by(|a, b| a.1.p50.total_cmp(&b.1.p50));
    if let (Some((fastest, f)), Some((quickest, q))) = (by_rps, by_p50) {
        let (rps, n, p50) = (f.rps, args.concurrency, q.p50);
        println!(
            "\nfastest: **{fastest}** ({rps:.0} req/s at c={n}); \
             lowest p50 at c=1: {quickest} ({p50:.3} ms)"
        );
    }
    Ok(())
}
