//! Requests the API server makes of a node's kubelet over a stream
//! [`Kubelets`] opens (`pods/log`, the metrics API): the answer once the
//! kubelet starts giving it, and the kubelet's plain-text errors as
//! upstream's response checker turns them into Statuses (400 →
//! BadRequest, 404 → NotFound, 503 → ServiceUnavailable).

use super::state::{unreachable, Kubelets};
use crate::registry::KubeError;
use crate::streams::upgrade;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::time::Duration;

/// How long the kubelet may take to start answering (a log may then
/// stream for as long as the client follows it).
const KUBELET_ANSWER: Duration = Duration::from_secs(60);
/// How much of a kubelet's error body becomes the Status message.
const ERROR_BODY_BYTES: usize = 4096;

/// GET `path` from the kubelet of `node`: its answer once it starts (the
/// body then streams), or its error as a Status would word it.
pub async fn get(
    kubelets: &dyn Kubelets,
    node: &str,
    path: &str,
) -> Result<Response<Body>, KubeError> {
    let stream = kubelets.dial(node).await?;
    let req = Request::get(path)
        .body(Body::empty())
        .expect("a GET with a valid path");
    let resp = match tokio::time::timeout(KUBELET_ANSWER, upgrade::forward(stream, req, path)).await
    {
        Err(_) => {
            let why = format!("no answer within {} s", KUBELET_ANSWER.as_secs());
            return Err(unreachable(node, why));
        }
        Ok(Err(e)) => return Err(unreachable(node, e)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = http_body_util::Limited::new(resp.into_body(), ERROR_BODY_BYTES)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_else(|e| format!("the kubelet answered {status}: {e}"));
    Err(match status {
        StatusCode::BAD_REQUEST => KubeError::BadRequest(body),
        StatusCode::NOT_FOUND => KubeError::NotFoundMessage(body),
        StatusCode::SERVICE_UNAVAILABLE => KubeError::Unavailable(format!("node {node:?}: {body}")),
        _ => KubeError::Internal(body),
    })
}
