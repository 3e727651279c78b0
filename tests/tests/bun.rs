//! End-to-end for the Bun runtime: the real `reactor dev` with real Bun (installed by the
//! set-up command), through the router, sandboxed by bubblewrap.

use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn probe_bundle_with(version: &str, manifest: Option<&Value>) -> Vec<u8> {
    bun_probe_bundle(version, manifest)
}

fn probe_bundle() -> Vec<u8> {
    probe_bundle_with("v1", None)
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn get(s: &Server, path: &str) -> reqwest::Response {
    s.request(Method::GET, path).send().await.expect("send")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_quickstart_works_verbatim() {
    let s = Server::start();
    let project = tempfile::tempdir().expect("tempdir");
    let code = project.path().join("functions/hello/code");
    std::fs::create_dir_all(&code).expect("mkdir");
    std::fs::write(
        code.join("index.ts"),
        read(&root().join("examples/hello-bun/code/index.ts")),
    )
    .expect("write");
    let cli = |args: &[&str]| {
        let out = s.cli_in(project.path(), args);
        assert!(
            out.success,
            "reactor {args:?}: {}\n{}\n{}",
            out.stdout,
            out.stderr,
            s.logs()
        );
        out.stdout
    };
    cli(&["functions", "create", "hello", "--runtime", "bun"]);
    cli(&["functions", "deploy", "hello", "--dir", "./functions/hello"]);
    cli(&["functions", "promote", "hello"]);
    let out = cli(&[
        "functions",
        "invoke",
        "hello",
        "--json",
        r#"{"name":"Reactor"}"#,
    ]);
    assert_eq!(out.trim(), r#"{"message":"Hello, Reactor!"}"#);

    // The seed's curl line, then the pool: promote started a process, so both are warm.
    let resp = s
        .request(Method::POST, "/fn/v1/hello")
        .header("Content-Type", "application/json")
        .body(r#"{"name":"Reactor"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-reactor-function"), "hello");
    assert_eq!(header(&resp, "x-reactor-cold-start"), "false");
    assert_eq!(json_of(resp).await, json!({"message": "Hello, Reactor!"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_sse_example_streams_chunk_by_chunk() {
    let s = Server::start();
    s.create("stream-demo", "bun").await;
    let id = s
        .deploy_ready(
            "stream-demo",
            bundle(&[(
                "index.ts",
                &read(&root().join("examples/stream-bun/index.ts")),
            )]),
        )
        .await;
    s.promote("stream-demo", &id).await;
    let started = Instant::now();
    let mut resp = s
        .request(Method::POST, "/fn/v1/stream-demo")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        arrivals.push(started.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(text.matches("data: ").count(), 10, "{text}");
    assert!(text.starts_with("data: {\"chunk\":0}\n\n"), "{text}");
    let total = *arrivals.last().expect("chunks");
    assert!(total >= Duration::from_millis(1800), "{total:?}");
    assert!(
        arrivals[0] + Duration::from_millis(1200) < total,
        "{arrivals:?}"
    );
    assert!(arrivals.len() >= 5, "{} chunks", arrivals.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_reuse_faults_and_recovery() {
    let s = Server::start();
    s.create("probe", "bun").await;
    let manifest = json!({"limits": {"timeout_ms": 1500}});
    let id = s
        .deploy_ready("probe", probe_bundle_with("v1", Some(&manifest)))
        .await;
    // Deployed, not yet live: nothing started, the first request is cold.
    s.promote("probe", &id).await;
    let first = get(&s, "/fn/v1/probe/").await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-reactor-cold-start"),
        "false",
        "promote started a process"
    );
    let instance = json_of(first).await["instance"].clone();
    // Materialization prebundled the entrypoint with its node_modules; processes run that.
    let artifact = s.dir.path().join(format!(
        "work/storage/artifacts/acme/probe/{id}/bun-prebundled.js"
    ));
    assert!(
        artifact.is_file(),
        "{} missing:\n{}",
        artifact.display(),
        s.logs()
    );
    assert!(
        s.logs().lines().any(|l| l.contains("bun process started")
            && l.contains(&id)
            && l.contains(".reactor-prebundled.js")),
        "{}",
        s.logs()
    );
    let again = get(&s, "/fn/v1/probe/").await;
    assert_eq!(header(&again, "x-reactor-cold-start"), "false");
    assert_eq!(
        json_of(again).await["instance"],
        instance,
        "the warm process was reused"
    );

    // Streamed request body in, response out; node_modules imported.
    let echo = s
        .request(Method::POST, "/fn/v1/probe/echo")
        .body("x".repeat(200_000))
        .send()
        .await
        .expect("send");
    assert_eq!(echo.status(), 200);
    assert_eq!(header(&echo, "x-probe"), "echo");
    assert_eq!(echo.text().await.expect("text").len(), 200_000);
    let greet = get(&s, "/fn/v1/probe/greet").await;
    assert_eq!(
        greet.text().await.expect("text"),
        "greetings, Reactor, from node_modules"
    );

    // An uncaught exception: 500 function_crashed with the deployment and duration.
    let crash = get(&s, "/fn/v1/probe/throw").await;
    assert_eq!(crash.status(), 500);
    let body = json_of(crash).await;
    assert_eq!(body["error"]["code"], "function_crashed", "{body}");
    assert_eq!(body["error"]["details"]["deployment_id"], id.as_str());
    assert!(body["error"]["details"]["duration_ms"].is_u64(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("probe exploded")),
        "{body}"
    );
    // The same process goes on serving.
    let after = get(&s, "/fn/v1/probe/").await;
    assert_eq!(after.status(), 200);
    assert_eq!(json_of(after).await["instance"], instance);

    // A stuck handler: 408 function_timeout, and its process is replaced.
    let started = Instant::now();
    let stuck = get(&s, "/fn/v1/probe/loop").await;
    assert_eq!(stuck.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(json_of(stuck).await["error"]["code"], "function_timeout");
    let next = get(&s, "/fn/v1/probe/").await;
    assert_eq!(next.status(), 200);
    assert_eq!(header(&next, "x-reactor-cold-start"), "true");
    let replaced = json_of(next).await["instance"].clone();
    assert_ne!(replaced, instance, "a fresh process replaced the stuck one");

    // console.log and console.error become log lines with the deployment.
    assert_eq!(get(&s, "/fn/v1/probe/log").await.status(), 200);
    let logged = wait_until(Duration::from_secs(5), || async {
        let logs = s.logs();
        logs.lines()
            .any(|l| l.contains("probe: a line on stderr") && l.contains(&id))
            .then_some(logs)
    })
    .await;
    let logs = logged.unwrap_or_else(|| s.logs());
    assert!(
        logs.lines().any(|l| l.contains("probe: a line on stdout")
            && l.contains(&id)
            && l.contains("stdout")),
        "{logs}"
    );

    // The env is cleared: the function sees none of the worker's variables.
    let env = json_of(get(&s, "/fn/v1/probe/env").await).await;
    let keys = env["keys"].as_array().expect("keys").clone();
    assert!(
        !keys
            .iter()
            .any(|k| k.as_str().is_some_and(|k| k.starts_with("REACTOR_"))),
        "{env}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_grows_to_its_cap_then_queues_then_refuses() {
    let s = Server::start_with(&[
        ("REACTOR_FUNCTIONS_BUN_CONCURRENCY_PER_PROCESS", "1"),
        ("REACTOR_FUNCTIONS_BUN_MAX_INSTANCES_PER_FN", "2"),
        ("REACTOR_FUNCTIONS_BUN_QUEUE_PER_FN", "1"),
    ]);
    s.deploy_live_runtime("probe", "bun", probe_bundle()).await;
    let calls = (0..4).map(|i| {
        let req = s.request(Method::GET, "/fn/v1/probe/slow?ms=1500");
        async move {
            // Spread the arrivals so the order is known: two run, one queues, one is refused.
            tokio::time::sleep(Duration::from_millis(150 * i)).await;
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let retry = header(&resp, "retry-after").to_string();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    });
    let results = futures::future::join_all(calls).await;
    let ok: Vec<&Value> = results
        .iter()
        .filter(|(st, _, _)| *st == 200)
        .map(|(_, _, b)| b)
        .collect();
    let refused: Vec<_> = results.iter().filter(|(st, _, _)| *st == 429).collect();
    assert_eq!(ok.len(), 3, "{results:?}");
    assert_eq!(refused.len(), 1, "{results:?}");
    let (_, retry, body) = refused[0];
    assert_eq!(retry, "1");
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    let instances: std::collections::HashSet<String> = ok
        .iter()
        .map(|b| b["instance"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        instances.len(),
        2,
        "the pool grew to its cap of two: {results:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_processes_are_reaped_down_to_min_instances() {
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_BUN_IDLE_TTL_SECS", "1")]);
    // A function that keeps two processes: both start at promote and outlive the TTL.
    let kept = json!({"concurrency": {"min_instances": 2}});
    let kept_id = s
        .deploy_live_runtime("kept", "bun", probe_bundle_with("v1", Some(&kept)))
        .await;
    let started = s
        .logs()
        .lines()
        .filter(|l| l.contains("bun process started") && l.contains(&kept_id))
        .count();
    assert_eq!(started, 2, "{}", s.logs());
    s.deploy_live_runtime("probe", "bun", probe_bundle()).await;
    let first = get(&s, "/fn/v1/probe/").await;
    assert_eq!(first.status(), 200);
    let instance = json_of(first).await["instance"].clone();
    let reaped = wait_until(Duration::from_secs(10), || async {
        s.logs()
            .contains("stopping a bun process: idle")
            .then_some(())
    })
    .await;
    assert!(reaped.is_some(), "{}", s.logs());
    let next = get(&s, "/fn/v1/probe/").await;
    assert_eq!(header(&next, "x-reactor-cold-start"), "true");
    assert_ne!(json_of(next).await["instance"], instance);
    // Well past the TTL, the kept function was never reaped and is still warm.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !s.logs()
            .lines()
            .any(|l| l.contains("stopping a bun process") && l.contains(&kept_id)),
        "{}",
        s.logs()
    );
    let warm = get(&s, "/fn/v1/kept/").await;
    assert_eq!(header(&warm, "x-reactor-cold-start"), "false");
}

#[tokio::test(flavor = "multi_thread")]
async fn reactor_dev_without_bun_serves_wasm_and_says_why_bun_is_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir
        .path()
        .join("no-bun-here")
        .to_string_lossy()
        .into_owned();
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_BUN_PATH", &missing)]);
    assert!(
        s.logs().contains("bun functions are off") && s.logs().contains("Bun was not found"),
        "{}",
        s.logs()
    );
    let resp = s
        .request(reqwest::Method::POST, "/fn/v1/_admin/functions")
        .json(&serde_json::json!({"name": "tsfn", "runtime": "bun"}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "runtime_disabled", "{body}");
    s.create("wasmfn", "wasm").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_while_requests_are_in_flight_fails_none() {
    let s = Server::start();
    let v1 = s
        .deploy_live_runtime("probe", "bun", probe_bundle_with("v1", None))
        .await;
    let v2 = s.deploy_ready("probe", probe_bundle_with("v2", None)).await;
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let req = s.request(Method::GET, "/fn/v1/probe/slow?ms=1500");
            tokio::spawn(async move { req.send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.promote("probe", &v2).await;
    for call in calls {
        let resp = call.await.expect("join").expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(json_of(resp).await["version"], "v1");
    }
    let now = json_of(get(&s, "/fn/v1/probe/").await).await;
    assert_eq!(now["version"], "v2");
    // The old deployment's process drained, then stopped.
    let stopped = wait_until(Duration::from_secs(10), || async {
        s.logs()
            .lines()
            .any(|l| {
                l.contains("stopping a bun process: its deployment is no longer live")
                    && l.contains(&v1)
            })
            .then_some(())
    })
    .await;
    assert!(stopped.is_some(), "{}", s.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_past_its_memory_limit_is_killed_with_a_clear_error() {
    let s = Server::start();
    s.create("probe", "bun").await;
    let manifest = json!({"limits": {"memory_mb": 96, "timeout_ms": 20000}});
    let id = s
        .deploy_ready("probe", probe_bundle_with("v1", Some(&manifest)))
        .await;
    s.promote("probe", &id).await;
    assert!(
        s.logs().contains("bun memory limits: cgroup"),
        "this host offers cgroup memory limits: {}",
        s.logs()
    );
    let resp = get(&s, "/fn/v1/probe/alloc").await;
    assert_eq!(resp.status(), 500);
    let body = json_of(resp).await;
    assert_eq!(body["error"]["code"], "function_crashed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("memory limit") && m.contains("96 MB")),
        "{body}"
    );
    let next = get(&s, "/fn/v1/probe/").await;
    assert_eq!(next.status(), 200);
}

/// Reads another function's bundle and the worker's database from inside a function.
async fn reads_of_foreign_files(s: &Server) -> (Value, Value) {
    let victim = s
        .deploy_live_runtime(
            "victim",
            "bun",
            bundle(&[(
                "index.ts",
                b"export default { fetch() { return new Response('secret sauce') } };",
            )]),
        )
        .await;
    s.deploy_live_runtime("spy", "bun", probe_bundle()).await;
    let work = s.dir.path().join("work");
    let bundle_file = work.join(format!("cache/bun/bundles/{victim}/index.ts"));
    assert!(bundle_file.exists(), "{}", bundle_file.display());
    let db = work.join("reactor.db");
    let read = |path: std::path::PathBuf| {
        let req = s
            .request(Method::GET, "/fn/v1/spy/read")
            .query(&[("path", path.display().to_string())]);
        async move { json_of(req.send().await.expect("send")).await }
    };
    (read(bundle_file).await, read(db).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_hides_other_functions_and_the_worker() {
    let s = Server::start();
    let (bundle, db) = reads_of_foreign_files(&s).await;
    assert_eq!(bundle["ok"], false, "{bundle}");
    assert_eq!(db["ok"], false, "{db}");
    // The same reads succeed with the sandbox off: the paths are right, the sandbox hid them.
    let open = Server::start_with(&[("REACTOR_FUNCTIONS_BUN_SANDBOX", "false")]);
    assert!(
        open.logs().contains("bun sandbox is OFF"),
        "{}",
        open.logs()
    );
    let (bundle, db) = reads_of_foreign_files(&open).await;
    assert_eq!(bundle["ok"], true, "{bundle}");
    assert_eq!(db["ok"], true, "{db}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_cannot_redirect_the_worker_or_preload_code() {
    let s = Server::start();
    // A bunfig.toml in the bundle would preload code before the harness: it is ignored.
    let preload = bundle(&[
        (
            "index.ts",
            b"export default { fetch() { return new Response((globalThis as any).PRELOADED ? 'preloaded' : 'clean') } };",
        ),
        ("bunfig.toml", b"preload = [\"./evil.ts\"]\n"),
        ("evil.ts", b"(globalThis as any).PRELOADED = true; console.log('probe: bunfig preload ran');"),
    ]);
    s.deploy_live_runtime("preload", "bun", preload).await;
    let resp = get(&s, "/fn/v1/preload/").await;
    assert_eq!(resp.text().await.expect("text"), "clean", "{}", s.logs());
    assert!(!s.logs().contains("bunfig preload ran"), "{}", s.logs());

    // Replacing its socket with a symlink redirects nothing: the worker connects through
    // its own link, also for new connections.
    s.deploy_live_runtime("probe", "bun", probe_bundle()).await;
    let hijack = get(&s, "/fn/v1/probe/hijack").await;
    assert_eq!(hijack.text().await.expect("text"), "hijacked");
    let calls = (0..4).map(|_| s.request(Method::GET, "/fn/v1/probe/slow?ms=300").send());
    for resp in futures::future::join_all(calls).await {
        let resp = resp.expect("send");
        assert_eq!(resp.status(), 200, "{}", s.logs());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_aborts_the_handler() {
    let s = Server::start();
    s.deploy_live_runtime("probe", "bun", probe_bundle()).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let err = client
        .get(format!("{}/fn/v1/probe/abortable", s.url))
        .bearer_auth(&s.token)
        .header("X-Reactor-Org", &s.org)
        .send()
        .await
        .expect_err("the client gives up");
    assert!(err.is_timeout());
    let aborted = wait_until(Duration::from_secs(5), || async {
        s.logs()
            .contains("probe: aborted by the client")
            .then_some(())
    })
    .await;
    assert!(aborted.is_some(), "{}", s.logs());
    assert!(s.logs().contains("probe: abortable start"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_that_do_not_load_fail_with_buns_own_error() {
    let s = Server::start();
    s.create("broken", "bun").await;
    for (source, needle) in [
        (&b"export default { hello() {} };"[..], "no fetch method"),
        (&b"export default { fetch( { };"[..], "Expected"),
        (
            &b"throw new Error('top-level boom'); export default {};"[..],
            "top-level boom",
        ),
    ] {
        let up = s.upload("broken", bundle(&[("index.ts", source)])).await;
        assert_eq!(up.status(), 202);
        let id = json_of(up).await["id"].as_str().expect("id").to_string();
        let d = s.wait_deployment("broken", &id).await;
        assert_eq!(d["status"], "failed", "{d}");
        assert!(
            d["error"].as_str().is_some_and(|e| e.contains(needle)),
            "{needle}: {d}"
        );
    }
    let listed = s.cli_ok(&["functions", "deployments", "list", "broken"]);
    assert!(listed.contains("failed"), "{listed}");
    assert!(listed.contains("no fetch method"), "{listed}");
}

/// The split topology: Bun deployments are built and run on the Bun worker; the control
/// plane runs no function code, and its `functions.bun_path` points nowhere
/// ([`split::NO_BUN`]).
#[tokio::test(flavor = "multi_thread")]
async fn the_split_topology_builds_and_runs_bun_on_its_own_worker() {
    let mut split = split::Split::start();
    let _bun = split.start_bun_worker("bun-worker", &[]);
    let admin = &split.admin;
    admin.create("hello", "bun").await;
    let id = admin
        .deploy_ready(
            "hello",
            bundle(&[(
                "code/index.ts",
                &read(&root().join("examples/hello-bun/code/index.ts")),
            )]),
        )
        .await;
    let bun_log =
        || std::fs::read_to_string(split.dir.path().join("bun-worker.log")).unwrap_or_default();
    assert!(
        bun_log().contains(&format!("deployment_id={id}")) && bun_log().contains("built"),
        "the Bun worker built it:\n{}",
        bun_log()
    );
    // A bundle that does not load fails with Bun's own words, from the worker.
    admin.create("broken", "bun").await;
    let up = admin
        .upload(
            "broken",
            bundle(&[("index.ts", b"export default { hello() {} };")]),
        )
        .await;
    assert_eq!(up.status(), 202);
    let broken = json_of(up).await["id"].as_str().expect("id").to_string();
    let d = admin.wait_deployment("broken", &broken).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"]
            .as_str()
            .is_some_and(|e| e.contains("no fetch method")),
        "{d}"
    );
    // The bun worker registers within a heartbeat or two.
    let promoted = wait_until(Duration::from_secs(10), || async {
        let resp = admin
            .request(Method::POST, "/fn/v1/_admin/functions/hello/promote")
            .json(&json!({"deployment_id": id}))
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    assert!(promoted.is_some(), "{}", split.logs());
    let answered = wait_until(Duration::from_secs(10), || async {
        let resp = split
            .invoke(Method::POST, "/fn/v1/hello")
            .body(r#"{"name":"Split"}"#)
            .send()
            .await
            .ok()?;
        (resp.status() == 200).then_some(resp)
    })
    .await;
    let resp = answered.unwrap_or_else(|| {
        let bun_log =
            std::fs::read_to_string(split.dir.path().join("bun-worker.log")).unwrap_or_default();
        panic!("{}\n--- bun worker\n{bun_log}", split.logs())
    });
    assert_eq!(json_of(resp).await, json!({"message": "Hello, Split!"}));

    // Secrets in the split topology: only the control plane holds the data key; the
    // worker asks it for the deployment's env (registered workers only), and the function
    // reads it. Function output and invocations reach the control plane's logs.
    admin.create("envy", "bun").await;
    let secret = "sk_split_7f3a9c";
    let set = admin
        .request(Method::PUT, "/fn/v1/_admin/functions/envy/env/API_KEY")
        .json(&json!({"value": secret, "secret": true}))
        .send()
        .await
        .expect("set");
    assert_eq!(set.status(), 200);
    let source = b"export default { fetch() { console.log('envy: read the key'); return new Response(process.env.API_KEY ?? 'missing'); } };\n";
    let manifest = br#"{"secret_keys": ["API_KEY"]}"#;
    let id = admin
        .deploy_ready(
            "envy",
            bundle(&[("index.ts", source), ("manifest.json", manifest)]),
        )
        .await;
    admin.promote("envy", &id).await;
    let body = wait_until(Duration::from_secs(10), || async {
        let resp = split.invoke(Method::GET, "/fn/v1/envy").send().await.ok()?;
        (resp.status() == 200).then_some(resp.text().await.ok()?)
    })
    .await
    .unwrap_or_else(|| panic!("{}", split.logs()));
    assert_eq!(body, secret);
    let logged = wait_until(Duration::from_secs(10), || async {
        let text = admin
            .request(
                Method::GET,
                "/fn/v1/_admin/functions/envy/logs?follow=false",
            )
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text.contains("envy: read the key") && text.contains(r#""kind":"invocation""#))
            .then_some(text)
    })
    .await;
    assert!(logged.is_some(), "{}", split.logs());
    let bun_log =
        std::fs::read_to_string(split.dir.path().join("bun-worker.log")).unwrap_or_default();
    assert!(!split.logs().contains(secret) && !bun_log.contains(secret));
}
