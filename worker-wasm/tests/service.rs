//! The `reactor-worker-wasm` binary refuses a configuration it cannot run with, saying why,
//! before it binds or registers anything. (Being an integration test, this also makes
//! `cargo test --workspace` build the binary, which the end-to-end tests then reuse.)

use std::process::Command;

#[test]
fn refuses_to_start_without_the_internal_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_reactor-worker-wasm"))
        .current_dir(dir.path())
        .env_remove("REACTOR_INTERNAL_TOKEN")
        .env_remove("REACTOR_CONFIG")
        .env("REACTOR_FUNCTIONS_WORKDIR", dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("running the worker");
    assert!(!out.status.success(), "started without an internal token");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("internal.token") && stderr.contains("REACTOR_INTERNAL_TOKEN"),
        "the refusal names the setting: {stderr}"
    );
}
