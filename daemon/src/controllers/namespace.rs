//! Namespace termination: a deleted Namespace is `Terminating` while its
//! contents are deleted; when nothing is left its `kubernetes` finalizer is
//! removed and it goes.

use crate::objects::prefix;
use crate::registry::cache::Cache;
use crate::registry::Registry;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Terminating namespaces are looked at again this often (their grace
/// ends between two changes).
const RESYNC: Duration = Duration::from_secs(1);
/// How long a deleted namespace stays `Terminating` before its contents
/// are deleted (upstream's `namespaceDeletionGracePeriod`): clients that
/// delete a namespace and then its objects (`kubectl delete -k`) find
/// them still there, and an empty namespace is seen Terminating.
const DELETION_GRACE: Duration = Duration::from_secs(5);

fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

pub async fn run(reg: Arc<Registry>, cache: Arc<Cache>, stop: CancellationToken) {
    let mut rx = cache.subscribe();
    tokio::select! { _ = stop.cancelled() => return, _ = cache.synced() => {} }
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                for (_, ns) in cache.list("/registry/namespaces/") {
                    if deleting(&ns) {
                        finalize(&reg, &cache, &ns).await;
                    }
                }
            }
            ch = rx.recv() => match ch {
                Ok(ch) => {
                    // A namespace being deleted, or something leaving one.
                    let ns_name = if ch.key.starts_with("/registry/namespaces/") {
                        ch.object.pointer("/metadata/name")
                    } else {
                        ch.object.pointer("/metadata/namespace")
                    }.and_then(Value::as_str).map(str::to_string);
                    let Some(ns_name) = ns_name else { continue };
                    if let Some(ns) = cache.get(&format!("/registry/namespaces/{ns_name}")) {
                        if deleting(&ns) {
                            finalize(&reg, &cache, &ns).await;
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Whether the namespace was deleted longer than [`DELETION_GRACE`] ago.
fn grace_over(ns: &Value) -> bool {
    let Some(at) = ns
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    else {
        return true;
    };
    let since = chrono::Utc::now().signed_duration_since(at);
    since.to_std().is_ok_and(|d| d >= DELETION_GRACE)
}

async fn finalize(reg: &Registry, cache: &Cache, ns: &Value) {
    let Some(name) = ns.pointer("/metadata/name").and_then(Value::as_str) else {
        return;
    };
    if !grace_over(ns) {
        return;
    }
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
                if let Err(e) = reg.delete_key(&key, uid, "Background").await {
                    tracing::warn!(namespace = name, %key, error = %e, "could not delete an object of a terminating namespace");
                }
            }
        }
    }
    if remaining == 0 {
        let rt = crate::registry::kinds::NAMESPACES.resource_type();
        // Through `finalize`, the one write that changes spec.finalizers.
        let r = reg
            .modify_in(&rt, None, name, Some("finalize"), |v| {
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
            .await;
        if let Err(e) = r {
            tracing::warn!(namespace = name, error = %e, "could not finalize a terminating namespace");
        }
    }
}
