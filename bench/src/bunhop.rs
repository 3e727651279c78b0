//! `reactor-bench bun-hop`: what each way of putting a hop in front of Bun can serve, in
//! the same run, against bare `Bun.serve` (issue 21's must-have 3 asks for 0.6x of it).
//!
//! The same hello handler (`examples/hello-bun`) behind:
//!
//! - **bare `Bun.serve`** on TCP: the reference;
//! - **nginx** (when `nginx` is installed), `proxy_pass` with keep-alive to `Bun.serve` on
//!   a unix socket: the best-kept HTTP proxy there is, two worker processes;
//! - **a minimal hyper proxy**: hyper's HTTP/1.1 server and client, one free list of
//!   unix-socket connections, nothing else (no auth, routing, policy, logs or limits):
//!   the floor of our stack with an HTTP hop;
//! - **a framed hop**: the same hyper server, then every request as a binary frame over
//!   one unix-socket connection, several at once and written in batches both ways, to a
//!   Bun process that builds the `Request` itself (`bench/bun/framed.js`): what a binary
//!   protocol between worker and harness could give;
//! - **Reactor**, the embedded default (`reactor dev`, sandboxed Bun).
//!
//! The proxies run on their own 2-thread runtime in this process (as `reactor dev` has
//! one serving thread per core). The load is `wrk` (required): `-t1 -c1` for latency,
//! `-t2 -c{concurrency}` for requests/s, every target in turn, `rounds` times, best round.

use crate::load::{Target, WrkStats, has_wrk, wrk_stats};
use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reactor_tests::{Server, bun_bin, root, wait_until};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

#[derive(clap::Args, Debug)]
pub struct BunHopArgs {
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of each run (latency and throughput).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Rounds over the targets (alternating); the best of them is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

/// A child process killed when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hello_entry() -> String {
    root()
        .join("examples/hello-bun/code/index.ts")
        .display()
        .to_string()
}

/// Waits until something accepts on the unix socket.
async fn wait_unix(path: &Path, what: &str) -> anyhow::Result<()> {
    let up = wait_until(Duration::from_secs(10), || async {
        UnixStream::connect(path).await.ok()
    })
    .await;
    if up.is_none() {
        bail!("{what} did not listen on {}", path.display());
    }
    Ok(())
}

/// `Bun.serve` of the hello handler on a unix socket.
async fn bun_unix(dir: &Path) -> anyhow::Result<(Kid, PathBuf)> {
    let socket = dir.join("bun.sock");
    let script = dir.join("unix.ts");
    std::fs::write(
        &script,
        format!(
            "import app from {:?};\nBun.serve({{ unix: {:?}, idleTimeout: 0, fetch: (r) => app.fetch(r) }});\n",
            hello_entry(),
            socket.display().to_string()
        ),
    )?;
    let child = Command::new(bun_bin())
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting Bun.serve on a unix socket")?;
    let kid = Kid(child);
    wait_unix(&socket, "Bun.serve").await?;
    Ok((kid, socket))
}

/// The framed harness (`bench/bun/framed.js`) on the hello handler.
async fn bun_framed(dir: &Path) -> anyhow::Result<(Kid, PathBuf)> {
    let socket = dir.join("framed.sock");
    let script = dir.join("framed.js");
    std::fs::write(&script, include_str!("../bun/framed.js"))?;
    let child = Command::new(bun_bin())
        .arg(&script)
        .arg(hello_entry())
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the framed harness")?;
    let kid = Kid(child);
    wait_unix(&socket, "the framed harness").await?;
    Ok((kid, socket))
}

fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// nginx with two workers, keep-alive to `Bun.serve` on `socket`.
async fn nginx(bin: &Path, dir: &Path, socket: &Path, port: u16) -> anyhow::Result<Kid> {
    let d = dir.join("nginx");
    std::fs::create_dir_all(&d)?;
    let p = |name: &str| d.join(name).display().to_string();
    // Started by root, nginx's workers would run as `nobody`, who cannot reach the socket.
    let root_user = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    let user = if root_user { "user root;\n" } else { "" };
    let conf = format!(
        "daemon off;\n{user}worker_processes 2;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {t1};\n  proxy_temp_path {t2};\n\
           fastcgi_temp_path {t3};\n  uwsgi_temp_path {t4};\n  scgi_temp_path {t5};\n\
           upstream bun {{ server unix:{sock}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
               proxy_pass http://bun;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        pid = p("nginx.pid"),
        err = p("error.log"),
        t1 = p("body"),
        t2 = p("proxy"),
        t3 = p("fastcgi"),
        t4 = p("uwsgi"),
        t5 = p("scgi"),
        sock = socket.display(),
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(&d)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(d.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx")?;
    let kid = Kid(child);
    let addr = format!("127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&addr).await.ok()
    })
    .await;
    if up.is_none() {
        bail!("nginx did not listen on {addr}");
    }
    Ok(kid)
}

type Reply = Result<http::Response<Full<Bytes>>, anyhow::Error>;

/// Serves HTTP/1.1 on `listener`, each request answered by `handle`.
async fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = server::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

/// The minimal HTTP proxy's connections to `Bun.serve`: a free list.
struct HttpHop {
    socket: PathBuf,
    free: Mutex<Vec<client::SendRequest<Full<Bytes>>>>,
}

impl HttpHop {
    async fn forward(self: Arc<Self>, req: http::Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let taken = self.free.lock().map(|mut f| f.pop()).unwrap_or(None);
        let mut sender = match taken {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = UnixStream::connect(&self.socket).await?;
                let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
        };
        sender.ready().await?;
        let resp = sender
            .send_request(http::Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        if let Ok(mut free) = self.free.lock() {
            free.push(sender);
        }
        Ok(http::Response::from_parts(parts, Full::new(body)))
    }
}

/// The framed hop's one connection: a writer task batching frames, a reader task handing
/// each answer to its waiter.
struct FramedHop {
    frames: mpsc::UnboundedSender<Bytes>,
    waiters: Arc<Mutex<HashMap<u32, oneshot::Sender<Bytes>>>>,
    next: AtomicU32,
}

impl FramedHop {
    async fn connect(socket: &Path) -> anyhow::Result<Arc<FramedHop>> {
        let stream = UnixStream::connect(socket).await?;
        let (mut rd, mut wr) = stream.into_split();
        let (frames, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let waiters: Arc<Mutex<HashMap<u32, oneshot::Sender<Bytes>>>> = Arc::default();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut buf = BytesMut::new();
            while rx.recv_many(&mut batch, 256).await > 0 {
                for frame in batch.drain(..) {
                    buf.extend_from_slice(&frame);
                }
                if wr.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        });
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            loop {
                while buf.len() >= 4 {
                    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() < 4 + len {
                        break;
                    }
                    buf.advance(4);
                    let mut frame = buf.split_to(len).freeze();
                    if frame.len() < 4 {
                        return;
                    }
                    let id = frame.get_u32_le();
                    let waiter = w.lock().ok().and_then(|mut w| w.remove(&id));
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(frame);
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        Ok(Arc::new(FramedHop {
            frames,
            waiters,
            next: AtomicU32::new(1),
        }))
    }

    async fn forward(self: Arc<Self>, req: http::Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut f = BytesMut::with_capacity(256 + body.len());
        f.put_u32_le(0);
        f.put_u32_le(id);
        let method = parts.method.as_str().as_bytes();
        f.put_u8(u8::try_from(method.len())?);
        f.put_slice(method);
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        f.put_u16_le(u16::try_from(path.len())?);
        f.put_slice(path.as_bytes());
        f.put_u16_le(u16::try_from(parts.headers.len())?);
        for (name, value) in &parts.headers {
            f.put_u16_le(u16::try_from(name.as_str().len())?);
            f.put_slice(name.as_str().as_bytes());
            f.put_u16_le(u16::try_from(value.len())?);
            f.put_slice(value.as_bytes());
        }
        f.put_u32_le(u32::try_from(body.len())?);
        f.put_slice(&body);
        let len = u32::try_from(f.len() - 4)?;
        f[..4].copy_from_slice(&len.to_le_bytes());
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(id, tx);
        }
        self.frames
            .send(f.freeze())
            .map_err(|_| anyhow::anyhow!("the framed connection is closed"))?;
        let mut frame = rx.await.context("the framed harness went away")?;
        let need = |frame: &Bytes, n: usize| {
            if frame.len() < n {
                bail!("a short answer frame");
            }
            Ok(())
        };
        need(&frame, 4)?;
        let status = frame.get_u16_le();
        let count = frame.get_u16_le();
        let mut resp = http::Response::builder().status(status);
        for _ in 0..count {
            need(&frame, 2)?;
            let n = frame.get_u16_le() as usize;
            need(&frame, n + 2)?;
            let name = frame.split_to(n);
            let v = frame.get_u16_le() as usize;
            need(&frame, v)?;
            let value = frame.split_to(v);
            resp = resp.header(name.as_ref(), value.as_ref());
        }
        need(&frame, 4)?;
        let bl = frame.get_u32_le() as usize;
        need(&frame, bl)?;
        Ok(resp.body(Full::new(frame.split_to(bl)))?)
    }
}

/// A runtime of its own, shut down without blocking when dropped (this is async code).
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Rt {
    fn handle(&self) -> anyhow::Result<&tokio::runtime::Runtime> {
        self.0.as_ref().context("the proxies' runtime is gone")
    }

    /// Serves `handle` on a new loopback listener on this runtime; its address.
    fn serve<F, Fut>(&self, handle: F) -> anyhow::Result<String>
    where
        F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Reply> + Send + 'static,
    {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?.to_string();
        self.handle()?.spawn(async move {
            if let Ok(l) = TcpListener::from_std(l) {
                serve(l, handle).await;
            }
        });
        Ok(addr)
    }
}

fn target(name: &'static str, addr: String, path: &str, token: Option<String>) -> Target {
    Target {
        name,
        addr,
        path: path.into(),
        token,
        body: None,
    }
}

#[derive(Clone, Copy, Default)]
struct Best {
    p50: f64,
    p99: f64,
    rps: f64,
}

pub async fn run(a: BunHopArgs) -> anyhow::Result<()> {
    if !has_wrk() {
        bail!("reactor-bench bun-hop needs wrk on PATH (apt-get install wrk)");
    }
    let dir = tempfile::tempdir()?;
    // The proxies' own runtime: two serving threads, as reactor dev has on 2 cores.
    let rt = Rt(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    ));
    let mut targets = Vec::new();
    let mut kids = Vec::new();

    eprintln!("starting bare Bun.serve, Bun.serve on a unix socket, the framed harness ...");
    let (bare_kid, bare) = crate::bun::start_bare(dir.path()).await?;
    targets.push(bare);
    let (unix_kid, unix) = bun_unix(dir.path()).await?;
    kids.push(unix_kid);
    let (framed_kid, framed_socket) = bun_framed(dir.path()).await?;
    kids.push(framed_kid);

    match nginx_bin() {
        Some(bin) => {
            let port = crate::free_port()?;
            kids.push(nginx(&bin, dir.path(), &unix, port).await?);
            targets.push(target(
                "nginx → Bun.serve (unix socket)",
                format!("127.0.0.1:{port}"),
                "/",
                None,
            ));
        }
        None => eprintln!("nginx is not installed: its row is left out (apt-get install nginx)"),
    }

    let hop = Arc::new(HttpHop {
        socket: unix.clone(),
        free: Mutex::new(Vec::new()),
    });
    let addr = rt.serve(move |req| hop.clone().forward(req))?;
    targets.push(target(
        "minimal hyper proxy → Bun.serve (unix socket)",
        addr,
        "/",
        None,
    ));

    let framed = rt
        .handle()?
        .spawn(async move { FramedHop::connect(&framed_socket).await })
        .await??;
    let addr = rt.serve(move |req| framed.clone().forward(req))?;
    targets.push(target(
        "hyper server → framed hop → Bun (framed.js)",
        addr,
        "/",
        None,
    ));

    eprintln!("starting reactor dev (embedded) with the hello handler on Bun ...");
    let s = Server::start();
    s.deploy_live_runtime("hello", "bun", crate::bun::hello_bundle())
        .await;
    targets.push(target(
        "Reactor (embedded, sandboxed Bun)",
        s.url.trim_start_matches("http://").to_string(),
        "/fn/v1/hello",
        Some(s.token.clone()),
    ));

    let mut best = vec![Best::default(); targets.len()];
    for round in 1..=a.rounds {
        eprintln!("round {round}/{}", a.rounds);
        for (t, b) in targets.iter().zip(best.iter_mut()) {
            eprintln!("  {}: wrk -t1 -c1, then -t2 -c{}", t.name, a.concurrency);
            let one = run_wrk(t, 1, a.seconds).await?;
            let many = run_wrk(t, a.concurrency, a.seconds).await?;
            if b.rps == 0.0 {
                *b = Best {
                    p50: one.p50,
                    p99: one.p99,
                    rps: many.rps,
                };
            } else {
                b.p50 = b.p50.min(one.p50);
                b.p99 = b.p99.min(one.p99);
                b.rps = b.rps.max(many.rps);
            }
        }
    }
    drop(s);
    drop(kids);
    drop(bare_kid);
    drop(rt);

    println!(
        "\n## A hop in front of Bun (wrk, best of {} rounds)\n",
        a.rounds
    );
    println!(
        "| target | p50 c=1 ms | p99 c=1 ms | requests/s c={} | ÷ bare Bun.serve |",
        a.concurrency
    );
    println!("|---|---|---|---|---|");
    let reference = best[0].rps;
    for (t, b) in targets.iter().zip(&best) {
        println!(
            "| {} | {:.3} | {:.3} | {:.0} | {:.2}x |",
            t.name,
            b.p50,
            b.p99,
            b.rps,
            b.rps / reference
        );
    }
    Ok(())
}

async fn run_wrk(t: &Target, c: usize, seconds: u64) -> anyhow::Result<WrkStats> {
    wrk_stats(t, c, seconds)
        .await?
        .with_context(|| format!("wrk did not run on {}", t.name))
}
