//! `pods/exec`, `pods/attach` and `pods/portforward`: upstream's
//! "connect" subresources. Authorized here (`create` on the subresource,
//! whatever the method: a WebSocket's GET included, as upstream has
//! required since 1.31), checked against the pod (on a node, not
//! finished, the container its own), then passed with its upgrade to the
//! node's kubelet over a tunnel stream (`streams::upgrade`). The client
//! and the runtime's stream server then speak the streaming protocol
//! end to end (SPDY/3.1, or the `v4.channel.k8s.io` WebSocket protocols).
//! `nodes/proxy` passes any request on to the node's kubelet the same way.

use super::authn::Requester;
use super::logs::container_of;
use super::state::{unreachable, ApiState};
use crate::auth::SERVERS;
use crate::registry::{kinds, KubeError};
use crate::streams::upgrade;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use k8s_openapi::api::core::v1::Pod;
use std::sync::Arc;

/// The three subresources, as their path segment names them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Connect {
    Exec,
    Attach,
    PortForward,
}

impl Connect {
    fn subresource(self) -> &'static str {
        match self {
            Connect::Exec => "exec",
            Connect::Attach => "attach",
            Connect::PortForward => "portforward",
        }
    }
}

/// The query's `container` (the pod's only one when it names none).
fn asked_container(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.into_owned())
        .filter(|c| !c.is_empty())
}

async fn connect(
    sv: &ApiState,
    Requester(user): Requester,
    kind: Connect,
    (ns, name): (String, String),
    query: String,
    req: Request,
) -> Result<Response, KubeError> {
    sv.auth.authorize(
        &user,
        &crate::auth::Request::resource("create", "", "pods", kind.subresource(), &ns, &name),
    )?;
    let obj = sv
        .registry
        .get(&kinds::PODS.resource_type(), Some(&ns), &name)
        .await?;
    let pod: Pod = serde_json::from_value(obj)
        .map_err(|e| KubeError::Internal(format!("stored pod {name} does not decode: {e}")))?;
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if kind != Connect::PortForward && matches!(phase.as_str(), "Succeeded" | "Failed") {
        return Err(KubeError::BadRequest(format!(
            "cannot {} into a container in a completed pod; current phase is {phase}",
            kind.subresource()
        )));
    }
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Err(KubeError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let path = match kind {
        Connect::PortForward => format!("/portForward/{ns}/{name}?{query}"),
        _ => {
            let container = container_of(&pod, &name, asked_container(&query).as_deref())?;
            let which = if kind == Connect::Exec {
                "exec"
            } else {
                "attach"
            };
            format!("/{which}/{ns}/{name}/{container}?{query}")
        }
    };
    let stream = sv.kubelets.dial(&node).await?;
    upgrade::forward(stream, req, &path)
        .await
        .map_err(|e| unreachable(&node, e))
}

macro_rules! handler {
    ($fn:ident, $kind:expr) => {
        pub async fn $fn(
            State(sv): State<Arc<ApiState>>,
            Extension(requester): Extension<Requester>,
            Path(target): Path<(String, String)>,
            RawQuery(query): RawQuery,
            req: Request<Body>,
        ) -> Response {
            connect(
                &sv,
                requester,
                $kind,
                target,
                query.unwrap_or_default(),
                req,
            )
            .await
            .unwrap_or_else(IntoResponse::into_response)
        }
    };
}

handler!(exec, Connect::Exec);
handler!(attach, Connect::Attach);
handler!(portforward, Connect::PortForward);

/// `nodes/{name}/proxy/{path}`: a request passed on to the node's kubelet
/// with its upgrade, if any (`kubectl get --raw
/// /api/v1/nodes/<node>/proxy/stats/summary`). Authorized as upstream
/// authorizes it: the method's verb on `nodes/proxy`.
async fn node_proxy(
    sv: &ApiState,
    Requester(user): Requester,
    name: String,
    path: String,
    query: Option<String>,
    req: Request,
) -> Result<Response, KubeError> {
    let verb = match *req.method() {
        axum::http::Method::GET | axum::http::Method::HEAD => "get",
        axum::http::Method::POST => "create",
        axum::http::Method::PUT => "update",
        axum::http::Method::PATCH => "patch",
        axum::http::Method::DELETE => "delete",
        _ => return Err(KubeError::MethodNotAllowed),
    };
    sv.auth.authorize(
        &user,
        &crate::auth::Request::resource(verb, "", "nodes", "proxy", "", &name),
    )?;
    // The node must exist (a NotFound names it, as upstream's does).
    sv.registry
        .get(&kinds::NODES.resource_type(), None, &name)
        .await?;
    let mut target = format!("/{}", path.trim_start_matches('/'));
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(&q);
    }
    let stream = sv.kubelets.dial(&name).await?;
    upgrade::forward(stream, req, &target)
        .await
        .map_err(|e| unreachable(&name, e))
}

pub async fn node_proxy_root(
    State(sv): State<Arc<ApiState>>,
    Extension(requester): Extension<Requester>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    req: Request<Body>,
) -> Response {
    node_proxy(&sv, requester, name, String::new(), query, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn node_proxy_path(
    State(sv): State<Arc<ApiState>>,
    Extension(requester): Extension<Requester>,
    Path((name, path)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    req: Request<Body>,
) -> Response {
    node_proxy(&sv, requester, name, path, query, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1-rk3s/kubelet/{node}` with `Upgrade: rk3s-kubelet`, from
/// another server (a client certificate in [`SERVERS`]): the upgraded
/// connection becomes a stream to the node's kubelet through its tunnel
/// to this server, never relayed again, so any server answers for any
/// node in one hop.
pub async fn relay(
    State(sv): State<Arc<ApiState>>,
    Extension(Requester(user)): Extension<Requester>,
    Path(node): Path<String>,
    mut req: Request<Body>,
) -> Response {
    let relayed = async {
        if !user.groups.iter().any(|g| g == SERVERS) {
            return Err(KubeError::Forbidden {
                subject: crate::registry::error::Subject::new("", "nodes", &node),
                reason: format!("user {:?} is not a server of this cluster", user.name),
            });
        }
        let wanted = req
            .headers()
            .get(axum::http::header::UPGRADE)
            .is_some_and(|v| v == rk3s_api::routes::KUBELET_RELAY_PROTOCOL);
        if !wanted {
            return Err(KubeError::BadRequest(format!(
                "a kubelet relay needs Upgrade: {}",
                rk3s_api::routes::KUBELET_RELAY_PROTOCOL
            )));
        }
        let mut stream = sv.kubelets.here(&node)?;
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(up) => {
                    let mut up = hyper_util::rt::TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut up, &mut stream).await;
                }
                Err(e) => tracing::debug!(error = %e, "kubelet relay: no upgrade"),
            }
        });
        Ok(Response::builder()
            .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
            .header(axum::http::header::CONNECTION, "Upgrade")
            .header(
                axum::http::header::UPGRADE,
                rk3s_api::routes::KUBELET_RELAY_PROTOCOL,
            )
            .body(Body::empty())
            .expect("a valid 101"))
    };
    relayed.await.unwrap_or_else(IntoResponse::into_response)
}
