//! `GET /v1-rk3s/connect`: registration happens in the websocket handshake.
//! Order of checks: token (401), headers (400), readiness (503), the
//! registration gate (429 with Retry-After), node password (403, or 503
//! when the datastore cannot answer), then the websocket upgrade (400);
//! only then is the connection upgraded.

use crate::kube::names::validate_node_name;
use crate::registry::{KubeError, Subject};
use crate::server::nodepasswords::{verify_or_create, PasswordError};
use crate::server::supervisor::Supervisor;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rk3s_api::routes::{HEADER_NODE_IP, HEADER_NODE_NAME, HEADER_NODE_PASSWORD};
use rk3s_api::tunnel::{MAX_MESSAGE_BYTES, WS_BUFFER_BYTES};
use std::sync::Arc;

/// Basic auth `node:<secret>` (or `server:<secret>`) against the cluster
/// token or the agent token, in constant time.
pub fn check_token(sv: &Supervisor, headers: &HeaderMap) -> Result<(), KubeError> {
    let unauthorized = || {
        KubeError::Unauthorized(
            "not authorized: the token is missing or does not match the server's".into(),
        )
    };
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let encoded = value.strip_prefix("Basic ").ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| unauthorized())?;
    let decoded = String::from_utf8(decoded).map_err(|_| unauthorized())?;
    let (user, secret) = decoded.split_once(':').ok_or_else(unauthorized)?;
    if user != "node" && user != "server" {
        return Err(unauthorized());
    }
    // Evaluate both comparisons so timing does not reveal which token matched.
    let server_ok = sv.token.secret_matches(secret);
    let agent_ok = sv
        .agent_token
        .as_ref()
        .is_some_and(|t| t.secret_matches(secret));
    if server_ok | agent_ok {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub async fn connect(
    State(sv): State<Arc<Supervisor>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match admit(&sv, &headers).await {
        Err(e) => e.into_response(),
        Ok(node) => match ws {
            Err(rejection) => KubeError::BadRequest(format!(
                "{} requires a websocket upgrade: {rejection}",
                rk3s_api::routes::CONNECT
            ))
            .into_response(),
            Ok(ws) => ws
                .max_message_size(MAX_MESSAGE_BYTES)
                .max_frame_size(MAX_MESSAGE_BYTES)
                // Messages are tiny; tungstenite's 128 KiB default buffers
                // would cost 128 MiB per thousand agents.
                .read_buffer_size(WS_BUFFER_BYTES)
                .write_buffer_size(WS_BUFFER_BYTES)
                .on_upgrade(move |socket| crate::server::session::serve_session(sv, socket, node))
                .into_response(),
        },
    }
}

/// `POST /v1-rk3s/client-kubelet.crt`: the same checks as registration,
/// then a client certificate CN=system:node:<node>, O=system:nodes for the
/// key in the CSR body (DER).
pub async fn client_kubelet_cert(
    State(sv): State<Arc<Supervisor>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    issue(&sv, &headers, &body, |node| {
        (format!("system:node:{node}"), &["system:nodes"][..])
    })
    .await
}

/// `POST /v1-rk3s/client-rk3s-controller.crt`: the same checks, then a
/// certificate CN=system:rk3s-controller (bound to the ClusterRole of that
/// name: what the agent's pod network needs to see of other nodes).
pub async fn client_controller_cert(
    State(sv): State<Arc<Supervisor>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    issue(&sv, &headers, &body, |_| {
        (crate::auth::policy::RK3S_CONTROLLER.to_string(), &[][..])
    })
    .await
}

async fn issue(
    sv: &Arc<Supervisor>,
    headers: &HeaderMap,
    csr: &[u8],
    subject: impl Fn(&str) -> (String, &'static [&'static str]),
) -> Response {
    let node = match admit(sv, headers).await {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let (cn, orgs) = subject(&node);
    match sv.pki.issue_client_cert(csr, &cn, orgs) {
        Ok(pem) => (
            [(http::header::CONTENT_TYPE, "application/x-pem-file")],
            pem,
        )
            .into_response(),
        Err(e) => KubeError::BadRequest(format!("cannot sign the certificate request: {e}"))
            .into_response(),
    }
}

/// Everything before the upgrade; returns the admitted node name.
async fn admit(sv: &Arc<Supervisor>, headers: &HeaderMap) -> Result<String, KubeError> {
    check_token(sv, headers)?;
    let name = header(headers, HEADER_NODE_NAME)
        .ok_or_else(|| KubeError::BadRequest("node name not set (header Rk3s-Node-Name)".into()))?;
    let password = header(headers, HEADER_NODE_PASSWORD).ok_or_else(|| {
        KubeError::BadRequest("node password not set (header Rk3s-Node-Password)".into())
    })?;
    validate_node_name(name).map_err(|e| KubeError::BadRequest(e.to_string()))?;
    if let Some(ips) = header(headers, HEADER_NODE_IP) {
        for ip in ips.split(',') {
            if ip.trim().parse::<std::net::IpAddr>().is_err() {
                return Err(KubeError::BadRequest(format!(
                    "invalid node IP {:?} in header Rk3s-Node-IP",
                    ip.trim()
                )));
            }
        }
    }
    if password.len() > 256 {
        return Err(KubeError::BadRequest(
            "node password is longer than 256 characters".into(),
        ));
    }
    if !sv.api.is_ready() {
        return Err(KubeError::Unavailable(
            "server is starting; try again".into(),
        ));
    }
    // Checked before the password: refusing costs nothing, while a queue
    // of thousands of hashes would outlast the agents' 10 s timeout and
    // be redone on every retry.
    let _pass = sv
        .registrations
        .enter()
        .await
        .map_err(|wait| KubeError::TooManyRequests {
            message: "too many registrations in progress; try again later".into(),
            cause: None,
            retry_after: Some(wait.as_secs().clamp(1, u32::MAX as u64) as u32),
        })?;
    match verify_or_create(&sv.api.registry, name, password).await {
        Ok(()) => Ok(name.to_string()),
        Err(PasswordError::Mismatch { node }) => {
            tracing::warn!(node = %node, "registration refused: node password does not match the stored hash");
            Err(KubeError::forbidden(Subject::default(), format!(
                "unable to verify password for node {node}: hash does not match. \
                 Another host may be using this node name, or the agent's password file \
                 (/etc/rancher/node/password, or <node-config-dir>/password) was lost or replaced. \
                 Restore the file, give the host a unique name with --with-node-id (or --node-name), \
                 or, if the host was rebuilt, run `rk3sctl node forget {node}` on a server."
            )))
        }
        Err(e) => {
            tracing::error!(node = name, error = %e, "registration refused: cannot verify node password");
            Err(KubeError::Unavailable(format!(
                "cannot verify the node password right now ({e}); try again"
            )))
        }
    }
}
