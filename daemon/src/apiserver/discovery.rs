//! Discovery (aggregated v2 and the legacy documents), `/version`, health,
//! and the OpenAPI v3 documents kubectl checks before create/apply.

use super::authz::Caller;
use super::resources;
use super::{KUBE_MAJOR, KUBE_MINOR};
use crate::registry::error::KubeError;
use crate::registry::ResourceType;
use crate::server::Supervisor;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::sync::Arc;

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+rk3s.{}", rk3s_api::VERSION),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", crate::nodeinfo::go_arch()),
    }))
}

pub async fn health(State(sv): State<Arc<Supervisor>>) -> Response {
    if sv.is_ready() {
        "ok".into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

fn authenticated(c: &Caller) -> Result<(), KubeError> {
    c.0.as_ref().map(|_| ()).ok_or(KubeError::Unauthorized)
}

/// Does the client accept aggregated discovery v2? (kubectl 1.27 asks for
/// v2beta1, which rk3s does not serve: it gets the legacy documents.)
fn wants_aggregated(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|media| {
                let params: Vec<&str> = media.split(';').map(str::trim).collect();
                params.contains(&"g=apidiscovery.k8s.io") && params.contains(&"v=v2")
            })
        })
}

fn typed(content_type: &'static str, body: Value) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body.to_string()).into_response()
}

async fn types(sv: &Supervisor) -> Vec<ResourceType> {
    sv.registry.kinds().as_ref().clone()
}

pub async fn api(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
    h: HeaderMap,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    if wants_aggregated(&h) {
        return Ok(typed(
            AGGREGATED,
            resources::aggregated(&types(&sv).await, true),
        ));
    }
    Ok(Json(resources::legacy_api_versions(&sv.advertise_address)).into_response())
}

pub async fn apis(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
    h: HeaderMap,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    let t = types(&sv).await;
    if wants_aggregated(&h) {
        return Ok(typed(AGGREGATED, resources::aggregated(&t, false)));
    }
    Ok(Json(resources::legacy_group_list(&t)).into_response())
}

pub async fn core_resources(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    resources::resource_list(&types(&sv).await, "", "v1")
        .map(|v| Json(v).into_response())
        .ok_or(KubeError::NoRoute)
}

pub async fn group(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
    Path(g): Path<String>,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    resources::legacy_group(&types(&sv).await, &g)
        .map(|v| Json(v).into_response())
        .ok_or(KubeError::NoRoute)
}

pub async fn group_resources(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
    Path((g, v)): Path<(String, String)>,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    resources::resource_list(&types(&sv).await, &g, &v)
        .map(|v| Json(v).into_response())
        .ok_or(KubeError::NoRoute)
}

/// OpenAPI v2, protobuf only (what kubectl 1.27 asks for).
pub async fn openapi_v2(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    let doc = super::openapiv2::document(&types(&sv).await);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        )],
        doc,
    )
        .into_response())
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Index of per-group-version documents. The hash changes when the set of
/// kinds changes (a CRD appears), so kubectl's cache is refreshed.
pub async fn openapi_index(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    let t = types(&sv).await;
    let mut paths = serde_json::Map::new();
    let mut gvs: Vec<(String, String)> = t
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    for (g, v) in gvs {
        let p = gv_path(&g, &v);
        let hash = crate::token::ca_hash(openapi_for(&t, &g, &v).to_string().as_bytes());
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", &hash[..16])}),
        );
    }
    Ok(Json(json!({"paths": paths})).into_response())
}

pub async fn openapi_doc(
    State(sv): State<Arc<Supervisor>>,
    Extension(c): Extension<Caller>,
    Path(path): Path<String>,
) -> Result<Response, KubeError> {
    authenticated(&c)?;
    let t = types(&sv).await;
    let parts: Vec<&str> = path.split('/').collect();
    let (g, v) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return Err(KubeError::NoRoute),
    };
    if !t.iter().any(|r| r.group == g && r.version == v) {
        return Err(KubeError::NoRoute);
    }
    Ok(Json(openapi_for(&t, g, v)).into_response())
}

/// An OpenAPI 3 document for one group-version: each kind with an open
/// schema, and operations whose parameters tell kubectl the server does
/// field validation itself (so it sends `fieldValidation=Strict`).
fn openapi_for(types: &[ResourceType], group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let gvk = json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
        let schema_name = format!(
            "{}.{}.{}",
            if t.group.is_empty() { "core" } else { &t.group },
            t.version,
            t.kind
        );
        schemas.insert(
            schema_name.clone(),
            json!({"type": "object", "x-kubernetes-group-version-kind": gvk, "x-kubernetes-preserve-unknown-fields": true,
                   "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}),
        );
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let body_ref = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}});
        let op = |action: &str| {
            json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk[0], "parameters": params, "requestBody": body_ref,
                   "responses": {"200": {"description": "OK"}}})
        };
        let base = gv_path(&t.group, &t.version);
        let collection = if t.namespaced {
            format!("/{base}/namespaces/{{namespace}}/{}", t.resource)
        } else {
            format!("/{base}/{}", t.resource)
        };
        paths.insert(collection.clone(), json!({"post": op("post")}));
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({"put": op("put"), "patch": op("patch")}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "rk3s", "version": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
