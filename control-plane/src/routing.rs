//! Publishes the routing table: every change bumps the version stored in the database and
//! sends a full snapshot to subscribers (in-process routers through a `watch`).

use crate::store::Store;
use crate::workers::WorkerRegistry;
use reactor_proto::routing::RoutingTable;
use std::sync::Arc;
use tokio::sync::{Mutex, watch};

pub struct RoutingPublisher {
    store: Arc<dyn Store>,
    workers: Arc<WorkerRegistry>,
    tx: watch::Sender<Arc<RoutingTable>>,
    // Serialises publications so that versions reach subscribers in order.
    lock: Mutex<()>,
}

impl RoutingPublisher {
    pub fn new(store: Arc<dyn Store>, workers: Arc<WorkerRegistry>) -> Self {
        let (tx, _) = watch::channel(Arc::new(RoutingTable::default()));
        Self {
            store,
            workers,
            tx,
            lock: Mutex::new(()),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<RoutingTable> {
        self.tx.borrow().clone()
    }

    /// Builds a snapshot at a new version and sends it.
    pub async fn publish(&self) -> Result<u64, crate::store::StoreError> {
        let _guard = self.lock.lock().await;
        let version = self.store.next_routing_version().await?;
        let (functions, tokens) = self.store.routing_snapshot().await?;
        let table = RoutingTable {
            version,
            functions: functions
                .into_iter()
                .map(|(f, live)| crate::convert::route(f, live))
                .collect(),
            tokens: tokens.into_iter().map(crate::convert::grant).collect(),
            workers: self.workers.endpoints(),
        };
        tracing::debug!(
            version,
            functions = table.functions.len(),
            tokens = table.tokens.len(),
            "routing table published"
        );
        self.tx.send_replace(Arc::new(table));
        Ok(version)
    }
}
