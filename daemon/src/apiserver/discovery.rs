//! Discovery (aggregated v2 and the legacy documents), `/version`, health,
//! and OpenAPI v2 (see `openapiv3` for v3).

use super::resources;
use super::{KUBE_MAJOR, KUBE_MINOR};
use crate::apiserver::state::ApiState;
use crate::registry::error::KubeError;
use crate::registry::ResourceType;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub async fn version() -> Json<Value> {
    Json(json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": rk3s_api::kube_version(),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", crate::host::nodeinfo::go_arch()),
    }))
}

pub async fn health(State(sv): State<Arc<ApiState>>) -> Response {
    if sv.is_ready() {
        "ok".into_response()
    } else {
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
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

async fn types(sv: &ApiState) -> Vec<ResourceType> {
    sv.registry.kinds().as_ref().clone()
}

pub async fn api(State(sv): State<Arc<ApiState>>, h: HeaderMap) -> Result<Response, KubeError> {
    if wants_aggregated(&h) {
        return Ok(typed(
            AGGREGATED,
            resources::aggregated(&types(&sv).await, true),
        ));
    }
    Ok(Json(resources::legacy_api_versions(&sv.advertise_address)).into_response())
}

pub async fn apis(State(sv): State<Arc<ApiState>>, h: HeaderMap) -> Result<Response, KubeError> {
    let t = types(&sv).await;
    if wants_aggregated(&h) {
        let mut doc = resources::aggregated(&t, false);
        let extensions = super::aggregator::aggregated_groups(&sv).await;
        if let Some(items) = doc["items"].as_array_mut() {
            items.extend(extensions);
        }
        return Ok(typed(AGGREGATED, doc));
    }
    let mut doc = resources::legacy_group_list(&t);
    let extensions = super::aggregator::legacy_groups(&sv).await;
    if let Some(groups) = doc["groups"].as_array_mut() {
        groups.extend(extensions);
    }
    Ok(Json(doc).into_response())
}

pub async fn core_resources(State(sv): State<Arc<ApiState>>) -> Result<Response, KubeError> {
    resources::resource_list(&types(&sv).await, "", "v1")
        .map(|v| Json(v).into_response())
        .ok_or(KubeError::NoRoute)
}

pub async fn group(
    State(sv): State<Arc<ApiState>>,
    Path(g): Path<String>,
) -> Result<Response, KubeError> {
    resources::legacy_group(&types(&sv).await, &g)
        .map(|v| Json(v).into_response())
        .ok_or(KubeError::NoRoute)
}

pub async fn group_resources(
    State(sv): State<Arc<ApiState>>,
    Path((g, v)): Path<(String, String)>,
) -> Result<Response, KubeError> {
    resources::resource_list(&types(&sv).await, &g, &v)
        .map(|v| Json(v).into_response())
        .ok_or(KubeError::NoRoute)
}

/// OpenAPI v2, protobuf only (what kubectl 1.27 asks for).
pub async fn openapi_v2(State(sv): State<Arc<ApiState>>) -> Result<Response, KubeError> {
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
