//! The seed's SSE example as a wasi:http component: 10 `data:` events, 200 ms apart.

use wasi::clocks::monotonic_clock;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Stream;

wasi::http::proxy::export!(Stream);

impl Guest for Stream {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/event-stream".to_vec()]);
        let _ = headers.set("cache-control", &[b"no-cache".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(out) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        let Ok(stream) = out.write() else { return };
        for i in 0..10 {
            let event = format!("data: {}\n\n", serde_json::json!({ "chunk": i }));
            if stream.blocking_write_and_flush(event.as_bytes()).is_err() {
                return; // the client went away
            }
            if i < 9 {
                monotonic_clock::subscribe_duration(200_000_000).block();
            }
        }
        drop(stream);
        let _ = OutgoingBody::finish(out, None);
    }
}
