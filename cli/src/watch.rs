//! `reactor functions dev NAME --dir DIR`: the daily loop. Deploys the directory, promotes
//! it, then polls the files (every 250 ms, no platform-specific watcher) and on each save
//! rebuilds, deploys and promotes again. A failed build or deployment prints its first
//! error in full and leaves the live deployment serving; the next save tries again.

use crate::client::Client;
use crate::commands;
use crate::pack;
use anyhow::{Context, bail};
use reactor_api::model::{CreateFunction, DeploymentInfo, DeploymentStatus, PromoteRequest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// The function (created with the manifest's runtime when it does not exist).
    pub name: String,
    /// The function's directory.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// How often to look for changes, in milliseconds.
    #[arg(long, default_value_t = 250, hide = true)]
    pub poll_ms: u64,
    /// Deploy and promote once, then exit (no watching).
    #[arg(long)]
    pub once: bool,
}

/// Directories never watched: build outputs and dependencies change under the build.
const NOT_WATCHED: [&str; 4] = [".git", "target", "node_modules", ".reactor"];

pub async fn run(client: &Client, args: &WatchArgs, json: bool) -> anyhow::Result<()> {
    let dir = &args.dir;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    ensure_function(client, &args.name, dir, json).await?;
    let poll = Duration::from_millis(args.poll_ms.max(20));
    // The build's output changes with every build: watching it would loop.
    let output = pack::read_manifest(dir)
        .ok()
        .flatten()
        .and_then(|m| m.build)
        .map(|b| dir.join(b.output));
    let snapshot = |dir: &Path| snapshot(dir, output.as_deref());
    let mut seen = snapshot(dir)?;
    say(
        json,
        "watching",
        &args.name,
        &[("dir", &dir.display().to_string())],
    );
    let live = cycle(client, &args.name, dir, json).await;
    if args.once {
        if !live {
            bail!("{} is not live: the deployment failed", args.name);
        }
        return Ok(());
    }
    loop {
        tokio::time::sleep(poll).await;
        let now = snapshot(dir)?;
        if now == seen {
            continue;
        }
        // Let a burst of writes (an editor's save, a formatter) settle first.
        let mut settled = now;
        loop {
            tokio::time::sleep(poll).await;
            let again = snapshot(dir)?;
            if again == settled {
                break;
            }
            settled = again;
        }
        let changed = changed_files(&seen, &settled);
        seen = settled;
        say(
            json,
            "changed",
            &args.name,
            &[("files", &changed.join(", "))],
        );
        cycle(client, &args.name, dir, json).await;
    }
}

/// Creates the function when it does not exist, with the runtime its manifest names.
async fn ensure_function(
    client: &Client,
    name: &str,
    dir: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let exists = client
        .execute(client.request(
            reqwest::Method::GET,
            &format!("/fn/v1/_admin/functions/{name}"),
        ))
        .await?;
    if exists.status().is_success() {
        return Ok(());
    }
    if exists.status() != reqwest::StatusCode::NOT_FOUND {
        crate::client::check(exists).await?;
        return Ok(());
    }
    let manifest = pack::read_manifest(dir)?;
    let Some(runtime) = manifest.and_then(|m| m.runtime) else {
        bail!(
            "function {name} does not exist and {}/manifest.json names no runtime: create it with `reactor functions create {name} --runtime bun|wasm`",
            dir.display()
        );
    };
    let _: reactor_api::model::FunctionInfo = client
        .post(
            "/fn/v1/_admin/functions",
            &CreateFunction {
                name: name.to_string(),
                runtime,
            },
        )
        .await?;
    say(json, "created", name, &[("runtime", &runtime.to_string())]);
    Ok(())
}

/// One build, deploy and promote; what happened is printed (the loop goes on either way),
/// and whether it went live returned.
async fn cycle(client: &Client, name: &str, dir: &Path, json: bool) -> bool {
    let started = Instant::now();
    match deploy_and_promote(client, name, dir).await {
        Ok(Outcome::Live(d)) => {
            let url = commands::invoke_url(client, name);
            let ms = started.elapsed().as_millis().to_string();
            let fields = [("deployment_id", d.id.as_str()), ("ms", &ms), ("url", &url)];
            say(json, "live", name, &fields);
            true
        }
        Ok(Outcome::Failed(d)) => {
            let error = d.error.unwrap_or_else(|| "no reason given".into());
            let fields = [("deployment_id", d.id.as_str()), ("error", &error)];
            say(json, "failed", name, &fields);
            false
        }
        Err(e) => {
            let error = crate::describe(&e);
            say(json, "failed", name, &[("error", &error)]);
            false
        }
    }
}

enum Outcome {
    Live(DeploymentInfo),
    Failed(DeploymentInfo),
}

async fn deploy_and_promote(client: &Client, name: &str, dir: &Path) -> anyhow::Result<Outcome> {
    let d = commands::upload(client, name, dir, false, true, false).await?;
    if d.status != DeploymentStatus::Ready {
        return Ok(Outcome::Failed(d));
    }
    let live: DeploymentInfo = client
        .post(
            &format!("/fn/v1/_admin/functions/{name}/promote"),
            &PromoteRequest {
                deployment_id: Some(d.id.clone()),
                force: false,
            },
        )
        .await
        .context("promoting")?;
    Ok(Outcome::Live(live))
}

/// One event: a line for a person (the error in full, on its own lines), or a JSON object.
fn say(json: bool, event: &str, name: &str, fields: &[(&str, &str)]) {
    if json {
        let mut object = serde_json::Map::new();
        object.insert("event".into(), event.into());
        object.insert("function".into(), name.into());
        for (k, v) in fields {
            object.insert((*k).into(), (*v).into());
        }
        println!("{}", serde_json::Value::Object(object));
        return;
    }
    let field = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or("")
    };
    match event {
        "watching" => println!("Watching {} for {name} (Ctrl-C to stop)", field("dir")),
        "created" => println!("Created function {name} (runtime {})", field("runtime")),
        "changed" => println!("Changed: {}", field("files")),
        "live" => println!(
            "Live: {} in {} ms\n  {}",
            field("deployment_id"),
            field("ms"),
            field("url")
        ),
        _ => {
            let id = field("deployment_id");
            if id.is_empty() {
                println!("Failed: {}", field("error"));
            } else {
                println!("Failed: {id}\n{}", field("error"));
            }
            println!("  (the live deployment keeps serving; save to try again)");
        }
    }
}

type Snapshot = BTreeMap<PathBuf, (SystemTime, u64)>;

/// Modification time and size of every watched file (all but `output`).
fn snapshot(dir: &Path, output: Option<&Path>) -> anyhow::Result<Snapshot> {
    let mut files = Snapshot::new();
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .add_custom_ignore_filename(".reactorignore")
        .filter_entry(|e| !NOT_WATCHED.iter().any(|n| e.file_name() == *n))
        .build();
    for entry in walker {
        let entry = entry.context("walking the function directory")?;
        if !entry.file_type().is_some_and(|t| t.is_file()) || Some(entry.path()) == output {
            continue;
        }
        // A file removed between the listing and this look is simply not there.
        if let Ok(meta) = entry.metadata() {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            files.insert(entry.path().to_path_buf(), (modified, meta.len()));
        }
    }
    Ok(files)
}

/// The files added, removed or changed between two snapshots (at most 5 named).
fn changed_files(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut changed: Vec<String> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| p.display().to_string())
        .chain(
            before
                .keys()
                .filter(|p| !after.contains_key(*p))
                .map(|p| format!("{} (removed)", p.display())),
        )
        .collect();
    if changed.len() > 5 {
        let more = changed.len() - 5;
        changed.truncate(5);
        changed.push(format!("and {more} more"));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_see_edits_and_skip_build_outputs_and_ignored_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("index.ts"), "a").expect("write");
        std::fs::write(d.join(".reactorignore"), "*.log\n").expect("write");
        std::fs::create_dir_all(d.join("target/release")).expect("mkdir");
        let output = d.join("function.wasm");
        let snap = |d: &Path| snapshot(d, Some(&output)).expect("snapshot");
        let before = snap(d);
        std::fs::write(d.join("target/release/out.wasm"), "x").expect("write");
        std::fs::write(d.join("debug.log"), "x").expect("write");
        std::fs::write(&output, "built").expect("write");
        assert_eq!(snap(d), before, "outputs and ignored files");
        std::fs::write(d.join("index.ts"), "ab").expect("write");
        let after = snap(d);
        assert_ne!(after, before);
        let changed = changed_files(&before, &after);
        assert_eq!(changed.len(), 1);
        assert!(changed[0].ends_with("index.ts"), "{changed:?}");
    }
}
