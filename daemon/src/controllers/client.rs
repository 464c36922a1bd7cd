//! What the workload controllers and the scheduler do through the
//! registry's one write path: create, delete, write status, record Events
//! (deduplicated with a count and rate-limited per object, as upstream's
//! recorder does).

use crate::registry::cache::{Cache, Change};
use crate::registry::error::KubeError;
use crate::registry::store::{DeleteOptions, Preconditions, WriteOptions};
use crate::registry::{Registry, ResourceType};
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Client {
    pub reg: Arc<Registry>,
    events: tokio::sync::mpsc::Sender<Event>,
}

/// An Event to record.
struct Event {
    involved: Value,
    type_: String,
    reason: String,
    message: String,
    component: String,
}

/// Events waiting to be written; beyond this they are dropped, as
/// upstream's broadcaster drops them rather than slow its controllers.
const EVENT_QUEUE: usize = 1000;

/// A k8s-openapi time as chrono's.
pub fn to_utc(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// A chrono time as k8s-openapi's (whole seconds, as the API writes them).
pub fn time(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

pub fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

pub fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// The owner reference with `controller: true`, if any.
pub fn controller_uid(v: &Value) -> Option<&str> {
    v.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)?
        .get("uid")?
        .as_str()
}

/// The objects under `prefix` whose controller is `owner_uid` (shared
/// from the cache, not copied).
pub fn controlled(cache: &Cache, owner_uid: &str, prefix: &str) -> Vec<Arc<Value>> {
    cache
        .dependents(owner_uid)
        .into_iter()
        .filter(|(k, v)| k.starts_with(prefix) && controller_uid(v) == Some(owner_uid))
        .map(|(_, v)| v)
        .collect()
}

/// A controller owner reference to `owner`.
pub fn controller_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true,
    })
}

impl Client {
    /// A client whose Events a task of its own writes (it ends when the
    /// last clone of the client is dropped).
    pub fn new(reg: Arc<Registry>) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(EVENT_QUEUE);
        let c = Self {
            reg: reg.clone(),
            events: tx,
        };
        let writer = Self {
            reg,
            events: tokio::sync::mpsc::channel(1).0,
        };
        tokio::spawn(async move {
            let mut spam = super::recorder::SpamFilter::default();
            while let Some(e) = rx.recv().await {
                let key = super::recorder::spam_key(&e.component, &e.involved);
                if !spam.allow(&key, std::time::Instant::now()) {
                    tracing::trace!(reason = %e.reason, "event dropped by the spam filter");
                    continue;
                }
                writer.write_event(&e).await;
            }
        });
        c
    }

    pub fn kind(&self, group: &str, version: &str, resource: &str) -> ResourceType {
        self.reg
            .find(group, version, resource)
            .expect("built-in kinds are registered")
    }

    pub async fn create(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
    ) -> Result<Value, KubeError> {
        self.reg
            .create(rt, Some(ns), obj, &WriteOptions::default())
            .await
            .map(|w| w.object)
    }

    /// Delete `name` if it still has `uid` (gone already is fine).
    pub async fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        uid: &str,
    ) -> Result<(), KubeError> {
        self.delete_with(rt, ns, name, uid, None).await
    }

    /// Delete a pod at once (grace 0), for pods no kubelet will finish.
    pub async fn force_delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        uid: &str,
    ) -> Result<(), KubeError> {
        self.delete_with(rt, ns, name, uid, Some(0)).await
    }

    async fn delete_with(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        uid: &str,
        grace: Option<i64>,
    ) -> Result<(), KubeError> {
        let opts = DeleteOptions {
            propagation_policy: Some("Background".into()),
            grace_period_seconds: grace,
            preconditions: Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            },
            ..Default::default()
        };
        match self.reg.delete(rt, Some(ns), name, &opts).await {
            Ok(_) | Err(KubeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Read-modify-write of an object (`status` false) or its status,
    /// retried on conflicts; `f` returns false to leave it alone.
    pub async fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: bool,
        f: impl FnMut(&mut Value) -> bool,
    ) -> Result<(), KubeError> {
        self.reg
            .modify_in(rt, Some(ns), name, status.then_some("status"), f)
            .await
    }

    /// Replace the status of `ns/name` if it is still the object `uid`
    /// (a failure is only logged: the next sync writes it again).
    pub async fn write_status(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        uid: &str,
        status: Value,
    ) {
        let r = self
            .update(rt, ns, name, true, |o| {
                if s(o, "/metadata/uid") != uid {
                    return false;
                }
                o["status"] = status.clone();
                true
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(kind = %rt.kind, name, error = %e, "status not written");
        }
    }

    /// Record an Event about `involved` from `component`, in the
    /// background; the same event again raises its count.
    pub async fn event(
        &self,
        involved: &Value,
        type_: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let meta = &involved["metadata"];
        let e = Event {
            involved: json!({"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                "metadata": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"],
                    "resourceVersion": meta["resourceVersion"]}}),
            type_: type_.into(),
            reason: reason.into(),
            message: message.into(),
            component: component.into(),
        };
        if self.events.try_send(e).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }

    async fn write_event(&self, e: &Event) {
        let Event {
            involved,
            type_,
            reason,
            message,
            component,
        } = e;
        let ns = match s(involved, "/metadata/namespace") {
            "" => "default",
            n => n,
        };
        let name = s(involved, "/metadata/name");
        let uid = s(involved, "/metadata/uid");
        let digest = Sha256::digest(format!("{uid}\0{reason}\0{message}\0{component}"));
        let ev_name = format!("{name}.{}", hex::encode(&digest[..8]));
        let rt = self.kind("", "v1", "events");
        let now = crate::objects::now_rfc3339();
        let mut bumped = false;
        let r = self
            .update(&rt, ns, &ev_name, false, |ev| {
                bumped = true;
                ev["count"] = json!(ev["count"].as_i64().unwrap_or(1) + 1);
                ev["lastTimestamp"] = json!(now);
                true
            })
            .await;
        if bumped && r.is_ok() {
            return;
        }
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": ev_name, "namespace": ns},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                "namespace": ns, "name": name, "uid": uid,
                "resourceVersion": involved.pointer("/metadata/resourceVersion")},
            "type": type_, "reason": reason, "message": message,
            "source": {"component": component}, "reportingComponent": component,
            "count": 1, "firstTimestamp": now, "lastTimestamp": now,
        });
        match self.create(&rt, ns, ev).await {
            Ok(_) | Err(KubeError::AlreadyExists(_)) => {}
            Err(e) => tracing::debug!(error = %e, %reason, "could not record an event"),
        }
    }
}

/// The next batch of objects under `own` to sync: those that changed,
/// the controller owners (under `own`) of changed objects under `child`,
/// or all of them on `tick` or when the feed lagged. `None` at `stop` or
/// when the cache closed.
pub async fn next_dirty(
    rx: &mut Receiver<Change>,
    cache: &Cache,
    own: &str,
    child: &str,
    tick: &mut Interval,
    stop: &CancellationToken,
) -> Option<HashSet<String>> {
    let mut dirty = HashSet::new();
    let all =
        |dirty: &mut HashSet<String>| dirty.extend(cache.list(own).into_iter().map(|(k, _)| k));
    let note = |ch: &Change, dirty: &mut HashSet<String>| {
        if ch.key.starts_with(own) {
            dirty.insert(ch.key.clone());
        } else if ch.key.starts_with(child) {
            if let Some((k, _)) = controller_uid(&ch.object).and_then(|u| cache.by_uid(u)) {
                if k.starts_with(own) {
                    dirty.insert(k);
                }
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => return None,
        _ = tick.tick() => all(&mut dirty),
        ch = rx.recv() => match ch {
            Ok(ch) => {
                note(&ch, &mut dirty);
                while let Ok(more) = rx.try_recv() {
                    note(&more, &mut dirty);
                }
            }
            Err(RecvError::Lagged(_)) => all(&mut dirty),
            Err(RecvError::Closed) => return None,
        }
    }
    Some(dirty)
}
