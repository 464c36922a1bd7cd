//! The garbage collector: dependents whose owners are all gone are
//! deleted; an owner deleted in the foreground waits (its
//! `foregroundDeletion` finalizer) for dependents that block it; an owner
//! deleted with `Orphan` first lets its dependents go free.

use super::predicates::deleting;
use super::runtime::{Controller, Requeue};
use crate::registry::cache::{owner_uids, Cache, Change, Deletion};
use crate::registry::store::{FOREGROUND, ORPHAN};
use crate::registry::Registry;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A full pass also runs this often, to catch anything an event missed.
const RESYNC: Duration = Duration::from_secs(30);

fn uid(v: &Value) -> &str {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn has_finalizer(v: &Value, f: &str) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == f))
}

fn drop_finalizer(v: &mut Value, f: &str) -> bool {
    let Some(a) = v
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let before = a.len();
    a.retain(|x| x != f);
    before != a.len()
}

/// Remove the ownerReferences to `owners` from `v`.
fn drop_owners(v: &mut Value, owners: &[String]) -> bool {
    let Some(refs) = v
        .pointer_mut("/metadata/ownerReferences")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let before = refs.len();
    refs.retain(|r| !owners.iter().any(|o| r["uid"] == json!(o)));
    let changed = before != refs.len();
    if refs.is_empty() {
        v["metadata"]
            .as_object_mut()
            .map(|m| m.remove("ownerReferences"));
    }
    changed
}

/// One key per object that needs the collector: those with owners, and
/// owners held for it (foreground or orphaning deletion). A change enqueues
/// the object itself, its owners when it is deleted or deleting (an owner
/// waiting in the foreground may now be free), and its dependents when it
/// is gone; a resync goes over every such object again.
pub fn controller(reg: Arc<Registry>, cache: Arc<Cache>) -> Controller {
    let c = cache.clone();
    let listed = cache.clone();
    Controller::new("garbagecollector", move |key: String| {
        let (reg, cache) = (reg.clone(), c.clone());
        async move {
            if let Some(v) = cache.get(&key) {
                if Deletion::of(&v).held_for_collector() {
                    attend_owner(&reg, &cache, &key, &v).await;
                }
                if !owner_uids(&v).is_empty() {
                    attend_dependent(&reg, &cache, &key, &v).await;
                }
            }
            Ok(Requeue::Never)
        }
    })
    .watches(Box::new(affected))
    .lists(
        Box::new(move |_| {
            listed
                .collector_work()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        }),
        Some(RESYNC),
    )
    .concurrency(4)
}

/// The keys a change gives the collector to look at.
fn affected(ch: &Change, cache: &Cache) -> Vec<String> {
    let v = &ch.object;
    let owners_of = |v: &Value| -> Vec<String> {
        owner_uids(v)
            .iter()
            .filter_map(|o| cache.by_uid(o).map(|(k, _)| k))
            .collect()
    };
    if matches!(ch.kind, crate::datastore::EventKind::Delete) {
        let mut keys: Vec<String> = cache
            .dependents(uid(v))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.extend(owners_of(v));
        return keys;
    }
    let mut keys = vec![];
    if Deletion::of(v).held_for_collector() || !owner_uids(v).is_empty() {
        keys.push(ch.key.clone());
    }
    if deleting(v) {
        keys.extend(owners_of(v));
    }
    keys
}

async fn attend_dependent(reg: &Registry, cache: &Cache, key: &str, d: &Value) {
    if deleting(d) {
        return;
    }
    let owners = owner_uids(d);
    let mut missing = Vec::new();
    for o in &owners {
        if !cache.exists_uid(o) && owner_gone(reg, d, o).await {
            missing.push(o.clone());
        }
    }
    let result = if !owners.is_empty() && missing.len() == owners.len() {
        tracing::debug!(%key, "garbage collecting: every owner is gone");
        reg.delete_key(key, uid(d), "Background").await
    } else if !missing.is_empty() {
        reg.modify(key, |v| drop_owners(v, &missing)).await
    } else if owners.iter().any(|o| cache.in_foreground_deletion(o)) {
        reg.delete_key(key, uid(d), "Foreground").await
    } else {
        Ok(())
    };
    if let Err(e) = result {
        tracing::warn!(%key, error = %e, "garbage collector could not update a dependent");
    }
}

/// The cache may lag behind the datastore (an owner created a moment ago,
/// or written by another server), so absence there is confirmed by reading
/// the owner itself before anything is deleted, as upstream's collector does.
/// An owner whose kind is not served is kept: nothing can prove it gone.
async fn owner_gone(reg: &Registry, dependent: &Value, owner_uid: &str) -> bool {
    let Some(r) = dependent
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|r| r["uid"] == json!(owner_uid)))
    else {
        return false;
    };
    let (Some(api_version), Some(kind), Some(name)) = (
        r["apiVersion"].as_str(),
        r["kind"].as_str(),
        r["name"].as_str(),
    ) else {
        return true;
    };
    let Some(rt) = reg.by_kind(api_version, kind) else {
        return false;
    };
    let ns = dependent
        .pointer("/metadata/namespace")
        .and_then(Value::as_str);
    if rt.namespaced && ns.is_none() {
        // A cluster-scoped object cannot be owned by a namespaced one.
        return true;
    }
    let ns = if rt.namespaced { ns } else { None };
    match reg.get(&rt, ns, name).await {
        Ok(o) => uid(&o) != owner_uid,
        Err(crate::registry::KubeError::NotFound(_)) => true,
        Err(e) => {
            tracing::debug!(error = %e, "could not read an owner; keeping its dependent");
            false
        }
    }
}

async fn attend_owner(reg: &Registry, cache: &Cache, key: &str, o: &Value) {
    let owner_uid = uid(o).to_string();
    let deps = cache.dependents(&owner_uid);
    let result = if has_finalizer(o, ORPHAN) {
        let mut res = Ok(());
        for (k, _) in &deps {
            if let Err(e) = reg
                .modify(k, |v| drop_owners(v, std::slice::from_ref(&owner_uid)))
                .await
            {
                res = Err(e);
            }
        }
        match res {
            Ok(()) => reg.modify(key, |v| drop_finalizer(v, ORPHAN)).await,
            e => e,
        }
    } else if has_finalizer(o, FOREGROUND) {
        for (k, d) in &deps {
            if !deleting(d) {
                let _ = reg.delete_key(k, uid(d), "Foreground").await;
            }
        }
        let blocking = deps.iter().any(|(_, d)| {
            d.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|r| r["uid"] == json!(owner_uid) && r["blockOwnerDeletion"] == json!(true))
        });
        if blocking {
            Ok(())
        } else {
            reg.modify(key, |v| drop_finalizer(v, FOREGROUND)).await
        }
    } else {
        Ok(())
    };
    if let Err(e) = result {
        tracing::warn!(%key, error = %e, "garbage collector could not finish an owner's deletion");
    }
}
