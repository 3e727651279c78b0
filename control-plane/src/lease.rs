//! Leases: work that exactly one control-plane replica does at a time (garbage collection
//! now; schedules and canary guards later). The holder renews its lease every third of
//! its TTL; when it stops (killed, or cut off from the database), another replica takes
//! the lease over once it has expired, so the takeover time is at most the TTL plus one
//! renewal period. The database's clock decides expiry. A store without leases (SQLite:
//! one control plane) makes every lease held.

use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a lease lasts without renewal: [`LEASE_TTL`] + a third of it is the longest a
/// lease's work waits for another replica after its holder dies.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// A lease this process tries to hold for as long as it lives.
pub struct Lease {
    held: watch::Receiver<bool>,
}

impl Lease {
    /// Tries to take lease `name` now and then renews or retries it every third of `ttl`,
    /// until `closed` resolves (then gives it up, so another replica takes it at once).
    pub async fn spawn(
        store: Arc<dyn Store>,
        name: &'static str,
        ttl: Duration,
        closed: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Lease {
        let holder = format!("{}-{}", std::process::id(), ulid::Ulid::new());
        let first = take(&*store, name, &holder, ttl, false).await;
        let (tx, held) = watch::channel(first);
        tokio::spawn(async move {
            tokio::pin!(closed);
            let mut was = first;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(ttl / 3) => {}
                    () = &mut closed => break,
                }
                let now = take(&*store, name, &holder, ttl, was).await;
                if now != was {
                    if now {
                        tracing::info!(
                            lease = name,
                            holder,
                            "lease taken: this replica does its work"
                        );
                    } else {
                        tracing::warn!(
                            lease = name,
                            holder,
                            "lease lost: another replica does its work"
                        );
                    }
                    was = now;
                }
                tx.send_replace(now);
            }
            tx.send_replace(false);
            if let Err(e) = store.release_lease(name, &holder).await {
                tracing::debug!(lease = name, error = %e, "giving up the lease");
            }
        });
        Lease { held }
    }

    /// Whether this process holds the lease now.
    pub fn held(&self) -> bool {
        *self.held.borrow()
    }
}

/// Takes or renews the lease; a database that does not answer loses it (`held` says
/// whether it was held, for the log).
async fn take(store: &dyn Store, name: &str, holder: &str, ttl: Duration, held: bool) -> bool {
    match store.take_lease(name, holder, ttl).await {
        Ok(Some(taken)) => taken,
        Ok(None) => true,
        Err(e) => {
            if held {
                tracing::warn!(lease = name, error = %e, "renewing the lease failed; its work stops here until it is taken again");
            }
            false
        }
    }
}
