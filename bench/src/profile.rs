//! `reactor-bench profile`: where each microsecond of a request goes. Serves the hello
//! component from the embedded default (`reactor dev`) or from the split topology (its
//! router, `reactor-data-plane`, is profiled), drives it at `--concurrency` connections,
//! and records the server process with `perf record --call-graph dwarf` meanwhile. Each
//! sample is given to the innermost stage one of its frames belongs to (the table in
//! [`STAGES`]: the kernel's socket work, the HTTP/1.1 parse, auth, the table lookup,
//! ...); a stage's cost per request is its share of the samples times the process's CPU
//! time (from `/proc/{pid}/stat`) divided by the requests served.
//!
//! Needs `perf` (Debian: `linux-perf`) and permission to profile the process (root, or
//! `kernel.perf_event_paranoid` ≤ 1). The raw profile stays in the printed directory:
//! `perf report -i DIR/perf.data` for the details.

use crate::load::{Target, concurrent};
use anyhow::{Context, bail};
use reactor_tests::split::Split;
use reactor_tests::{Server, build_component, bundle, read};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    /// `embedded` (reactor dev) or `split` (the router of the split topology).
    #[arg(long, default_value = "embedded")]
    topology: String,
    /// Connections of the load.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds recorded.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Samples per second per thread.
    #[arg(long, default_value_t = 499)]
    frequency: u32,
}

/// Stages, each with the frames (substrings of a symbol) that belong to it. A sample goes
/// to the stage of its innermost frame that matches; the order breaks ties in one frame.
const STAGES: &[(&str, &[&str])] = &[
    (
        "kernel: TCP and unix sockets (send, receive, wake-ups)",
        &[
            "tcp_",
            "unix_stream",
            "sock_",
            "__sys_sendmsg",
            "__sys_recvfrom",
            "ep_poll",
            "do_epoll",
            "__x64_sys_writev",
            "__x64_sys_read",
            "__x64_sys_write",
            "__x64_sys_recv",
            "__x64_sys_send",
            "__x64_sys_epoll",
        ],
    ),
    (
        "kernel: futex, scheduler",
        &["futex", "schedule", "__x64_sys_sched_yield"],
    ),
    (
        "log entry (per-invocation line)",
        &[
            "log_invoked",
            "LogSink",
            "reactor_api::logs",
            "tracing_subscriber",
            "::logs::",
        ],
    ),
    (
        "metrics",
        &["reactor_service::metrics", "prometheus_client"],
    ),
    (
        "traces (spans)",
        &["tracing_opentelemetry", "opentelemetry", "tracing::span"],
    ),
    (
        "auth (token hash, grant)",
        &[
            "router::authenticate",
            "member_grant",
            "sha2::",
            "ring::digest",
        ],
    ),
    ("policy", &["check_policies", "reactor_policy"]),
    ("admission (concurrency cap)", &["admission::"]),
    (
        "table lookup",
        &["RouteIndex", "router::check_target", "table::"],
    ),
    (
        "guest code and the host calls it makes",
        &[
            "call_handle",
            "wasmtime_wasi_http::p2::host",
            "wasm[",
            "wasmtime::runtime::func",
        ],
    ),
    (
        "instantiate (fresh instance)",
        &[
            "instantiate_async",
            "InstancePre",
            "instantiate_pre",
            "instance::allocator",
            "Instance::new",
        ],
    ),
    (
        "store and WASI context per request",
        &[
            "Store<",
            "store::StoreInner",
            "WasiCtxBuilder",
            "WasiHttpCtx",
            "ResourceTable",
            "Store::new",
        ],
    ),
    (
        "response body (stream to the client)",
        &["GuestBody", "poll_frame", "body::Body", "http_body"],
    ),
    (
        "response headers",
        &[
            "rewrite_headers",
            "set_duration",
            "HeaderMap",
            "http::header",
        ],
    ),
    (
        "router to worker hop (HTTP/2 client, split)",
        &["reactor_worker_link::client", "h2::", "hyper::proto::h2"],
    ),
    (
        "HTTP/1.1 accept, parse and write (hyper)",
        &[
            "hyper::proto::h1",
            "httparse",
            "hyper::server",
            "hyper_util::server",
            "axum::",
            "tower::",
        ],
    ),
    (
        "invoke path, other (request rewrite, dispatch)",
        &[
            "reactor_data_plane",
            "reactor_worker_wasm",
            "reactor_worker_link",
        ],
    ),
    (
        "async runtime (tokio)",
        &["tokio::runtime", "tokio::io", "mio::"],
    ),
    (
        "allocator",
        &["malloc", "free", "_int_", "realloc", "cfree"],
    ),
];

/// Process CPU time (user + system) in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the command.
    let hz = 100.0;
    Ok((ticks(11) + ticks(12)) / hz)
}

pub async fn run(a: ProfileArgs) -> anyhow::Result<()> {
    if Command::new("perf").arg("--version").output().is_err() {
        bail!("perf is not installed (Debian: apt-get install linux-perf)");
    }
    let hello = bundle(&[(
        "hello.wasm",
        &read(&build_component("examples/hello-wasm", true)),
    )]);
    let mut _keep_embedded = None;
    let mut _keep_split = None;
    let (pid, target) = match a.topology.as_str() {
        "embedded" => {
            let server = Server::start();
            server.deploy_live("hello", hello).await;
            let t = Target {
                name: "embedded",
                addr: server.url.trim_start_matches("http://").to_string(),
                path: "/fn/v1/hello".into(),
                token: Some(server.token.clone()),
                body: None,
            };
            let pid = server.pid();
            _keep_embedded = Some(server);
            (pid, t)
        }
        "split" => {
            let split = Split::start();
            split.admin.deploy_live("hello", hello).await;
            let t = Target {
                name: "split",
                addr: split.invoke_url.trim_start_matches("http://").to_string(),
                path: "/fn/v1/hello".into(),
                token: Some(split.admin.token.clone()),
                body: None,
            };
            reactor_tests::wait_until(Duration::from_secs(20), || async {
                let mut c = crate::load::Conn::open(&t).await.ok()?;
                c.call(&t).await.ok()
            })
            .await
            .context("the router never served hello")?;
            let pid = split.router.as_ref().context("router")?.pid();
            _keep_split = Some(split);
            (pid, t)
        }
        other => bail!("--topology {other}: expected embedded or split"),
    };
    // Warm: every connection and instance path taken once.
    concurrent(&target, a.concurrency, 2).await?;

    let dir = tempfile::Builder::new()
        .prefix("reactor-profile-")
        .tempdir()?
        .keep();
    let data = dir.join("perf.data");
    eprintln!(
        "recording pid {pid} for {} s under {} connections into {} ...",
        a.seconds,
        a.concurrency,
        data.display()
    );
    let mut perf = Command::new("perf")
        .args([
            "record",
            "-F",
            &a.frequency.to_string(),
            "--call-graph",
            "dwarf,32768",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = cpu_seconds(pid)?;
    let (rps, lat) = concurrent(&target, a.concurrency, a.seconds).await?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    // SIGINT: perf writes its file and exits.
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    perf.wait()?;
    let requests = lat.len() as f64;

    eprintln!("reading the samples (perf script; a minute or two) ...");
    let script = Command::new("perf")
        .args(["script", "--no-inline", "-F", "ip,sym", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .context("perf script")?;
    let text = String::from_utf8_lossy(&script.stdout);
    let mut by_stage: BTreeMap<&str, u64> = BTreeMap::new();
    let mut total = 0u64;
    for sample in text.split("\n\n") {
        let frames: Vec<&str> = sample
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if frames.is_empty() {
            continue;
        }
        total += 1;
        let stage = frames
            .iter()
            .find_map(|frame| {
                STAGES
                    .iter()
                    .find(|(_, pats)| pats.iter().any(|p| frame.contains(p)))
                    .map(|(name, _)| *name)
            })
            .unwrap_or("other (unattributed)");
        *by_stage.entry(stage).or_default() += 1;
    }
    if total == 0 {
        bail!("perf recorded no samples (is perf allowed to profile the process?)");
    }
    let per_request_us = cpu / requests * 1e6;
    println!(
        "| {} at c={}: {:.0} requests/s, process CPU {:.2} s for {:.0} requests = {:.1} µs a request ({} samples) | share | µs a request |",
        a.topology, a.concurrency, rps, cpu, requests, per_request_us, total
    );
    println!("|---|---|---|");
    let mut rows: Vec<(&str, u64)> = by_stage.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    for (stage, n) in rows {
        let share = n as f64 / total as f64;
        println!(
            "| {stage} | {:.1} % | {:.1} |",
            share * 100.0,
            share * per_request_us
        );
    }
    println!();
    println!("raw profile: perf report -i {}", data.display());
    Ok(())
}
