//! A revisioned key-value log (kine's idea): every write appends an event
//! whose number is the global revision, which is also the Kubernetes
//! `resourceVersion` of the object it wrote.
//!
//! Backends implement [`Backend`]; everything a caller uses is on
//! [`Datastore`], including watch, which is built once here on top of two
//! backend primitives: an ordered read of the event log, and a broadcast of
//! committed events in revision order. A watcher subscribes first, catches up
//! from the log, then follows the broadcast, deduplicating by revision; if it
//! falls behind the broadcast it catches up from the log again. So nothing is
//! skipped or reordered, whatever the timing.

#[doc(hidden)]
pub mod conformance;
pub mod objects;
mod pgtls;
pub mod postgres;
pub use pgtls::TlsFiles;
mod queue;
pub mod sqlite;

use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

pub type Revision = i64;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Create,
    Update,
    Delete,
}

/// One committed write. For a delete, `value` is the last value the key had
/// and `revision` is the revision of the deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub revision: Revision,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DatastoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    #[error("conflict on {key}: expected revision {expected}, current is {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("revision {requested} has been compacted; the oldest available is {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("invalid key {0:?}: keys are printable ASCII starting with '/'")]
    InvalidKey(String),
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactStats {
    pub compacted_to: Revision,
    pub events_deleted: u64,
}

/// Revisions of history dropped per compaction transaction. Ten thousand
/// agents write 300,000 revisions between two compactions (one per
/// heartbeat); dropping them in one transaction held every write behind it
/// for over three seconds.
pub const COMPACT_CHUNK: u64 = 1_000;

/// What a storage engine provides. Writes must be linearizable and assign
/// revisions in commit order; `publish` must see committed events in that
/// same order.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Human description for logs and `rk3sctl status` (no credentials).
    fn describe(&self) -> String;
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Current values under `prefix` and the revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Revision, Vec<KeyValue>)>;
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision>;
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision>;
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)>;
    async fn current_revision(&self) -> Result<Revision>;
    async fn compacted_revision(&self) -> Result<Revision>;
    /// Events with revision > `after` under `prefix`, oldest first, at most
    /// `limit`. Fails with `Compacted` if `after` is older than the log.
    async fn events_after(&self, prefix: &str, after: Revision, limit: usize)
        -> Result<Vec<Event>>;
    /// Keep the newest `keep` revisions of history, dropping at most
    /// `at_most` of the oldest others in one transaction.
    async fn compact(&self, keep: u64, at_most: u64) -> Result<CompactStats>;
    /// Committed events, in revision order.
    fn subscribe(&self) -> broadcast::Receiver<Arc<Event>>;
}

/// The handle everything else holds.
#[derive(Clone)]
pub struct Datastore {
    backend: Arc<dyn Backend>,
    /// The last reason the backend could not be reached; cleared by the
    /// next operation that reaches it. Feeds readiness (`/v1-rk3s/readyz`).
    outage: Arc<std::sync::Mutex<Option<String>>>,
}

fn check_key(key: &str) -> Result<()> {
    if key.starts_with('/') && key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(DatastoreError::InvalidKey(key.to_string()))
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (keys are ASCII, so bumping the last byte is enough). `None`: no bound.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

const CATCH_UP_PAGE: usize = 1000;
const WATCH_BUFFER: usize = 256;

impl Datastore {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            outage: Arc::default(),
        }
    }

    /// Why the datastore is unreachable, if the last operation found it so.
    pub fn outage(&self) -> Option<String> {
        self.outage.lock().expect("lock").clone()
    }

    fn observe<T>(&self, r: Result<T>) -> Result<T> {
        let mut outage = self.outage.lock().expect("lock");
        match &r {
            Err(DatastoreError::Unavailable(m)) => {
                if outage.is_none() {
                    tracing::warn!(error = %m, "datastore unavailable");
                }
                *outage = Some(m.clone());
            }
            _ => {
                if outage.take().is_some() {
                    tracing::info!("datastore reachable again");
                }
            }
        }
        r
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let r = self.backend.get(key).await;
        self.observe(r)
    }

    pub async fn list(&self, prefix: &str) -> Result<(Revision, Vec<KeyValue>)> {
        check_key(prefix)?;
        let r = self.backend.list(prefix).await;
        self.observe(r)
    }

    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        check_key(key)?;
        let r = self.backend.create(key, value).await;
        self.observe(r)
    }

    pub async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        check_key(key)?;
        let r = self.backend.update(key, value, expected).await;
        self.observe(r)
    }

    pub async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Revision, KeyValue)> {
        check_key(key)?;
        let r = self.backend.delete(key, expected).await;
        self.observe(r)
    }

    pub async fn current_revision(&self) -> Result<Revision> {
        let r = self.backend.current_revision().await;
        self.observe(r)
    }

    pub async fn compacted_revision(&self) -> Result<Revision> {
        self.backend.compacted_revision().await
    }

    /// Keep the newest `keep` revisions of history, drop the rest, in
    /// transactions of at most [`COMPACT_CHUNK`] revisions so that writes
    /// queued meanwhile commit between them. What was older than `keep`
    /// when this started is dropped; later writes wait for the next run.
    pub async fn compact(&self, keep: u64) -> Result<CompactStats> {
        let goal = self.current_revision().await? - keep as i64;
        let mut total = CompactStats {
            compacted_to: 0,
            events_deleted: 0,
        };
        loop {
            let step = self.backend.compact(keep, COMPACT_CHUNK).await?;
            total.compacted_to = step.compacted_to;
            total.events_deleted += step.events_deleted;
            if step.compacted_to >= goal || step.events_deleted == 0 {
                return Ok(total);
            }
        }
    }

    /// Stream every event under `prefix` with revision > `after`, in order.
    /// A compacted `after` is refused up front; if history is compacted while
    /// a slow watcher is catching up, the stream ends with `Compacted`.
    pub async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        check_key(prefix)?;
        // Subscribe before the first read so no commit falls between them.
        let live = self.backend.subscribe();
        let first = self
            .backend
            .events_after(prefix, after, CATCH_UP_PAGE)
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let backend = self.backend.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let _ = pump(backend, prefix, after, first, live, tx).await;
        });
        Ok(Watch { rx })
    }
}

/// Deliver `first` (or, if `None`, what the log holds after `last`) and
/// every later page until a short page says the head is reached. `Err` ends
/// the watch (receiver gone, or a read error that was forwarded to it).
async fn catch_up(
    backend: &Arc<dyn Backend>,
    prefix: &str,
    last: &mut Revision,
    first: Option<Vec<Event>>,
    tx: &mpsc::Sender<Result<Event>>,
) -> std::result::Result<(), ()> {
    let mut page = first;
    loop {
        let events = match page.take() {
            Some(p) => p,
            None => match backend.events_after(prefix, *last, CATCH_UP_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return Err(());
                }
            },
        };
        let short = events.len() < CATCH_UP_PAGE;
        for ev in events {
            *last = ev.revision;
            tx.send(Ok(ev)).await.map_err(|_| ())?;
        }
        if short {
            return Ok(());
        }
    }
}

/// Ends when the receiver goes away or on an error it forwards.
async fn pump(
    backend: Arc<dyn Backend>,
    prefix: String,
    mut last: Revision,
    first: Vec<Event>,
    mut live: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Result<Event>>,
) -> std::result::Result<(), ()> {
    catch_up(&backend, &prefix, &mut last, Some(first), &tx).await?;
    loop {
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            msg = live.recv() => match msg {
                Ok(ev) => {
                    if ev.revision <= last || !ev.key.starts_with(&prefix) {
                        continue;
                    }
                    last = ev.revision;
                    tx.send(Ok((*ev).clone())).await.map_err(|_| ())?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the broadcast: read what we missed from the log.
                    catch_up(&backend, &prefix, &mut last, None, &tx).await?;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.send(Err(DatastoreError::Unavailable("datastore closed".into()))).await;
                    return Err(());
                }
            }
        }
    }
}

/// An ordered stream of events.
pub struct Watch {
    rx: mpsc::Receiver<Result<Event>>,
}

impl Watch {
    /// The next event; `None` when the datastore shut down.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

/// Keep an in-memory view of `prefix` in step with the datastore until
/// `stop`: `on_list` gets a whole snapshot (at the start, and again after a
/// compaction or a lost watch), `on_event` every change after it, in order.
/// Failed reads are retried once a second.
pub async fn follow(
    store: &Datastore,
    prefix: &str,
    stop: &tokio_util::sync::CancellationToken,
    mut on_list: impl FnMut(Revision, Vec<KeyValue>),
    mut on_event: impl FnMut(Event),
) {
    let pause = || tokio::time::sleep(std::time::Duration::from_secs(1));
    loop {
        let listed = tokio::select! {
            _ = stop.cancelled() => return,
            r = store.list(prefix) => r,
        };
        let (rev, kvs) = match listed {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(prefix, error = %e, "follow: list failed; retrying");
                tokio::select! { _ = stop.cancelled() => return, _ = pause() => continue }
            }
        };
        on_list(rev, kvs);
        let mut w = match store.watch(prefix, rev).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(prefix, error = %e, "follow: watch failed; listing again");
                tokio::select! { _ = stop.cancelled() => return, _ = pause() => continue }
            }
        };
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = w.next() => ev,
            };
            match ev {
                Some(Ok(ev)) => on_event(ev),
                // Compacted past this watcher, or the datastore went away.
                _ => break,
            }
        }
    }
}

/// Runs compaction forever (the caller spawns it and cancels the task).
pub async fn compaction_loop(store: Datastore, keep: u64, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match store.compact(keep).await {
            Ok(s) if s.events_deleted > 0 => {
                tracing::debug!(
                    compacted_to = s.compacted_to,
                    deleted = s.events_deleted,
                    "datastore compacted"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "datastore compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bumps_last_byte() {
        assert_eq!(
            prefix_end("/registry/nodes/").as_deref(),
            Some("/registry/nodes0")
        );
        assert_eq!(prefix_end("/a~").as_deref(), Some("/a\u{7f}"));
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("/registry/nodes/a").is_ok());
        assert!(check_key("registry").is_err());
        assert!(check_key("/has space").is_err());
        assert!(check_key("/ünïcode").is_err());
    }
}
