//! Apply an object from inside the server (auto-deployed manifests): the
//! same resolution, defaults and checks as a request from kubectl, without
//! HTTP. Create if absent; otherwise merge the given fields into the live
//! object, so fields others set and the manifest does not mention stay.

use super::patch;
use crate::apiserver::state::ApiState;
use crate::registry::{FieldValidation, KubeError, ResourceType, WriteOptions};
use serde_json::Value;

/// The manager the manifests' writes are recorded under (`managedFields`).
pub const FIELD_MANAGER: &str = "rk3s-deploy";

/// Where an applied object lives: enough to find it again and delete it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The resource type of `apiVersion` + `kind`, as currently served
/// (built-ins and CRDs).
fn resolve(sv: &ApiState, api_version: &str, kind: &str) -> Result<ResourceType, KubeError> {
    sv.registry.by_kind(api_version, kind).ok_or_else(|| {
        KubeError::BadRequest(format!(
            "no kind \"{kind}\" is registered for version \"{api_version}\" (a CRD must define it first)"
        ))
    })
}

fn namespace_of(rt: &ResourceType, namespace: &str) -> Option<String> {
    rt.namespaced.then(|| {
        if namespace.is_empty() {
            "default".to_string()
        } else {
            namespace.to_string()
        }
    })
}

/// Identify a manifest object (with the namespace it will live in),
/// resolving its kind once.
fn locate(sv: &ApiState, obj: &Value) -> Result<(ObjectRef, ResourceType), KubeError> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err(KubeError::BadRequest(
            "apiVersion and kind are required".into(),
        ));
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        return Err(KubeError::BadRequest(format!(
            "{kind}: metadata.name is required"
        )));
    }
    let rt = resolve(sv, api_version, kind)?;
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let id = ObjectRef {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        namespace: namespace_of(&rt, ns).unwrap_or_default(),
        name: name.to_string(),
    };
    Ok((id, rt))
}

/// Create or merge-update `obj` through the registry's write path.
/// Returns whether anything changed.
pub async fn apply(sv: &ApiState, obj: &Value) -> Result<(ObjectRef, bool), KubeError> {
    let (id, rt) = locate(sv, obj)?;
    let ns = (!id.namespace.is_empty()).then_some(id.namespace.as_str());
    let mut desired = obj.clone();
    if let Some(m) = desired["metadata"].as_object_mut() {
        for k in ["resourceVersion", "uid", "creationTimestamp"] {
            m.remove(k);
        }
    }
    let opts = WriteOptions {
        dry_run: false,
        field_validation: FieldValidation::Strict,
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for _ in 0..8 {
        let old = match sv.registry.get(&rt, ns, &id.name).await {
            Ok(o) => o,
            Err(KubeError::NotFound(_)) => {
                match sv.registry.create(&rt, ns, desired.clone(), &opts).await {
                    Ok(_) => return Ok((id, true)),
                    // Lost a race with another creator: go round and merge into theirs.
                    Err(KubeError::AlreadyExists(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let mut new = old.clone();
        patch::merge_patch(&mut new, &desired);
        if new == old {
            return Ok((id, false));
        }
        match sv
            .registry
            .update(&rt, ns, &id.name, &old, new, None, &opts)
            .await
        {
            Ok(w) => return Ok((id, w.object != old)),
            Err(KubeError::Conflict(..)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(KubeError::Unavailable(format!(
        "{id}: too many concurrent updates"
    )))
}

/// Delete an object an earlier apply created; gone already is fine.
pub async fn delete(sv: &ApiState, id: &ObjectRef) -> Result<bool, KubeError> {
    let rt = resolve(sv, &id.api_version, &id.kind)?;
    let ns = namespace_of(&rt, &id.namespace);
    match sv
        .registry
        .delete(&rt, ns.as_deref(), &id.name, &Default::default())
        .await
    {
        Ok(_) => Ok(true),
        Err(KubeError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An Event about `involved` (an Addon), for `kubectl get events`.
pub fn event(sv: &ApiState, involved: &Value, warning: bool, reason: &str, message: &str) {
    use crate::controllers::recorder::{reference, EventType};
    let t = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    sv.events
        .record("rk3s-deploy", reference(involved), t, reason, message);
}
