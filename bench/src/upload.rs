//! `reactor-bench upload`: what a big bundle upload costs the control plane in memory.
//! A bundle of `--mib` MiB (the hello component and incompressible data, so the gzip is
//! as big) is uploaded to `reactor-control-plane` (split topology, local storage) a few
//! times; for each, the control plane's peak RSS during the upload (its `VmHWM`, reset
//! before through `/proc/{pid}/clear_refs`) above its RSS before.

use anyhow::{Context, bail};
use reactor_tests::split::Split;
use reactor_tests::{build_component, bundle, read};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// Size of the bundle, in MiB.
    #[arg(long, default_value_t = 50)]
    mib: usize,
    /// Uploads measured (each a new deployment of the same function).
    #[arg(long, default_value_t = 3)]
    uploads: usize,
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .with_context(|| format!("{field} of process {pid}"))
}

/// Pseudo-random bytes (xorshift64): gzip cannot shrink them.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub async fn run(a: UploadArgs) -> anyhow::Result<()> {
    let hello = read(&build_component("examples/hello-wasm", true));
    let archive = bundle(&[
        ("hello.wasm", &hello),
        ("assets/data.bin", &noise(a.mib << 20)),
    ]);
    let limit = (archive.len() as u64 + (1 << 20)).to_string();
    eprintln!(
        "bundle: {:.1} MiB gzipped; starting the split topology ...",
        archive.len() as f64 / (1u64 << 20) as f64
    );
    let split = Split::start_env(&[("REACTOR_FUNCTIONS_BUNDLE_MAX_BYTES", limit)]);
    let pid = split.cp.as_ref().context("control plane")?.pid();
    let api = &split.admin;
    let r = api
        .request(reqwest::Method::POST, "/fn/v1/_admin/functions")
        .json(&serde_json::json!({ "name": "big", "runtime": "wasm" }))
        .send()
        .await?;
    if r.status() != 201 {
        bail!("create: {}", r.text().await?);
    }
    println!(
        "| upload of {:.1} MiB | control plane RSS before | peak during the upload | extra | upload to ready |",
        archive.len() as f64 / (1u64 << 20) as f64
    );
    println!("|---|---|---|---|---|");
    for i in 0..a.uploads {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("resetting the control plane's peak RSS (/proc/PID/clear_refs)")?;
        let before = status_kib(pid, "VmRSS:")?;
        let started = Instant::now();
        let up = api.upload("big", archive.clone()).await;
        if up.status() != 202 {
            bail!("upload: {}", up.text().await?);
        }
        let id: serde_json::Value = up.json().await?;
        let id = id["id"].as_str().context("deployment id")?.to_string();
        let d = api.wait_deployment("big", &id).await;
        if d["status"] != "ready" {
            bail!("the deployment failed: {d}");
        }
        let took = started.elapsed();
        let peak = status_kib(pid, "VmHWM:")?;
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} s |",
            i + 1,
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0,
            took.as_secs_f64()
        );
    }
    Ok(())
}
