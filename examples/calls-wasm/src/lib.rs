//! Calls between functions from WASM: one component deployed three times (see README.md).
//! `GET /profile/{id}` and `GET /orders/{id}` answer a part each; `GET /dashboard/{id}`
//! calls both at once (`http://profile.reactor.internal/...` and
//! `http://orders.reactor.internal/...`, the aliases of `manifest.json`'s `calls`), waits
//! for the two and answers them merged, with the trace id the platform gave the calls.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler::{self, FutureIncomingResponse};
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Calls;

wasi::http::proxy::export!(Calls);

impl Guest for Calls {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let header = |name: &str| {
            request
                .headers()
                .get(&name.to_string())
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (status, body) = match parts.as_slice() {
            ["profile", id] => (
                200,
                serde_json::json!({
                    "id": id,
                    "name": format!("user {id}"),
                    "caller": header("x-reactor-caller-function"),
                }),
            ),
            ["orders", id] => (
                200,
                serde_json::json!({
                    "user": id,
                    "orders": [{"id": 1, "total": 42}, {"id": 2, "total": 7}],
                    "caller": header("x-reactor-caller-function"),
                }),
            ),
            ["dashboard", id] => dashboard(id, &header("traceparent")),
            _ => (404, serde_json::json!({"error": "try /dashboard/{id}"})),
        };
        respond(response_out, status, body.to_string().as_bytes());
    }
}

/// Both parts, requested together: the time of the slower, not the sum.
fn dashboard(id: &str, traceparent: &str) -> (u16, serde_json::Value) {
    let profile = start("profile.reactor.internal", &format!("/profile/{id}"));
    let orders = start("orders.reactor.internal", &format!("/orders/{id}"));
    let (profile, orders) = (finish(profile), finish(orders));
    match (profile, orders) {
        (Ok(profile), Ok(orders)) => (
            200,
            serde_json::json!({
                "profile": profile,
                "orders": orders["orders"],
                "trace_id": traceparent.split('-').nth(1),
            }),
        ),
        (Err(e), _) | (_, Err(e)) => (502, serde_json::json!({"error": e})),
    }
}

/// Sends `GET http://{host}{path}`; the answer is awaited by [`finish`].
fn start(host: &str, path: &str) -> Result<FutureIncomingResponse, String> {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(host));
    let _ = request.set_path_with_query(Some(path));
    outgoing_handler::handle(request, None).map_err(|e| format!("{host}: {e:?}"))
}

/// The JSON a call answered (a refusal of the platform is JSON too: passed on as an error).
fn finish(sent: Result<FutureIncomingResponse, String>) -> Result<serde_json::Value, String> {
    let future = sent?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        other => return Err(format!("{other:?}")),
    };
    let status = response.status();
    let mut bytes = Vec::new();
    if let Ok(body) = response.consume() {
        if let Ok(stream) = body.stream() {
            while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                bytes.extend_from_slice(&chunk);
            }
        }
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(value)
    } else {
        Err(format!("status {status}: {value}"))
    }
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(out) = response.body() else { return };
    ResponseOutparam::set(response_out, Ok(response));
    if let Ok(stream) = out.write() {
        let _ = stream.blocking_write_and_flush(body);
    }
    let _ = OutgoingBody::finish(out, None);
}
