//! End-to-end for env values and secrets: the seed's how-to (CLI and curl forms), both
//! runtimes, what is stored (read back and decrypted here with ring directly), what is
//! never returned or written, deploy checks, pinning and rollback, and key rotation.

use base64::Engine;
use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use std::path::Path;
use std::time::Duration;

/// A fresh base64 data key and its raw bytes.
fn data_key() -> (String, [u8; 32]) {
    let raw: [u8; 32] = rand::random();
    (base64::engine::general_purpose::STANDARD.encode(raw), raw)
}

/// A secret value no test data contains by chance.
fn secret_value() -> String {
    format!("sk_live_{}", hex::encode(rand::random::<[u8; 12]>()))
}

fn wasm_bundle(manifest: &Value) -> Vec<u8> {
    wasm_probe_bundle(Some(manifest))
}

fn bun_bundle(manifest: &Value) -> Vec<u8> {
    bun_probe_bundle("v1", Some(manifest))
}

/// The function's environment as it reports it.
async fn env_of(s: &Server, function: &str, runtime: &str) -> Value {
    let path = if runtime == "wasm" {
        "/env"
    } else {
        "/env-values"
    };
    let resp = s
        .request(Method::GET, &format!("/fn/v1/{function}{path}"))
        .send()
        .await
        .expect("invoke");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

/// Every simple encoding of `secret` a careless implementation might write.
fn encodings(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let b = secret.as_bytes();
    vec![
        secret.to_string(),
        STANDARD.encode(b),
        STANDARD_NO_PAD.encode(b),
        URL_SAFE.encode(b),
        URL_SAFE_NO_PAD.encode(b),
        hex::encode(b),
        hex::encode_upper(b),
    ]
}

/// Fails when any file under `dir` contains `secret` in any simple encoding.
fn assert_not_in_files(dir: &Path, secret: &str) {
    let needles = encodings(secret);
    let mut checked = 0;
    for entry in walk(dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        checked += 1;
        for n in &needles {
            assert!(
                !contains(&bytes, n.as_bytes()),
                "{} contains the secret (as {n:?})",
                entry.display()
            );
        }
    }
    assert!(checked > 0, "nothing under {}", dir.display());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The stored row of a secret: (key_id, nonce, ciphertext).
async fn stored_secret(db: &Path, function: &str, key: &str) -> (String, Vec<u8>, Vec<u8>) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .expect("open the database");
    let row = sqlx::query(
        "SELECT key_id, nonce, ciphertext, value FROM env_vars WHERE function = ? AND key = ?",
    )
    .bind(function)
    .bind(key)
    .fetch_one(&pool)
    .await
    .expect("the secret's row");
    let value: Option<String> = row.get("value");
    assert!(value.is_none(), "a secret has no plain value column");
    let out = (row.get("key_id"), row.get("nonce"), row.get("ciphertext"));
    pool.close().await;
    out
}

/// Decrypts a stored value with ring and the associated data bound to org/function/key.
fn open_with_ring(
    raw_key: &[u8; 32],
    nonce: &[u8],
    ciphertext: &[u8],
    org: &str,
    function: &str,
    key: &str,
) -> Option<String> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key_ = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw_key).ok()?);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let aad = format!("reactor-secret-v1\0{org}\0{function}\0{key}");
    let mut buf = ciphertext.to_vec();
    let plain = key_
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_both_runtimes_and_never_leak() {
    let (key_b64, raw_key) = data_key();
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_DATA_KEY", &key_b64)]);
    let secret = secret_value();
    let curl_secret = secret_value();
    let public = "pk_live_public_123";
    let manifest = |runtime: &str| {
        json!({
            "runtime": runtime,
            "env_keys": ["STRIPE_PUBLIC_KEY"],
            "secret_keys": ["STRIPE_SECRET_KEY", "WEBHOOK_SECRET"],
        })
    };
    for (function, runtime) in [("pay-wasm", "wasm"), ("pay-bun", "bun")] {
        s.cli_ok(&["functions", "create", function, "--runtime", runtime]);
        // The seed's lines: a secret from stdin (no value on the command line), a plain
        // value on it, and the curl form.
        let set = s.cli_with_input(
            &[
                "functions",
                "env",
                "set",
                function,
                "STRIPE_SECRET_KEY",
                "--secret",
            ],
            &format!("{secret}\n"),
        );
        assert!(set.success, "{}", set.stderr);
        assert!(!set.stdout.contains(&secret));
        s.cli_ok(&[
            "functions",
            "env",
            "set",
            function,
            "STRIPE_PUBLIC_KEY",
            public,
        ]);
        let put = s
            .request(
                Method::PUT,
                &format!("/fn/v1/_admin/functions/{function}/env/WEBHOOK_SECRET"),
            )
            .json(&json!({"value": curl_secret, "secret": true}))
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 200);
        let text = put.text().await.expect("body");
        assert!(
            !text.contains(&curl_secret),
            "PUT echoed the secret: {text}"
        );

        let bundle = if runtime == "wasm" {
            wasm_bundle(&manifest(runtime))
        } else {
            bun_bundle(&manifest(runtime))
        };
        let id = s.deploy_ready(function, bundle).await;
        s.promote(function, &id).await;
        let env = env_of(&s, function, runtime).await;
        assert_eq!(env["STRIPE_SECRET_KEY"], secret.as_str(), "{runtime}");
        assert_eq!(env["WEBHOOK_SECRET"], curl_secret.as_str(), "{runtime}");
        assert_eq!(env["STRIPE_PUBLIC_KEY"], public, "{runtime}");

        // The admin API lists keys and when they changed, never a secret's value.
        let list: Value = s
            .request(
                Method::GET,
                &format!("/fn/v1/_admin/functions/{function}/env"),
            )
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let entries = list.as_array().expect("array");
        assert_eq!(entries.len(), 3, "{list}");
        for e in entries {
            assert!(e["updated_at"].as_str().is_some_and(|t| !t.is_empty()));
            if e["key"] == "STRIPE_PUBLIC_KEY" {
                assert_eq!(e["secret"], false);
                assert_eq!(e["value"], public);
            } else {
                assert_eq!(e["secret"], true, "{e}");
                assert!(e.get("value").is_none(), "{e}");
            }
        }
        let cli_list = s.cli_ok(&["functions", "env", "list", function]);
        assert!(cli_list.contains("STRIPE_SECRET_KEY") && cli_list.contains("(hidden)"));
        for path in [
            format!("/fn/v1/_admin/functions/{function}"),
            format!("/fn/v1/_admin/functions/{function}/deployments"),
            format!("/fn/v1/_admin/functions/{function}/logs?follow=false"),
        ] {
            let body = s
                .request(Method::GET, &path)
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("text");
            for n in encodings(&secret).iter().chain(&encodings(&curl_secret)) {
                assert!(!body.contains(n.as_str()), "{path} returned the secret");
            }
        }
    }
    // A value on the command line is refused for a secret: it would stay in history.
    let argv = s.cli(&[
        "functions",
        "env",
        "set",
        "pay-bun",
        "OTHER",
        "sk_x",
        "--secret",
    ]);
    assert!(!argv.success);
    assert!(
        argv.stderr.contains("not taken from the command line"),
        "{}",
        argv.stderr
    );

    // The stored row decrypts with ring under the data key and the right associated data,
    // and not once moved to another function or key.
    let work = s.dir.path().join("work");
    let db = work.join("reactor.db");
    let (key_id, nonce, ciphertext) = stored_secret(&db, "pay-wasm", "STRIPE_SECRET_KEY").await;
    assert!(key_id.starts_with("dk_"), "{key_id}");
    assert_eq!(nonce.len(), 12);
    let opened = open_with_ring(
        &raw_key,
        &nonce,
        &ciphertext,
        "acme",
        "pay-wasm",
        "STRIPE_SECRET_KEY",
    );
    assert_eq!(opened.as_deref(), Some(secret.as_str()));
    assert_eq!(
        open_with_ring(
            &raw_key,
            &nonce,
            &ciphertext,
            "acme",
            "pay-bun",
            "STRIPE_SECRET_KEY"
        ),
        None,
        "a row moved to another function must not decrypt"
    );
    assert_eq!(
        open_with_ring(
            &raw_key,
            &nonce,
            &ciphertext,
            "acme",
            "pay-wasm",
            "WEBHOOK_SECRET"
        ),
        None,
        "a row moved to another key must not decrypt"
    );
    // Same value, same function, other function: fresh nonces.
    let (_, nonce_bun, _) = stored_secret(&db, "pay-bun", "STRIPE_SECRET_KEY").await;
    assert_ne!(nonce, nonce_bun);

    // Nothing on disk (database, WAL, storage, caches) or in the server's log holds the
    // plaintext or a simple encoding of it.
    let log = s.logs();
    let dir = s.stop();
    for secret in [&secret, &curl_secret] {
        assert_not_in_files(&dir.path().join("work"), secret);
        for n in encodings(secret) {
            assert!(!log.contains(&n), "the server log contains the secret");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_needs_every_listed_key_and_rollback_restores_the_env() {
    let s = Server::start();
    s.create("pinned", "wasm").await;
    let manifest = json!({"env_keys": ["GREETING", "REGION"], "secret_keys": ["TOKEN"]});
    // Nothing set: refused, naming each missing key, and nothing recorded.
    let up = s.upload("pinned", wasm_bundle(&manifest)).await;
    assert_eq!(up.status(), 422);
    let body: Value = up.json().await.expect("json");
    assert_eq!(body["error"]["code"], "manifest_invalid");
    let message = body["error"]["message"].as_str().expect("message");
    for key in ["GREETING", "REGION", "TOKEN"] {
        assert!(message.contains(key), "{message}");
    }
    assert_eq!(
        body["error"]["details"]["missing_keys"],
        json!(["GREETING", "REGION", "TOKEN"])
    );
    let list: Value = s
        .request(Method::GET, "/fn/v1/_admin/functions/pinned/deployments")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list, json!([]));

    // A secret key set as a plain value is refused too.
    s.cli_ok(&["functions", "env", "set", "pinned", "GREETING", "hello"]);
    s.cli_ok(&["functions", "env", "set", "pinned", "REGION", "eu"]);
    s.cli_ok(&["functions", "env", "set", "pinned", "TOKEN", "plain"]);
    let up = s.upload("pinned", wasm_bundle(&manifest)).await;
    assert_eq!(up.status(), 422);
    let body: Value = up.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("TOKEN") && m.contains("--secret")),
        "{body}"
    );
    let set = s.cli_with_input(
        &["functions", "env", "set", "pinned", "TOKEN", "--secret"],
        "t1",
    );
    assert!(set.success, "{}", set.stderr);

    // v1 pins GREETING=hello; v2 pins GREETING=bonjour; rollback brings hello back.
    let v1 = s.deploy_ready("pinned", wasm_bundle(&manifest)).await;
    s.promote("pinned", &v1).await;
    assert_eq!(env_of(&s, "pinned", "wasm").await["GREETING"], "hello");
    s.cli_ok(&["functions", "env", "set", "pinned", "GREETING", "bonjour"]);
    // Live deployments keep the env they pinned until a new one is promoted.
    assert_eq!(env_of(&s, "pinned", "wasm").await["GREETING"], "hello");
    let v2 = s.deploy_ready("pinned", wasm_bundle(&manifest)).await;
    s.promote("pinned", &v2).await;
    let env = env_of(&s, "pinned", "wasm").await;
    assert_eq!(env["GREETING"], "bonjour");
    assert_eq!(env["TOKEN"], "t1");
    s.cli_ok(&["functions", "rollback", "pinned", "--to-deployment", &v1]);
    assert_eq!(env_of(&s, "pinned", "wasm").await["GREETING"], "hello");

    // Unset removes a key; a bad key name is refused.
    s.cli_ok(&["functions", "env", "unset", "pinned", "REGION"]);
    let gone = s.cli(&["functions", "env", "unset", "pinned", "REGION"]);
    assert!(!gone.success);
    let bad = s
        .request(Method::PUT, "/fn/v1/_admin/functions/pinned/env/1BAD")
        .json(&json!({"value": "x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status(), 400);

    // `deployments list` shows id, status, created, sha256, size, the live marker and why
    // one failed.
    let listing = s.cli_ok(&["functions", "deployments", "list", "pinned"]);
    for column in ["ID", "STATUS", "CREATED", "SHA256", "SIZE", "LIVE", "ERROR"] {
        assert!(listing.contains(column), "{listing}");
    }
    let v1_line = listing
        .lines()
        .find(|l| l.contains(&v1))
        .expect("v1 listed");
    assert!(
        v1_line.contains("ready") && v1_line.contains('*'),
        "{v1_line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_reseals_every_secret_and_the_old_key_can_go() {
    let (old_b64, old_raw) = data_key();
    let (new_b64, new_raw) = data_key();
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_DATA_KEY", &old_b64)]);
    let secret = secret_value();
    for (function, runtime) in [("rot-wasm", "wasm"), ("rot-bun", "bun")] {
        s.cli_ok(&["functions", "create", function, "--runtime", runtime]);
        let set = s.cli_with_input(
            &["functions", "env", "set", function, "API_KEY", "--secret"],
            &secret,
        );
        assert!(set.success, "{}", set.stderr);
        let manifest = json!({"secret_keys": ["API_KEY"]});
        let bundle = if runtime == "wasm" {
            wasm_bundle(&manifest)
        } else {
            bun_bundle(&manifest)
        };
        let id = s.deploy_ready(function, bundle).await;
        s.promote(function, &id).await;
        assert_eq!(
            env_of(&s, function, runtime).await["API_KEY"],
            secret.as_str()
        );
    }
    let dir = s.stop();
    let work = dir.path().join("work");
    let db = work.join("reactor.db");

    // Without the old key the server refuses to start, saying which key is missing.
    let refused = std::process::Command::new(reactor_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--workdir"])
        .arg(&work)
        .env("REACTOR_FUNCTIONS_DATA_KEY", &new_b64)
        .env("REACTOR_FUNCTIONS_BUN_PATH", bun_bin())
        .env("REACTOR_CREDENTIALS", dir.path().join("credentials.json"))
        .env_remove("REACTOR_CONFIG")
        .env_remove("REACTOR_FUNCTIONS_DATA_KEYS_PREVIOUS")
        .output()
        .expect("reactor dev");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("data_keys_previous"), "{stderr}");

    // The rotation: new key current, old key still decrypting.
    let rotated = std::process::Command::new(reactor_bin())
        .args(["data-key", "rotate", "--workdir"])
        .arg(&work)
        .env("REACTOR_FUNCTIONS_DATA_KEY", &new_b64)
        .env("REACTOR_FUNCTIONS_DATA_KEYS_PREVIOUS", &old_b64)
        .env_remove("REACTOR_CONFIG")
        .output()
        .expect("reactor data-key rotate");
    let out = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        rotated.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    // Two current values and two pinned copies.
    assert!(out.contains("Re-encrypted 4 secret values"), "{out}");
    let (key_id, nonce, ciphertext) = stored_secret(&db, "rot-wasm", "API_KEY").await;
    assert_eq!(
        open_with_ring(&new_raw, &nonce, &ciphertext, "acme", "rot-wasm", "API_KEY").as_deref(),
        Some(secret.as_str())
    );
    assert_eq!(
        open_with_ring(&old_raw, &nonce, &ciphertext, "acme", "rot-wasm", "API_KEY"),
        None
    );
    assert!(key_id.starts_with("dk_"));

    // The old key removed from the configuration: the server starts, and the pinned
    // secrets still reach both functions.
    let s = Server::start_in(dir, &[("REACTOR_FUNCTIONS_DATA_KEY", &new_b64)]);
    for (function, runtime) in [("rot-wasm", "wasm"), ("rot-bun", "bun")] {
        let env = wait_until(Duration::from_secs(20), || async {
            let resp = s
                .request(
                    Method::GET,
                    &format!(
                        "/fn/v1/{function}{}",
                        if runtime == "wasm" {
                            "/env"
                        } else {
                            "/env-values"
                        }
                    ),
                )
                .send()
                .await
                .ok()?;
            (resp.status() == 200).then_some(resp.json::<Value>().await.ok()?)
        })
        .await
        .expect("the function answers after the restart");
        assert_eq!(env["API_KEY"], secret.as_str(), "{runtime}");
    }
}
