//! Namespace termination: a deleted Namespace is `Terminating` while its
//! contents are deleted; when nothing is left its `kubernetes` finalizer is
//! removed and it goes.

use super::predicates::deleting;
use super::runtime::{all, Controller, Requeue, Result};
use crate::datastore::objects::prefix;
use crate::registry::cache::Cache;
use crate::registry::{kinds, Registry};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// How long a deleted namespace stays `Terminating` before its contents
/// are deleted (upstream's `namespaceDeletionGracePeriod`): clients that
/// delete a namespace and then its objects (`kubectl delete -k`) find
/// them still there, and an empty namespace is seen Terminating.
const DELETION_GRACE: Duration = Duration::from_secs(5);
/// A terminating namespace whose contents are still going is looked at
/// again this often, besides when they change.
const RECHECK: Duration = Duration::from_secs(5);

/// One key per namespace: its own changes, and those of anything in it.
pub fn controller(reg: Arc<Registry>, cache: Arc<Cache>) -> Controller {
    let namespaces = kinds::NAMESPACES.prefix(None);
    let key_of = namespaces.clone();
    let c = cache.clone();
    Controller::new("namespace", move |key: String| {
        let (reg, cache) = (reg.clone(), c.clone());
        async move { reconcile(&reg, &cache, &key).await }
    })
    .watches(Box::new(move |ch, _| {
        let ns = if ch.key.starts_with(&key_of) {
            ch.object.pointer("/metadata/name")
        } else {
            ch.object.pointer("/metadata/namespace")
        };
        ns.and_then(Value::as_str)
            .map(|n| vec![format!("{key_of}{n}")])
            .unwrap_or_default()
    }))
    .lists(all(namespaces), Some(Duration::from_secs(60)))
    .concurrency(4)
}

/// What is left of the namespace's deletion grace, if any.
fn grace_left(ns: &Value) -> Option<Duration> {
    let at = ns
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
    let since = chrono::Utc::now()
        .signed_duration_since(at)
        .to_std()
        .unwrap_or_default();
    DELETION_GRACE.checked_sub(since).filter(|d| !d.is_zero())
}

async fn reconcile(reg: &Registry, cache: &Cache, key: &str) -> Result {
    let Some(ns) = cache.get(key) else {
        return Ok(Requeue::Never);
    };
    if !deleting(&ns) {
        return Ok(Requeue::Never);
    }
    if let Some(left) = grace_left(&ns) {
        return Ok(Requeue::After(left));
    }
    let name = ns
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut seen = HashSet::new();
    let mut remaining = 0;
    for rt in reg.kinds().iter().filter(|k| k.namespaced) {
        if !seen.insert(rt.storage()) {
            continue;
        }
        for (key, obj) in cache.list(&prefix(&rt.storage(), Some(name))) {
            remaining += 1;
            if !deleting(&obj) {
                let uid = obj
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                reg.delete_key(&key, uid, "Background").await?;
            }
        }
    }
    if remaining > 0 {
        return Ok(Requeue::After(RECHECK));
    }
    let rt = kinds::NAMESPACES.resource_type();
    // Through `finalize`, the one write that changes spec.finalizers.
    reg.modify_in(&rt, None, name, Some("finalize"), |v| {
        let Some(f) = v
            .pointer_mut("/spec/finalizers")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = f.len();
        f.retain(|x| x != "kubernetes");
        before != f.len()
    })
    .await?;
    Ok(Requeue::Never)
}
