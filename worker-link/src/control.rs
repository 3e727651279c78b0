//! What worker services and routers get from (or send to) the control plane besides the
//! routing table: a deployment's env ([`ControlPlaneEnv`], asked when its first instance
//! starts) and function logs ([`PushLogs`], batched and sent in the background).

use async_trait::async_trait;
use reactor_api::logs::{LogEntry, LogSink};
use reactor_api::{DeploymentSpec, EnvSource};
use reactor_proto::client::{ClientError, ControlPlaneEndpoint};
use reactor_proto::routing::worker_registry_client::WorkerRegistryClient;
use reactor_proto::routing::{DeploymentEnvRequest, DeploymentEnvResponse, PushLogsRequest};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// A deployment's env, asked of the control plane over the internal channel.
pub struct ControlPlaneEnv {
    endpoint: ControlPlaneEndpoint,
    channel: tonic::transport::Channel,
    worker_id: String,
    /// The secret this worker registers with.
    secret: String,
}

impl ControlPlaneEnv {
    pub fn new(
        endpoint: ControlPlaneEndpoint,
        worker_id: String,
        secret: String,
    ) -> Result<Arc<Self>, ClientError> {
        Ok(Arc::new(Self {
            channel: endpoint.channel()?,
            endpoint,
            worker_id,
            secret,
        }))
    }
}

#[async_trait]
impl EnvSource for ControlPlaneEnv {
    async fn deployment_env(
        &self,
        spec: &DeploymentSpec,
    ) -> Result<Arc<BTreeMap<String, String>>, String> {
        let result = async {
            let mut client = WorkerRegistryClient::new(self.channel.clone());
            let req = self.endpoint.request(DeploymentEnvRequest {
                worker_id: self.worker_id.clone(),
                org: spec.org.clone(),
                function: spec.function.clone(),
                deployment_id: spec.deployment_id.clone(),
                worker_secret: self.secret.clone(),
            })?;
            Ok::<_, ClientError>(client.deployment_env(req).await?.into_inner())
        }
        .await;
        let recorded = result
            .map_err(|e| format!("asking the control plane for the deployment's env: {e}"))?;
        check_recorded(spec, &recorded)?;
        Ok(Arc::new(recorded.env.into_iter().collect()))
    }
}

/// The spec a router sent must name the bundle the control plane recorded for the
/// deployment: else a router could pair its own code with another deployment's env.
fn check_recorded(spec: &DeploymentSpec, recorded: &DeploymentEnvResponse) -> Result<(), String> {
    if spec.bundle_key != recorded.bundle_key
        || !spec.sha256.eq_ignore_ascii_case(&recorded.sha256)
        || spec.entrypoint != recorded.entrypoint
    {
        tracing::warn!(org = %spec.org, function = %spec.function, deployment_id = %spec.deployment_id, "a spec that does not match the recorded deployment was refused");
        return Err(format!(
            "deployment {} is not what the control plane recorded (bundle, sha256 or entrypoint differ): refusing to run it",
            spec.deployment_id
        ));
    }
    Ok(())
}

/// Entries buffered before new ones are dropped (the control plane is away or slow).
const BUFFER: usize = 4096;
/// Most entries per push.
const BATCH: usize = 256;
/// Most message bytes per push, well under gRPC's 4 MiB message limit.
const BATCH_BYTES: usize = 1 << 20;
/// How long entries wait to fill a batch.
const LINGER: Duration = Duration::from_millis(100);

/// Sends log entries to the control plane in batches; never blocks the caller, drops
/// (and counts) entries when the buffer is full.
pub struct PushLogs {
    tx: mpsc::Sender<LogEntry>,
    dropped: Arc<AtomicU64>,
}

impl PushLogs {
    /// Starts the sender task; `sender_id` names this router or worker.
    pub fn start(
        endpoint: ControlPlaneEndpoint,
        sender_id: String,
    ) -> Result<Arc<Self>, ClientError> {
        let channel = endpoint.channel()?;
        let (tx, mut rx) = mpsc::channel::<LogEntry>(BUFFER);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        tokio::spawn(async move {
            let mut batch: Vec<LogEntry> = Vec::with_capacity(BATCH);
            loop {
                let Some(first) = rx.recv().await else { return };
                let mut bytes = first.message.len();
                batch.push(first);
                let until = tokio::time::Instant::now() + LINGER;
                while batch.len() < BATCH && bytes < BATCH_BYTES {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(e)) => {
                            bytes += e.message.len();
                            batch.push(e)
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                let entries: Vec<String> = batch
                    .drain(..)
                    .filter_map(|e| serde_json::to_string(&e).ok())
                    .collect();
                let n = entries.len() as u64;
                let sent = async {
                    let mut client = WorkerRegistryClient::new(channel.clone());
                    let req = endpoint.request(PushLogsRequest {
                        sender_id: sender_id.clone(),
                        entries,
                    })?;
                    client.push_logs(req).await?;
                    Ok::<_, ClientError>(())
                }
                .await;
                if let Err(e) = sent {
                    let total = lost.fetch_add(n, Ordering::Relaxed) + n;
                    let metrics = reactor_service::metrics::get();
                    if metrics.recording() {
                        metrics.log_entries_dropped.inc_by(n);
                    }
                    tracing::warn!(error = %e, lost = n, total, "function logs not delivered to the control plane");
                }
            }
        });
        Ok(Arc::new(Self { tx, dropped }))
    }

    /// Entries dropped so far (buffer full or the control plane unreachable).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl LogSink for PushLogs {
    fn emit(&self, entry: LogEntry) {
        if self.tx.try_send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            let metrics = reactor_service::metrics::get();
            if metrics.recording() {
                metrics.log_entries_dropped.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_naming_another_bundle_gets_no_env() {
        let spec = DeploymentSpec {
            org: "acme".into(),
            function: "f".into(),
            deployment_id: "dep_1".into(),
            runtime: reactor_api::Runtime::Bun,
            entrypoint: "index.ts".into(),
            bundle_key: "bundles/acme/f/dep_1.tar.gz".into(),
            sha256: "ab".repeat(32),
            timeout_ms: 1000,
            memory_mb: 128,
            min_instances: 0,
            max_concurrency: None,
            calls: None,
            pool: None,
        };
        let recorded = DeploymentEnvResponse {
            env: [("SECRET".to_string(), "s".to_string())].into(),
            bundle_key: spec.bundle_key.clone(),
            sha256: spec.sha256.clone(),
            entrypoint: spec.entrypoint.clone(),
        };
        assert!(check_recorded(&spec, &recorded).is_ok());
        for forged in [
            DeploymentSpec {
                bundle_key: "bundles/evil/x/dep_9.tar.gz".into(),
                ..spec.clone()
            },
            DeploymentSpec {
                sha256: "cd".repeat(32),
                ..spec.clone()
            },
            DeploymentSpec {
                entrypoint: "evil.ts".into(),
                ..spec.clone()
            },
        ] {
            let err = check_recorded(&forged, &recorded).expect_err("refused");
            assert!(err.contains("not what the control plane recorded"), "{err}");
        }
    }
}
