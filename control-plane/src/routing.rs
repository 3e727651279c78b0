//! Publishes the routing table: every change bumps the version stored in the database,
//! replaces the whole table held here (in-process routers follow it through a `watch`) and
//! sends what changed to the gRPC streams ([`Change`]), which cut snapshots and deltas into
//! bounded messages ([`updates`]).

use crate::store::Store;
use crate::workers::WorkerRegistry;
use reactor_proto::routing::{
    BoundContract, FunctionKey, FunctionRoute, KeySet, RoutingTable, RoutingUpdate, SigningKey,
    TokenGrant, WorkerEndpoint, WorkerSet,
};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, broadcast, watch};

/// What one publication changed, on the version before it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Change {
    pub base_version: u64,
    pub version: u64,
    pub functions: Vec<FunctionRoute>,
    pub removed_functions: Vec<FunctionKey>,
    pub tokens: Vec<TokenGrant>,
    pub removed_tokens: Vec<String>,
    pub workers: Option<Vec<WorkerEndpoint>>,
    pub signing_keys: Option<Vec<SigningKey>>,
}

/// Changes a slow stream may fall behind by before it is sent a snapshot instead.
const CHANGES_BUFFERED: usize = 256;

pub struct RoutingPublisher {
    store: Arc<dyn Store>,
    workers: Arc<WorkerRegistry>,
    tx: watch::Sender<Arc<RoutingTable>>,
    changes: broadcast::Sender<Arc<Change>>,
    // Serialises publications so that versions reach subscribers in order, and holds
    // the version of the last one.
    lock: Mutex<u64>,
    /// Publications asked for, and the most of them one publication has covered: a
    /// caller whose request a later publication read the state for returns with it.
    requested: std::sync::atomic::AtomicU64,
    covered: std::sync::atomic::AtomicU64,
}

impl RoutingPublisher {
    pub fn new(store: Arc<dyn Store>, workers: Arc<WorkerRegistry>) -> Self {
        let (tx, _) = watch::channel(Arc::new(RoutingTable::default()));
        let (changes, _) = broadcast::channel(CHANGES_BUFFERED);
        Self {
            store,
            workers,
            tx,
            changes,
            lock: Mutex::new(0),
            requested: std::sync::atomic::AtomicU64::new(0),
            covered: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.tx.subscribe()
    }

    /// The changes of every later publication, and the whole table as it is now (taken
    /// after subscribing, so that nothing falls between the two).
    pub fn subscribe_changes(&self) -> (broadcast::Receiver<Arc<Change>>, Arc<RoutingTable>) {
        let rx = self.changes.subscribe();
        (rx, self.current())
    }

    pub fn current(&self) -> Arc<RoutingTable> {
        self.tx.borrow().clone()
    }

    /// Builds the table at a new version, sends it and what changed; returns a version
    /// that holds every change the caller made before calling. Callers that arrive while
    /// a publication runs share the next one: a burst of changes (10,000 promotes) is a
    /// few tables, not one per change, each read whole from the store.
    pub async fn publish(&self) -> Result<u64, crate::store::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let ticket = self.requested.fetch_add(1, SeqCst) + 1;
        let mut last = self.lock.lock().await;
        if self.covered.load(SeqCst) >= ticket {
            // A publication that started after this call read the state after its change.
            return Ok(*last);
        }
        // Every request counted so far made its change before counting itself, so the
        // state read below holds them all.
        let covers = self.requested.load(SeqCst);
        let version = self.publish_locked().await?;
        *last = version;
        self.covered.store(covers, SeqCst);
        Ok(version)
    }

    /// Publishes a change to one function (created, deleted, promoted, its policy set):
    /// reads that function alone from the store and patches the table held here, where
    /// [`RoutingPublisher::publish`] reads every function and token (with 10,000
    /// functions, tens of milliseconds a time). The table holds the same routes either
    /// way (a new function is appended, where a whole read orders them by org and name).
    pub async fn publish_function(
        &self,
        org: &str,
        name: &str,
    ) -> Result<u64, crate::store::StoreError> {
        let mut last = self.lock.lock().await;
        let version = self.store.next_routing_version().await?;
        // The held table can be patched only if it is the last one published: nothing
        // published by this process yet, or another control plane on the same database
        // published in between (its changes are not in this table), and the whole table
        // is read again.
        let version = if *last != 0 && version == *last + 1 {
            self.publish_function_locked(version, org, name).await?
        } else {
            self.publish_at(version).await?
        };
        *last = version;
        Ok(version)
    }

    /// Catches up with a version `seen` published by another control plane on the same
    /// database (announced, or found by polling with `seen` = `u64::MAX`): when this
    /// process holds an older table, the whole state is read and published at the
    /// database's version, so that routers of every replica get the same versions. The
    /// state read after the version holds every change that version covers (a change is
    /// written before its version is taken).
    pub async fn follow(&self, seen: u64) -> Result<u64, crate::store::StoreError> {
        let mut last = self.lock.lock().await;
        if *last >= seen {
            return Ok(*last);
        }
        let Some(version) = self.store.routing_version().await? else {
            return Ok(*last);
        };
        if version <= *last {
            return Ok(*last);
        }
        let version = self.publish_at(version).await?;
        tracing::debug!(
            version,
            "routing table caught up with another control plane"
        );
        *last = version;
        Ok(version)
    }

    async fn publish_function_locked(
        &self,
        version: u64,
        org: &str,
        name: &str,
    ) -> Result<u64, crate::store::StoreError> {
        let route = match self.store.get_function(org, name).await? {
            Some(f) => {
                let live = match &f.live_deployment_id {
                    Some(id) => self.store.get_deployment(&f.org, &f.name, id).await?,
                    None => None,
                };
                let contracts = self
                    .store
                    .bound_contracts()
                    .await?
                    .into_iter()
                    .filter(|c| c.org == f.org && c.function.as_deref() == Some(f.name.as_str()))
                    .map(crate::convert::bound_contract)
                    .collect();
                Some(crate::convert::route(f, live, contracts))
            }
            None => None,
        };
        self.refresh_workers().await;
        let old = self.current();
        let mut table = (*old).clone();
        table.version = version;
        table.workers = self.workers.endpoints();
        let at = table
            .functions
            .iter()
            .position(|r| r.org == org && r.name == name);
        let mut change = Change {
            base_version: old.version,
            version,
            workers: (old.workers != table.workers).then(|| table.workers.clone()),
            ..Change::default()
        };
        match (at, route) {
            (Some(i), Some(route)) => {
                if table.functions[i] != route {
                    change.functions.push(route.clone());
                    table.functions[i] = route;
                }
            }
            (None, Some(route)) => {
                change.functions.push(route.clone());
                table.functions.push(route);
            }
            (Some(i), None) => {
                table.functions.remove(i);
                change.removed_functions.push(FunctionKey {
                    org: org.to_string(),
                    name: name.to_string(),
                });
            }
            (None, None) => {}
        }
        tracing::debug!(
            version,
            functions = table.functions.len(),
            changed_functions = change.functions.len() + change.removed_functions.len(),
            "routing table published (one function)"
        );
        self.tx.send_replace(Arc::new(table));
        let _ = self.changes.send(Arc::new(change));
        Ok(version)
    }

    async fn publish_locked(&self) -> Result<u64, crate::store::StoreError> {
        let version = self.store.next_routing_version().await?;
        self.publish_at(version).await
    }

    /// Where the database keeps the workers (PostgreSQL), reads them first: a worker
    /// registered through another replica is in this replica's table at the same version.
    async fn refresh_workers(&self) {
        match self.store.live_workers(self.workers.timing().ttl).await {
            Ok(Some(rows)) => {
                self.workers.replace(&rows);
            }
            Ok(None) => {}
            // The copy held stays: routers keep the workers they had.
            Err(e) => tracing::warn!(error = %e, "reading the registered workers"),
        }
    }

    /// Reads every function and token and publishes them at `version`.
    async fn publish_at(&self, version: u64) -> Result<u64, crate::store::StoreError> {
        self.refresh_workers().await;
        let (functions, tokens) = self.store.routing_snapshot().await?;
        let mut bound: HashMap<(String, String), Vec<BoundContract>> = HashMap::new();
        for c in self.store.bound_contracts().await? {
            if let Some(function) = c.function.clone() {
                bound
                    .entry((c.org.clone(), function))
                    .or_default()
                    .push(crate::convert::bound_contract(c));
            }
        }
        let table = RoutingTable {
            version,
            functions: functions
                .into_iter()
                .map(|(f, live)| {
                    let contracts = bound
                        .remove(&(f.org.clone(), f.name.clone()))
                        .unwrap_or_default();
                    crate::convert::route(f, live, contracts)
                })
                .collect(),
            tokens: tokens
                .into_iter()
                .map(crate::convert::grant)
                .chain(
                    self.store
                        .accounts()
                        .all_memberships()
                        .await?
                        .into_iter()
                        .map(crate::convert::membership_grant),
                )
                .collect(),
            workers: self.workers.endpoints(),
            signing_keys: self
                .store
                .accounts()
                .signing_keys()
                .await?
                .into_iter()
                .map(|k| SigningKey {
                    kid: k.id,
                    public_key: k.public_key,
                })
                .collect(),
        };
        let change = diff(&self.current(), &table);
        tracing::debug!(
            version,
            functions = table.functions.len(),
            tokens = table.tokens.len(),
            changed_functions = change.functions.len() + change.removed_functions.len(),
            changed_tokens = change.tokens.len() + change.removed_tokens.len(),
            "routing table published"
        );
        self.tx.send_replace(Arc::new(table));
        // No stream listening is fine: a stream that starts later sends a snapshot.
        let _ = self.changes.send(Arc::new(change));
        Ok(version)
    }
}

/// What turns `old` into `new`.
pub fn diff(old: &RoutingTable, new: &RoutingTable) -> Change {
    let old_functions: HashMap<(&str, &str), &FunctionRoute> = old
        .functions
        .iter()
        .map(|f| ((f.org.as_str(), f.name.as_str()), f))
        .collect();
    let new_functions: HashMap<(&str, &str), &FunctionRoute> = new
        .functions
        .iter()
        .map(|f| ((f.org.as_str(), f.name.as_str()), f))
        .collect();
    let old_tokens: HashMap<&str, &TokenGrant> = old
        .tokens
        .iter()
        .map(|t| (t.token_id.as_str(), t))
        .collect();
    let new_tokens: HashMap<&str, &TokenGrant> = new
        .tokens
        .iter()
        .map(|t| (t.token_id.as_str(), t))
        .collect();
    Change {
        base_version: old.version,
        version: new.version,
        functions: new
            .functions
            .iter()
            .filter(|f| old_functions.get(&(f.org.as_str(), f.name.as_str())) != Some(f))
            .cloned()
            .collect(),
        removed_functions: old
            .functions
            .iter()
            .filter(|f| !new_functions.contains_key(&(f.org.as_str(), f.name.as_str())))
            .map(|f| FunctionKey {
                org: f.org.clone(),
                name: f.name.clone(),
            })
            .collect(),
        tokens: new
            .tokens
            .iter()
            .filter(|t| old_tokens.get(t.token_id.as_str()) != Some(t))
            .cloned()
            .collect(),
        removed_tokens: old
            .tokens
            .iter()
            .filter(|t| !new_tokens.contains_key(t.token_id.as_str()))
            .map(|t| t.token_id.clone())
            .collect(),
        workers: (old.workers != new.workers).then(|| new.workers.clone()),
        signing_keys: (old.signing_keys != new.signing_keys).then(|| new.signing_keys.clone()),
    }
}

/// Target size of one stream message; an entry is never split, so a message may exceed
/// it by one entry (bounded by the per-org quotas).
pub const UPDATE_TARGET_BYTES: usize = 1 << 20;

/// The messages of one version, cut lazily (a snapshot of a large table is never held
/// twice): removals first, then additions, each message about [`UPDATE_TARGET_BYTES`].
pub struct Updates<'a> {
    version: u64,
    base_version: u64,
    reset: bool,
    workers: Option<&'a [WorkerEndpoint]>,
    signing_keys: Option<&'a [SigningKey]>,
    removed_functions: &'a [FunctionKey],
    removed_tokens: &'a [String],
    functions: &'a [FunctionRoute],
    tokens: &'a [TokenGrant],
    first: bool,
    done: bool,
}

/// A delta: what `change` did, on its base version.
pub fn delta(change: &Change) -> Updates<'_> {
    Updates {
        version: change.version,
        base_version: change.base_version,
        reset: false,
        workers: change.workers.as_deref(),
        signing_keys: change.signing_keys.as_deref(),
        removed_functions: &change.removed_functions,
        removed_tokens: &change.removed_tokens,
        functions: &change.functions,
        tokens: &change.tokens,
        first: true,
        done: false,
    }
}

/// A snapshot: the whole `table`.
pub fn snapshot(table: &RoutingTable) -> Updates<'_> {
    Updates {
        version: table.version,
        base_version: 0,
        reset: true,
        workers: Some(&table.workers),
        signing_keys: Some(&table.signing_keys),
        removed_functions: &[],
        removed_tokens: &[],
        functions: &table.functions,
        tokens: &table.tokens,
        first: true,
        done: false,
    }
}

/// Moves items from the front of `from` into `to` while `size` stays under the target
/// (always at least one when `size` is 0).
fn take<T: Clone>(from: &mut &[T], to: &mut Vec<T>, size: &mut usize, len: impl Fn(&T) -> usize) {
    while let Some((item, rest)) = from.split_first() {
        let add = len(item) + 8;
        if *size > 0 && *size + add > UPDATE_TARGET_BYTES {
            return;
        }
        *size += add;
        to.push(item.clone());
        *from = rest;
    }
}

impl Iterator for Updates<'_> {
    type Item = RoutingUpdate;

    fn next(&mut self) -> Option<RoutingUpdate> {
        use prost::Message;
        if self.done {
            return None;
        }
        let mut u = RoutingUpdate {
            version: self.version,
            base_version: self.base_version,
            ..Default::default()
        };
        let mut size = 0;
        if self.first {
            self.first = false;
            u.reset = self.reset;
            u.workers = self.workers.map(|w| WorkerSet {
                workers: w.to_vec(),
            });
            u.signing_keys = self.signing_keys.map(|k| KeySet { keys: k.to_vec() });
            size = u.encoded_len();
        }
        take(
            &mut self.removed_functions,
            &mut u.removed_functions,
            &mut size,
            Message::encoded_len,
        );
        take(
            &mut self.removed_tokens,
            &mut u.removed_tokens,
            &mut size,
            String::len,
        );
        take(
            &mut self.functions,
            &mut u.functions,
            &mut size,
            Message::encoded_len,
        );
        take(
            &mut self.tokens,
            &mut u.tokens,
            &mut size,
            Message::encoded_len,
        );
        let rest = self.removed_functions.len()
            + self.removed_tokens.len()
            + self.functions.len()
            + self.tokens.len();
        if rest == 0 {
            u.last = true;
            self.done = true;
        }
        Some(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor_proto::client::{Assembled, Pending};

    fn function(name: &str) -> crate::store::FunctionRecord {
        crate::store::FunctionRecord {
            org: "o".into(),
            name: name.into(),
            runtime: reactor_api::Runtime::Wasm,
            live_deployment_id: None,
            created_at: "2026-12-07T00:00:00Z".into(),
            policy: None,
        }
    }

    async fn store_with_org(dir: &std::path::Path) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(
            crate::store::SqlStore::open(&dir.join("db.sqlite"))
                .await
                .expect("sqlite store"),
        );
        store
            .create_org(&crate::store::OrgRecord {
                name: "o".into(),
                platform: false,
                created_at: "2026-12-07T00:00:00Z".into(),
            })
            .await
            .expect("org");
        store
    }

    fn sorted(t: &RoutingTable) -> Vec<FunctionRoute> {
        let mut f = t.functions.clone();
        f.sort_by(|a, b| (&a.org, &a.name).cmp(&(&b.org, &b.name)));
        f
    }

    /// A table patched one function at a time holds what a whole read holds; when
    /// another control plane published in between, the patch reads the whole table.
    #[tokio::test]
    async fn publishing_one_function_gives_the_table_a_whole_read_gives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_org(dir.path()).await;
        let workers = Arc::new(WorkerRegistry::new(Default::default()));
        let publisher = RoutingPublisher::new(store.clone(), workers.clone());
        for f in ["a", "b"] {
            store.create_function(&function(f)).await.expect("create");
        }
        publisher.publish().await.expect("publish");
        store.create_function(&function("c")).await.expect("create");
        publisher.publish_function("o", "c").await.expect("c");
        store
            .set_function_policy("o", "a", Some(r#"{"rules":[]}"#))
            .await
            .expect("policy");
        publisher.publish_function("o", "a").await.expect("a");
        assert!(store.delete_function("o", "b").await.expect("delete"));
        let version = publisher.publish_function("o", "b").await.expect("b");
        let whole = RoutingPublisher::new(store.clone(), workers.clone());
        whole.publish().await.expect("whole");
        assert_eq!(sorted(&publisher.current()), sorted(&whole.current()));
        assert_eq!(publisher.current().version, version);

        // `whole` plays another control plane: it published (and now adds `d`) since.
        store.create_function(&function("d")).await.expect("create");
        whole.publish_function("o", "d").await.expect("d");
        store
            .set_function_policy("o", "c", Some(r#"{"rules":[]}"#))
            .await
            .expect("policy");
        publisher.publish_function("o", "c").await.expect("c again");
        assert!(
            publisher.current().functions.iter().any(|f| f.name == "d"),
            "the other control plane's function is in the table"
        );
        assert_eq!(
            sorted(&publisher.current()),
            sorted(&{
                let again = RoutingPublisher::new(store.clone(), workers);
                again.publish().await.expect("again");
                (*again.current()).clone()
            })
        );
    }

    /// Callers that publish at once may share a publication, but each gets a version
    /// whose table holds the change it made before calling.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishes_each_get_a_table_with_their_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_org(dir.path()).await;
        let publisher = Arc::new(RoutingPublisher::new(
            store.clone(),
            Arc::new(WorkerRegistry::new(Default::default())),
        ));
        let (mut changes, _) = publisher.subscribe_changes();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (store, publisher) = (store.clone(), publisher.clone());
                tokio::spawn(async move {
                    let name = format!("f{i}");
                    store
                        .create_function(&function(&name))
                        .await
                        .expect("function");
                    (name, publisher.publish().await.expect("publish"))
                })
            })
            .collect();
        let mut returned = Vec::new();
        for t in tasks {
            returned.push(t.await.expect("task"));
        }
        // The functions each version holds, replayed from the changes in order.
        let mut held = std::collections::HashSet::new();
        let mut at: HashMap<u64, std::collections::HashSet<String>> = HashMap::new();
        let last = returned.iter().map(|(_, v)| *v).max().unwrap_or(0);
        while at.keys().max().copied().unwrap_or(0) < last {
            let change = changes.recv().await.expect("a change");
            held.extend(change.functions.iter().map(|f| f.name.clone()));
            at.insert(change.version, held.clone());
        }
        for (name, version) in &returned {
            assert!(
                at.get(version).is_some_and(|fs| fs.contains(name)),
                "{name} published at version {version}, whose table lacks it"
            );
        }
    }

    fn route(org: &str, name: &str, policy_bytes: usize) -> FunctionRoute {
        FunctionRoute {
            org: org.into(),
            name: name.into(),
            runtime: "wasm".into(),
            live: None,
            policy: (policy_bytes > 0).then(|| "x".repeat(policy_bytes)),
            contracts: Vec::new(),
        }
    }

    fn grant(id: &str) -> TokenGrant {
        TokenGrant {
            token_id: id.into(),
            sha256: format!("sha-{id}"),
            org: "o".into(),
            role: "invoker".into(),
            user_id: String::new(),
        }
    }

    fn apply_all(held: &mut Assembled, updates: Updates<'_>) -> usize {
        let mut pending = Pending::default();
        let mut n = 0;
        for u in updates {
            use prost::Message;
            assert!(
                u.encoded_len() <= UPDATE_TARGET_BYTES + 300_000,
                "a message of {} bytes",
                u.encoded_len()
            );
            n += 1;
            let last = u.last;
            let done = pending.add(u, held).expect("valid stream");
            assert_eq!(done, last, "a version completes on its last message only");
        }
        n
    }

    #[test]
    fn a_large_table_is_cut_into_bounded_messages_and_deltas_rebuild_it() {
        // 10 MiB of policies: past the 4 MiB a single message could carry.
        let mut v1 = RoutingTable {
            version: 1,
            functions: (0..40)
                .map(|i| route("a", &format!("f{i}"), 256 << 10))
                .collect(),
            tokens: (0..1000).map(|i| grant(&format!("t{i}"))).collect(),
            workers: vec![],
            signing_keys: vec![],
        };
        let mut held = Assembled::default();
        let messages = apply_all(&mut held, snapshot(&v1));
        assert!(messages >= 10, "{messages} messages");
        assert_eq!(held.table.version, 1);
        assert_eq!(held.table.functions.len(), 40);
        assert_eq!(held.table.tokens.len(), 1000);

        // A change: one function changed, one removed, one added; a token revoked.
        let mut v2 = v1.clone();
        v2.version = 5;
        v2.functions[3].runtime = "bun".into();
        v2.functions.remove(7);
        v2.functions.push(route("b", "new", 0));
        v2.tokens.retain(|t| t.token_id != "t10");
        v2.workers.push(WorkerEndpoint {
            worker_id: "w".into(),
            runtime: "wasm".into(),
            url: "http://w:1".into(),
        });
        let change = diff(&v1, &v2);
        assert_eq!(change.functions.len(), 2);
        assert_eq!(change.removed_functions.len(), 1);
        assert_eq!(change.removed_tokens, vec!["t10".to_string()]);
        assert_eq!(apply_all(&mut held, delta(&change)), 1);
        let key = |t: &RoutingTable| {
            let mut f: Vec<_> = t
                .functions
                .iter()
                .map(|f| (f.org.clone(), f.name.clone(), f.runtime.clone()))
                .collect();
            f.sort();
            let mut k: Vec<_> = t.tokens.iter().map(|t| t.token_id.clone()).collect();
            k.sort();
            (t.version, f, k, t.workers.clone())
        };
        assert_eq!(key(&held.table), key(&v2));

        // A delta on another version than the one held is refused (reconnect, snapshot).
        v1.version = 9;
        let stale = diff(&v1, &v2);
        let mut pending = Pending::default();
        let err = delta(&stale)
            .map(|u| pending.add(u, &mut held))
            .find_map(Result::err)
            .expect("refused");
        assert!(err.contains("version"), "{err}");
    }
}
