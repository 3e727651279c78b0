//! The Lambda runtime end to end (issue 7): `reactor dev` with `runtimes` including
//! `lambda`, against moto's server for the AWS API calls (IAM, layers, S3, create and
//! update function, publish version, alias, Function URL config, reserved concurrency)
//! and against `tests/fixtures/lambda/function_url.py` for the Function URL: it checks
//! each request's SigV4 signature with botocore's signer (refusing wrong ones), then runs
//! the very package that was uploaded to moto's S3 (its `bootstrap` and Reactor's harness
//! under Bun, as the Lambda Web Adapter would) with the environment moto holds for the
//! alias's version, and streams its answer back. See docs/lambda.md for what this shows
//! and what only real AWS can.

use reactor_tests::topology::{Moto, free_port};
use reactor_tests::{
    CALL_PARENT, CALL_TRACE, Server, bun_bin, bundle, check_call_context, root, sha256_hex,
    wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY_ID: &str = "AKIDREACTORLAMBDATEST";
const SECRET: &str = "reactor-lambda-test-secret-key";
const REGION: &str = "us-east-1";
const BUCKET: &str = "reactor-function-bundles";
const ROLE: &str = "arn:aws:iam::123456789012:role/reactor-lambda";
const FUNCTION: &str = "reactor-acme_hello";

/// The function: echoes what it got, streams, crashes and sleeps on demand.
const SOURCE: &str = r#"
export default {
  async fetch(req) {
    const url = new URL(req.url);
    const p = url.pathname;
    if (p.endsWith("/stream")) {
      const stream = new ReadableStream({
        async start(c) {
          for (let i = 0; i < 3; i++) { c.enqueue(`data: ${i}\n\n`); await Bun.sleep(400); }
          c.close();
        },
      });
      return new Response(stream, { headers: { "content-type": "text/event-stream" } });
    }
    if (p.endsWith("/crash")) throw new Error("boom from lambda");
    if (p.endsWith("/call")) {
      // A call between functions: plain fetch, passed on as it streams.
      const to = url.searchParams.get("to");
      const r = await fetch(`http://${to}${url.searchParams.get("path") ?? "/"}`, {
        headers: { "x-reactor-caller-function": "forged", "x-request-id": "req_forged" },
      });
      return new Response(r.body, { status: r.status, headers: r.headers });
    }
    if (p.endsWith("/fanout")) {
      // Three calls in flight at once, awaited together.
      const t = Date.now();
      const ms = url.searchParams.get("ms") ?? "600";
      const all = await Promise.all([1, 2, 3].map(() => fetch(`http://back.reactor.internal/sleep?ms=${ms}`)));
      return Response.json({ statuses: all.map((r) => r.status), elapsed_ms: Date.now() - t });
    }
    if (p.endsWith("/sleep")) {
      await Bun.sleep(Number(url.searchParams.get("ms") ?? "1000"));
      return new Response("slept");
    }
    const body = new Uint8Array(await req.arrayBuffer());
    const sha = new Bun.CryptoHasher("sha256").update(body).digest("hex");
    return Response.json({
      version: "__VERSION__", path: p, query: url.search, method: req.method,
      body_len: body.length, body_sha: sha,
      public: process.env.PUBLIC_KEY ?? null, secret: process.env.SECRET_KEY ?? null,
      deployment: process.env.REACTOR_DEPLOYMENT_ID ?? null,
      caller_org: req.headers.get("x-reactor-caller-org"),
      caller_function: req.headers.get("x-reactor-caller-function"),
      deadline_ms: req.headers.get("x-reactor-deadline-ms"),
      depth: req.headers.get("x-reactor-call-depth"),
      authorization: req.headers.get("authorization"),
      call_url: req.headers.get("x-reactor-call-url"),
      capability: req.headers.get("x-reactor-call-capability"),
    }, { headers: { "x-reactor-cold-start": "forged" } });
  },
};
"#;

fn function_bundle(version: &str, memory_mb: u32) -> Vec<u8> {
    let manifest = json!({
        "runtime": "lambda",
        "entrypoint": "index.js",
        "env_keys": ["PUBLIC_KEY"],
        "secret_keys": ["SECRET_KEY"],
        "concurrency": {"max_concurrency": 5},
        "calls": {"back": {"function": "back"}, "streamer": {"function": "streamer"}},
        "limits": {"timeout_ms": 2000, "memory_mb": memory_mb},
    })
    .to_string();
    let source = SOURCE.replace("__VERSION__", version);
    bundle(&[
        ("index.js", source.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ])
}

/// The Function URL emulator, killed (with the function it runs) on drop.
struct FunctionUrl {
    child: Child,
    url: String,
}

impl FunctionUrl {
    fn start() -> FunctionUrl {
        let bun_dir = bun_bin().parent().expect("bun's directory").to_path_buf();
        let path = format!(
            "{}:{}",
            bun_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new(reactor_tests::python())
            .arg(root().join("tests/fixtures/lambda/function_url.py"))
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", REGION)
            .env("PATH", path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning function_url.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.to_string());
                } else {
                    println!("[function] {line}");
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("function_url.py started");
        FunctionUrl { child, url }
    }

    async fn control(&self, path: &str, body: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/__emulator/{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("emulator control");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/__emulator/stats", self.url))
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }
}

impl Drop for FunctionUrl {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python snippet with boto3 against moto (set-up the way an operator would have
/// it: the role and the two layers exist before Reactor deploys).
fn boto3(moto: &str, script: &str) -> String {
    let out = Command::new(reactor_tests::python())
        .args(["-c", script])
        .env("MOTO", moto)
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_DEFAULT_REGION", REGION)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "boto3 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const PUBLISH_LAYERS: &str = r##"
import boto3, io, os, zipfile
lam = boto3.client("lambda", endpoint_url=os.environ["MOTO"])
def layer(name, path, text):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(path, text)
    return lam.publish_layer_version(LayerName=name, Content={"ZipFile": buf.getvalue()},
        CompatibleRuntimes=["provided.al2023"])["LayerVersionArn"]
print(layer("LambdaAdapterLayerX86", "extensions/lambda-adapter", "#!/bin/sh\n"))
print(layer("bun", "bin/bun", "#!/bin/sh\n"))
"##;

const CREATE_ROLE: &str = r#"
import boto3, json, os
iam = boto3.client("iam", endpoint_url=os.environ["MOTO"])
iam.create_role(RoleName="reactor-lambda", AssumeRolePolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                   "Action": "sts:AssumeRole"}]}))
"#;

async fn aws_clients(moto: &str) -> (aws_sdk_lambda::Client, aws_sdk_s3::Client) {
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_credential_types::Credentials::new(
            KEY_ID, SECRET, None, None, "test",
        ))
        .endpoint_url(moto)
        .load()
        .await;
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    (
        aws_sdk_lambda::Client::new(&shared),
        aws_sdk_s3::Client::from_conf(s3),
    )
}

/// What Lambda would run for the alias now: the package from S3 unzipped, and the
/// environment of the version the alias points at. Loaded into the emulator.
async fn load_live(
    lambda: &aws_sdk_lambda::Client,
    s3: &aws_sdk_s3::Client,
    emulator: &FunctionUrl,
    deployment: &str,
    dir: &std::path::Path,
) -> String {
    let alias = lambda
        .get_alias()
        .function_name(FUNCTION)
        .name("live")
        .send()
        .await
        .expect("alias");
    let version = alias.function_version().expect("version").to_string();
    let config = lambda
        .get_function_configuration()
        .function_name(FUNCTION)
        .qualifier(&version)
        .send()
        .await
        .expect("configuration");
    assert_eq!(
        config.description(),
        Some(deployment),
        "the version's description"
    );
    let env = config
        .environment()
        .and_then(|e| e.variables())
        .cloned()
        .unwrap_or_default();
    let key = format!("acme/hello/{deployment}.zip");
    let object = s3
        .get_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .expect("package in the bucket");
    let bytes = object.body.collect().await.expect("package").into_bytes();
    let task_root = dir.join(deployment);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    archive.extract(&task_root).expect("unzip");
    emulator
        .control(
            "load",
            json!({
                "task_root": task_root,
                "env": env,
                "timeout_s": config.timeout().unwrap_or(3),
                "command": ["sh", "bootstrap"],
            }),
        )
        .await;
    version
}

/// A POST that declares `length` bytes and sends none; the status and JSON answer.
async fn declared_too_large(server: &Server, length: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /fn/v1/hello/echo HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nX-Reactor-Org: acme\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
        server.token
    );
    sock.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = body
        .find('{')
        .and_then(|i| body.rfind('}').map(|j| &body[i..=j]))
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// The Lambda function (deployment `dep`) calls other functions: the same call model as
/// WASM and Bun, through the router's `functions.lambda.call_listen`.
async fn lambda_calls(server: &Server, call_listen: &str, dep: &str) {
    server
        .deploy_live("back", reactor_tests::wasm_probe_bundle(None))
        .await;
    server
        .deploy_live_runtime(
            "streamer",
            "bun",
            reactor_tests::bun_probe_bundle("v1", None),
        )
        .await;
    let direct: Value = server
        .request(Method::GET, "/fn/v1/back/echo")
        .send()
        .await
        .expect("echo")
        .json()
        .await
        .expect("json");
    let (token, role) = (
        &direct["headers"]["x-reactor-caller-token"],
        &direct["headers"]["x-reactor-caller-role"],
    );
    assert!(token.is_string() && role.is_string(), "{direct}");

    // The context: a child span of the caller's trace, its baggage, the original
    // identity, the caller and a deadline within its own 2 s; the forged headers of the
    // function's own code are overwritten.
    let resp = server
        .request(
            Method::GET,
            "/fn/v1/hello/call?to=back.reactor.internal&path=/echo",
        )
        .header("traceparent", format!("00-{CALL_TRACE}-{CALL_PARENT}-01"))
        .header("baggage", "user=alice,tier=gold")
        .send()
        .await
        .expect("call");
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "{text}\n{}", server.logs());
    let got: Value = serde_json::from_str(&text).expect("json");
    let h = &got["headers"];
    let identity = (token.as_str().expect("token"), role.as_str().expect("role"));
    check_call_context(
        h,
        "acme",
        identity,
        ("hello", dep),
        "user=alice,tier=gold",
        2000,
    );
    assert_eq!(h["x-request-id"], request_id.as_str(), "{got}");
    for leaked in [
        "x-reactor-call-url",
        "x-reactor-call-capability",
        "x-reactor-call-host",
    ] {
        assert!(
            h.get(leaked).is_none(),
            "{leaked} reached the callee: {got}"
        );
    }

    // Outside its `calls`: refused.
    let refused = server
        .request(
            Method::GET,
            "/fn/v1/hello/call?to=caller.reactor.internal&path=/echo",
        )
        .send()
        .await
        .expect("call");
    assert_eq!(refused.status(), 403);
    let e: Value = refused.json().await.expect("json");
    assert_eq!(e["error"]["code"], "call_not_allowed", "{e}");

    // Three calls started together take the time of the slowest, not the sum.
    let fan: Value = server
        .request(Method::GET, "/fn/v1/hello/fanout?ms=500")
        .send()
        .await
        .expect("fanout")
        .json()
        .await
        .expect("json");
    assert_eq!(fan["statuses"], json!([200, 200, 200]), "{fan}");
    let elapsed = fan["elapsed_ms"].as_u64().expect("elapsed");
    assert!(
        (500..1300).contains(&elapsed),
        "three 500 ms calls in {elapsed} ms"
    );

    // The call-back headers are the router's: an outside request's never reach the
    // function, and a capability nobody was given opens nothing.
    let forged: Value = server
        .request(Method::GET, "/fn/v1/hello/echo")
        .header("x-reactor-call-url", "http://127.0.0.1:1")
        .header("x-reactor-call-capability", "forged")
        .send()
        .await
        .expect("echo")
        .json()
        .await
        .expect("json");
    assert_eq!(forged["call_url"], Value::Null, "{forged}");
    assert_eq!(forged["capability"], Value::Null, "{forged}");
    // (The harness takes them off too: a function of another runtime shows the router's
    // stripping alone.)
    let echoed: Value = server
        .request(Method::GET, "/fn/v1/back/echo")
        .header("x-reactor-call-url", "http://127.0.0.1:1")
        .header("x-reactor-call-capability", "forged")
        .header("x-reactor-call-host", "back.reactor.internal")
        .send()
        .await
        .expect("echo")
        .json()
        .await
        .expect("json");
    for forged in [
        "x-reactor-call-url",
        "x-reactor-call-capability",
        "x-reactor-call-host",
    ] {
        assert!(
            echoed["headers"].get(forged).is_none(),
            "{forged}: {echoed}"
        );
    }
    let door = reqwest::Client::new()
        .get(format!("http://{call_listen}/call/echo"))
        .header("x-reactor-call-capability", "00".repeat(24))
        .header("x-reactor-call-host", "back.reactor.internal")
        .send()
        .await
        .expect("call door");
    assert_eq!(door.status(), 403);
    let e: Value = door.json().await.expect("json");
    assert_eq!(e["error"]["code"], "call_not_allowed", "{e}");

    // The client going away ends the Lambda invocation's calls: its streaming callee sees
    // the abort long before the 2 s deadline would have cut it.
    let before = server.logs().matches("probe: stream aborted").count();
    let t = Instant::now();
    let mut stream = server
        .request(
            Method::GET,
            "/fn/v1/hello/call?to=streamer.reactor.internal&path=/stream",
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.expect("chunk").expect("a first line");
    assert!(
        String::from_utf8_lossy(&first).starts_with("line 0"),
        "{first:?}"
    );
    drop(stream);
    let dropped_at = t.elapsed();
    let aborted = wait_until(Duration::from_secs(5), || async {
        (server.logs().matches("probe: stream aborted").count() > before).then(|| t.elapsed())
    })
    .await
    .unwrap_or_else(|| panic!("the callee saw no abort:\n{}", server.logs()));
    assert!(
        aborted < Duration::from_millis(1800),
        "dropped at {dropped_at:?}, the callee aborted at {aborted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lambda_lifecycle_against_moto_and_a_signing_function_url() {
    let work = tempfile::tempdir().expect("tempdir");
    let moto = Moto::start(&work.path().join("moto.log"));
    let use_docker = reqwest::Client::new()
        .post(format!("{}/moto-api/config", moto.url))
        .json(&json!({"lambda": {"use_docker": false}}))
        .send()
        .await
        .expect("moto config");
    assert!(use_docker.status().is_success());
    let layers = boto3(&moto.url, PUBLISH_LAYERS);
    let mut layers = layers.lines();
    let lwa = layers.next().expect("lwa layer").to_string();
    let bun = layers.next().expect("bun layer").to_string();
    let emulator = FunctionUrl::start();
    // Where the Lambda function's calls come back (the emulator runs it on this host).
    let call_listen = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(&[
        ("REACTOR_FUNCTIONS_LAMBDA_CALL_LISTEN", &call_listen),
        ("REACTOR_FUNCTIONS_RUNTIMES", "wasm,bun,lambda"),
        ("REACTOR_FUNCTIONS_LAMBDA_REGION", REGION),
        ("REACTOR_FUNCTIONS_LAMBDA_ROLE_ARN", ROLE),
        ("REACTOR_FUNCTIONS_LAMBDA_BUNDLE_S3_BUCKET", BUCKET),
        ("REACTOR_FUNCTIONS_LAMBDA_LWA_LAYER_ARN", &lwa),
        ("REACTOR_FUNCTIONS_LAMBDA_BUN_LAYER_ARN", &bun),
        ("REACTOR_FUNCTIONS_LAMBDA_ENDPOINT", &moto.url),
        ("REACTOR_FUNCTIONS_LAMBDA_S3_ENDPOINT", &moto.url),
        (
            "REACTOR_FUNCTIONS_LAMBDA_FUNCTION_URL_ENDPOINT",
            &emulator.url,
        ),
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    let (lambda, s3) = aws_clients(&moto.url).await;
    server.create("hello", "lambda").await;
    for (key, value, secret) in [
        ("PUBLIC_KEY", "pk_test_123", false),
        ("SECRET_KEY", "sk_live_lambda_456", true),
    ] {
        let put = server
            .request(
                Method::PUT,
                &format!("/fn/v1/_admin/functions/hello/env/{key}"),
            )
            .json(&json!({"value": value, "secret": secret}))
            .send()
            .await
            .expect("env");
        assert_eq!(put.status(), 200);
    }

    // AWS errors fail the deployment with AWS's message: the role does not exist yet.
    let up = server.upload("hello", function_bundle("v0", 256)).await;
    assert_eq!(up.status(), 202);
    let id: Value = up.json().await.expect("json");
    let failed = server
        .wait_deployment("hello", id["id"].as_str().expect("id"))
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let reason = failed["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("CreateFunction") && reason.contains("cannot be assumed"),
        "{failed}"
    );
    boto3(&moto.url, CREATE_ROLE);

    // Deploy: created with the manifest's limits, env and secrets, both layers; version 1.
    let started = Instant::now();
    let v1 = server
        .deploy_ready("hello", function_bundle("v1", 256))
        .await;
    println!(
        "deploy v1 (create) ready in {} ms",
        started.elapsed().as_millis()
    );
    let config = lambda
        .get_function_configuration()
        .function_name(FUNCTION)
        .send()
        .await
        .expect("function");
    assert_eq!(
        config.runtime().map(|r| r.as_str()),
        Some("provided.al2023")
    );
    assert_eq!(config.handler(), Some("bootstrap"));
    assert_eq!(config.role(), Some(ROLE));
    assert_eq!(config.memory_size(), Some(256));
    assert_eq!(config.timeout(), Some(2));
    let arns: Vec<&str> = config.layers().iter().filter_map(|l| l.arn()).collect();
    assert_eq!(arns, vec![bun.as_str(), lwa.as_str()]);
    let vars = config
        .environment()
        .and_then(|e| e.variables())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        vars.get("PUBLIC_KEY").map(String::as_str),
        Some("pk_test_123")
    );
    assert_eq!(
        vars.get("SECRET_KEY").map(String::as_str),
        Some("sk_live_lambda_456")
    );
    assert_eq!(
        vars.get("AWS_LWA_INVOKE_MODE").map(String::as_str),
        Some("response_stream")
    );
    assert_eq!(vars.get("REACTOR_DEPLOYMENT_ID"), Some(&v1));

    // Promote: alias, Function URL (AWS_IAM, RESPONSE_STREAM), reserved concurrency.
    server.promote("hello", &v1).await;
    let url = lambda
        .get_function_url_config()
        .function_name(FUNCTION)
        .qualifier("live")
        .send()
        .await
        .expect("function url");
    assert_eq!(url.auth_type().as_str(), "AWS_IAM");
    assert_eq!(
        url.invoke_mode().map(|m| m.as_str()),
        Some("RESPONSE_STREAM")
    );
    let reserved = lambda
        .get_function_concurrency()
        .function_name(FUNCTION)
        .send()
        .await
        .expect("concurrency");
    assert_eq!(reserved.reserved_concurrent_executions(), Some(5));
    let version = load_live(&lambda, &s3, &emulator, &v1, work.path()).await;
    assert_eq!(version, "1");

    // Invoke: signed (the emulator verified it), answered by the package that was
    // deployed, with the env and secret; cold first, then warm.
    let body = vec![b'x'; 100_000];
    let first = server
        .request(Method::POST, "/fn/v1/hello/echo%20me?b=2&a=1")
        .body(body.clone())
        .send()
        .await
        .expect("invoke");
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let h = first.headers().clone();
    assert_eq!(h["x-reactor-cold-start"], "true");
    assert_eq!(h["x-reactor-function"], "hello");
    assert!(h.contains_key("x-reactor-duration-ms"));
    assert!(!h.contains_key("x-reactor-harness"));
    let got: Value = first.json().await.expect("json");
    assert_eq!(got["version"], "v1");
    assert_eq!(got["path"], "/echo%20me");
    assert_eq!(got["query"], "?b=2&a=1");
    assert_eq!(got["method"], "POST");
    assert_eq!(got["body_len"], 100_000);
    assert_eq!(got["body_sha"], sha256_hex(&body));
    assert_eq!(got["public"], "pk_test_123");
    assert_eq!(got["secret"], "sk_live_lambda_456");
    assert_eq!(got["deployment"], v1.as_str());
    assert_eq!(got["caller_org"], "acme");
    assert_eq!(
        got["authorization"],
        Value::Null,
        "AWS's signature stays out"
    );
    let mut warm_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let r = server
            .request(Method::GET, "/fn/v1/hello/")
            .send()
            .await
            .expect("invoke");
        warm_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-reactor-cold-start"], "false");
    }
    println!("warm invocations through the emulator: {warm_ms:.1?} ms");

    // A WASM function calls the Lambda function: the same call model.
    let caller = server
        .deploy_live("caller", reactor_tests::wasm_probe_bundle(None))
        .await;
    let called = server
        .request(
            Method::GET,
            "/fn/v1/caller/call?to=hello.reactor.internal&path=/called",
        )
        .send()
        .await
        .expect("call");
    assert_eq!(called.status(), 200);
    let got: Value = called.json().await.expect("json");
    assert_eq!(got["path"], "/called", "{got}");
    assert_eq!(got["caller_function"], "caller", "{got}");
    assert_eq!(got["caller_org"], "acme", "{got}");
    assert_eq!(got["depth"], "2", "{got}");
    let deadline: u64 = got["deadline_ms"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("deadline");
    assert!(deadline <= 2000, "its own 2 s at most: {got}");
    let _ = caller;

    lambda_calls(&server, &call_listen, &v1).await;

    // The response streams: the first event arrives long before the last is written.
    let t = Instant::now();
    let mut stream = server
        .request(Method::GET, "/fn/v1/hello/stream")
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    let first_chunk = stream.chunk().await.expect("chunk").expect("a first chunk");
    let first_at = t.elapsed();
    assert!(String::from_utf8_lossy(&first_chunk).starts_with("data: 0"));
    let mut rest = Vec::new();
    while let Some(c) = stream.chunk().await.expect("chunk") {
        rest.extend_from_slice(&c);
    }
    let total = t.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("data: 2"));
    assert!(
        first_at + Duration::from_millis(600) < total,
        "first event at {first_at:?}, end at {total:?}"
    );

    // A throw in the function: 500 function_crashed, with the function's message.
    let crash = server
        .request(Method::GET, "/fn/v1/hello/crash")
        .send()
        .await
        .expect("crash");
    assert_eq!(crash.status(), 500);
    let e: Value = crash.json().await.expect("json");
    assert_eq!(e["error"]["code"], "function_crashed", "{e}");
    assert!(e.to_string().contains("boom from lambda"), "{e}");

    // Past limits.timeout_ms: 408 function_timeout.
    let slow = server
        .request(Method::GET, "/fn/v1/hello/sleep?ms=5000")
        .send()
        .await
        .expect("slow");
    assert_eq!(slow.status(), 408);
    let e: Value = slow.json().await.expect("json");
    assert_eq!(e["error"]["code"], "function_timeout", "{e}");
    // Lambda resets the sandbox at its own timeout (the emulator does too): let it.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Larger than Lambda's 6 MB: 413 before anything is sent to AWS. (Raw HTTP: the
    // router answers on the declared length, before the client could send 6 MB.)
    let before = emulator.stats().await;
    let (status, e) = declared_too_large(&server, 6 * 1024 * 1024 + 1).await;
    assert_eq!(status, 413, "{e}");
    assert_eq!(e["error"]["code"], "payload_too_large", "{e}");
    assert_eq!(e["error"]["details"]["limit_bytes"], 6 * 1024 * 1024, "{e}");
    assert_eq!(emulator.stats().await["invocations"], before["invocations"]);

    // Lambda throttles (account concurrency 1 here): 429 with Retry-After.
    emulator
        .control("config", json!({"account_concurrency": 1}))
        .await;
    let held = {
        let req = server.request(Method::GET, "/fn/v1/hello/sleep?ms=1200");
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let throttled = server
        .request(Method::GET, "/fn/v1/hello/")
        .send()
        .await
        .expect("throttled");
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "1");
    let e: Value = throttled.json().await.expect("json");
    assert_eq!(e["error"]["code"], "too_many_requests", "{e}");
    assert!(e.to_string().contains("Rate Exceeded"), "{e}");
    assert_eq!(held.await.expect("join").expect("held"), 200);
    emulator
        .control("config", json!({"account_concurrency": null}))
        .await;

    // The endpoint refuses what is not signed right; the router's requests all passed.
    let stats = emulator.stats().await;
    assert_eq!(stats["refused"], 0, "{stats}");
    let unsigned = reqwest::Client::new()
        .get(format!("{}/", emulator.url))
        .send()
        .await
        .expect("unsigned");
    assert_eq!(unsigned.status(), 403);
    let wrong = reactor_lambda::invoke::signed_headers(
        &http::Method::GET,
        &format!("{}/", emulator.url),
        &http::HeaderMap::new(),
        b"",
        &aws_credential_types::Credentials::new(KEY_ID, "not-the-secret", None, None, "t"),
        REGION,
        std::time::SystemTime::now(),
    )
    .expect("signed");
    let refused = reqwest::Client::new()
        .get(format!("{}/", emulator.url))
        .headers(wrong)
        .send()
        .await
        .expect("wrong signature");
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["x-amzn-errortype"],
        "InvalidSignatureException"
    );
    assert_eq!(emulator.stats().await["refused"], 2);

    // Update: a second deployment updates code and configuration, publishes version 2.
    let started = Instant::now();
    let v2 = server
        .deploy_ready("hello", function_bundle("v2", 512))
        .await;
    println!(
        "deploy v2 (update) ready in {} ms",
        started.elapsed().as_millis()
    );
    server.promote("hello", &v2).await;
    assert_eq!(
        load_live(&lambda, &s3, &emulator, &v2, work.path()).await,
        "2"
    );
    let latest = lambda
        .get_function_configuration()
        .function_name(FUNCTION)
        .send()
        .await
        .expect("function");
    assert_eq!(latest.memory_size(), Some(512));
    let r = server
        .request(Method::GET, "/fn/v1/hello/")
        .send()
        .await
        .expect("invoke v2");
    assert_eq!(r.headers()["x-reactor-cold-start"], "true");
    let got: Value = r.json().await.expect("json");
    assert_eq!(got["version"], "v2");

    // Rollback moves the alias back to version 1.
    let back = server
        .request(Method::POST, "/fn/v1/_admin/functions/hello/rollback")
        .json(&json!({"to_deployment_id": v1}))
        .send()
        .await
        .expect("rollback");
    assert_eq!(back.status(), 200, "{:?}", back.text().await);
    assert_eq!(
        load_live(&lambda, &s3, &emulator, &v1, work.path()).await,
        "1"
    );
    let got: Value = server
        .request(Method::GET, "/fn/v1/hello/")
        .send()
        .await
        .expect("invoke v1")
        .json()
        .await
        .expect("json");
    assert_eq!(got["version"], "v1");
    let mut log = String::new();
    let _ = std::fs::File::open(&server.log).and_then(|mut f| f.read_to_string(&mut log));
    assert!(
        !log.contains("sk_live_lambda_456"),
        "a secret reached the log"
    );
}
