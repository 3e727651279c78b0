//! The JavaScript SDK (`sdk/js`, `@reactor/client`) against the real `reactor dev`: its
//! own tests (`node --test`, `sdk/js/test/sdk.test.mjs`) run the seed's SDK quickstart and
//! how-tos as the seed writes them, a stream read chunk by chunk, typed errors, logs,
//! renewal and sign-out. This test starts the server, checks that the SDK's generated
//! types (`sdk/js/src/api.ts`) are what the server's OpenAPI document generates, builds
//! the SDK with its pinned TypeScript (installed by `scripts/setup.sh`, else here), makes
//! the signed-in user, and runs them.

use reactor_tests::*;
use serde_json::json;
use std::process::Command;

const EMAIL: &str = "dev@acme.example";
const PASSWORD: &str = "a-developer-of-acme-signs-in";

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (is Node.js 20+ installed? see the README)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_runs_the_seed_quickstart_and_how_tos() {
    let sdk = root().join("sdk/js");
    if !sdk.join("node_modules/.bin/tsc").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&sdk),
            "npm ci in sdk/js",
        );
    }
    let s = Server::start();
    // The SDK's types are generated from the document the server serves: they match it.
    let checked = run(
        Command::new("node")
            .arg("scripts/api-types.mjs")
            .arg(format!("{}/fn/v1/_admin/openapi.json", s.url))
            .arg("--check")
            .current_dir(&sdk),
        "checking sdk/js/src/api.ts against the server's OpenAPI document",
    );
    assert!(checked.contains("matches the document"), "{checked}");
    run(
        Command::new(sdk.join("node_modules/.bin/tsc"))
            .args(["-p", "."])
            .current_dir(&sdk),
        "building the SDK (tsc)",
    );

    let created = s
        .request(reqwest::Method::POST, "/fn/v1/_admin/users")
        .json(&json!({"email": EMAIL, "password": PASSWORD}))
        .send()
        .await
        .expect("create user");
    assert_eq!(created.status(), 201);
    let added = s
        .request(
            reqwest::Method::PUT,
            &format!("/fn/v1/_admin/orgs/acme/members/{EMAIL}"),
        )
        .json(&json!({"role": "developer"}))
        .send()
        .await
        .expect("add member");
    assert_eq!(added.status(), 200);

    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec", "sdk.test.mjs"])
        .current_dir(sdk.join("test"))
        .env("REACTOR_URL", &s.url)
        .env("REACTOR_TEST_EMAIL", EMAIL)
        .env("REACTOR_TEST_PASSWORD", PASSWORD)
        .env_remove("REACTOR_TOKEN")
        .env_remove("REACTOR_ORG")
        .output()
        .expect("node --test (Node.js 20+)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The node test runner's summary, in the Rust test's output.
    println!("{text}");
    assert!(
        out.status.success(),
        "the SDK's tests failed:\n{text}\nserver log:\n{}",
        s.logs()
    );
    assert!(text.contains("Hello, Reactor!"), "{text}");
}
