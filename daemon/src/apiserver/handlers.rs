//! Resource requests: `/api/v1/...` and `/apis/<group>/<version>/...`.

use super::authz::{authorize, Attributes, Caller};
use super::patch;
use super::resources::{self, ResourceType, CRD_GROUP};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{KubeError, Subject};
use super::table;
use crate::objects::{now_rfc3339, Objects, Ref};
use crate::server::{Supervisor, SYSTEM_NAMESPACES};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// One parsed resource request.
pub struct Target {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub fn obj_ref(&self, name: &str) -> Ref {
        match &self.namespace {
            Some(ns) => Ref::namespaced(self.rt.storage(), ns, name),
            None => Ref::cluster(self.rt.storage(), name),
        }
    }

    pub fn subject(&self, name: &str) -> Subject {
        Subject {
            group: self.rt.group.clone(),
            resource: self.rt.resource.clone(),
            name: name.to_string(),
        }
    }
}

type Q = Query<HashMap<String, String>>;

pub async fn core(
    State(sv): State<Arc<Supervisor>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    headers: HeaderMap,
    Path(rest): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    serve(sv, caller, method, headers, "", "v1", rest, q, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn grouped(
    State(sv): State<Arc<Supervisor>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    headers: HeaderMap,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    serve(sv, caller, method, headers, &group, &version, rest, q, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn parse(
    objects: &Objects,
    group: &str,
    version: &str,
    rest: &str,
) -> Result<Target, KubeError> {
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
    let rt = resources::find(objects, group, version, res)
        .await
        .ok_or(KubeError::NoRoute)?;
    if ns.is_some() && !rt.namespaced {
        return Err(KubeError::NoRoute);
    }
    if rt.namespaced && ns.is_none() && name.is_some() {
        return Err(KubeError::NoRoute);
    }
    if let Some(s) = sub {
        if s != "status" || !rt.has_status {
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

#[allow(clippy::too_many_arguments)]
async fn serve(
    sv: Arc<Supervisor>,
    caller: Caller,
    method: Method,
    headers: HeaderMap,
    group: &str,
    version: &str,
    rest: String,
    q: HashMap<String, String>,
    body: Bytes,
) -> Result<Response, KubeError> {
    if caller.0.is_none() {
        return Err(KubeError::Unauthorized);
    }
    let t = parse(&sv.objects, group, version, &rest).await?;
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return Err(KubeError::MethodNotAllowed),
    };
    // Namespaced kinds are created and bulk-deleted only inside a namespace.
    if t.rt.namespaced && t.namespace.is_none() && matches!(verb, "create" | "deletecollection") {
        return Err(KubeError::MethodNotAllowed);
    }
    authorize(
        &caller,
        &Attributes {
            verb,
            resource: &t.rt,
            subresource: t.subresource.as_deref(),
            namespace: t.namespace.as_deref(),
            name: t.name.as_deref(),
        },
    )?;
    let as_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = if !matches!(verb, "create" | "update")
        || ctype.is_empty()
        || ctype.starts_with("application/json")
    {
        body
    } else if ctype.starts_with("application/vnd.kubernetes.protobuf") {
        let obj = super::protobuf::decode(&body).map_err(KubeError::UnsupportedMediaType)?;
        Bytes::from(obj.to_string())
    } else {
        return Err(KubeError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf (got {ctype})"
        )));
    };
    match verb {
        "get" => get(&sv, &t, as_table).await,
        "list" => list(&sv, &t, &q, as_table).await,
        "watch" => super::watch::serve(sv.clone(), t, &q, as_table).await,
        "create" => create(&sv, &t, &body, dry_run).await,
        "update" => update(&sv, &t, &body, dry_run).await,
        "patch" => patch_object(&sv, &t, &headers, &body, dry_run).await,
        "delete" => delete(&sv, &t, dry_run).await,
        _ => delete_collection(&sv, &t, &q, dry_run).await,
    }
}

const TABLE_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

pub fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn table_response(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, TABLE_TYPE)], v.to_string()).into_response()
}

pub(crate) fn store_err(
    t: &Target,
    name: &str,
) -> impl FnOnce(crate::objects::ObjectError) -> KubeError {
    let s = t.subject(name);
    move |e| KubeError::from_store(e, s)
}

async fn get(sv: &Supervisor, t: &Target, as_table: bool) -> Result<Response, KubeError> {
    let name = t.name.as_deref().expect("named");
    let obj = sv
        .objects
        .get(&t.obj_ref(name))
        .await
        .map_err(store_err(t, name))?
        .ok_or_else(|| KubeError::NotFound(t.subject(name)))?;
    if as_table {
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        return Ok(table_response(&table::table(&t.rt, &[obj], &rv)));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

pub fn selectors(q: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), KubeError> {
    let l = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(KubeError::BadRequest)?;
    let f = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(KubeError::BadRequest)?;
    Ok((l, f))
}

/// The objects a list or deletecollection request selects, and the revision read at.
async fn matching(
    sv: &Supervisor,
    t: &Target,
    q: &HashMap<String, String>,
) -> Result<(i64, Vec<Value>), KubeError> {
    let (ls, fs) = selectors(q)?;
    let (rev, items) = sv
        .objects
        .list(&t.rt.storage(), t.namespace.as_deref())
        .await
        .map_err(store_err(t, ""))?;
    Ok((
        rev,
        items
            .into_iter()
            .filter(|o| ls.matches(o) && fs.matches(o))
            .collect(),
    ))
}

/// A `<Kind>List` of `items` at `rev`.
fn list_object(t: &Target, rev: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": {"resourceVersion": rev}, "items": items})
}

async fn list(
    sv: &Supervisor,
    t: &Target,
    q: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, KubeError> {
    let (rev, items) = matching(sv, t, q).await?;
    let rv = rev.to_string();
    if as_table {
        return Ok(table_response(&table::table(&t.rt, &items, &rv)));
    }
    Ok(json_response(StatusCode::OK, &list_object(t, &rv, items)))
}

fn parse_body(body: &Bytes) -> Result<Value, KubeError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| KubeError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(KubeError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(v)
}

fn invalid(t: &Target, name: &str, message: impl Into<String>) -> KubeError {
    KubeError::Invalid {
        kind: t.rt.kind.clone(),
        name: name.to_string(),
        message: message.into(),
    }
}

/// Checks and defaults every kind gets on create and update.
pub(crate) fn normalize(t: &Target, obj: &mut Value, name: &str) -> Result<(), KubeError> {
    let api_version = t.rt.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != api_version => {
            return Err(KubeError::BadRequest(format!("the API version in the data ({v}) does not match the expected API version ({api_version})")))
        }
        _ => obj["apiVersion"] = json!(api_version),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != t.rt.kind => {
            return Err(KubeError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.rt.kind
            )))
        }
        _ => obj["kind"] = json!(t.rt.kind),
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(ns) = &t.namespace {
        match obj["metadata"].get("namespace").and_then(Value::as_str) {
            // An empty namespace in the body means "the request's", as in Kubernetes.
            Some(b) if !b.is_empty() && b != ns => {
                return Err(KubeError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    if crate::names::validate_node_name(name).is_err() && t.rt.resource != "events" {
        return Err(invalid(t, name, format!("metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")));
    }
    // Secrets: stringData is write-only convenience, folded into data.
    if t.rt.group.is_empty() && t.rt.resource == "secrets" {
        if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            if let Some(sd) = sd.as_object() {
                for (k, v) in sd {
                    let enc = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    obj["data"][k] = json!(enc);
                }
            }
        }
        if obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
    }
    if t.rt.group == CRD_GROUP && t.rt.resource == "customresourcedefinitions" {
        validate_crd(t, obj, name)?;
    }
    Ok(())
}

fn validate_crd(t: &Target, crd: &mut Value, name: &str) -> Result<(), KubeError> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    if group.is_empty()
        || plural.is_empty()
        || spec["names"]["kind"].as_str().unwrap_or("").is_empty()
    {
        return Err(invalid(
            t,
            name,
            "spec.group, spec.names.plural and spec.names.kind are required",
        ));
    }
    if name != format!("{plural}.{group}") {
        return Err(invalid(t, name, format!("metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group")));
    }
    if resources::from_crd(crd).is_empty() {
        return Err(invalid(t, name, "spec.versions: Invalid value: must have exactly one storage version and at least one served version"));
    }
    let names = crd["spec"]["names"].clone();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": crd["spec"]["versions"].as_array().map(|v| v.iter().filter(|v| v["storage"].as_bool().unwrap_or(false)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now_rfc3339()},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now_rfc3339()},
        ],
    });
    Ok(())
}

pub(crate) async fn namespace_exists(sv: &Supervisor, ns: &str) -> Result<(), KubeError> {
    let r = Ref::cluster("namespaces", ns);
    let subject = Subject {
        group: String::new(),
        resource: "namespaces".into(),
        name: ns.into(),
    };
    match sv.objects.get(&r).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(KubeError::NotFound(subject)),
        Err(e) => Err(KubeError::from_store(e, subject)),
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::thread_rng();
    (0..5)
        .map(|_| CHARS[r.gen_range(0..CHARS.len())] as char)
        .collect()
}

async fn create(
    sv: &Supervisor,
    t: &Target,
    body: &Bytes,
    dry_run: bool,
) -> Result<Response, KubeError> {
    let mut obj = parse_body(body)?;
    let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(g) => format!("{g}{}", random_suffix()),
            None => {
                return Err(invalid(
                    t,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ))
            }
        },
    };
    normalize(t, &mut obj, &name)?;
    if let Some(ns) = &t.namespace {
        namespace_exists(sv, ns).await?;
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let r = t.obj_ref(&name);
    if dry_run {
        if sv
            .objects
            .get(&r)
            .await
            .map_err(store_err(t, &name))?
            .is_some()
        {
            return Err(KubeError::AlreadyExists(t.subject(&name)));
        }
        return Ok(json_response(StatusCode::CREATED, &obj));
    }
    let created = sv
        .objects
        .create(&r, obj)
        .await
        .map_err(store_err(t, &name))?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// Immutable Secrets and ConfigMaps keep their data.
fn check_immutable(t: &Target, old: &Value, new: &Value, name: &str) -> Result<(), KubeError> {
    if old["immutable"].as_bool() == Some(true)
        && t.rt.group.is_empty()
        && matches!(t.rt.resource.as_str(), "secrets" | "configmaps")
        && (old["data"] != new["data"]
            || old.get("binaryData") != new.get("binaryData")
            || new["immutable"] != json!(true))
    {
        return Err(invalid(
            t,
            name,
            "data: Forbidden: field is immutable when `immutable` is set",
        ));
    }
    Ok(())
}

/// Carry over what a client may not change and split status from spec.
fn merge_server_fields(t: &Target, old: &Value, new: &mut Value) {
    for k in ["uid", "creationTimestamp"] {
        new["metadata"][k] = old["metadata"][k].clone();
    }
    if t.rt.has_status {
        if t.subresource.as_deref() == Some("status") {
            // Only status changes through /status.
            let status = new.get("status").cloned();
            *new = old.clone();
            if let Some(s) = status {
                new["status"] = s;
            }
        } else if let Some(s) = old.get("status") {
            if t.rt.resource != "customresourcedefinitions" {
                new["status"] = s.clone();
            }
        }
    }
}

pub(crate) async fn write_update(
    sv: &Supervisor,
    t: &Target,
    name: &str,
    old: &Value,
    mut new: Value,
    dry_run: bool,
) -> Result<Value, KubeError> {
    merge_server_fields(t, old, &mut new);
    check_immutable(t, old, &new, name)?;
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if new == *old || dry_run {
        return Ok(new);
    }
    sv.objects
        .update(&t.obj_ref(name), new)
        .await
        .map_err(store_err(t, name))
}

async fn update(
    sv: &Supervisor,
    t: &Target,
    body: &Bytes,
    dry_run: bool,
) -> Result<Response, KubeError> {
    let name = t.name.clone().expect("named");
    let mut obj = parse_body(body)?;
    if let Some(n) = obj.pointer("/metadata/name").and_then(Value::as_str) {
        if n != name {
            return Err(KubeError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    normalize(t, &mut obj, &name)?;
    obj["metadata"]["name"] = json!(name);
    let old = sv
        .objects
        .get(&t.obj_ref(&name))
        .await
        .map_err(store_err(t, &name))?
        .ok_or_else(|| KubeError::NotFound(t.subject(&name)))?;
    let sent_rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !sent_rv.is_empty() && sent_rv != old["metadata"]["resourceVersion"].as_str().unwrap_or("") {
        return Err(KubeError::stale(t.subject(&name)));
    }
    let out = write_update(sv, t, &name, &old, obj, dry_run).await?;
    Ok(json_response(StatusCode::OK, &out))
}

async fn patch_object(
    sv: &Supervisor,
    t: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    dry_run: bool,
) -> Result<Response, KubeError> {
    let name = t.name.clone().expect("named");
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| KubeError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    // Retry on conflict: a patch is relative to whatever is current.
    for _ in 0..8 {
        let old = sv
            .objects
            .get(&t.obj_ref(&name))
            .await
            .map_err(store_err(t, &name))?
            .ok_or_else(|| KubeError::NotFound(t.subject(&name)))?;
        let mut new = old.clone();
        if ctype.starts_with("application/merge-patch+json") {
            patch::merge_patch(&mut new, &patch);
        } else if ctype.starts_with("application/json-patch+json") {
            patch::json_patch(&mut new, &patch).map_err(|m| invalid(t, &name, m))?;
        } else if ctype.starts_with("application/strategic-merge-patch+json") {
            if !t.rt.is_builtin() {
                return Err(KubeError::UnsupportedMediaType(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json ({} is a custom resource)",
                    t.rt.resource
                )));
            }
            patch::strategic_merge(&mut new, &patch).map_err(|m| invalid(t, &name, m))?;
        } else {
            return Err(KubeError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ctype:?})"
            )));
        }
        let want_rv = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let cur_rv = old["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if want_rv
            .as_deref()
            .is_some_and(|r| !r.is_empty() && r != cur_rv)
        {
            return Err(KubeError::stale(t.subject(&name)));
        }
        if new.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
            return Err(invalid(
                t,
                &name,
                "metadata.name: the name cannot be changed by a patch",
            ));
        }
        normalize(t, &mut new, &name)?;
        match write_update(sv, t, &name, &old, new, dry_run).await {
            Err(KubeError::Conflict(..))
                if want_rv.is_none() || want_rv.as_deref() == Some(cur_rv.as_str()) =>
            {
                continue
            }
            other => return other.map(|o| json_response(StatusCode::OK, &o)),
        }
    }
    Err(KubeError::Conflict(
        t.subject(&name),
        "too many concurrent changes; try again".into(),
    ))
}

/// Delete every object of every namespaced kind in `ns`.
async fn delete_namespace_contents(sv: &Supervisor, ns: &str) -> Result<(), KubeError> {
    for rt in resources::all(&sv.objects)
        .await
        .into_iter()
        .filter(|r| r.namespaced)
    {
        let (_, items) = sv
            .objects
            .list(&rt.storage(), Some(ns))
            .await
            .map_err(|e| KubeError::from_store(e, Subject::default()))?;
        for o in items {
            if let Some(n) = o.pointer("/metadata/name").and_then(Value::as_str) {
                let _ = sv
                    .objects
                    .delete(&Ref::namespaced(rt.storage(), ns, n))
                    .await;
            }
        }
    }
    Ok(())
}

async fn delete(sv: &Supervisor, t: &Target, dry_run: bool) -> Result<Response, KubeError> {
    let name = t.name.clone().expect("named");
    let r = t.obj_ref(&name);
    let current = sv
        .objects
        .get(&r)
        .await
        .map_err(store_err(t, &name))?
        .ok_or_else(|| KubeError::NotFound(t.subject(&name)))?;
    if dry_run {
        return Ok(json_response(StatusCode::OK, &current));
    }
    match (t.rt.group.as_str(), t.rt.resource.as_str()) {
        ("", "nodes") => {
            // The same path as `rk3sctl node forget --force`.
            crate::nodes::forget(sv, &name, true)
                .await
                .map_err(|e| KubeError::Internal(e.to_string()))?;
            return Ok(json_response(StatusCode::OK, &current));
        }
        ("", "namespaces") => {
            if SYSTEM_NAMESPACES.contains(&name.as_str()) {
                return Err(KubeError::Forbidden(format!(
                    "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                )));
            }
            delete_namespace_contents(sv, &name).await?;
        }
        (CRD_GROUP, "customresourcedefinitions") => {
            for kind in resources::from_crd(&current).into_iter().take(1) {
                let (_, items) = sv
                    .objects
                    .list(&kind.storage(), None)
                    .await
                    .map_err(store_err(t, &name))?;
                for o in items {
                    let _ = sv.objects.delete(&Ref::of(kind.storage(), &o)).await;
                }
            }
        }
        _ => {}
    }
    let deleted = sv.objects.delete(&r).await.map_err(store_err(t, &name))?;
    Ok(json_response(StatusCode::OK, &deleted.unwrap_or(current)))
}

async fn delete_collection(
    sv: &Supervisor,
    t: &Target,
    q: &HashMap<String, String>,
    dry_run: bool,
) -> Result<Response, KubeError> {
    let (rev, items) = matching(sv, t, q).await?;
    let mut deleted = Vec::new();
    for o in items {
        if !dry_run {
            let r = Ref::of(t.rt.storage(), &o);
            sv.objects.delete(&r).await.map_err(store_err(t, &r.name))?;
        }
        deleted.push(o);
    }
    Ok(json_response(
        StatusCode::OK,
        &list_object(t, &rev.to_string(), deleted),
    ))
}
