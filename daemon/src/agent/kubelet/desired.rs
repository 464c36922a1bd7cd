//! The pods bound to this node as the kubelet wants them: listed and
//! watched from the API (`pods?fieldSelector=spec.nodeName=<node>`), with
//! the ones new or changed in what the kubelet acts on marked for a sync.

use crate::agent::apiclient::Api;
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The pods bound to this node, by uid, as the watch last saw them.
#[derive(Default)]
pub struct Desired {
    /// Shared with the syncs: they take references, not copies of every
    /// pod.
    pub pods: Mutex<HashMap<String, Arc<Pod>>>,
    /// Pods new to the kubelet or changed in what it acts on since it
    /// last looked, synced without waiting for the next resync.
    pub dirty: Mutex<HashSet<String>>,
    /// Set once a list succeeded: before that, no sandbox is an orphan.
    listed: AtomicBool,
    pub changed: Notify,
}

impl Desired {
    /// Whether a list succeeded since the kubelet started.
    pub fn listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// The pods as last seen, by uid.
    pub fn snapshot(&self) -> Vec<(String, Arc<Pod>)> {
        self.pods
            .lock()
            .expect("pods")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn mark(&self, uid: String) {
        self.dirty.lock().expect("dirty").insert(uid);
        self.changed.notify_one();
    }

    pub fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().expect("dirty"))
    }
}

/// Whether a pod changed in what the kubelet acts on, as upstream's pod
/// config tells updates apart: its own status writes come back through
/// the watch, and syncing again for each would double a burst's work.
fn differs(old: &Pod, new: &Pod) -> bool {
    let (a, b) = (&old.metadata, &new.metadata);
    old.spec != new.spec
        || a.labels != b.labels
        || a.annotations != b.annotations
        || a.deletion_timestamp != b.deletion_timestamp
        || a.deletion_grace_period_seconds != b.deletion_grace_period_seconds
}

/// A pod from the API as the kubelet keeps it: without its managed
/// fields, which nothing here reads and which are most of a running pod's
/// size (a field tree for every status the kubelet wrote).
fn kept(v: Value) -> Option<(String, Arc<Pod>)> {
    let uid = uid_of(&v)?;
    let mut pod: Pod = serde_json::from_value(v).ok()?;
    pod.metadata.managed_fields = None;
    Some((uid, Arc::new(pod)))
}

fn uid_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// List and watch this node's pods into `desired` until `cancel`.
pub async fn follow(api: Api, node: String, desired: Arc<Desired>, cancel: CancellationToken) {
    loop {
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = api.list_pods(&node) => r,
        };
        let rv = match listed {
            Ok((items, rv)) => {
                let map: HashMap<String, Arc<Pod>> = items.into_iter().filter_map(kept).collect();
                desired
                    .dirty
                    .lock()
                    .expect("dirty")
                    .extend(map.keys().cloned());
                *desired.pods.lock().expect("pods") = map;
                desired.listed.store(true, Ordering::Release);
                desired.changed.notify_one();
                rv
            }
            Err(e) => {
                tracing::debug!(error = %e, "kubelet: listing pods failed; retrying");
                tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                continue;
            }
        };
        let d = desired.clone();
        let watched = api.watch_pods(&node, &rv, |kind, obj| match kind {
            "DELETED" => {
                let Some(uid) = uid_of(&obj) else { return };
                d.pods.lock().expect("pods").remove(&uid);
            }
            "ADDED" | "MODIFIED" => {
                let Some((uid, pod)) = kept(obj) else { return };
                let before = d
                    .pods
                    .lock()
                    .expect("pods")
                    .insert(uid.clone(), pod.clone());
                if before.is_none_or(|b| differs(&b, &pod)) {
                    d.mark(uid);
                }
            }
            _ => {}
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = watched => if let Err(e) = r {
                tracing::debug!(error = %e, "kubelet: pod watch ended; listing again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "a"}, "resourceVersion": "1"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap()
    }

    #[test]
    fn its_own_status_writes_are_no_change_to_the_kubelet() {
        let old = pod();
        let mut new = pod();
        new.metadata.resource_version = Some("2".into());
        new.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
        assert!(!differs(&old, &new), "a status write is not a change");

        let mut spec = pod();
        spec.spec.as_mut().unwrap().containers[0].image = Some("other".into());
        assert!(differs(&old, &spec));
        let mut deleting = serde_json::to_value(pod()).unwrap();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
        assert!(differs(&old, &serde_json::from_value(deleting).unwrap()));
        let mut labelled = pod();
        labelled.metadata.labels = None;
        assert!(differs(&old, &labelled));
    }

    #[test]
    fn a_pod_seen_again_is_marked_once_and_taken_once() {
        let d = Desired::default();
        d.mark("a".into());
        d.mark("a".into());
        d.mark("b".into());
        let taken = d.take_dirty();
        assert_eq!(taken.len(), 2);
        assert!(d.take_dirty().is_empty());
    }
}
