//! Clients of the control plane's internal services, shared by routers and workers:
//! following `RoutingService.Watch` (assembling the table from its snapshot chunks and
//! deltas) with reconnection and backoff, and the internal token on every call.

use crate::routing::routing_service_client::RoutingServiceClient;
use crate::routing::{
    FunctionKey, FunctionRoute, RoutingTable, RoutingUpdate, TokenGrant, WatchRequest,
};
use std::collections::HashMap;
use std::time::Duration;
use tokio::task::JoinHandle;

/// `url` with its scheme made `https` (whatever the case it was written in: tonic uses TLS
/// only for a scheme that is exactly `https`); none when its scheme is not http(s).
pub fn https_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        .then(|| format!("https://{rest}"))
}

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where and how to reach the control plane's gRPC services.
#[derive(Clone)]
pub struct ControlPlaneEndpoint {
    /// e.g. `http://127.0.0.1:7071`
    pub url: String,
    pub internal_token: String,
    /// Names the router (or worker) in the control plane's logs.
    pub router_id: String,
    /// Mutual TLS (`[internal] tls`): then the URL is reached as `https`.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// The token is shown as set, never itself.
impl std::fmt::Debug for ControlPlaneEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneEndpoint")
            .field("url", &self.url)
            .field("internal_token", &"<set>")
            .field("router_id", &self.router_id)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the internal token is not a valid header value")]
    Token,
    #[error("the routing stream broke its protocol: {0}")]
    Protocol(String),
}

impl ControlPlaneEndpoint {
    /// The endpoint of the URL: `https` with the TLS config when there is one (tonic
    /// would send an `http` URL in clear even with a TLS config).
    fn endpoint(&self) -> Result<tonic::transport::Endpoint, ClientError> {
        match &self.tls {
            None => Ok(tonic::transport::Endpoint::from_shared(self.url.clone())?),
            Some(tls) => {
                let url = https_url(&self.url).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "the control plane URL {:?} is not an http(s)://host:port URL",
                        self.url
                    ))
                })?;
                Ok(tonic::transport::Endpoint::from_shared(url)?.tls_config(tls.clone())?)
            }
        }
    }

    /// A channel that connects on first use and reconnects after failures.
    pub fn channel(&self) -> Result<tonic::transport::Channel, ClientError> {
        Ok(self
            .endpoint()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect_lazy())
    }

    /// `msg` with `authorization: Bearer <internal token>`.
    pub fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, ClientError> {
        let mut req = tonic::Request::new(msg);
        let bearer = format!("Bearer {}", self.internal_token)
            .parse()
            .map_err(|_| ClientError::Token)?;
        req.metadata_mut().insert("authorization", bearer);
        Ok(req)
    }
}

/// Follows the routing table until the returned task is aborted: `on_table` gets the
/// whole table each time a newer version is complete. While the stream is down the caller
/// keeps what it has; reconnection backs off from 100 ms to 5 s, with jitter, and resumes
/// from the version held (the control plane then sends only what changed after it, or a
/// snapshot when it cannot).
pub fn watch_routing<F>(endpoint: ControlPlaneEndpoint, mut on_table: F) -> JoinHandle<()>
where
    F: FnMut(&RoutingTable) + Send + 'static,
{
    tokio::spawn(async move {
        let mut held = Assembled::default();
        let mut backoff = BACKOFF_MIN;
        loop {
            match watch_once(&endpoint, &mut held, &mut on_table).await {
                Ok(received) => {
                    tracing::warn!(url = %endpoint.url, version = held.table.version, "routing stream ended; keeping the last table");
                    if received {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %endpoint.url, version = held.table.version, error = %e, "routing stream failed; keeping the last table");
                }
            }
            // Jitter, so that many routers do not reconnect in step.
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// Largest message the routing stream accepts. The control plane sends at most about
/// 1 MiB per message (one entry more at most, each bounded by the per-org quotas).
pub const MAX_UPDATE_BYTES: usize = 16 << 20;

/// One connection: applies every update, hands over every completed version. Returns
/// whether any version was completed.
async fn watch_once<F>(
    endpoint: &ControlPlaneEndpoint,
    held: &mut Assembled,
    on_table: &mut F,
) -> Result<bool, ClientError>
where
    F: FnMut(&RoutingTable),
{
    // Keepalive: a control plane that vanishes without closing (host down, partition)
    // is noticed within ~15 s and the stream reconnects.
    let channel = endpoint
        .endpoint()?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut client = RoutingServiceClient::new(channel).max_decoding_message_size(MAX_UPDATE_BYTES);
    let req = endpoint.request(WatchRequest {
        router_id: endpoint.router_id.clone(),
        known_version: held.complete_version(),
    })?;
    let mut stream = client.watch(req).await?.into_inner();
    let mut received = false;
    let mut pending = Pending::default();
    while let Some(update) = stream.message().await? {
        let mut completed = pending.add(update, held).map_err(ClientError::Protocol)?;
        // Every update already received (up to a bound) is applied before the table is
        // handed over: a subscriber that fell behind a burst (10,000 promotes) gets its
        // last version once, not each in turn. `held` only ever holds a complete version,
        // and one it completed is handed over even when the stream fails right after
        // (the reconnection resumes from it and would not send it again).
        let mut ended: Result<bool, ClientError> = Ok(false);
        for _ in 0..DRAIN_AT_ONCE {
            let Some(next) = ready_now(stream.message()) else {
                break;
            };
            match next {
                Ok(Some(update)) => match pending.add(update, held) {
                    Ok(done) => completed |= done,
                    Err(e) => {
                        ended = Err(ClientError::Protocol(e));
                        break;
                    }
                },
                Ok(None) => {
                    ended = Ok(true);
                    break;
                }
                Err(e) => {
                    ended = Err(e.into());
                    break;
                }
            }
        }
        if completed {
            received = true;
            on_table(&held.table);
        }
        if ended? {
            break;
        }
    }
    Ok(received)
}

/// Most updates applied before the table is handed over.
const DRAIN_AT_ONCE: usize = 1024;

/// The output of `future` if it is ready without waiting.
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// The table as the updates built it, indexed for changes in place.
#[derive(Default)]
pub struct Assembled {
    pub table: RoutingTable,
    functions: HashMap<(String, String), usize>,
    tokens: HashMap<String, usize>,
    /// False until the first snapshot is complete.
    complete: bool,
}

impl Assembled {
    /// The version held, 0 before the first complete table.
    pub fn complete_version(&self) -> u64 {
        if self.complete { self.table.version } else { 0 }
    }

    fn upsert_function(&mut self, f: FunctionRoute) {
        let key = (f.org.clone(), f.name.clone());
        match self.functions.get(&key) {
            Some(&i) => self.table.functions[i] = f,
            None => {
                self.functions.insert(key, self.table.functions.len());
                self.table.functions.push(f);
            }
        }
    }

    fn remove_function(&mut self, key: FunctionKey) {
        let Some(i) = self.functions.remove(&(key.org, key.name)) else {
            return;
        };
        self.table.functions.swap_remove(i);
        if let Some(moved) = self.table.functions.get(i) {
            self.functions
                .insert((moved.org.clone(), moved.name.clone()), i);
        }
    }

    fn upsert_token(&mut self, t: TokenGrant) {
        match self.tokens.get(&t.token_id) {
            Some(&i) => self.table.tokens[i] = t,
            None => {
                self.tokens
                    .insert(t.token_id.clone(), self.table.tokens.len());
                self.table.tokens.push(t);
            }
        }
    }

    fn remove_token(&mut self, token_id: &str) {
        let Some(i) = self.tokens.remove(token_id) else {
            return;
        };
        self.table.tokens.swap_remove(i);
        if let Some(moved) = self.table.tokens.get(i) {
            self.tokens.insert(moved.token_id.clone(), i);
        }
    }

    fn apply(&mut self, u: RoutingUpdate) {
        for key in u.removed_functions {
            self.remove_function(key);
        }
        for f in u.functions {
            self.upsert_function(f);
        }
        for id in &u.removed_tokens {
            self.remove_token(id);
        }
        for t in u.tokens {
            self.upsert_token(t);
        }
        if let Some(w) = u.workers {
            self.table.workers = w.workers;
        }
        if let Some(k) = u.signing_keys {
            self.table.signing_keys = k.keys;
        }
    }
}

/// The messages of the version being received.
#[derive(Default)]
pub struct Pending {
    /// A snapshot being assembled apart, so the held table stays whole until it is done.
    snapshot: Option<Assembled>,
    /// The messages of a delta, applied together on the last.
    delta: Vec<RoutingUpdate>,
}

impl Pending {
    /// Takes one message: true when a version was completed and `held` now holds it; an
    /// error when the stream broke the protocol (then reconnect, for a snapshot).
    pub fn add(&mut self, u: RoutingUpdate, held: &mut Assembled) -> Result<bool, String> {
        if u.reset {
            if !self.delta.is_empty() {
                return Err("a snapshot started inside a delta".into());
            }
            self.snapshot = Some(Assembled::default());
        }
        let last = u.last;
        let version = u.version;
        if let Some(snapshot) = &mut self.snapshot {
            snapshot.apply(u);
            if !last {
                return Ok(false);
            }
            let mut done = self.snapshot.take().unwrap_or_default();
            done.table.version = version;
            done.complete = true;
            *held = done;
            return Ok(true);
        }
        if !held.complete {
            return Err("a delta arrived before any snapshot".into());
        }
        if u.base_version != held.table.version {
            return Err(format!(
                "a delta on version {} arrived while holding {}",
                u.base_version, held.table.version
            ));
        }
        if let Some(first) = self.delta.first()
            && first.version != version
        {
            return Err("a delta's messages disagree on their version".into());
        }
        self.delta.push(u);
        if !last {
            return Ok(false);
        }
        for part in self.delta.drain(..) {
            held.apply(part);
        }
        held.table.version = version;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::https_url;

    #[test]
    fn tls_urls_are_https_whatever_their_case() {
        assert_eq!(
            https_url("http://cp:7071").as_deref(),
            Some("https://cp:7071")
        );
        assert_eq!(
            https_url("HTTP://cp:7071").as_deref(),
            Some("https://cp:7071")
        );
        assert_eq!(
            https_url("HttpS://cp:7071").as_deref(),
            Some("https://cp:7071")
        );
        assert_eq!(https_url("grpc://cp:7071"), None);
        assert_eq!(https_url("cp:7071"), None);
    }
}
