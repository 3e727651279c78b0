//! The admin API over real gRPC: a real control plane (SQLite, local storage, the real
//! wasmtime worker materializing the bundle) behind a tonic server on a loopback port,
//! driven by the generated client as an operator's script would.

use reactor_api::config::FunctionsConfig;
use reactor_api::{Builders, Runtimes};
use reactor_control_plane::backends::Backends;
use reactor_control_plane::grpc_admin::{self, ERROR_CODE};
use reactor_control_plane::{ControlPlane, ControlPlaneOptions, RuntimeRoles};
use reactor_proto::admin as pb;
use reactor_proto::admin::admin_service_client::AdminServiceClient;
use reactor_proto::admin::{
    CreateFunctionRequest, CreateOrgRequest, CreateTokenRequest, DeleteFunctionRequest,
    GetDeploymentRequest, GetFunctionRequest, ListDeploymentsRequest, ListFunctionsRequest,
    ListTokensRequest, PromoteRequest, RevokeTokenRequest, RollbackRequest, UploadChunk,
};
use reactor_tests::{build_component, bundle, read, sha256_hex, wait_until};
use reactor_worker_wasm::{WasmWorker, WasmWorkerOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

/// The bootstrap admin's token, given as an operator would (`REACTOR_ADMIN_TOKEN`).
const TOKEN: &str = "rct_grpcadmintesttokengrpcadmintesttoken0000";

/// A call with the credentials the HTTP API takes as headers.
fn authed<T>(token: &str, org: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    req.metadata_mut()
        .insert("x-reactor-org", org.parse().expect("ascii org"));
    req
}

/// A call as the admin of acme.
fn acme<T>(msg: T) -> tonic::Request<T> {
    authed(TOKEN, "acme", msg)
}

/// The call failed with `code`, the platform's `error_code` and a request id.
#[track_caller]
fn assert_error<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    error_code: &str,
) {
    let status = result.expect_err("the call fails");
    let meta = status.metadata();
    assert_eq!(
        (
            status.code(),
            meta.get(ERROR_CODE).and_then(|v| v.to_str().ok())
        ),
        (code, Some(error_code)),
        "{status:?}"
    );
    assert!(meta.contains_key("x-request-id"), "{status:?}");
}

/// A bundle as upload messages: the first names the function and carries the first bytes.
fn chunks(function: &str, archive: &[u8], sha256: Option<&str>) -> Vec<UploadChunk> {
    archive
        .chunks(16 * 1024)
        .enumerate()
        .map(|(i, data)| {
            let first = i == 0;
            UploadChunk {
                function: if first {
                    function.into()
                } else {
                    String::new()
                },
                sha256: sha256.filter(|_| first).map(str::to_string),
                size_bytes: first.then_some(archive.len() as u64),
                data: data.to_vec(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_operations_over_grpc() {
    let component =
        tokio::task::spawn_blocking(|| read(&build_component("tests/fixtures/probe-wasm", true)))
            .await
            .expect("building the probe component");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FunctionsConfig {
        workdir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let b = Backends::open(&config).await.expect("backends");
    let wasm = Arc::new(
        WasmWorker::new(WasmWorkerOptions {
            storage: b.storage.clone(),
            cache_dir: dir.path().join("cache"),
            max_instances: 16,
            env: b.env.clone(),
            logs: b.logs.clone(),
        })
        .expect("wasm worker"),
    );
    let cp = ControlPlane::start(ControlPlaneOptions {
        config,
        store: b.store,
        storage: b.storage,
        runtimes: RuntimeRoles {
            builders: Builders::new().with(wasm.clone()),
            releases: Default::default(),
            workers: Runtimes::new().with(wasm),
        },
        worker_timing: Default::default(),
        remote_workers: None,
        env: b.env,
        logs: b.logs,
    })
    .await
    .expect("control plane");
    cp.bootstrap("acme", Some(TOKEN), None)
        .await
        .expect("bootstrap");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc_admin::admin_service(cp.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut admin = AdminServiceClient::new(channel);

    // Create: the function as JSON shows it, the caller's request id echoed.
    let mut req = acme(CreateFunctionRequest {
        name: "probe".into(),
        runtime: "wasm".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "req-grpc-test".parse().expect("ascii"));
    let created = admin.create_function(req).await.expect("create");
    assert_eq!(
        created
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-grpc-test")
    );
    let created = created.into_inner();
    assert_eq!(
        (
            created.name.as_str(),
            created.org.as_str(),
            created.runtime.as_str()
        ),
        ("probe", "acme", "wasm")
    );
    assert_eq!(created.live_deployment_id, None);

    // The same errors as the HTTP API, as gRPC codes with the platform's code beside.
    assert_error(
        admin
            .create_function(acme(CreateFunctionRequest {
                name: "probe".into(),
                runtime: "wasm".into(),
            }))
            .await,
        Code::AlreadyExists,
        "function_exists",
    );
    assert_error(
        admin
            .create_function(acme(CreateFunctionRequest {
                name: "other".into(),
                runtime: "cobol".into(),
            }))
            .await,
        Code::InvalidArgument,
        "invalid_input",
    );
    assert_error(
        admin
            .list_functions(authed("rct_wrong", "acme", ListFunctionsRequest {}))
            .await,
        Code::Unauthenticated,
        "unauthorized",
    );
    assert_error(
        admin.list_functions(ListFunctionsRequest {}).await,
        Code::Unauthenticated,
        "unauthorized",
    );
    assert_error(
        admin
            .list_functions(authed(TOKEN, "someone-else", ListFunctionsRequest {}))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );

    // Upload: refused on a wrong hash or without a first message, accepted in chunks.
    let archive = bundle(&[("probe.wasm", &component)]);
    let sha = sha256_hex(&archive);
    let wrong = "0".repeat(64);
    assert!(
        archive.len() > 16 * 1024,
        "the upload spans several messages"
    );
    assert_error(
        admin
            .upload_bundle(acme(tokio_stream::iter(chunks(
                "probe",
                &archive,
                Some(wrong.as_str()),
            ))))
            .await,
        Code::InvalidArgument,
        "manifest_invalid",
    );
    assert_error(
        admin
            .upload_bundle(acme(tokio_stream::iter(Vec::<UploadChunk>::new())))
            .await,
        Code::InvalidArgument,
        "invalid_input",
    );
    assert_error(
        admin
            .upload_bundle(acme(tokio_stream::iter(chunks("nothing", &archive, None))))
            .await,
        Code::NotFound,
        "function_not_found",
    );
    let upload = chunks("probe", &archive, Some(sha.as_str()));
    let dep = admin
        .upload_bundle(acme(tokio_stream::iter(upload)))
        .await
        .expect("upload")
        .into_inner();
    assert!(dep.id.starts_with("dep_"), "{dep:?}");
    assert_eq!(
        (dep.sha256.as_str(), dep.size_bytes, dep.live),
        (sha.as_str(), archive.len() as u64, false)
    );

    // The real worker materializes it.
    let ready = wait_until(Duration::from_secs(120), || {
        let mut admin = admin.clone();
        let req = acme(GetDeploymentRequest {
            function: "probe".into(),
            id: dep.id.clone(),
        });
        async move {
            let d = admin.get_deployment(req).await.ok()?.into_inner();
            (d.status != "materializing").then_some(d)
        }
    })
    .await
    .expect("the deployment left materializing");
    assert_eq!(ready.status, "ready", "{:?}", ready.error);
    assert_eq!(ready.entrypoint, "probe.wasm");

    // Promote: the routing table has it live at once.
    assert_error(
        admin
            .promote(acme(PromoteRequest {
                function: "probe".into(),
                deployment_id: Some("dep_missing".into()),
                force: false,
            }))
            .await,
        Code::NotFound,
        "deployment_not_found",
    );
    let live = admin
        .promote(acme(PromoteRequest {
            function: "probe".into(),
            deployment_id: Some(dep.id.clone()),
            force: false,
        }))
        .await
        .expect("promote")
        .into_inner();
    assert_eq!((live.id.as_str(), live.live), (dep.id.as_str(), true));
    let table = cp.routing().current();
    let route = table
        .functions
        .iter()
        .find(|f| f.org == "acme" && f.name == "probe")
        .expect("probe is routed");
    assert_eq!(
        route.live.as_ref().map(|l| l.deployment_id.as_str()),
        Some(dep.id.as_str())
    );
    let listed = admin
        .list_deployments(acme(ListDeploymentsRequest {
            function: "probe".into(),
        }))
        .await
        .expect("list deployments")
        .into_inner()
        .deployments;
    assert_eq!(
        listed
            .iter()
            .map(|d| (d.id.as_str(), d.live))
            .collect::<Vec<_>>(),
        [(dep.id.as_str(), true)]
    );
    let function = admin
        .get_function(acme(GetFunctionRequest {
            name: "probe".into(),
        }))
        .await
        .expect("get function")
        .into_inner();
    assert_eq!(
        function.live_deployment_id.as_deref(),
        Some(dep.id.as_str())
    );

    // Rollback goes through promote, with its checks.
    let back = admin
        .rollback(acme(RollbackRequest {
            function: "probe".into(),
            to_deployment_id: dep.id.clone(),
        }))
        .await
        .expect("rollback")
        .into_inner();
    assert!(back.live);
    assert_error(
        admin
            .rollback(acme(RollbackRequest {
                function: "probe".into(),
                to_deployment_id: String::new(),
            }))
            .await,
        Code::InvalidArgument,
        "invalid_input",
    );

    // Tokens: a developer may not manage tokens; a revoked token no longer works.
    let dev = admin
        .create_token(acme(CreateTokenRequest {
            role: "developer".into(),
            name: Some("ci".into()),
        }))
        .await
        .expect("create token")
        .into_inner();
    assert_eq!(
        (dev.role.as_str(), dev.name.as_deref()),
        ("developer", Some("ci"))
    );
    let tokens = admin
        .list_tokens(acme(ListTokensRequest {}))
        .await
        .expect("list tokens")
        .into_inner()
        .tokens;
    assert!(tokens.iter().any(|t| t.id == dev.id), "{tokens:?}");
    assert_error(
        admin
            .list_tokens(authed(&dev.token, "acme", ListTokensRequest {}))
            .await,
        Code::PermissionDenied,
        "forbidden",
    );
    admin
        .revoke_token(acme(RevokeTokenRequest { id: dev.id.clone() }))
        .await
        .expect("revoke");
    assert_error(
        admin
            .list_functions(authed(&dev.token, "acme", ListFunctionsRequest {}))
            .await,
        Code::Unauthenticated,
        "unauthorized",
    );

    // Orgs: another org's admin sees nothing of acme.
    let beta = admin
        .create_org(acme(CreateOrgRequest {
            name: "beta".into(),
        }))
        .await
        .expect("create org")
        .into_inner();
    let beta_token = beta.admin_token.expect("admin token").token;
    assert_error(
        admin
            .get_function(authed(
                &beta_token,
                "beta",
                GetFunctionRequest {
                    name: "probe".into(),
                },
            ))
            .await,
        Code::NotFound,
        "function_not_found",
    );

    // Env and secrets: the secret is accepted and never returned.
    let set = admin
        .set_env(acme(pb::SetEnvRequest {
            function: "probe".into(),
            key: "API_KEY".into(),
            value: "sk_grpc_secret".into(),
            secret: true,
        }))
        .await
        .expect("set env")
        .into_inner();
    assert!(set.secret && set.value.is_none());
    admin
        .set_env(acme(pb::SetEnvRequest {
            function: "probe".into(),
            key: "REGION".into(),
            value: "eu".into(),
            secret: false,
        }))
        .await
        .expect("set env");
    let env = admin
        .list_env(acme(pb::ListEnvRequest {
            function: "probe".into(),
        }))
        .await
        .expect("list env")
        .into_inner()
        .env;
    assert_eq!(env.len(), 2);
    assert!(!format!("{env:?}").contains("sk_grpc_secret"));
    assert_eq!(env[1].value.as_deref(), Some("eu"));
    admin
        .unset_env(acme(pb::UnsetEnvRequest {
            function: "probe".into(),
            key: "REGION".into(),
        }))
        .await
        .expect("unset");
    // Policies: an invalid one is refused, a valid one reaches the routing table.
    assert_error(
        admin
            .set_policy(acme(pb::SetPolicyRequest {
                function: "probe".into(),
                policy_json: r#"{"rules":[{"name":"x","effect":"deny","when":"1 +"}]}"#.into(),
            }))
            .await,
        Code::InvalidArgument,
        "invalid_input",
    );
    admin
        .set_policy(acme(pb::SetPolicyRequest {
            function: "probe".into(),
            policy_json:
                r#"{"rules":[{"name":"no-deletes","effect":"deny","methods":["DELETE"]}]}"#.into(),
        }))
        .await
        .expect("set policy");
    let got = admin
        .get_policy(acme(pb::GetPolicyRequest {
            function: "probe".into(),
        }))
        .await
        .expect("get policy")
        .into_inner();
    assert!(got.policy_json.contains("no-deletes"));
    assert!(cp.routing().current().functions.iter().any(|f| {
        f.name == "probe"
            && f.policy
                .as_deref()
                .is_some_and(|p| p.contains("no-deletes"))
    }));
    admin
        .clear_policy(acme(pb::ClearPolicyRequest {
            function: "probe".into(),
        }))
        .await
        .expect("clear policy");

    // Delete: gone from the API and from the routing table.
    admin
        .delete_function(acme(DeleteFunctionRequest {
            name: "probe".into(),
        }))
        .await
        .expect("delete");
    assert_error(
        admin
            .get_function(acme(GetFunctionRequest {
                name: "probe".into(),
            }))
            .await,
        Code::NotFound,
        "function_not_found",
    );
    assert!(
        !cp.routing()
            .current()
            .functions
            .iter()
            .any(|f| f.name == "probe")
    );
    server.abort();
}
