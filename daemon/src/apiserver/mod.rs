//! The Kubernetes API that kubectl talks to: discovery, OpenAPI, and
//! get/list/watch/create/update/patch/delete over the datastore.

pub mod aggregator;
pub mod apply;
pub mod authn;
pub mod connect;
pub mod discovery;
pub mod handlers;
pub mod kubelet;
pub mod logs;
pub mod openapiv2;
pub mod openapiv3;
pub mod patch;
pub mod protobuf;
pub mod request;
pub mod resource_metrics;
pub mod resources;
pub mod response;
pub mod reviews;
pub mod selectors;
pub mod serviceaccounts;
pub mod state;
pub mod status;
pub mod subresources;
pub mod table;
pub mod watch;

use crate::apiserver::state::ApiState;
use axum::routing::{any, get};
use axum::Router;
use std::sync::Arc;

/// The Kubernetes version rk3s reports; kubectl 1.27-1.33 accept it.
pub use rk3s_api::{KUBE_MAJOR, KUBE_MINOR};

/// The controllers' work queues and reconciles, as Prometheus text
/// (authorized as the non-resource path `/metrics`, upstream's
/// `system:monitoring` role).
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::controllers::runtime::metrics_text(),
    )
}

pub fn router(sv: Arc<ApiState>) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/healthz", get(discovery::health))
        .route("/livez", get(discovery::health))
        .route("/readyz", get(discovery::health))
        .route("/metrics", get(metrics))
        .route("/api", get(discovery::api))
        .route("/apis", get(discovery::apis))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/openapi/v2", get(discovery::openapi_v2))
        .route("/openapi/v3", get(openapiv3::index))
        .route("/openapi/v3/{*path}", get(openapiv3::group_version))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            any(connect::exec),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            any(connect::attach),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
            any(connect::portforward),
        )
        .route("/api/v1/nodes/{name}/proxy", any(connect::node_proxy_root))
        .route(
            "/api/v1/nodes/{name}/proxy/{*path}",
            any(connect::node_proxy_path),
        )
        .route(
            &format!("{}/{{node}}", rk3s_api::routes::KUBELET_RELAY),
            get(connect::relay),
        )
        .route("/api/v1/{*rest}", any(handlers::core))
        .route("/apis/{group}/{version}/{*rest}", any(handlers::grouped))
        .route(
            "/.well-known/openid-configuration",
            get(serviceaccounts::openid_configuration),
        )
        .route("/openid/v1/jwks", get(serviceaccounts::jwks))
        // Layers run last-added first: authentication, then the
        // aggregator (which needs the user).
        .route_layer(axum::middleware::from_fn_with_state(
            sv.clone(),
            aggregator::middleware,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            sv.clone(),
            authn::middleware,
        ))
        .with_state(sv)
}
