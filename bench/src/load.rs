//! The load: HTTP/1.1 keep-alive connections from this process (as `wrk` does), every
//! answer checked, latencies kept for percentiles.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where requests go: `POST {path}` on `addr`, with a bearer token when the target
/// checks one (`wasmtime serve` does not).
#[derive(Clone, Debug)]
pub struct Target {
    pub name: &'static str,
    pub addr: String,
    pub path: String,
    pub token: Option<String>,
    /// The request body (default: `{"name":"Reactor"}`).
    pub body: Option<Bytes>,
}

/// Which deployment answered: the hello example or the probe fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Hello,
    Probe,
}

pub struct Reply {
    pub latency: Duration,
    pub cold: bool,
    pub answer: Answer,
}

/// One keep-alive connection sending POSTs one after the other.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(t: &Target) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(&t.addr)
            .await
            .with_context(|| format!("connecting to {} at {}", t.name, t.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// Sends one request and checks that a known deployment answered 200.
    pub async fn call(&mut self, t: &Target) -> anyhow::Result<Reply> {
        let mut req = http::Request::post(&t.path)
            .header("host", &t.addr)
            .header("content-type", "application/json");
        if let Some(token) = &t.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = t
            .body
            .clone()
            .unwrap_or_else(|| Bytes::from_static(br#"{"name":"Reactor"}"#));
        let req = req.body(Full::new(body))?;
        let started = Instant::now();
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let cold = resp
            .headers()
            .get("x-reactor-cold-start")
            .is_some_and(|v| v == "true");
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let latency = started.elapsed();
        let answer = if body.starts_with(br#"{"message":"Hello, Reactor!"}"#) {
            Answer::Hello
        } else if body.windows(12).any(|w| w == br#""probe":true"#) {
            Answer::Probe
        } else {
            bail!(
                "{}: unexpected answer {status}: {}",
                t.name,
                String::from_utf8_lossy(&body)
            );
        };
        if status != 200 {
            bail!("{}: status {status}", t.name);
        }
        Ok(Reply {
            latency,
            cold,
            answer,
        })
    }
}

/// Milliseconds at percentile `p` (0..=1) of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Sequential requests on one warm connection: sorted latencies.
pub async fn sequential(t: &Target, requests: usize) -> anyhow::Result<Vec<Duration>> {
    let mut conn = Conn::open(t).await?;
    for _ in 0..200 {
        conn.call(t).await?;
    }
    let mut lat = Vec::with_capacity(requests);
    for _ in 0..requests {
        lat.push(conn.call(t).await?.latency);
    }
    lat.sort();
    Ok(lat)
}

/// `concurrency` connections for `seconds`: requests/s and sorted latencies.
pub async fn concurrent(
    t: &Target,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let t = Arc::new(t.clone());
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&t).await?;
            let mut lat = Vec::new();
            while Instant::now() < until {
                lat.push(conn.call(&t).await?.latency);
            }
            anyhow::Ok(lat)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let rps = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    Ok((rps, all))
}

/// Requests/s of `wrk -t2 -c{concurrency}` for `seconds` on the target (the same POST,
/// headers and body), when `wrk` is on `PATH`: the load generator a user compares with.
/// wrk does not read the answers; any non-2xx answer or socket error fails the run.
pub async fn wrk(t: &Target, concurrency: usize, seconds: u64) -> anyhow::Result<Option<f64>> {
    Ok(wrk_stats(t, concurrency, seconds).await?.map(|s| s.rps))
}

/// What one `wrk --latency` run measured.
#[derive(Clone, Copy, Debug)]
pub struct WrkStats {
    pub rps: f64,
    /// Milliseconds, from wrk's latency distribution.
    pub p50: f64,
    pub p99: f64,
}

/// [`wrk`] with its latency distribution (`--latency`).
pub async fn wrk_stats(
    t: &Target,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<Option<WrkStats>> {
    let Ok(bin) = which_wrk() else {
        return Ok(None);
    };
    let body = t
        .body
        .clone()
        .unwrap_or_else(|| Bytes::from_static(br#"{"name":"Reactor"}"#));
    // The body and the token go in files the script reads as they are: nothing to escape.
    let dir = tempfile::tempdir()?;
    let read = |name: &str, bytes: &[u8]| -> anyhow::Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes)?;
        let path = path
            .to_str()
            .context("a temporary path that is not UTF-8")?;
        Ok(format!(
            "(function() local f = assert(io.open({path:?}, \"rb\")); local s = f:read(\"*a\"); f:close(); return s end)()"
        ))
    };
    let mut script = String::from("wrk.method = \"POST\"\n");
    script.push_str(&format!("wrk.body = {}\n", read("body", &body)?));
    script.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    if let Some(token) = &t.token {
        let auth = format!("Bearer {token}");
        script.push_str(&format!(
            "wrk.headers[\"Authorization\"] = {}\n",
            read("auth", auth.as_bytes())?
        ));
    }
    let lua = dir.path().join("post.lua");
    std::fs::write(&lua, script)?;
    let url = format!("http://{}{}", t.addr, t.path);
    // wrk wants at least one connection per thread.
    let threads = concurrency.clamp(1, 2);
    let out = tokio::process::Command::new(bin)
        .args([
            &format!("-t{threads}"),
            &format!("-c{concurrency}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
        .arg("-s")
        .arg(&lua)
        .arg(&url)
        .output()
        .await
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk on {} failed: {text}{}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk on {}: {}", t.name, line.trim());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let at = |percent: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(percent))
            .and_then(|v| wrk_millis(v.trim()))
            .with_context(|| format!("no {percent} latency in wrk's output: {text}"))
    };
    Ok(Some(WrkStats {
        rps,
        p50: at("50%")?,
        p99: at("99%")?,
    }))
}

/// Milliseconds of a wrk duration (`123.45us`, `1.20ms`, `2.00s`).
fn wrk_millis(v: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * scale)
}

/// Whether `wrk` is on `PATH`.
pub fn has_wrk() -> bool {
    which_wrk().is_ok()
}

fn which_wrk() -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").context("no PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("wrk"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .context("wrk is not on PATH")
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations_are_read_in_milliseconds() {
        assert_eq!(super::wrk_millis("250.00us"), Some(0.25));
        assert_eq!(super::wrk_millis("1.50ms"), Some(1.5));
        assert_eq!(super::wrk_millis("2.00s"), Some(2000.0));
        assert_eq!(super::wrk_millis("1.00m"), Some(60000.0));
        assert_eq!(super::wrk_millis("fast"), None);
    }
}
