//! The garbage collector: dependents whose owners are all gone are
//! deleted; an owner deleted in the foreground waits (its
//! `foregroundDeletion` finalizer) for dependents that block it; an owner
//! deleted with `Orphan` first lets its dependents go free.

use crate::registry::cache::{owner_uids, Cache, Change, Deletion};
use crate::registry::store::{FOREGROUND, ORPHAN};
use crate::registry::Registry;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// A full pass also runs this often, to catch anything an event missed.
const RESYNC: Duration = Duration::from_secs(30);

fn uid(v: &Value) -> &str {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
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

pub async fn run(reg: Arc<Registry>, cache: Arc<Cache>, stop: CancellationToken) {
    let mut rx = cache.subscribe();
    tokio::select! { _ = stop.cancelled() => return, _ = cache.synced() => {} }
    full_pass(&reg, &cache).await;
    let mut tick = tokio::time::interval(RESYNC);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => full_pass(&reg, &cache).await,
            ch = rx.recv() => match ch {
                Ok(ch) => on_change(&reg, &cache, ch).await,
                Err(RecvError::Lagged(_)) => full_pass(&reg, &cache).await,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

async fn full_pass(reg: &Registry, cache: &Cache) {
    for (key, v) in cache.collector_work() {
        if Deletion::of(&v).held_for_collector() {
            attend_owner(reg, cache, &key, &v).await;
        }
        if !owner_uids(&v).is_empty() {
            attend_dependent(reg, cache, &key, &v).await;
        }
    }
}

async fn on_change(reg: &Registry, cache: &Cache, ch: Change) {
    let v = &ch.object;
    if matches!(ch.kind, crate::datastore::EventKind::Delete) {
        for (k, d) in cache.dependents(uid(v)) {
            attend_dependent(reg, cache, &k, &d).await;
        }
        // An owner waiting in the foreground may now be free.
        for o in owner_uids(v) {
            if let Some((k, owner)) = cache.by_uid(&o) {
                attend_owner(reg, cache, &k, &owner).await;
            }
        }
        return;
    }
    if Deletion::of(v).held_for_collector() {
        attend_owner(reg, cache, &ch.key, v).await;
    }
    if !owner_uids(v).is_empty() {
        attend_dependent(reg, cache, &ch.key, v).await;
        if deleting(v) {
            for o in owner_uids(v) {
                if let Some((k, owner)) = cache.by_uid(&o) {
                    attend_owner(reg, cache, &k, &owner).await;
                }
            }
        }
    }
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
