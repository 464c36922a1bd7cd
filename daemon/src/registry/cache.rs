//! An in-process watch cache (an informer over everything): one list of
//! `/registry/`, then one datastore watch, kept as a map by key with an
//! index of owners. Controllers read it instead of listing the datastore
//! and subscribe to its events.

use crate::datastore::{EventKind, Revision};
use crate::objects::Objects;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One change, after the cache applied it. `object` is the new value (the
/// last one for a delete).
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: EventKind,
    pub key: String,
    /// Shared: every subscriber gets the same object, not a copy.
    pub object: Arc<Value>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Arc<Value>>,
    by_uid: HashMap<String, String>,
    /// owner uid → keys of objects naming it in ownerReferences.
    dependents: HashMap<String, HashSet<String>>,
    revision: Revision,
}

fn uid(v: &Value) -> Option<&str> {
    v.pointer("/metadata/uid").and_then(Value::as_str)
}

pub fn owner_uids(v: &Value) -> Vec<String> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|o| o["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.objects.remove(key) {
            if let Some(u) = uid(&old) {
                self.by_uid.remove(u);
            }
            for o in owner_uids(&old) {
                if let Some(s) = self.dependents.get_mut(&o) {
                    s.remove(key);
                    if s.is_empty() {
                        self.dependents.remove(&o);
                    }
                }
            }
        }
    }

    fn insert(&mut self, key: String, v: Arc<Value>) {
        self.remove(&key);
        if let Some(u) = uid(&v) {
            self.by_uid.insert(u.to_string(), key.clone());
        }
        for o in owner_uids(&v) {
            self.dependents.entry(o).or_default().insert(key.clone());
        }
        self.objects.insert(key, v);
    }
}

pub struct Cache {
    inner: RwLock<Inner>,
    tx: broadcast::Sender<Change>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            tx: broadcast::channel(4096).0,
            synced: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Cache {
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }

    /// Wait until the first full list is in.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.inner
            .read()
            .expect("cache lock")
            .objects
            .get(key)
            .map(|v| (**v).clone())
    }

    pub fn exists_uid(&self, uid: &str) -> bool {
        self.inner
            .read()
            .expect("cache lock")
            .by_uid
            .contains_key(uid)
    }

    /// The key and object of `uid`, shared: controllers ask this of every
    /// child's change.
    pub fn by_uid(&self, uid: &str) -> Option<(String, Arc<Value>)> {
        let inner = self.inner.read().expect("cache lock");
        let key = inner.by_uid.get(uid)?;
        Some((key.clone(), inner.objects.get(key)?.clone()))
    }

    /// Objects whose ownerReferences name `owner_uid` (shared, not copied:
    /// controllers ask this of every pod change).
    pub fn dependents(&self, owner_uid: &str) -> Vec<(String, Arc<Value>)> {
        let inner = self.inner.read().expect("cache lock");
        inner
            .dependents
            .get(owner_uid)
            .into_iter()
            .flatten()
            .filter_map(|k| Some((k.clone(), inner.objects.get(k)?.clone())))
            .collect()
    }

    /// Keys and objects under `prefix`, shared rather than copied: with ten
    /// thousand Nodes a deep copy per pass held the lock for tens of
    /// milliseconds and dominated the leader's CPU.
    pub fn list(&self, prefix: &str) -> Vec<(String, Arc<Value>)> {
        self.list_where(prefix, |_| true)
    }

    /// Keys and objects under `prefix` for which `keep` holds.
    pub fn list_where(
        &self,
        prefix: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<(String, Arc<Value>)> {
        let inner = self.inner.read().expect("cache lock");
        inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, v)| keep(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn load(&self, rev: Revision, items: Vec<(String, Value)>) {
        let mut inner = self.inner.write().expect("cache lock");
        *inner = Inner::default();
        for (k, v) in items {
            inner.insert(k, Arc::new(v));
        }
        inner.revision = rev;
    }

    /// Fill and follow the datastore until `stop`; re-lists after a
    /// compaction or a lost watch.
    pub async fn run(&self, objects: Objects, stop: CancellationToken) {
        let with_rv = |bytes: &[u8], rev: Revision| {
            let mut v: Value = serde_json::from_slice(bytes).ok()?;
            v["metadata"]["resourceVersion"] = Value::String(rev.to_string());
            Some(v)
        };
        crate::datastore::follow(
            &objects.store,
            "/registry/",
            &stop,
            |rev, kvs| {
                let items = kvs
                    .into_iter()
                    .filter_map(|kv| Some((kv.key, with_rv(&kv.value, kv.mod_revision)?)))
                    .collect();
                self.load(rev, items);
                self.synced.send_replace(true);
            },
            |ev| {
                let Some(v) = with_rv(&ev.value, ev.revision).map(Arc::new) else {
                    return;
                };
                {
                    let mut inner = self.inner.write().expect("cache lock");
                    match ev.kind {
                        EventKind::Delete => inner.remove(&ev.key),
                        _ => inner.insert(ev.key.clone(), v.clone()),
                    }
                    inner.revision = ev.revision;
                }
                let _ = self.tx.send(Change {
                    kind: ev.kind,
                    key: ev.key,
                    object: v,
                });
            },
        )
        .await
    }
}
