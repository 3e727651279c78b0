//! {{name}}: a Reactor function as a wasi:http component. `{"name": "Reactor"}` in,
//! `{"message": "Hello, Reactor!"}` out. `reactor functions dev {{name}} --dir .` rebuilds
//! and redeploys it on every save; `cargo test` runs the tests below natively.

/// The answer to a request body: the handler's logic, kept apart from the wasi glue.
pub fn reply(body: &[u8]) -> String {
    let name = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| "World".to_string());
    serde_json::json!({ "message": format!("Hello, {name}!") }).to_string()
}

#[cfg(target_arch = "wasm32")]
mod component {
    use wasi::exports::http::incoming_handler::Guest;
    use wasi::http::types::{
        Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
    };

    struct Handler;

    wasi::http::proxy::export!(Handler);

    impl Guest for Handler {
        fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
            let reply = super::reply(&read_body(&request));
            let headers = Fields::new();
            let _ = headers.set("content-type", &[b"application/json".to_vec()]);
            let response = OutgoingResponse::new(headers);
            let Ok(out) = response.body() else { return };
            ResponseOutparam::set(response_out, Ok(response));
            if let Ok(stream) = out.write() {
                for chunk in reply.as_bytes().chunks(4096) {
                    if stream.blocking_write_and_flush(chunk).is_err() {
                        return;
                    }
                }
            }
            let _ = OutgoingBody::finish(out, None);
        }
    }

    fn read_body(request: &IncomingRequest) -> Vec<u8> {
        let mut bytes = Vec::new();
        let Ok(body) = request.consume() else { return bytes };
        if let Ok(stream) = body.stream() {
            while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                bytes.extend_from_slice(&chunk);
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::reply;

    #[test]
    fn greets_by_name() {
        assert_eq!(reply(br#"{"name":"Reactor"}"#), r#"{"message":"Hello, Reactor!"}"#);
    }

    #[test]
    fn greets_the_world_without_a_name() {
        assert_eq!(reply(b""), r#"{"message":"Hello, World!"}"#);
    }
}
