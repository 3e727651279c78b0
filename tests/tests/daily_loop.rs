//! The daily loop: `reactor init` writes a function that deploys and answers as it is,
//! for every template; `reactor functions dev` redeploys it on each save, and a broken
//! save is reported (file and line) while the last good deployment keeps serving.

use reactor_tests::{Server, bun_bin, root};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `reactor init`, create, deploy, promote and invoke, as the template's next steps say.
fn init_deploy_invoke(s: &Server, template: &str, name: &str, dir: &Path) {
    let dir_arg = dir.to_string_lossy().into_owned();
    let out = s.cli_ok(&["init", name, "--template", template, "--dir", &dir_arg]);
    assert!(
        out.contains(&format!("reactor functions dev {name}")),
        "{out}"
    );
    let runtime = if template == "bun" { "bun" } else { "wasm" };
    s.cli_ok(&["functions", "create", name, "--runtime", runtime]);
    let deployed = s.cli_ok(&["functions", "deploy", name, "--dir", &dir_arg]);
    assert!(deployed.contains("is ready"), "{deployed}");
    let promoted = s.cli_ok(&["functions", "promote", name]);
    assert!(
        promoted.contains(&format!("{}/fn/v1/{name}", s.url)),
        "promote prints the invoke URL: {promoted}"
    );
    let answer = s.cli_ok(&[
        "functions",
        "invoke",
        name,
        "--json",
        r#"{"name":"Reactor"}"#,
    ]);
    assert_eq!(
        answer.trim(),
        r#"{"message":"Hello, Reactor!"}"#,
        "{template}"
    );
    let answer = s.cli_ok(&["functions", "invoke", name]);
    assert_eq!(
        answer.trim(),
        r#"{"message":"Hello, World!"}"#,
        "{template}"
    );
}

/// Runs a template's own test command in its directory.
fn run_in(dir: &Path, program: &Path, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed in {}:\n{}\n{}",
        program.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_template_deploys_and_answers_and_its_test_passes() {
    let s = Server::start();
    let tmp = tempfile::tempdir().expect("tempdir");

    let bun_dir = tmp.path().join("greeter");
    init_deploy_invoke(&s, "bun", "greeter", &bun_dir);
    run_in(&bun_dir, &bun_bin(), &["test"]);
    // The test file and .env are left out of the bundle.
    let list: serde_json::Value = serde_json::from_str(&s.cli_ok(&[
        "--output",
        "json",
        "functions",
        "deployments",
        "list",
        "greeter",
    ]))
    .expect("json");
    assert_eq!(list[0]["status"], "ready");

    let rust_dir = tmp.path().join("rusty");
    init_deploy_invoke(&s, "wasm-rust", "rusty", &rust_dir);
    run_in(&rust_dir, Path::new(env!("CARGO")), &["test", "--quiet"]);

    let js_dir = tmp.path().join("scripted");
    init_deploy_invoke(&s, "wasm-js", "scripted", &js_dir);
    run_in(&js_dir, Path::new("npm"), &["test", "--silent"]);

    // A used directory is refused and left alone.
    let again = s.cli(&["init", "greeter", "--dir", &bun_dir.to_string_lossy()]);
    assert!(
        !again.success && again.stderr.contains("not empty"),
        "{}",
        again.stderr
    );
}

/// A running `reactor functions dev`, its output collected; stopped on drop.
struct Watch {
    child: std::process::Child,
    output: Arc<Mutex<String>>,
}

impl Watch {
    fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until the output after `from` bytes contains `text`.
    fn wait_for(&self, from: usize, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.get(from..).is_some_and(|o| o.contains(text)) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "`reactor functions dev` did not print {text:?} within {timeout:?}:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn functions_dev_redeploys_on_save_and_reports_a_syntax_error_with_its_line() {
    let s = Server::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("loop");
    let dir_arg = dir.to_string_lossy().into_owned();
    s.cli_ok(&["init", "loop", "--template", "bun", "--dir", &dir_arg]);

    // The function does not exist yet: `dev` creates it with the manifest's runtime.
    let mut child = s.cli_spawn(&["functions", "dev", "loop", "--dir", &dir_arg]);
    let output = Arc::new(Mutex::new(String::new()));
    for pipe in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut o) = output.lock() {
                    o.push_str(&line);
                    o.push('\n');
                }
            }
        });
    }
    let watch = Watch { child, output };
    let out = watch.wait_for(0, "Live: dep_", Duration::from_secs(60));
    assert!(out.contains("Created function loop"), "{out}");
    assert!(
        out.contains(&format!("{}/fn/v1/loop", s.url)),
        "the invoke URL: {out}"
    );

    let invoke = || async {
        s.request(reqwest::Method::POST, "/fn/v1/loop")
            .body(r#"{"name":"Reactor"}"#)
            .send()
            .await
            .expect("invoke")
            .text()
            .await
            .expect("body")
    };
    assert_eq!(invoke().await, r#"{"message":"Hello, Reactor!"}"#);

    // Save an edit: the next requests get the new answer within a few seconds.
    let handler = dir.join("index.ts");
    let source = std::fs::read_to_string(&handler).expect("index.ts");
    std::fs::write(&handler, source.replace("Hello, ", "Hi, ")).expect("edit");
    let saved = Instant::now();
    loop {
        if invoke().await == r#"{"message":"Hi, Reactor!"}"# {
            break;
        }
        assert!(
            saved.elapsed() < Duration::from_secs(10),
            "the edit was not live within 10 s:\n{}",
            watch.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("edit to live answer: {} ms", saved.elapsed().as_millis());

    // A syntax error on line 5: reported with the file and the line; v2 keeps serving.
    let from = watch.output().len();
    let broken = std::fs::read_to_string(&handler)
        .expect("index.ts")
        .replace("const { name", "const { name ===");
    assert_eq!(
        broken.lines().position(|l| l.contains("===")),
        Some(4),
        "line 5"
    );
    std::fs::write(&handler, broken).expect("break it");
    let out = watch.wait_for(from, "Failed: dep_", Duration::from_secs(30));
    let report = &out[from..];
    assert!(
        report.contains("index.ts:5"),
        "file and line in the report:\n{report}"
    );
    assert!(report.contains("keeps serving"), "{report}");
    assert_eq!(invoke().await, r#"{"message":"Hi, Reactor!"}"#);

    // Fixed again: live again.
    let from = watch.output().len();
    std::fs::write(&handler, source).expect("fix it");
    watch.wait_for(from, "Live: dep_", Duration::from_secs(30));
    assert_eq!(invoke().await, r#"{"message":"Hello, Reactor!"}"#);
    drop(watch);
    let _ = root();
}

#[tokio::test(flavor = "multi_thread")]
async fn env_file_sets_many_keys_and_errors_say_what_to_do() {
    let s = Server::start();
    s.cli_ok(&["functions", "create", "envy", "--runtime", "bun"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join(".env");
    std::fs::write(
        &file,
        "# the shop\nSTRIPE_PUBLIC_KEY=pk_test_1\nexport REGION=\"eu west\" \nEMPTY=\nQUOTED='a # b'\n",
    )
    .expect(".env");
    let out = s.cli_ok(&[
        "functions",
        "env",
        "set",
        "envy",
        "--env-file",
        &file.to_string_lossy(),
    ]);
    assert!(out.contains("Set 4 values"), "{out}");
    let list: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["--output", "json", "functions", "env", "list", "envy"]))
            .expect("json");
    let value = |key: &str| {
        list.as_array()
            .and_then(|a| a.iter().find(|e| e["key"] == key))
            .map(|e| e["value"].clone())
            .unwrap_or_default()
    };
    assert_eq!(value("STRIPE_PUBLIC_KEY"), "pk_test_1");
    assert_eq!(value("REGION"), "eu west");
    assert_eq!(value("EMPTY"), "");
    assert_eq!(value("QUOTED"), "a # b");

    // Secrets from a file: never shown again.
    std::fs::write(&file, "STRIPE_SECRET_KEY=sk_test_2\n").expect(".env");
    s.cli_ok(&[
        "functions",
        "env",
        "set",
        "envy",
        "--env-file",
        &file.to_string_lossy(),
        "--secret",
    ]);
    let listed = s.cli_ok(&["functions", "env", "list", "envy"]);
    assert!(
        listed.contains("(hidden)") && !listed.contains("sk_test_2"),
        "{listed}"
    );

    // A bad file changes nothing.
    std::fs::write(&file, "GOOD=1\nnot a pair\n").expect(".env");
    let bad = s.cli(&[
        "functions",
        "env",
        "set",
        "envy",
        "--env-file",
        &file.to_string_lossy(),
    ]);
    assert!(
        !bad.success && bad.stderr.contains("line 2"),
        "{}",
        bad.stderr
    );
    assert!(
        !s.cli_ok(&["functions", "env", "list", "envy"])
            .contains("GOOD")
    );

    // Errors carry the server's details and a hint.
    let missing = s.cli(&["functions", "invoke", "nothing-here"]);
    assert!(!missing.success);
    assert!(
        missing.stderr.contains("function_not_found"),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("request_id: req_"),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("hint: create it first"),
        "{}",
        missing.stderr
    );

    // A server that is not there: which URL, and that `reactor dev` may not be running.
    let port = reactor_tests::topology::free_port();
    let out = Command::new(reactor_tests::reactor_bin())
        .args(["functions", "list"])
        .env("REACTOR_URL", format!("http://127.0.0.1:{port}"))
        .env("REACTOR_TOKEN", "rct_x")
        .output()
        .expect("reactor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{port}"))
            && stderr.contains("is `reactor dev` running?")
            && stderr.contains("REACTOR_URL"),
        "{stderr}"
    );

    // Long names keep the table aligned.
    let long = "a-function-with-a-rather-long-name-to-push-the-columns";
    s.cli_ok(&["functions", "create", long, "--runtime", "wasm"]);
    let table = s.cli_ok(&["functions", "list"]);
    let header = table.lines().next().expect("header");
    let col = header.find("RUNTIME").expect("RUNTIME column");
    for line in table.lines().skip(1) {
        let runtime = &line[col..col + 4];
        assert!(
            runtime == "wasm" || runtime == "bun ",
            "misaligned:\n{table}"
        );
    }

    // Completions for the shells.
    for shell in ["bash", "zsh", "fish"] {
        let script = s.cli_ok(&["completion", shell]);
        assert!(
            script.contains("functions") && script.contains("reactor"),
            "{shell}"
        );
    }
}
