//! The supervisor's routes beside the Kubernetes API on :6443, as K3s
//! serves them: the CA for joining nodes, readiness, the server list for
//! agents' load balancers, the tunnel, node client certificates.

use super::registration;
use super::supervisor::Supervisor;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

async fn readyz(State(sv): State<Arc<Supervisor>>) -> axum::response::Response {
    if !sv.api.core_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "runtime core not ready").into_response();
    }
    match sv.api.objects.store.outage() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("datastore unavailable: {why}"),
        )
            .into_response(),
    }
}

/// The live servers, for agents' load balancers (token required, as for
/// registration).
async fn apiservers(
    State(sv): State<Arc<Supervisor>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    match registration::check_token(&sv, &headers) {
        Err(e) => e.into_response(),
        Ok(()) => axum::Json(sv.membership.servers()).into_response(),
    }
}

async fn cacerts(State(sv): State<Arc<Supervisor>>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/x-pem-file")],
        sv.pki.server_ca_pem.clone(),
    )
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    crate::registry::KubeError::NotFoundMessage(format!(
        "the server could not find the requested resource ({})",
        uri.path()
    ))
    .into_response()
}

pub fn router(sv: Arc<Supervisor>) -> Router {
    use rk3s_api::routes::*;
    Router::new()
        .route(CACERTS, get(cacerts))
        .route(PING, get(|| async { "pong" }))
        .route(READYZ, get(readyz))
        .route(APISERVERS, get(apiservers))
        .route(CONNECT, get(registration::connect))
        .route(
            CLIENT_KUBELET_CERT,
            axum::routing::post(registration::client_kubelet_cert),
        )
        .route(
            CLIENT_CONTROLLER_CERT,
            axum::routing::post(registration::client_controller_cert),
        )
        .with_state(sv.clone())
        .merge(crate::apiserver::router(sv.api.clone()))
        .fallback(not_found)
}
