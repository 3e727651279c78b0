//! Calls between functions from Bun (`fetch("http://NAME.reactor.internal/...")`). A Bun
//! process has no network: the harness sends such a request to the worker over a unix
//! socket of its own (`call.sock`, beside `fn.sock` in the process directory), with the
//! capability the worker gave the invocation it belongs to. The worker maps that
//! capability back to the invocation's [`CallScope`] (its identity, chain, deadline), never
//! trusting anything else the process says, and revokes it when the invocation ends
//! (which also cancels its calls still running). A capability is only good on the socket
//! of the process it was given to.

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use reactor_worker_link::calls::{CallGrants, CallScope};
use std::path::Path;
use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;

pub use reactor_worker_link::calls::CallGrant;

/// A process's call socket and the capabilities of its running invocations.
pub struct CallDoor {
    grants: CallGrants,
    _server: AbortOnDropHandle<()>,
}

impl CallDoor {
    /// Listens on `path` (inside the process directory, before the process starts).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let grants = CallGrants::default();
        let server = tokio::spawn(serve(listener, grants.clone()));
        Ok(Self {
            grants,
            _server: AbortOnDropHandle::new(server),
        })
    }

    /// A capability for `scope`'s invocation, valid until the grant is dropped.
    pub fn grant(&self, scope: Arc<CallScope>) -> CallGrant {
        self.grants.grant(scope)
    }
}

/// Most connections one process may hold open to its call socket (each costs the worker a
/// file descriptor); more wait for one to close.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve(listener: tokio::net::UnixListener, grants: CallGrants) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: try again shortly rather than stop serving.
                tracing::warn!(error = %e, "accepting on a bun process's call socket");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let grants = grants.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let grants = grants.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&grants, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One call from the process: its invocation's scope by capability, then the call.
async fn handle(grants: &CallGrants, req: http::Request<Incoming>) -> http::Response<Body> {
    let (parts, body) = req.into_parts();
    grants
        .answer(http::Request::from_parts(parts, Body::new(body)))
        .await
}
