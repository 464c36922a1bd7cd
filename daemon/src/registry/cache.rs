//! An in-process watch cache (an informer over everything): one list of
//! `/registry/`, then one datastore watch, kept as a map by key with an
//! index of owners. Controllers read it instead of listing the datastore
//! and subscribe to its events.

use crate::datastore::objects::Objects;
use crate::datastore::{EventKind, Revision};
use crate::registry::store::{FOREGROUND, ORPHAN};
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

/// Prefixes whose objects are many and seldom read whole: one Node, Lease
/// and password Secret per node, and Events. They are kept as their stored
/// JSON and parsed when read. A parsed `Value` costs about ten times its
/// JSON (every object is a B-tree node of some 640 bytes however few keys
/// it has), which at ten thousand nodes was most of the server's memory per
/// agent. Subscribers still get every change parsed.
const COMPACT: &[&str] = &[
    "/registry/nodes/",
    "/registry/leases/",
    "/registry/secrets/",
    "/registry/events/",
];

fn compact(key: &str) -> bool {
    COMPACT.iter().any(|p| key.starts_with(p))
}

/// Stored JSON as the cache serves it: with `resourceVersion` set.
fn with_rv(bytes: &[u8], rev: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    v["metadata"]["resourceVersion"] = Value::String(rev.to_string());
    Some(v)
}

enum Stored {
    Tree(Arc<Value>),
    /// The stored JSON and its revision (see [`COMPACT`]).
    Json(Box<[u8]>, Revision),
}

struct Entry {
    stored: Stored,
    /// Kept beside the object so that replacing or removing a compact
    /// entry does not parse it again.
    uid: Option<Box<str>>,
    owners: Vec<String>,
    deletion: Deletion,
}

/// Where an object stands in its deletion, kept beside it so that the
/// garbage collector's questions (is this owner going away in the
/// foreground? which objects need it at all?) do not parse compact entries.
/// At ten thousand nodes its resync parsed every Node, Lease and node
/// password Secret every 30 s, and every Lease renewal parsed its Node.
/// The garbage collector reads the same through [`Deletion::of`], so the
/// cache's answers and the collector's own checks cannot drift apart.
#[derive(Clone, Copy, Debug)]
pub struct Deletion {
    /// `metadata.deletionTimestamp` is set.
    deleting: bool,
    /// Finalizer `foregroundDeletion`.
    foreground: bool,
    /// Finalizer `orphan`.
    orphan: bool,
}

impl Deletion {
    pub fn of(v: &Value) -> Self {
        let has = |f: &str| {
            v.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x == f))
        };
        Self {
            deleting: v.pointer("/metadata/deletionTimestamp").is_some(),
            foreground: has(FOREGROUND),
            orphan: has(ORPHAN),
        }
    }

    /// Being deleted and held by a finalizer the garbage collector owns.
    pub fn held_for_collector(self) -> bool {
        self.deleting && (self.foreground || self.orphan)
    }

    /// Being deleted in the foreground: its dependents go first.
    pub fn in_foreground(self) -> bool {
        self.deleting && self.foreground
    }
}

impl Entry {
    fn new(key: &str, bytes: &[u8], rev: Revision, v: &Arc<Value>) -> Self {
        Self {
            stored: if compact(key) {
                Stored::Json(bytes.into(), rev)
            } else {
                Stored::Tree(v.clone())
            },
            uid: uid(v).map(Into::into),
            owners: owner_uids(v),
            deletion: Deletion::of(v),
        }
    }

    /// The object, shared for parsed kinds and parsed afresh for compact
    /// ones (None only if stored JSON stopped parsing, which the datastore
    /// rules out).
    fn value(&self) -> Option<Arc<Value>> {
        match &self.stored {
            Stored::Tree(v) => Some(v.clone()),
            Stored::Json(b, rev) => with_rv(b, *rev).map(Arc::new),
        }
    }
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Entry>,
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
            if let Some(u) = &old.uid {
                self.by_uid.remove(&**u);
            }
            for o in &old.owners {
                if let Some(s) = self.dependents.get_mut(o) {
                    s.remove(key);
                    if s.is_empty() {
                        self.dependents.remove(o);
                    }
                }
            }
        }
    }

    fn insert(&mut self, key: String, e: Entry) {
        self.remove(&key);
        if let Some(u) = &e.uid {
            self.by_uid.insert(u.to_string(), key.clone());
        }
        for o in &e.owners {
            self.dependents
                .entry(o.clone())
                .or_default()
                .insert(key.clone());
        }
        self.objects.insert(key, e);
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

    /// A cache with nothing to list, ready at once (tests of its users).
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
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
            .and_then(Entry::value)
            // A compact entry was just parsed for us: take it, do not copy.
            .map(|v| Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone()))
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
        Some((key.clone(), inner.objects.get(key)?.value()?))
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
            .filter_map(|k| Some((k.clone(), inner.objects.get(k)?.value()?)))
            .collect()
    }

    /// Whether the object `uid` is being deleted in the foreground, read from
    /// the index (no parse).
    pub fn in_foreground_deletion(&self, uid: &str) -> bool {
        let inner = self.inner.read().expect("cache lock");
        inner
            .by_uid
            .get(uid)
            .and_then(|k| inner.objects.get(k))
            .is_some_and(|e| e.deletion.in_foreground())
    }

    /// The objects the garbage collector has something to do for: those
    /// held by its finalizers, and live dependents with an owner missing
    /// from the cache or being deleted in the foreground. Decided from the
    /// indexes, so only these few are parsed; a resync over ten thousand
    /// nodes (each with a Lease it owns) finds none.
    pub fn collector_work(&self) -> Vec<(String, Arc<Value>)> {
        let inner = self.inner.read().expect("cache lock");
        let needs_owner = |o: &String| match inner.by_uid.get(o) {
            None => true,
            Some(k) => inner
                .objects
                .get(k)
                .is_some_and(|e| e.deletion.in_foreground()),
        };
        inner
            .objects
            .iter()
            .filter(|(_, e)| {
                e.deletion.held_for_collector()
                    || (!e.deletion.deleting && e.owners.iter().any(needs_owner))
            })
            .filter_map(|(k, e)| Some((k.clone(), e.value()?)))
            .collect()
    }

    /// Keys and objects under `prefix`, shared rather than copied: with ten
    /// thousand Nodes a deep copy per pass held the lock for tens of
    /// milliseconds and dominated the leader's CPU.
    pub fn list(&self, prefix: &str) -> Vec<(String, Arc<Value>)> {
        self.list_where(prefix, |_| true)
    }

    /// Objects under `prefix` that may contain the JSON string `needle`:
    /// compact entries whose stored bytes lack it are skipped unparsed, the
    /// rest are returned for the caller to check. The token controller's
    /// resync asks this for service-account token Secrets, which would
    /// otherwise parse every node's password Secret every 30 s.
    pub fn list_mentioning(&self, prefix: &str, needle: &str) -> Vec<(String, Arc<Value>)> {
        let quoted = serde_json::to_string(needle).expect("a string serializes");
        let finder = memchr::memmem::Finder::new(quoted.as_bytes());
        let inner = self.inner.read().expect("cache lock");
        inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| match &e.stored {
                Stored::Json(b, _) => finder.find(b).is_some(),
                Stored::Tree(_) => true,
            })
            .filter_map(|(k, e)| Some((k.clone(), e.value()?)))
            .collect()
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
            .filter_map(|(k, e)| Some((k, e.value()?)))
            .filter(|(_, v)| keep(v))
            .map(|(k, v)| (k.clone(), v))
            .collect()
    }

    fn load(&self, rev: Revision, items: Vec<(String, Entry)>) {
        let mut inner = self.inner.write().expect("cache lock");
        *inner = Inner::default();
        for (k, e) in items {
            inner.insert(k, e);
        }
        inner.revision = rev;
    }

    /// Fill and follow the datastore until `stop`; re-lists after a
    /// compaction or a lost watch.
    pub async fn run(&self, objects: Objects, stop: CancellationToken) {
        crate::datastore::follow(
            &objects.store,
            "/registry/",
            &stop,
            |rev, kvs| {
                let items = kvs
                    .into_iter()
                    .filter_map(|kv| {
                        let v = Arc::new(with_rv(&kv.value, kv.mod_revision)?);
                        let e = Entry::new(&kv.key, &kv.value, kv.mod_revision, &v);
                        Some((kv.key, e))
                    })
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
                        _ => {
                            let e = Entry::new(&ev.key, &ev.value, ev.revision, &v);
                            inner.insert(ev.key.clone(), e)
                        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, v: Value, rev: Revision) -> Entry {
        let bytes = serde_json::to_vec(&v).unwrap();
        Entry::new(key, &bytes, rev, &Arc::new(v))
    }

    #[test]
    fn compact_kinds_read_back_as_stored_and_keep_their_indexes() {
        let cache = Cache::default();
        let node =
            json!({"metadata": {"name": "a", "uid": "n1"}, "spec": {"podCIDR": "10.42.0.0/24"}});
        let lease = json!({"metadata": {"name": "a", "uid": "l1",
            "ownerReferences": [{"uid": "n1", "kind": "Node", "name": "a"}]}});
        let pod = json!({"metadata": {"name": "p", "uid": "p1"}});
        cache.load(
            9,
            vec![
                (
                    "/registry/nodes/a".into(),
                    entry("/registry/nodes/a", node, 7),
                ),
                (
                    "/registry/leases/kube-node-lease/a".into(),
                    entry("/registry/leases/kube-node-lease/a", lease, 8),
                ),
                (
                    "/registry/pods/d/p".into(),
                    entry("/registry/pods/d/p", pod, 9),
                ),
            ],
        );
        {
            let inner = cache.inner.read().unwrap();
            assert!(matches!(
                inner.objects["/registry/nodes/a"].stored,
                Stored::Json(..)
            ));
            assert!(matches!(
                inner.objects["/registry/pods/d/p"].stored,
                Stored::Tree(_)
            ));
        }
        let n = cache.get("/registry/nodes/a").unwrap();
        assert_eq!(n["spec"]["podCIDR"], "10.42.0.0/24");
        assert_eq!(n["metadata"]["resourceVersion"], "7");
        let (k, _) = cache.by_uid("n1").unwrap();
        assert_eq!(k, "/registry/nodes/a");
        let deps = cache.dependents("n1");
        assert_eq!(deps.len(), 1);
        assert_eq!(deps[0].1["metadata"]["resourceVersion"], "8");
        assert_eq!(cache.list("/registry/").len(), 3);
        // Removing a compact entry clears its indexes without parsing it.
        cache
            .inner
            .write()
            .unwrap()
            .remove("/registry/leases/kube-node-lease/a");
        assert!(cache.dependents("n1").is_empty());
        assert!(!cache.exists_uid("l1"));
    }

    fn keyed(key: &str, v: Value) -> (String, Entry) {
        (key.to_string(), entry(key, v, 1))
    }

    #[test]
    fn collector_work_is_only_what_needs_the_collector() {
        let cache = Cache::default();
        let owned_by = |name: &str, uid: &str, owner: &str| {
            json!({"metadata": {"name": name, "uid": uid,
                "ownerReferences": [{"uid": owner, "kind": "Node", "name": owner}]}})
        };
        let going = |name: &str, uid: &str, finalizer: &str| {
            json!({"metadata": {"name": name, "uid": uid,
                "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [finalizer]}})
        };
        cache.load(
            1,
            vec![
                keyed(
                    "/registry/nodes/a",
                    json!({"metadata": {"name": "a", "uid": "n1"}}),
                ),
                // Its owner is there and staying: nothing to do.
                keyed("/registry/leases/l/a", owned_by("a", "l1", "n1")),
                // Its owner is gone (from the cache's view).
                keyed("/registry/leases/l/b", owned_by("b", "l2", "n-gone")),
                // Its owner is going in the foreground, so it goes first.
                keyed("/registry/nodes/c", going("c", "n3", FOREGROUND)),
                keyed("/registry/leases/l/c", owned_by("c", "l3", "n3")),
                // Held by the orphan finalizer: the collector must release it.
                keyed("/registry/nodes/d", going("d", "n4", ORPHAN)),
                // Being deleted with someone else's finalizer: not ours.
                keyed("/registry/nodes/e", going("e", "n5", "example.com/x")),
            ],
        );
        let mut keys: Vec<String> = cache.collector_work().into_iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "/registry/leases/l/b",
                "/registry/leases/l/c",
                "/registry/nodes/c",
                "/registry/nodes/d"
            ]
        );
        assert!(cache.in_foreground_deletion("n3"));
        assert!(!cache.in_foreground_deletion("n1"));
        assert!(!cache.in_foreground_deletion("n4"));
        assert!(!cache.in_foreground_deletion("n-gone"));
    }

    #[test]
    fn list_mentioning_skips_compact_entries_without_the_string() {
        let cache = Cache::default();
        let secret =
            |name: &str, ty: &str| json!({"metadata": {"name": name, "uid": name}, "type": ty});
        cache.load(
            1,
            vec![
                keyed(
                    "/registry/secrets/a/t",
                    secret("t", "kubernetes.io/service-account-token"),
                ),
                keyed("/registry/secrets/a/p", secret("p", "Opaque")),
                keyed(
                    "/registry/configmaps/a/t",
                    secret("c", "kubernetes.io/service-account-token"),
                ),
            ],
        );
        let found =
            cache.list_mentioning("/registry/secrets/", "kubernetes.io/service-account-token");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "/registry/secrets/a/t");
        assert_eq!(found[0].1["metadata"]["resourceVersion"], "1");
    }
}
