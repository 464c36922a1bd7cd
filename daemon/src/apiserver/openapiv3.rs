//! OpenAPI v3, one document per group-version, which kubectl reads for
//! `kubectl explain` and, before a create or apply, to learn that the
//! server validates fields itself (a PATCH operation with a
//! `fieldValidation` parameter: it then sends `fieldValidation=Strict` and
//! skips its own checks).
//!
//! Built-in kinds' schemas come from their k8s-openapi types (schemars,
//! OpenAPI 3 settings: `#/components/schemas/io.k8s.api.apps.v1.Deployment`
//! and `allOf` around described references, as upstream writes them); a
//! CRD's from its `openAPIV3Schema`. Documents are built once per set of
//! served kinds (a CRD change makes a new set).

use super::{KUBE_MAJOR, KUBE_MINOR};
use crate::apiserver::state::ApiState;
use crate::registry::error::KubeError;
use crate::registry::ResourceType;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const SCHEMAS: &str = "#/components/schemas/";

/// Documents by path (`api/v1`, `apis/apps/v1`), each with its content hash.
type Docs = BTreeMap<String, (Arc<Value>, String)>;

/// The kinds the cached documents were built for, and the documents.
type Built = Option<(Arc<Vec<ResourceType>>, Arc<Docs>)>;

/// The documents for the kinds served now, rebuilt when those change.
fn documents(sv: &ApiState) -> Arc<Docs> {
    static CACHE: Mutex<Built> = Mutex::new(None);
    let kinds = sv.registry.kinds();
    let mut cache = CACHE.lock().expect("openapi cache");
    if let Some((k, docs)) = cache.as_ref() {
        if Arc::ptr_eq(k, &kinds) || **k == *kinds {
            return docs.clone();
        }
    }
    let mut gvs: Vec<(&str, &str)> = kinds
        .iter()
        .map(|r| (r.group.as_str(), r.version.as_str()))
        .collect();
    gvs.sort();
    gvs.dedup();
    let docs: Docs = gvs
        .into_iter()
        .map(|(g, v)| {
            let doc = document(&kinds, g, v);
            let hash = crate::credentials::token::ca_hash(doc.to_string().as_bytes());
            (gv_path(g, v), (Arc::new(doc), hash[..16].to_string()))
        })
        .collect();
    let docs = Arc::new(docs);
    *cache = Some((kinds, docs.clone()));
    docs
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group-version's document is. The hash in the
/// URL changes with the document, so kubectl's cache follows.
pub async fn index(State(sv): State<Arc<ApiState>>) -> Result<Response, KubeError> {
    let paths: Map<String, Value> = documents(&sv)
        .iter()
        .map(|(p, (_, hash))| {
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            )
        })
        .collect();
    Ok(Json(json!({"paths": paths})).into_response())
}

pub async fn group_version(
    State(sv): State<Arc<ApiState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, KubeError> {
    let docs = documents(&sv);
    let (doc, hash) = docs
        .get(path.trim_end_matches('/'))
        .ok_or(KubeError::NoRoute)?;
    let etag = format!("\"{hash}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return Ok((axum::http::StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok(([(header::ETAG, etag)], Json(doc.as_ref().clone())).into_response())
}

/// The document of one group-version: each kind's schema tagged with its
/// group-version-kind, and operations carrying the same tag.
fn document(kinds: &[ResourceType], group: &str, version: &str) -> Value {
    let mut gen = SchemaSettings::openapi3().into_generator();
    let meta_ref = gen.subschema_for::<ObjectMeta>();
    let served: Vec<&ResourceType> = kinds
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    let mut named = Vec::new();
    for t in &served {
        let name = t.strategy().schema(&mut gen).and_then(|r| {
            r.get("$ref")?
                .as_str()?
                .strip_prefix(SCHEMAS)
                .map(str::to_string)
        });
        named.push(name);
    }
    let mut schemas = gen.take_definitions(true);
    let mut paths = Map::new();
    for (t, name) in served.iter().zip(named) {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let name = name.unwrap_or_else(|| {
            // A CRD kind, named as upstream names them (reversed group).
            let rev: Vec<&str> = t.group.split('.').rev().collect();
            let name = format!("{}.{}.{}", rev.join("."), t.version, t.kind);
            schemas.insert(name.clone(), custom_schema(t, &meta_ref));
            name
        });
        if let Some(s) = schemas.get_mut(&name).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
            // k8s-openapi requires `metadata` because its Rust field is not
            // optional; upstream does not.
            if let Some(req) = s.get_mut("required").and_then(Value::as_array_mut) {
                req.retain(|r| r != "metadata");
                if req.is_empty() {
                    s.remove("required");
                }
            }
        }
        operations(&mut paths, t, &gvk, &name);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// A custom kind's schema: its CRD's, with the standard fields added, or
/// an open object when the CRD has none.
fn custom_schema(t: &ResourceType, meta_ref: &schemars::Schema) -> Value {
    let mut s =
        t.schema.as_deref().cloned().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
    if let Some(o) = s.as_object_mut() {
        let props = o
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(props) = props {
            props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            props.insert(
                "metadata".into(),
                json!({"allOf": [meta_ref.as_value()], "description": "Standard object's metadata."}),
            );
        }
    }
    s
}

/// The operations kubectl looks for: `get` on the cluster-wide list path
/// (all `kubectl explain` 1.27.0–1.27.3 reads), and PATCH with
/// `fieldValidation` on the object path (server-side field validation).
fn operations(paths: &mut Map<String, Value>, t: &ResourceType, gvk: &Value, schema: &str) {
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    let body = json!({"content": {"application/json": {"schema": {"$ref": format!("{SCHEMAS}{schema}")}}}});
    let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("{SCHEMAS}{schema}")}}}}});
    let op = |action: &str, with_body: bool| {
        let mut o = json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "responses": ok});
        if with_body {
            o["parameters"] = params.clone();
            o["requestBody"] = body.clone();
        }
        o
    };
    let base = format!("/{}", gv_path(&t.group, &t.version));
    let all = format!("{base}/{}", t.resource);
    let collection = if t.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", t.resource)
    } else {
        all.clone()
    };
    if t.namespaced {
        paths.insert(all, json!({"get": op("list", false)}));
        paths.insert(
            collection.clone(),
            json!({"get": op("list", false), "post": op("post", true)}),
        );
    } else {
        paths.insert(
            collection.clone(),
            json!({"get": op("list", false), "post": op("post", true)}),
        );
    }
    paths.insert(
        format!("{collection}/{{name}}"),
        json!({"get": op("get", false), "put": op("put", true), "patch": op("patch", true), "delete": op("delete", false)}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_schema_is_upstreams_shape() {
        let kinds = crate::registry::kinds::builtins();
        let doc = document(&kinds, "apps", "v1");
        let schemas = &doc["components"]["schemas"];
        let d = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"],
            json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
        );
        assert!(d.get("required").is_none(), "{d}");
        // Described references are wrapped in allOf, as upstream does.
        let tmpl = &schemas["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["template"];
        assert_eq!(
            tmpl["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodTemplateSpec"
        );
        assert!(tmpl["description"]
            .as_str()
            .unwrap()
            .contains("Template describes"));
        assert!(schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"].is_object());
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(doc["paths"]["/apis/apps/v1/deployments"]["get"].is_object());
    }

    #[test]
    fn a_crd_kind_gets_its_own_schema_with_metadata() {
        let crd = json!({"spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema":
                {"type": "object", "properties": {"spec": {"type": "object", "description": "The widget.",
                 "properties": {"size": {"type": "integer"}}}}}}}]}});
        let kinds = crate::registry::crd::from_crd(&crd);
        let doc = document(&kinds, "example.com", "v1");
        let w = &doc["components"]["schemas"]["com.example.v1.Widget"];
        assert_eq!(
            w["properties"]["spec"]["properties"]["size"]["type"],
            "integer"
        );
        assert_eq!(w["x-kubernetes-group-version-kind"][0]["kind"], "Widget");
        assert!(
            doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
                .is_object()
        );
    }
}
