//! The seed's `reactor.toml`, pasted as it is: its shapes are accepted (a single storage
//! `api_key`, the four `[functions.lambda]` keys), relative paths are relative to the file,
//! and its one placeholder that would weaken security, `data_key`, is refused with the
//! command that makes a real one.

use reactor_tests::topology::Moto;
use reactor_tests::{Server, bundle, reactor_bin, root};
use std::process::Command;

const SEED_PORT: u16 = 8003;

fn seed_config() -> String {
    std::fs::read_to_string(root().join("tests/fixtures/seed-reactor.toml"))
        .expect("the seed's example")
}

fn data_key() -> String {
    let out = Command::new(reactor_bin())
        .args(["data-key", "generate"])
        .output()
        .expect("reactor data-key generate");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_example_runs_with_only_its_data_key_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).expect("conf dir");
    std::fs::write(conf.join("reactor.toml"), seed_config()).expect("reactor.toml");

    // As pasted: refused before anything starts, naming the key and how to make one.
    let out = Command::new(reactor_bin())
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "conf/reactor.toml",
        ])
        .current_dir(dir.path())
        .env_remove("REACTOR_FUNCTIONS_DATA_KEY")
        .env("REACTOR_CREDENTIALS", dir.path().join("credentials.json"))
        .output()
        .expect("reactor dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the placeholder data key was accepted"
    );
    assert!(
        stderr.contains("functions.data_key") && stderr.contains("reactor data-key generate"),
        "{stderr}"
    );
    assert!(!conf.join(".reactor").exists(), "nothing was created");

    // The seed's storage is an S3-compatible server at localhost:8003.
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", SEED_PORT)) {
        panic!("the seed's storage url needs port {SEED_PORT}, which is taken here: {e}");
    }
    let moto = Moto::start_on(&dir.path().join("moto.log"), SEED_PORT);
    let key = data_key();
    let s = Server::start_args(
        dir,
        &["--config", "conf/reactor.toml"],
        &[("REACTOR_FUNCTIONS_DATA_KEY", &key)],
    );
    // The workdir is relative to the file, not to where the server started.
    assert!(
        conf.join(".reactor/functions/reactor.db").exists(),
        "the workdir is conf/.reactor/functions"
    );

    // A Bun function deploys (its bundle goes to the seed's bucket) and answers.
    let hello = std::fs::read(root().join("examples/hello-bun/code/index.ts")).expect("hello");
    s.deploy_live_runtime("hello", "bun", bundle(&[("code/index.ts", &hello)]))
        .await;
    let resp = s
        .request(reqwest::Method::POST, "/fn/v1/hello")
        .body(r#"{"name":"Reactor"}"#)
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.expect("body"),
        r#"{"message":"Hello, Reactor!"}"#
    );
    let listing = reqwest::get(format!("{}/reactor-functions?list-type=2", moto.url))
        .await
        .expect("list the bucket")
        .text()
        .await
        .expect("listing");
    assert!(
        listing.contains("<Key>"),
        "the bundle is in the seed's storage: {listing}"
    );
    assert!(
        !s.logs().contains("storage-api-key-for-system-bucket"),
        "the storage key is not logged"
    );
}
