//! Resource requests: `/api/v1/...` and `/apis/<group>/<version>/...`.
//! Parsing, authorization and content negotiation live here; every write
//! goes through the registry's write path.

use super::authn::Requester;
use super::patch::apply_patch;
use super::request::{parse, parse_body, selectors, Target};
use super::response::{json_response, written_response};
use super::subresources;
use super::table;
use crate::apiserver::state::ApiState;
use crate::registry::{DeleteOptions, FieldValidation, KubeError, WriteOptions};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

pub async fn core(
    State(sv): State<Arc<ApiState>>,
    Extension(requester): Extension<Requester>,
    method: Method,
    headers: HeaderMap,
    Path(rest): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    serve(sv, requester, method, headers, "", "v1", rest, q, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn grouped(
    State(sv): State<Arc<ApiState>>,
    Extension(requester): Extension<Requester>,
    method: Method,
    headers: HeaderMap,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    serve(
        sv, requester, method, headers, &group, &version, rest, q, body,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    sv: Arc<ApiState>,
    Requester(user): Requester,
    method: Method,
    headers: HeaderMap,
    group: &str,
    version: &str,
    rest: String,
    q: HashMap<String, String>,
    body: Bytes,
) -> Result<Response, KubeError> {
    let t = parse(&sv, group, version, &rest)?;
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        // binding and eviction are creates of a subresource.
        (&Method::POST, true) if t.subresource.is_some() => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return Err(KubeError::MethodNotAllowed),
    };
    if t.rt.create_only && verb != "create" {
        return Err(KubeError::MethodNotAllowed);
    }
    if t.rt.read_only && !matches!(verb, "get" | "list") {
        return Err(KubeError::MethodNotAllowed);
    }
    // Namespaced kinds are created and bulk-deleted only inside a namespace.
    if t.rt.namespaced && t.namespace.is_none() && matches!(verb, "create" | "deletecollection") {
        return Err(KubeError::MethodNotAllowed);
    }
    let fields = q.get("fieldSelector").map(String::as_str).unwrap_or("");
    sv.auth.authorize(
        &user,
        &crate::auth::Request::resource(
            verb,
            &t.rt.group,
            &t.rt.resource,
            t.subresource.as_deref().unwrap_or(""),
            t.ns().unwrap_or(""),
            t.name(),
        )
        .with_fields(fields),
    )?;
    let as_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let opts = WriteOptions {
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
        field_validation: FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?,
        field_manager: field_manager(&q, &headers)?,
        duplicate_fields: vec![],
        user: Some(user.clone()),
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut opts = opts;
    let body = if !matches!(verb, "create" | "update")
        || ctype.is_empty()
        || ctype.starts_with("application/json")
    {
        if matches!(verb, "create" | "update") && opts.field_validation != FieldValidation::Ignore {
            opts.duplicate_fields = crate::registry::strategy::duplicate_fields(&body);
        }
        body
    } else if ctype.starts_with("application/vnd.kubernetes.protobuf") {
        let obj = super::protobuf::decode(&body).map_err(KubeError::UnsupportedMediaType)?;
        Bytes::from(obj.to_string())
    } else {
        return Err(KubeError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf (got {ctype})"
        )));
    };
    if t.rt.create_only {
        return super::reviews::create(&sv, &user, &t, &body).await;
    }
    if t.rt.read_only {
        return super::resource_metrics::serve(&sv, &t, &q, as_table).await;
    }
    match (verb, t.subresource.as_deref()) {
        (_, Some("scale")) => subresources::scale(&sv, &t, verb, &headers, &body, &opts).await,
        ("create", Some("binding")) => subresources::binding(&sv, &t, &body).await,
        ("create", Some("eviction")) => subresources::eviction(&sv, &t, &body).await,
        ("create", Some("token")) => {
            super::serviceaccounts::token_request(&sv, &user, &t, &body).await
        }
        ("get", Some("log")) => super::logs::serve(&sv, &t, &q).await,
        (_, Some("log")) => Err(KubeError::MethodNotAllowed),
        ("get", _) => get(&sv, &t, as_table).await,
        ("list", _) => list(&sv, &t, &q, as_table).await,
        ("watch", _) => super::watch::serve(sv.clone(), t, &q, as_table).await,
        ("create", _) => create(&sv, &t, &body, &opts).await,
        ("update", _) => update(&sv, &t, &body, &opts).await,
        ("patch", None) if is_apply(&headers) => {
            apply_object(
                &sv,
                &t,
                &body,
                q.get("force").is_some_and(|f| f == "true"),
                &opts,
            )
            .await
        }
        ("patch", _) => patch_object(&sv, &t, &headers, &body, &opts).await,
        ("delete", _) => delete(&sv, &t, &q, &body).await,
        _ => delete_collection(&sv, &t, &q, &body).await,
    }
}

async fn get(sv: &ApiState, t: &Target, as_table: bool) -> Result<Response, KubeError> {
    let obj = sv.registry.get(&t.rt, t.ns(), t.name()).await?;
    if t.subresource.as_deref() == Some("status") || !as_table {
        return Ok(json_response(StatusCode::OK, &obj));
    }
    let rv = obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    Ok(table::response(&table::table(&t.rt, &[obj], &rv)))
}

/// The objects a list or deletecollection request selects, and the revision read at.
async fn matching(
    sv: &ApiState,
    t: &Target,
    q: &HashMap<String, String>,
) -> Result<(i64, Vec<Value>), KubeError> {
    let (ls, fs) = selectors(&t.rt, q)?;
    let (rev, items) = sv.registry.list(&t.rt, t.ns()).await?;
    Ok((
        rev,
        items
            .into_iter()
            .filter(|o| ls.matches(o) && fs.matches(o))
            .collect(),
    ))
}

/// A `<Kind>List`, its fields in upstream's order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    kind: String,
    api_version: String,
    metadata: ListMeta<'a>,
    items: Vec<Value>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta<'a> {
    pub resource_version: &'a str,
}

/// A `<Kind>List` of `items` at `rev`.
fn list_object<'a>(t: &Target, rev: &'a str, items: Vec<Value>) -> List<'a> {
    List {
        kind: format!("{}List", t.rt.kind),
        api_version: t.rt.api_version(),
        metadata: ListMeta {
            resource_version: rev,
        },
        items,
    }
}

async fn list(
    sv: &ApiState,
    t: &Target,
    q: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, KubeError> {
    let unfiltered = ["labelSelector", "fieldSelector"]
        .iter()
        .all(|k| q.get(*k).is_none_or(|v| v.is_empty()));
    if unfiltered && !as_table {
        if let Some(body) = sv.registry.list_encoded(&t.rt, t.ns()).await {
            let mut body = body?;
            body.push(b'\n');
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response());
        }
    }
    let (rev, items) = matching(sv, t, q).await?;
    let rv = rev.to_string();
    if as_table {
        return Ok(table::response(&table::table(&t.rt, &items, &rv)));
    }
    Ok(json_response(StatusCode::OK, &list_object(t, &rv, items)))
}

async fn create(
    sv: &ApiState,
    t: &Target,
    body: &Bytes,
    opts: &WriteOptions,
) -> Result<Response, KubeError> {
    let obj = parse_body(body)?;
    let w = sv.registry.create(&t.rt, t.ns(), obj, opts).await?;
    Ok(written_response(StatusCode::CREATED, &w))
}

async fn update(
    sv: &ApiState,
    t: &Target,
    body: &Bytes,
    opts: &WriteOptions,
) -> Result<Response, KubeError> {
    let obj = parse_body(body)?;
    let old = sv.registry.get(&t.rt, t.ns(), t.name()).await?;
    let sub = t.subresource.as_deref();
    let w = sv
        .registry
        .update(&t.rt, t.ns(), t.name(), &old, obj, sub, opts)
        .await?;
    Ok(written_response(StatusCode::OK, &w))
}

/// The `fieldManager` parameter, or as upstream defaults it: the
/// User-Agent's product (`kubectl`, `OpenAPI-Generator`).
fn field_manager(
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Option<String>, KubeError> {
    if let Some(m) = q.get("fieldManager") {
        if m.chars().count() > 128 || m.chars().any(|c| c.is_control()) {
            return Err(KubeError::BadRequest(format!(
                "fieldManager: Invalid value: {m:?}: must be printable and at most 128 characters"
            )));
        }
        return Ok(Some(m.clone()));
    }
    Ok(headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.chars().take(128).collect()))
}

fn is_apply(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/apply-patch"))
}

/// Server-side apply: the body is the manager's whole intent for the
/// object (YAML or JSON); it is created if absent.
async fn apply_object(
    sv: &ApiState,
    t: &Target,
    body: &Bytes,
    force: bool,
    opts: &WriteOptions,
) -> Result<Response, KubeError> {
    let name = t.name();
    let Some(manager) = opts.field_manager.clone() else {
        return Err(KubeError::Invalid {
            kind: "PatchOptions.meta.k8s.io".into(),
            name: String::new(),
            errors: vec![crate::registry::FieldError::required(
                "fieldManager",
                "is required for apply patch",
            )],
        });
    };
    let applied: Value = crate::kube::yaml::from_slice(body)
        .map_err(|e| KubeError::BadRequest(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(KubeError::BadRequest(
            "the apply patch must be an object".into(),
        ));
    }
    for (field, want) in [
        ("apiVersion", t.rt.api_version()),
        ("kind", t.rt.kind.clone()),
    ] {
        if applied.get(field).and_then(Value::as_str) != Some(want.as_str()) {
            return Err(KubeError::BadRequest(format!(
                "{field} must be {want:?} in an apply patch to {}",
                t.rt.qualified_kind()
            )));
        }
    }
    if let Some(n) = applied.pointer("/metadata/name").and_then(Value::as_str) {
        if n != name {
            return Err(KubeError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    // The result carries its own managedFields: the write path keeps them.
    let inner = WriteOptions {
        field_manager: None,
        ..opts.clone()
    };
    let api_version = t.rt.api_version();
    for _ in 0..8 {
        let live = match sv.registry.get(&t.rt, t.ns(), name).await {
            Ok(v) => Some(v),
            Err(KubeError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let mut result =
            crate::registry::managed::apply(live.as_ref(), &applied, &manager, &api_version, force)
                .map_err(|c| crate::registry::managed::Conflict::into_error(c, t.subject(name)))?;
        result["metadata"]["name"] = json!(name);
        let written = match &live {
            None => sv.registry.create(&t.rt, t.ns(), result, &inner).await,
            Some(old) => {
                // A resourceVersion in the configuration is a precondition.
                if applied.pointer("/metadata/resourceVersion").is_none() {
                    result["metadata"]["resourceVersion"] =
                        old["metadata"]["resourceVersion"].clone();
                }
                sv.registry
                    .update(&t.rt, t.ns(), name, old, result, None, &inner)
                    .await
            }
        };
        match written {
            Err(KubeError::Conflict(..)) | Err(KubeError::AlreadyExists(_)) => continue,
            Err(e) => return Err(e),
            Ok(w) => {
                let code = if live.is_none() {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok(written_response(code, &w));
            }
        }
    }
    Err(KubeError::Conflict(
        t.subject(name),
        "too many concurrent changes; try again".into(),
    ))
}

async fn patch_object(
    sv: &ApiState,
    t: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    opts: &WriteOptions,
) -> Result<Response, KubeError> {
    let name = t.name();
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| KubeError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    // Retry on conflict: a patch is relative to whatever is current.
    for _ in 0..8 {
        let old = sv.registry.get(&t.rt, t.ns(), name).await?;
        let mut new = old.clone();
        apply_patch(&t.rt, &ctype, &mut new, &patch, name)?;
        let want_rv = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let cur_rv = old["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if new.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
            return Err(KubeError::Invalid {
                kind: t.rt.qualified_kind(),
                name: name.to_string(),
                errors: vec![crate::registry::FieldError::invalid(
                    "metadata.name",
                    new.pointer("/metadata/name").cloned().unwrap_or_default(),
                    "the name cannot be changed by a patch",
                )],
            });
        }
        match sv
            .registry
            .update(
                &t.rt,
                t.ns(),
                name,
                &old,
                new,
                t.subresource.as_deref(),
                opts,
            )
            .await
        {
            Err(KubeError::Conflict(..))
                if want_rv.is_none() || want_rv.as_deref() == Some(cur_rv.as_str()) =>
            {
                continue
            }
            other => return other.map(|w| written_response(StatusCode::OK, &w)),
        }
    }
    Err(KubeError::Conflict(
        t.subject(name),
        "too many concurrent changes; try again".into(),
    ))
}

/// DeleteOptions from the body (kubectl sends them) and the query.
fn delete_options(q: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions, KubeError> {
    let mut o: DeleteOptions = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteOptions::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            KubeError::BadRequest(format!("the DeleteOptions in the body are not valid: {e}"))
        })?
    };
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| KubeError::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation_policy = Some(p.clone());
    }
    if q.get("dryRun").is_some_and(|v| v == "All") {
        o.dry_run = vec!["All".into()];
    }
    Ok(o)
}

/// The answer to a delete: the object while it lingers (202 when a
/// finalizer or grace period holds it), else the deleted object.
fn deleted_response(obj: &Value, gone: bool) -> Response {
    let code = if gone || obj.pointer("/metadata/finalizers").is_none() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    json_response(code, obj)
}

async fn delete(
    sv: &ApiState,
    t: &Target,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, KubeError> {
    let name = t.name();
    let opts = delete_options(q, body)?;
    let (obj, gone) = sv.registry.delete(&t.rt, t.ns(), name, &opts).await?;
    Ok(deleted_response(&obj, gone))
}

async fn delete_collection(
    sv: &ApiState,
    t: &Target,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, KubeError> {
    let opts = delete_options(q, body)?;
    let (rev, items) = matching(sv, t, q).await?;
    let mut deleted = Vec::new();
    for o in items {
        let name = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ns = o
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        match sv.registry.delete(&t.rt, ns.as_deref(), &name, &opts).await {
            Ok((obj, _)) => deleted.push(obj),
            Err(KubeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &list_object(t, &rev.to_string(), deleted),
    ))
}
