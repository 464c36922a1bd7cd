//! Subresources beyond status: `/scale` (autoscaling/v1 Scale, so `kubectl
//! scale` works on every scalable kind, CRDs included), `pods/binding` (the
//! scheduler's bind) and `pods/eviction` (drain, honouring
//! PodDisruptionBudgets).

use super::patch::apply_patch;
use super::request::{current, parse_body, Target};
use super::response::{json_response, written_response};
use crate::apiserver::state::ApiState;
use crate::registry::kinds;
use crate::registry::printers;
use crate::registry::validation::selector_matches;
use crate::registry::{FieldError, KubeError, WriteOptions};
use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

/// `.spec.replicas` → `/spec/replicas`.
fn pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut p, s| {
            p.push('/');
            p.push_str(s);
            p
        })
}

fn success(code: StatusCode) -> Response {
    axum::response::IntoResponse::into_response(super::status::Status::success(code))
}

/// The Scale view of `obj`.
fn scale_of(t: &Target, obj: &Value) -> Result<Value, KubeError> {
    let paths = t.rt.scale().ok_or(KubeError::NoRoute)?;
    let spec = obj
        .pointer(&pointer(&paths.spec_replicas))
        .cloned()
        .unwrap_or(json!(0));
    let status = obj
        .pointer(&pointer(&paths.status_replicas))
        .cloned()
        .unwrap_or(json!(0));
    let selector = match paths.label_selector.as_deref().map(pointer) {
        Some(p) => match obj.pointer(&p) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(m))
                if m.contains_key("matchLabels") || m.contains_key("matchExpressions") =>
            {
                let sel: Option<LabelSelector> =
                    serde_json::from_value(Value::Object(m.clone())).ok();
                sel.as_ref()
                    .map(printers::selector_query)
                    .unwrap_or_default()
            }
            // ReplicationControllers: a plain map.
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(","),
            _ => String::new(),
        },
        None => String::new(),
    };
    let m = &obj["metadata"];
    let mut s = json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"]},
        "spec": {"replicas": spec},
        "status": {"replicas": status},
    });
    if !selector.is_empty() {
        s["status"]["selector"] = json!(selector);
    }
    Ok(s)
}

pub async fn scale(
    sv: &ApiState,
    t: &Target,
    verb: &str,
    headers: &HeaderMap,
    body: &Bytes,
    opts: &WriteOptions,
) -> Result<Response, KubeError> {
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.as_deref();
    for _ in 0..8 {
        let obj = sv.registry.get(&t.rt, ns, &name).await?;
        let cur = scale_of(t, &obj)?;
        let desired = match verb {
            "get" => return Ok(json_response(StatusCode::OK, &cur)),
            "update" => parse_body(body)?,
            "patch" => {
                let ctype = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let patch: Value = serde_json::from_slice(body).map_err(|e| {
                    KubeError::BadRequest(format!("the patch is not valid JSON: {e}"))
                })?;
                let mut s = cur.clone();
                // Scale is a built-in kind whatever it scales: strategic patches apply.
                let scale_rt = kinds::PODS.resource_type();
                apply_patch(&scale_rt, ctype, &mut s, &patch, &name)?;
                s
            }
            _ => return Err(KubeError::MethodNotAllowed),
        };
        match desired
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv)
                if !rv.is_empty() && Some(rv) != cur["metadata"]["resourceVersion"].as_str() =>
            {
                return Err(KubeError::stale(t.subject(&name)))
            }
            _ => {}
        }
        let replicas = desired
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(KubeError::Invalid {
                kind: "Scale.autoscaling".into(),
                name: name.clone(),
                errors: vec![FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                )],
            });
        }
        let paths = t.rt.scale().ok_or(KubeError::NoRoute)?;
        let mut new = obj.clone();
        let p = pointer(&paths.spec_replicas);
        match new.pointer_mut(&p) {
            Some(v) => *v = json!(replicas),
            None => {
                // Create the path (CRDs whose spec lacks the field so far).
                let mut cur = &mut new;
                for seg in p.trim_start_matches('/').split('/') {
                    if !cur[seg].is_object() && cur.get(seg).is_none() {
                        cur[seg] = json!({});
                    }
                    cur = &mut cur[seg];
                }
                *cur = json!(replicas);
            }
        }
        match sv
            .registry
            .update(&t.rt, ns, &name, &obj, new, None, opts)
            .await
        {
            Ok(w) => {
                let mut w2 = w.clone();
                w2.object = scale_of(t, &w.object)?;
                return Ok(written_response(StatusCode::OK, &w2));
            }
            Err(KubeError::Conflict(..)) if verb == "patch" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(KubeError::Conflict(
        t.subject(&name),
        "too many concurrent changes; try again".into(),
    ))
}

/// `POST pods/<name>/binding`: set the node once.
pub async fn binding(sv: &ApiState, t: &Target, body: &Bytes) -> Result<Response, KubeError> {
    let b = parse_body(body)?;
    let name = t.name.clone().unwrap_or_default();
    let node = b
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(KubeError::Invalid {
            kind: "Binding".into(),
            name,
            errors: vec![FieldError::required("target.name", "")],
        });
    }
    let r = crate::registry::store::obj_ref(&t.rt, t.namespace.as_deref(), &name);
    match crate::registry::core::bind_pod(&sv.registry.objects, &r, &node)
        .await
        .map_err(crate::registry::store::store_err(&t.rt, &name))?
    {
        crate::registry::core::Bound::Yes => {}
        crate::registry::core::Bound::Missing => return Err(KubeError::NotFound(t.subject(&name))),
        crate::registry::core::Bound::Refused(m) => {
            return Err(KubeError::Conflict(t.subject(&name), m))
        }
    }
    Ok(success(StatusCode::CREATED))
}

/// `POST pods/<name>/eviction`: delete unless a PodDisruptionBudget
/// selecting the pod has no disruption to spare (429).
pub async fn eviction(sv: &ApiState, t: &Target, body: &Bytes) -> Result<Response, KubeError> {
    let ev = parse_body(body)?;
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.clone().unwrap_or_default();
    let pod = current(sv, t).await?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Only running pods count against a budget.
    if phase == "Running" && pod.pointer("/metadata/deletionTimestamp").is_none() {
        let labels: Option<std::collections::BTreeMap<String, String>> =
            serde_json::from_value(pod["metadata"]["labels"].clone()).ok();
        let pdb_rt = crate::registry::kinds::POD_DISRUPTION_BUDGETS.resource_type();
        let (_, pdbs) = sv.registry.list(&pdb_rt, Some(&ns)).await?;
        for pdb in pdbs {
            let sel: Option<LabelSelector> =
                serde_json::from_value(pdb["spec"]["selector"].clone()).ok();
            if !sel.is_some_and(|s| selector_matches(&s, labels.as_ref())) {
                continue;
            }
            let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
            let allowed = pdb
                .pointer("/status/disruptionsAllowed")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if allowed <= 0 {
                let desired = pdb
                    .pointer("/status/desiredHealthy")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let healthy = pdb
                    .pointer("/status/currentHealthy")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                return Err(KubeError::TooManyRequests {
                    message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                    cause: Some(format!("The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently")),
                    retry_after: None,
                });
            }
            // Spend one disruption before deleting, as upstream does.
            let pod_name = name.clone();
            sv.registry
                .modify_in(&pdb_rt, Some(&ns), &pdb_name, Some("status"), |p| {
                    let a = p
                        .pointer("/status/disruptionsAllowed")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    p["status"]["disruptionsAllowed"] = json!((a - 1).max(0));
                    p["status"]["disruptedPods"][&pod_name] =
                        json!(crate::datastore::objects::now_rfc3339());
                    true
                })
                .await?;
        }
    }
    let opts: crate::registry::DeleteOptions =
        serde_json::from_value(ev["deleteOptions"].clone()).unwrap_or_default();
    sv.registry.delete(&t.rt, Some(&ns), &name, &opts).await?;
    Ok(success(StatusCode::CREATED))
}
