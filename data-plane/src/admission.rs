//! Admission: the manifest's `concurrency.max_concurrency`, counted per function. A
//! request takes a permit before it is forwarded and gives it back when its response body
//! ends (or the client goes away); over the cap it gets 429 `too_many_requests`.
//!
//! [`LocalAdmission`] counts in this process, which is exact for the embedded default
//! (one router). With several routers the count must be global: another [`Admission`]
//! (leases in Redis) plugs in behind the same interface.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Held while a request runs; dropping it frees the slot.
pub struct Permit {
    _release: Box<dyn Send + Sync>,
}

impl Permit {
    pub fn new(release: impl Send + Sync + 'static) -> Self {
        Self {
            _release: Box::new(release),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The counter cannot be reached; the router says which way it fails.
    #[error("concurrency counter unavailable: {0}")]
    Unavailable(String),
    /// The counter's address does not parse (a configuration error, found at start).
    #[error("invalid concurrency counter url: {0}")]
    InvalidUrl(String),
}

#[async_trait]
pub trait Admission: Send + Sync + 'static {
    /// A permit for one more request of `key` (the function) if fewer than `limit` run;
    /// `Ok(None)` when it is at the cap.
    async fn try_acquire(&self, key: &str, limit: u32) -> Result<Option<Permit>, AdmissionError>;
}

/// Counts in process memory.
#[derive(Default)]
pub struct LocalAdmission {
    running: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

impl LocalAdmission {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn counter(&self, key: &str) -> Option<Arc<AtomicU32>> {
        let mut map = self.running.lock().ok()?;
        if let Some(c) = map.get(key) {
            return Some(c.clone());
        }
        // Counters of functions with nothing running are dropped now and then, so that
        // deleted functions do not accumulate.
        if map.len() >= 1024 {
            map.retain(|_, c| c.load(Ordering::Acquire) > 0);
        }
        Some(map.entry(key.to_string()).or_default().clone())
    }
}

/// Gives a local slot back.
struct LocalSlot(Arc<AtomicU32>);

impl Drop for LocalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl Admission for LocalAdmission {
    async fn try_acquire(&self, key: &str, limit: u32) -> Result<Option<Permit>, AdmissionError> {
        let counter = self
            .counter(key)
            .ok_or_else(|| AdmissionError::Unavailable("counter state poisoned".into()))?;
        let taken = counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        Ok(taken.then(|| Permit::new(LocalSlot(counter))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_holds_and_dropped_permits_free_their_slot() {
        let a = LocalAdmission::new();
        let first = a.try_acquire("acme/f", 2).await.expect("ok");
        let second = a.try_acquire("acme/f", 2).await.expect("ok");
        assert!(first.is_some() && second.is_some());
        assert!(a.try_acquire("acme/f", 2).await.expect("ok").is_none());
        // Another function has its own count.
        assert!(a.try_acquire("acme/g", 1).await.expect("ok").is_some());
        drop(first);
        assert!(a.try_acquire("acme/f", 2).await.expect("ok").is_some());
    }
}
