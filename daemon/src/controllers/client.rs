//! What the workload controllers and the scheduler do through the
//! registry's one write path: create, delete, write status, record Events
//! (deduplicated with a count and rate-limited per object, as upstream's
//! recorder does).

use super::recorder::{EventSink, EventType, Recorder, SinkError};
use crate::registry::cache::Cache;
use crate::registry::error::KubeError;
use crate::registry::kinds;
use crate::registry::store::{DeleteOptions, Preconditions, WriteOptions};
use crate::registry::{Registry, ResourceType};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Clone)]
pub struct Client {
    pub reg: Arc<Registry>,
    events: Recorder,
}

/// The registry as the controllers' Event store.
struct RegistrySink(Arc<Registry>);

#[async_trait::async_trait]
impl EventSink for RegistrySink {
    async fn create(&self, e: &Event) -> Result<(), SinkError> {
        let rt = kinds::EVENTS.resource_type();
        let ns = e.metadata.namespace.clone().unwrap_or_default();
        let obj = serde_json::to_value(e).map_err(|e| SinkError::Other(e.to_string()))?;
        match self
            .0
            .create(&rt, Some(&ns), obj, &WriteOptions::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(KubeError::AlreadyExists(_)) => Err(SinkError::AlreadyExists),
            Err(e) => Err(SinkError::Other(e.to_string())),
        }
    }

    async fn repeat(
        &self,
        ns: &str,
        name: &str,
        count: i32,
        last: &Time,
        message: &str,
    ) -> Result<(), SinkError> {
        let rt = kinds::EVENTS.resource_type();
        let last = serde_json::to_value(last).map_err(|e| SinkError::Other(e.to_string()))?;
        let r = self
            .0
            .modify_in(&rt, Some(ns), name, None, |ev| {
                ev["count"] = json!(count);
                ev["lastTimestamp"] = last.clone();
                ev["message"] = json!(message);
                true
            })
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(KubeError::NotFound(_)) => Err(SinkError::NotFound),
            Err(e) => Err(SinkError::Other(e.to_string())),
        }
    }
}

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

/// The server's one Event recorder: every component of the server (the
/// controllers, the manifests, pod CIDR allocation) records through it.
pub fn server_recorder(reg: Arc<Registry>) -> Recorder {
    Recorder::start(Arc::new(RegistrySink(reg)), None)
}

impl Client {
    /// A client recording Events through `events` (the server's).
    pub fn new(reg: Arc<Registry>, events: Recorder) -> Self {
        Self { reg, events }
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
        let reference = super::recorder::reference(involved);
        let type_ = if type_ == "Warning" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.events
            .record(component, reference, type_, reason, message);
    }
}
