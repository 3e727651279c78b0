//! Mutual TLS between the split services (`[internal] tls`): certificates from
//! `reactor-control-plane --tls-init`, every internal hop over TLS, and each role's
//! certificate good for that role only.

use reactor_proto::routing::worker_registry_client::WorkerRegistryClient;
use reactor_proto::routing::{RegisterRequest, WatchRequest};
use reactor_tests::split::{Split, WORKER_TOKEN};
use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn grpc_tls(tls: &Path, role: Option<&str>) -> tonic::transport::ClientTlsConfig {
    let ca = tonic::transport::Certificate::from_pem(read(&tls.join("ca.pem")));
    let mut c = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("control-plane.reactor.internal");
    if let Some(role) = role {
        c = c.identity(tonic::transport::Identity::from_pem(
            read(&tls.join(format!("{role}.pem"))),
            read(&tls.join(format!("{role}.key"))),
        ));
    }
    c
}

async fn grpc(url: &str, tls: tonic::transport::ClientTlsConfig) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connects (the admin API takes callers without a certificate)")
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn every_internal_hop_is_mutual_tls_and_each_certificate_serves_its_role_only() {
    let s = Split::start_tls();
    let tls = s.dir.path().join("tls");
    assert!(s.grpc_url.starts_with("https://"), "{}", s.grpc_url);
    let worker_url = s.worker.as_ref().expect("worker").url_after("listening: ");
    assert!(worker_url.starts_with("https://"), "{worker_url}");
    let worker_addr: std::net::SocketAddr = worker_url
        .trim_start_matches("https://")
        .parse()
        .expect("worker address");

    // A secret reaches the function: the worker fetched it from the control plane and
    // the router forwarded the invocation, each over TLS.
    s.admin.create("tlsprobe", "wasm").await;
    let secret = "tls-secret-6f1e2d";
    let put = s
        .admin
        .request(
            Method::PUT,
            "/fn/v1/_admin/functions/tlsprobe/env/TLS_SECRET",
        )
        .json(&json!({"value": secret, "secret": true}))
        .send()
        .await
        .expect("put env");
    assert_eq!(put.status(), 200);
    s.admin
        .deploy_live(
            "tlsprobe",
            wasm_probe_bundle(Some(&json!({"secret_keys": ["TLS_SECRET"]}))),
        )
        .await;
    let env = wait_until(Duration::from_secs(20), || async {
        let r = s
            .invoke(Method::GET, "/fn/v1/tlsprobe/env")
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json::<Value>().await.ok()
    })
    .await
    .unwrap_or_else(|| panic!("the function never answered\n{}", s.logs()));
    assert_eq!(env["TLS_SECRET"], secret, "{env}");

    // The worker's port speaks TLS only...
    let plain = reqwest::Client::new()
        .get(format!("http://{worker_addr}/invoke/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // ...to routers and the control plane, by their certificates; without one, to the
    // health checks only (a load balancer or the kubelet has none); another worker's
    // certificate is refused at the handshake.
    let url = format!("https://worker.reactor.internal:{}", worker_addr.port());
    for (role, path, expected) in [
        (None, "/readyz", Some(200)),
        (None, "/invoke/", Some(403)),
        (Some("worker"), "/readyz", None),
        // Through TLS; refused by the worker for want of the internal token.
        (Some("router"), "/invoke/", Some(401)),
        (Some("control-plane"), "/invoke/", Some(401)),
    ] {
        let r = tls_client(&tls, "worker.reactor.internal", worker_addr, role)
            .get(format!("{url}{path}"))
            .send()
            .await;
        match (expected, r) {
            (Some(status), Ok(r)) => assert_eq!(r.status(), status, "{role:?} {path}"),
            (None, Err(_)) => {}
            (expected, r) => panic!("{role:?} {path}: expected {expected:?}, got {r:?}"),
        }
    }
    // A worker verifies as a worker only: the control plane's name does not pass for it.
    let wrong_name = tls_client(
        &tls,
        "control-plane.reactor.internal",
        worker_addr,
        Some("router"),
    )
    .get(format!(
        "https://control-plane.reactor.internal:{}/invoke/",
        worker_addr.port()
    ))
    .send()
    .await;
    assert!(wrong_name.is_err(), "{wrong_name:?}");

    // The control plane's internal services: a router's certificate cannot register as a
    // worker, even holding the workers' token.
    let register = RegisterRequest {
        worker_id: "impostor".into(),
        runtime: "wasm".into(),
        url: "https://127.0.0.1:1".into(),
        worker_secret: "0123456789abcdef0123456789abcdef01".into(),
    };
    let mut as_router =
        WorkerRegistryClient::new(grpc(&s.grpc_url, grpc_tls(&tls, Some("router"))).await);
    let err = as_router
        .register(bearer(register.clone(), WORKER_TOKEN))
        .await
        .expect_err("a router's certificate registered as a worker");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Without a certificate: refused before the token is looked at.
    let mut anonymous = WorkerRegistryClient::new(grpc(&s.grpc_url, grpc_tls(&tls, None)).await);
    let err = anonymous
        .register(bearer(register, WORKER_TOKEN))
        .await
        .expect_err("registered without a certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let mut routing = reactor_proto::routing::routing_service_client::RoutingServiceClient::new(
        grpc(&s.grpc_url, grpc_tls(&tls, None)).await,
    );
    let err = routing
        .watch(bearer(
            WatchRequest {
                router_id: "anonymous".into(),
                known_version: 0,
            },
            reactor_tests::split::INTERNAL_TOKEN,
        ))
        .await
        .expect_err("watched without a certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // And plain gRPC to the TLS port gets nowhere.
    let plain = tonic::transport::Endpoint::from_shared(s.grpc_url.replace("https://", "http://"))
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut c = WorkerRegistryClient::new(channel);
        let r = c
            .register(bearer(
                RegisterRequest {
                    worker_id: "plain".into(),
                    runtime: "wasm".into(),
                    url: "http://127.0.0.1:1".into(),
                    worker_secret: "0123456789abcdef0123456789abcdef01".into(),
                },
                WORKER_TOKEN,
            ))
            .await;
        assert!(r.is_err(), "plain gRPC was served: {r:?}");
    }
}

#[test]
fn tls_init_is_idempotent_and_a_service_without_its_certificate_says_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    let init = || {
        let out = std::process::Command::new(service_bin("reactor-control-plane"))
            .arg("--tls-init")
            .arg(&tls)
            .output()
            .expect("runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = init();
    assert_eq!(first.matches("created ").count(), 8, "{first}");
    let ca = read(&tls.join("ca.pem"));
    let second = init();
    assert_eq!(second.matches("created ").count(), 0, "{second}");
    assert_eq!(read(&tls.join("ca.pem")), ca, "the CA was replaced");

    // A router with TLS on and no router certificate refuses to start, naming the file.
    std::fs::remove_file(tls.join("router.pem")).expect("rm");
    let out = std::process::Command::new(service_bin("reactor-data-plane"))
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "REACTOR_INTERNAL_TOKEN",
            reactor_tests::split::INTERNAL_TOKEN,
        )
        .env("REACTOR_INTERNAL_TLS", "1")
        .env("REACTOR_INTERNAL_TLS_DIR", &tls)
        .env_remove("REACTOR_CONFIG")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("router.pem is missing"), "{err}");
    assert!(err.contains("reactor tls init"), "{err}");
}
