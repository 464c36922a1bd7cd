//! One resource request as the handlers see it: the kind, namespace,
//! name and subresource its path names, its body, and its selectors.

use super::selectors::{FieldSelector, LabelSelector};
use crate::apiserver::state::ApiState;
use crate::registry::store::{obj_ref, store_err};
use crate::registry::{KubeError, ResourceType, Subject};
use axum::body::Bytes;
use serde_json::Value;
use std::collections::HashMap;

/// One parsed resource request.
pub struct Target {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn subject(&self, name: &str) -> Subject {
        Subject {
            group: self.rt.group.clone(),
            resource: self.rt.resource.clone(),
            name: name.to_string(),
        }
    }

    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn ns(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

/// The Target of a request to `/apis/<group>/<version>/<rest>` (`/api/v1/<rest>` for the core group).
pub fn parse(sv: &ApiState, group: &str, version: &str, rest: &str) -> Result<Target, KubeError> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (ns, res, name, sub) = match segs.as_slice() {
        ["namespaces", ns, res, tail @ ..]
            if !group.is_empty() || !matches!(*res, "status" | "finalize") =>
        {
            match tail {
                [] => (Some(*ns), *res, None, None),
                [n] => (Some(*ns), *res, Some(*n), None),
                [n, s] => (Some(*ns), *res, Some(*n), Some(*s)),
                _ => return Err(KubeError::NoRoute),
            }
        }
        [res] => (None, *res, None, None),
        [res, n] => (None, *res, Some(*n), None),
        [res, n, s] => (None, *res, Some(*n), Some(*s)),
        _ => return Err(KubeError::NoRoute),
    };
    let rt = sv
        .registry
        .find(group, version, res)
        .ok_or(KubeError::NoRoute)?;
    if ns.is_some() && !rt.namespaced {
        return Err(KubeError::NoRoute);
    }
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(KubeError::NoRoute);
    }
    if let Some(s) = sub {
        if !rt.has(s) {
            return Err(KubeError::NoRoute);
        }
    }
    Ok(Target {
        rt,
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        subresource: sub.map(str::to_string),
    })
}

pub fn selectors(
    rt: &ResourceType,
    q: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), KubeError> {
    let l = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(KubeError::BadRequest)?;
    let f = FieldSelector::parse(rt, q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(KubeError::BadRequest)?;
    Ok((l, f))
}

pub fn parse_body(body: &Bytes) -> Result<Value, KubeError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| KubeError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(KubeError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(v)
}

/// For subresources that read the object first.
pub async fn current(sv: &ApiState, t: &Target) -> Result<Value, KubeError> {
    sv.registry
        .objects
        .get(&obj_ref(&t.rt, t.ns(), t.name()))
        .await
        .map_err(store_err(&t.rt, t.name()))?
        .ok_or_else(|| KubeError::NotFound(t.subject(t.name())))
}
