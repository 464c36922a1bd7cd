//! The kubelet's own API, as upstream serves it on :10250, here served to
//! the servers over the agent tunnel (each stream the server opens with
//! target `kubelet` is one HTTP/1.1 connection), so a node behind NAT
//! answers as well as one next to the server. The tunnel is already
//! mutually authenticated (the node's password, the cluster CA), which is
//! why there is no TLS inside it. Today: `/containerLogs`, `/healthz`,
//! `/pods`, `/stats/summary` and `/metrics/resource` (`usage`), and
//! `/exec`, `/attach`, `/portForward` (`streaming`).

use super::container_logs::{self, Liveness, LogOptions};
use super::listing::{containers_of, uid, LABEL_CONTAINER};
use super::lookup::Lookup;
use super::streaming;
use crate::agent::runtime::cri::Cri;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use tokio::io::DuplexStream;

/// The API's routes, over the runtime and the pods the kubelet follows.
pub fn router(lookup: Lookup) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route("/stats/summary", get(summary))
        .route("/metrics/resource", get(resource_metrics))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", any(streaming::exec))
        .route(
            "/attach/{namespace}/{pod}/{container}",
            any(streaming::attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            any(streaming::port_forward),
        )
        .with_state(lookup)
}

/// The pods the kubelet follows, as a PodList (upstream's `/pods`).
async fn pods(State(s): State<Lookup>) -> Response {
    let snapshot = s.desired.snapshot();
    let items: Vec<&Pod> = snapshot.iter().map(|(_, p)| p.as_ref()).collect();
    axum::Json(
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
    )
    .into_response()
}

async fn summary(State(s): State<Lookup>) -> Response {
    axum::Json(s.usage.summary()).into_response()
}

async fn resource_metrics(State(s): State<Lookup>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::usage::resource_metrics(&s.usage.summary()),
    )
        .into_response()
}

/// Serve one tunnel stream as an HTTP/1.1 connection (requests until the
/// server closes it).
pub async fn serve(stream: DuplexStream, router: Router) {
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "kubelet API stream ended");
    }
}

/// The kubelet's errors are plain text, which the apiserver turns into a
/// Status (400 → BadRequest, 404 → NotFound) as upstream's does.
fn error(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

/// The container's status in the pod's last reported status.
fn reported<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let s = pod.status.as_ref()?;
    [
        &s.container_statuses,
        &s.init_container_statuses,
        &s.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|c| c.name == name)
}

fn declares(pod: &Pod, name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == name)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
}

/// Why there are no logs yet, in upstream's words.
fn waiting(pod: &Pod, pod_name: &str, name: &str) -> String {
    let reason = reported(pod, name)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    match reason.as_deref() {
        Some("ErrImagePull") => {
            format!("container {name:?} in pod {pod_name:?} is waiting to start: image can't be pulled")
        }
        Some("ImagePullBackOff") => format!(
            "container {name:?} in pod {pod_name:?} is waiting to start: trying and failing to pull image"
        ),
        Some(r) => format!("container {name:?} in pod {pod_name:?} is waiting to start: {r}"),
        None => format!("container {name:?} in pod {pod_name:?} is waiting to start - no logs yet"),
    }
}

/// The log file and container id the request names, or the kubelet's
/// error for it.
async fn locate(
    s: &Lookup,
    ns: &str,
    pod_name: &str,
    name: &str,
    previous: bool,
) -> Result<(PathBuf, String), Response> {
    let pod = s.pod(ns, pod_name).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("pod {pod_name:?} does not exist"),
        )
    })?;
    if !declares(&pod, name) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("container {name:?} in pod {pod_name:?} is not available"),
        ));
    }
    let mut attempts: Vec<cri::Container> = containers_of(&s.cri, &uid(&pod))
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()))?
        .into_iter()
        .filter(|c| c.labels.get(LABEL_CONTAINER).map(String::as_str) == Some(name))
        .collect();
    // Newest attempt first: the current container, then the one before.
    attempts
        .sort_by_key(|c| std::cmp::Reverse((c.metadata.as_ref().map(|m| m.attempt), c.created_at)));
    let chosen = if previous {
        attempts.get(1).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {name:?} in pod {pod_name:?} not found"),
            )
        })?
    } else {
        attempts
            .first()
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, waiting(&pod, pod_name, name)))?
    };
    let status = s
        .cri
        .container_status(cri::ContainerStatusRequest {
            container_id: chosen.id.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.message().to_string()))?
        .status
        .unwrap_or_default();
    if status.log_path.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("container {name:?} in pod {pod_name:?} has no log file"),
        ));
    }
    Ok((PathBuf::from(status.log_path), chosen.id.clone()))
}

/// Asks the runtime, from the reader's blocking thread.
struct Running {
    cri: Cri,
    id: String,
    rt: tokio::runtime::Handle,
}

impl Liveness for Running {
    fn running(&mut self) -> bool {
        let req = cri::ContainerStatusRequest {
            container_id: self.id.clone(),
            verbose: false,
        };
        let state = self
            .rt
            .block_on(self.cri.container_status(req))
            .ok()
            .and_then(|r| r.status)
            .map(|s| s.state);
        state == Some(cri::ContainerState::ContainerRunning as i32)
    }
}

/// Read buffers in flight to the connection: the tunnel's flow control
/// stops the reader when the client does not read.
const IN_FLIGHT: usize = 4;

async fn container_logs(
    State(s): State<Lookup>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let opts = match LogOptions::from_query(&q, chrono::Utc::now()) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (path, id) = match locate(&s, &ns, &pod, &container, opts.previous).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    if let Err(e) = std::fs::metadata(&path) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to open log file {:?}: {e}", path.display()),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let live = Running {
        cri: s.cri.clone(),
        id,
        rt: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        if let Err(e) = container_logs::stream(path.clone(), opts, live, tx) {
            tracing::debug!(file = %path.display(), error = %e, "reading a container log ended");
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Bytes::from(b)), rx))
    });
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(body),
    )
        .into_response()
}
