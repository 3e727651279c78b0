//! Users who sign in, end to end through the real `reactor dev`: accounts made by the
//! platform admin, org membership with roles, the token endpoint's password and refresh
//! grants, access tokens checked by the router from the routing table (a removed member is
//! refused at once), backoff after failed sign-ins, revoked refresh tokens, and the CLI's
//! `users`, `orgs members`, `login` and `logout`.

use reactor_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

const ADA_PASSWORD: &str = "ada-lovelace-analytical-engine";
const BOB_PASSWORD: &str = "bob-the-invoker-password";

async fn call(
    s: &Server,
    token: &str,
    org: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s
        .http
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(token);
    if let Some(org) = org {
        req = req.header("X-Reactor-Org", org);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}\n{}", s.logs()));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /auth/token` (no bearer): status, headers and body.
async fn grant(s: &Server, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = s
        .http
        .post(format!("{}/fn/v1/_admin/auth/token", s.url))
        .json(&body)
        .send()
        .await
        .expect("token endpoint");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

async fn sign_in(s: &Server, email: &str, password: &str) -> Value {
    let (status, headers, v) = grant(
        s,
        json!({"grant_type": "password", "email": email, "password": password}),
    )
    .await;
    assert_eq!(status, 200, "sign in {email}: {v}");
    assert_eq!(headers["cache-control"], "no-store");
    v
}

async fn create_user(s: &Server, email: &str, password: &str) {
    let (status, v) = call(
        s,
        &s.token,
        Some(&s.org),
        Method::POST,
        "/fn/v1/_admin/users",
        Some(json!({"email": email, "password": password})),
    )
    .await;
    assert_eq!(status, 201, "create {email}: {v}");
    assert!(
        v.get("password").is_none() && v.get("password_hash").is_none(),
        "{v}"
    );
}

async fn add_member(s: &Server, org: &str, email: &str, role: &str) {
    let (status, v) = call(
        s,
        &s.token,
        Some(&s.org),
        Method::PUT,
        &format!("/fn/v1/_admin/orgs/{org}/members/{email}"),
        Some(json!({"role": role})),
    )
    .await;
    assert_eq!(status, 200, "add {email} to {org}: {v}");
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_in_users_act_in_their_orgs_with_their_roles_checked_by_the_router() {
    let s = Server::start();
    // A second org, and two users of the first one.
    let (status, beta) = call(
        &s,
        &s.token,
        Some(&s.org),
        Method::POST,
        "/fn/v1/_admin/orgs",
        Some(json!({"name": "beta"})),
    )
    .await;
    assert_eq!(status, 201, "{beta}");
    create_user(&s, "Ada@Example.com", ADA_PASSWORD).await;
    create_user(&s, "bob@example.com", BOB_PASSWORD).await;
    let (status, v) = call(
        &s,
        &s.token,
        Some(&s.org),
        Method::POST,
        "/fn/v1/_admin/users",
        Some(json!({"email": "ada@example.com", "password": "another-long-password"})),
    )
    .await;
    assert_eq!((status, code(&v)), (409, "user_exists"), "{v}");
    let (status, v) = call(
        &s,
        &s.token,
        Some(&s.org),
        Method::POST,
        "/fn/v1/_admin/users",
        Some(json!({"email": "eve@example.com", "password": "short"})),
    )
    .await;
    assert_eq!((status, code(&v)), (400, "invalid_input"), "{v}");
    add_member(&s, "acme", "ada@example.com", "developer").await;
    add_member(&s, "acme", "bob@example.com", "invoker").await;

    // Ada signs in (the email's case does not matter) and deploys with her access token.
    let ada = sign_in(&s, "ADA@example.com", ADA_PASSWORD).await;
    assert_eq!(ada["token_type"], "bearer");
    assert_eq!(ada["user"]["email"], "ada@example.com");
    assert_eq!(ada["orgs"], json!([{"org": "acme", "role": "developer"}]));
    let ada_token = ada["access_token"]
        .as_str()
        .expect("access token")
        .to_string();
    let as_ada = Api {
        url: s.url.clone(),
        token: ada_token.clone(),
        org: "acme".into(),
        http: reqwest::Client::new(),
    };
    as_ada.deploy_live("hello", wasm_probe_bundle(None)).await;

    // The router checks the access token itself, with or without X-Reactor-Org (her only
    // org).
    for org in [Some("acme"), None] {
        let (status, v) = call(&s, &ada_token, org, Method::GET, "/fn/v1/hello/", None).await;
        assert_eq!(status, 200, "{org:?}: {v}\n{}", s.logs());
    }
    // Another org is refused, on the admin API and by the router.
    let (status, v) = call(
        &s,
        &ada_token,
        Some("beta"),
        Method::GET,
        "/fn/v1/_admin/functions",
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");
    let (status, v) = call(
        &s,
        &ada_token,
        Some("beta"),
        Method::GET,
        "/fn/v1/hello/",
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");
    // A developer may not do an admin's work.
    let (status, v) = call(
        &s,
        &ada_token,
        Some("acme"),
        Method::GET,
        "/fn/v1/_admin/tokens",
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");

    // Bob, an invoker, invokes but is refused on admin routes.
    let bob = sign_in(&s, "bob@example.com", BOB_PASSWORD).await;
    let bob_token = bob["access_token"].as_str().expect("access token");
    let (status, _) = call(
        &s,
        bob_token,
        Some("acme"),
        Method::GET,
        "/fn/v1/hello/",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, v) = call(
        &s,
        bob_token,
        Some("acme"),
        Method::POST,
        "/fn/v1/_admin/functions",
        Some(json!({"name": "bobs", "runtime": "wasm"})),
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");

    // Only the platform admin manages users; an org admin manages their org's members.
    let (status, v) = call(
        &s,
        &ada_token,
        Some("acme"),
        Method::GET,
        "/fn/v1/_admin/users",
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");
    let beta_admin = beta["admin_token"]["token"]
        .as_str()
        .expect("beta admin token");
    let (status, v) = call(
        &s,
        beta_admin,
        Some("beta"),
        Method::PUT,
        "/fn/v1/_admin/orgs/acme/members/bob@example.com",
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(
        (status, code(&v)),
        (403, "forbidden"),
        "beta's admin cannot touch acme: {v}"
    );
    let (status, v) = call(
        &s,
        beta_admin,
        Some("beta"),
        Method::GET,
        "/fn/v1/_admin/orgs/beta/members",
        None,
    )
    .await;
    assert_eq!((status, &v), (200, &json!([])), "{v}");

    // A forged token (another signature) and an API token still behave.
    // One character of the signature changed.
    let mut forged = ada_token.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    let (status, _) = call(
        &s,
        &forged,
        Some("acme"),
        Method::GET,
        "/fn/v1/hello/",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &s,
        &forged,
        Some("acme"),
        Method::GET,
        "/fn/v1/_admin/functions",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &s,
        &s.token,
        Some(&s.org),
        Method::GET,
        "/fn/v1/hello/",
        None,
    )
    .await;
    assert_eq!(status, 200, "API tokens keep working");

    // Removing Ada from acme refuses her unexpired token at once, at the router too.
    let (status, v) = call(
        &s,
        &s.token,
        Some(&s.org),
        Method::DELETE,
        "/fn/v1/_admin/orgs/acme/members/ada@example.com",
        None,
    )
    .await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = call(
        &s,
        &ada_token,
        Some("acme"),
        Method::GET,
        "/fn/v1/hello/",
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");
    let (status, v) = call(
        &s,
        &ada_token,
        Some("acme"),
        Method::GET,
        "/fn/v1/_admin/functions",
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");
    // Deleting Bob does the same to his.
    let (status, _) = call(
        &s,
        &s.token,
        Some(&s.org),
        Method::DELETE,
        "/fn/v1/_admin/users/bob@example.com",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &s,
        bob_token,
        Some("acme"),
        Method::GET,
        "/fn/v1/hello/",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, v) = call(
        &s,
        &s.token,
        Some(&s.org),
        Method::GET,
        "/fn/v1/_admin/users",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let emails: Vec<&str> = v
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(emails, ["ada@example.com"]);

    // The passwords were never logged.
    let logs = s.logs();
    assert!(!logs.contains(ADA_PASSWORD) && !logs.contains(BOB_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_sign_ins_back_off_and_refresh_tokens_rotate_and_can_be_revoked() {
    let s = Server::start_with(&[
        ("REACTOR_FUNCTIONS_AUTH_FAILED_SIGNINS_PER_ACCOUNT", "3"),
        ("REACTOR_FUNCTIONS_AUTH_FAILED_SIGNINS_PER_ADDRESS", "8"),
        // A spent refresh token presented again ends the sign-in at once (no grace for
        // racing refreshes).
        ("REACTOR_FUNCTIONS_AUTH_REFRESH_REUSE_GRACE_SECS", "0"),
    ]);
    create_user(&s, "ada@example.com", ADA_PASSWORD).await;
    add_member(&s, "acme", "ada@example.com", "admin").await;

    // A wrong password and an unknown user get the same answer.
    let (status, _, wrong) = grant(&s, json!({"grant_type": "password", "email": "ada@example.com", "password": "not-her-password!"})).await;
    assert_eq!((status, code(&wrong)), (401, "unauthorized"), "{wrong}");
    let (status, _, unknown) = grant(&s, json!({"grant_type": "password", "email": "nobody@example.com", "password": "not-her-password!"})).await;
    assert_eq!(status, 401);
    assert_eq!(wrong["error"]["message"], unknown["error"]["message"]);
    let (status, _, v) = grant(&s, json!({"grant_type": "client_credentials"})).await;
    assert_eq!((status, code(&v)), (400, "invalid_input"), "{v}");

    // Past three failures the account waits, even with the right password.
    for _ in 0..2 {
        let (status, _, _) = grant(&s, json!({"grant_type": "password", "email": "ada@example.com", "password": "still-not-hers!!"})).await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = grant(&s, json!({"grant_type": "password", "email": "ada@example.com", "password": "fourth-wrong-guess"})).await;
    assert_eq!(status, 401);
    let (status, headers, v) = grant(
        &s,
        json!({"grant_type": "password", "email": "ada@example.com", "password": ADA_PASSWORD}),
    )
    .await;
    assert_eq!((status, code(&v)), (429, "too_many_requests"), "{v}");
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    let first = sign_in(&s, "ada@example.com", ADA_PASSWORD).await;

    // Refresh: a new access token and a new refresh token; the old one is spent.
    let refresh = first["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let (status, _, second) = grant(
        &s,
        json!({"grant_type": "refresh_token", "refresh_token": refresh}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let (status, v) = list_functions(&s, &second).await;
    assert_eq!(status, 200, "{v}");
    let (status, _, v) = grant(
        &s,
        json!({"grant_type": "refresh_token", "refresh_token": refresh}),
    )
    .await;
    assert_eq!(
        (status, code(&v)),
        (401, "unauthorized"),
        "a spent refresh token: {v}"
    );

    // Presenting a spent token again means someone holds a copy: the whole sign-in ended,
    // its current refresh token and (on the admin API) its access token with it.
    let (status, _, v) = grant(
        &s,
        json!({"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}),
    )
    .await;
    assert_eq!(
        (status, code(&v)),
        (401, "unauthorized"),
        "reuse ends the sign-in: {v}"
    );
    let (status, v) = list_functions(&s, &second).await;
    assert_eq!((status, code(&v)), (401, "unauthorized"), "{v}");

    // Revoked: the refresh token no longer works, nor its access token on the admin API.
    let third = sign_in(&s, "ada@example.com", ADA_PASSWORD).await;
    let current = third["refresh_token"].as_str().expect("refresh");
    let revoked = s
        .http
        .post(format!("{}/fn/v1/_admin/auth/revoke", s.url))
        .json(&json!({"refresh_token": current}))
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 204);
    let (status, _, v) = grant(
        &s,
        json!({"grant_type": "refresh_token", "refresh_token": current}),
    )
    .await;
    assert_eq!(
        (status, code(&v)),
        (401, "unauthorized"),
        "a revoked refresh token: {v}"
    );
    let (status, v) = list_functions(&s, &third).await;
    assert_eq!((status, code(&v)), (401, "unauthorized"), "{v}");

    // One address guessing at many accounts is slowed too: five failures so far (four on
    // ada, one unknown user), three more allowed, then it waits.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let (status, _, _) = grant(&s, json!({"grant_type": "password", "email": format!("user{i}@example.com"), "password": "guessing-passwords"})).await;
        statuses.push(status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[0], 401, "{statuses:?}");
}

/// Lists functions with the access token of `granted`.
async fn list_functions(s: &Server, granted: &Value) -> (u16, Value) {
    let token = granted["access_token"].as_str().expect("access token");
    call(
        s,
        token,
        Some("acme"),
        Method::GET,
        "/fn/v1/_admin/functions",
        None,
    )
    .await
}

/// The CLI without `REACTOR_TOKEN`: what `reactor login` saved is used.
fn cli_signed_in(s: &Server, args: &[&str], stdin: &str) -> CliOutput {
    let mut child = Command::new(reactor_bin())
        .args(args)
        .env_remove("REACTOR_TOKEN")
        .env_remove("REACTOR_URL")
        .env_remove("REACTOR_ORG")
        .env(
            "REACTOR_CREDENTIALS",
            s.dir.path().join("cli").join("credentials.json"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reactor CLI");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    CliOutput::from(child.wait_with_output().expect("reactor CLI"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_users_adds_members_and_signs_in_and_out() {
    // Access tokens of a minute: every CLI command renews it (the renewal margin).
    let s = Server::start_with(&[("REACTOR_FUNCTIONS_AUTH_ACCESS_TOKEN_TTL_SECS", "60")]);
    let out = s.cli_with_input(
        &["users", "create", "ada@example.com"],
        &format!("{ADA_PASSWORD}\n"),
    );
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    s.cli_ok(&[
        "orgs",
        "members",
        "add",
        "acme",
        "ada@example.com",
        "--role",
        "developer",
    ]);
    let members = s.cli_ok(&["orgs", "members", "list", "acme"]);
    assert!(
        members.contains("ada@example.com") && members.contains("developer"),
        "{members}"
    );
    let users = s.cli_ok(&["users", "list"]);
    assert!(users.contains("acme:developer"), "{users}");

    let out = cli_signed_in(
        &s,
        &["login", "--url", &s.url, "--email", "ada@example.com"],
        &format!("{ADA_PASSWORD}\n"),
    );
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Signed in to") && out.stdout.contains("acme"),
        "{}",
        out.stdout
    );
    let sessions_path = s.dir.path().join("cli").join("sessions.json");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&sessions_path).expect("sessions.json"))
            .expect("json");
    let refresh = saved["servers"][&s.url]["refresh_token"].clone();
    assert!(!saved.to_string().contains(ADA_PASSWORD));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sessions_path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "sessions.json is the owner's only");
    }

    // Commands use the sign-in (renewed: the token lives a minute, under the margin).
    let out = cli_signed_in(
        &s,
        &["functions", "create", "hello", "--runtime", "wasm"],
        "",
    );
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    let out = cli_signed_in(&s, &["functions", "list"], "");
    assert!(
        out.success && out.stdout.contains("hello"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&sessions_path).expect("sessions.json"))
            .expect("json");
    assert_ne!(
        saved["servers"][&s.url]["refresh_token"], refresh,
        "renewed"
    );
    // A developer: no tokens.
    let out = cli_signed_in(&s, &["tokens", "list"], "");
    assert!(
        !out.success && out.stderr.contains("forbidden"),
        "{}",
        out.stderr
    );

    // A wrong password is said as such, and changes nothing saved.
    let out = cli_signed_in(
        &s,
        &["login", "--url", &s.url, "--email", "ada@example.com"],
        "wrong-password-here\n",
    );
    assert!(
        !out.success && out.stderr.contains("wrong email or password"),
        "{}",
        out.stderr
    );

    let current = saved["servers"][&s.url]["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let out = cli_signed_in(&s, &["logout"], "");
    assert!(
        out.success && out.stdout.contains("Signed out"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let (status, _, _) = grant(
        &s,
        json!({"grant_type": "refresh_token", "refresh_token": current}),
    )
    .await;
    assert_eq!(
        status, 401,
        "logout revoked the refresh token on the server"
    );
    let out = cli_signed_in(&s, &["functions", "list"], "");
    assert!(!out.success, "signed out: {}", out.stdout);
}
