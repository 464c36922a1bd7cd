//! The admin socket: HTTP/JSON over a Unix socket for rk3sctl.
//!
//! The socket is created 0600 inside a private directory and moved into
//! place by rename, so it never exists with loose permissions; every
//! connection's peer credentials are checked (root or the daemon's own
//! user), so a mistaken chmod still does not open it.

use crate::agent::state::AgentState;
use crate::host::fsutil;
use crate::registry::KubeError;
use crate::server::nodes;
use crate::server::supervisor::Supervisor;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rk3s_api::admin::{Mode, StatusResponse, TokenResponse};
use rk3s_api::routes::admin as routes;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub enum Backend {
    Server(Arc<Supervisor>),
    Agent(Arc<AgentState>, Arc<AgentInfo>),
}

/// Static facts a standalone agent reports.
pub struct AgentInfo {
    pub started: Instant,
    pub server_url: String,
}

pub struct Listener {
    inner: UnixListener,
    path: PathBuf,
}

/// Bind the socket at `path`. A stale socket (nobody answering) is
/// replaced; a live one means another daemon runs, which is an error.
pub fn bind(path: &std::path::Path) -> anyhow::Result<Listener> {
    use anyhow::Context;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !dir.exists() {
        fsutil::ensure_dir(dir, 0o700)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "admin socket {} is in use: another rk3sd is running (stop it, or pass --admin-socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale admin socket {}", path.display()))?;
    }
    let private = dir.join(format!(".rk3s-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    fsutil::ensure_dir(&private, 0o700)?;
    let tmp = private.join("s");
    let result = (|| {
        let l = std::os::unix::net::UnixListener::bind(&tmp)
            .with_context(|| format!("binding admin socket {}", path.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving admin socket into {}", path.display()))?;
        l.set_nonblocking(true)?;
        Ok::<_, anyhow::Error>(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let l = result?;
    Ok(Listener {
        inner: UnixListener::from_std(l)?,
        path: path.to_path_buf(),
    })
}

/// A serving admin socket; [`Socket::stop`] closes and removes it.
pub struct Socket {
    path: PathBuf,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Socket {
    pub fn start(
        path: &std::path::Path,
        backend: Backend,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let listener = bind(path)?;
        let cancel = shutdown.child_token();
        let task = tokio::spawn(serve(listener, backend, cancel.clone()));
        Ok(Self {
            path: path.to_path_buf(),
            cancel,
            task,
        })
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }
}

fn allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    uid == 0 || uid == me
}

pub async fn serve(listener: Listener, backend: Backend, cancel: CancellationToken) {
    let app = router(backend);
    let tracker = TaskTracker::new();
    tracing::debug!(socket = %listener.path.display(), "admin socket listening");
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.inner.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        let (app, cancel) = (app.clone(), cancel.clone());
        tracker.spawn(async move {
            let mut stream = stream;
            if !uid.is_some_and(allowed) {
                tracing::warn!(uid = ?uid, "admin socket: refused a client that is neither root nor the daemon's user");
                let body = r#"{"code":"forbidden","message":"the rk3s admin socket is for root only"}"#;
                let resp = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
                return;
            }
            // Root only, so no body or time limit beyond the header timeout:
            // a password rotation legitimately waits on its node.
            let header_timeout = crate::server::https::Limits::default().header_timeout;
            crate::server::https::serve_connection(stream, app, header_timeout, cancel).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Admin handlers' error: an [`KubeError`] rendered as an admin error body.
struct AdminError(KubeError);

impl<E: Into<KubeError>> From<E> for AdminError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let body = rk3s_api::admin::ErrorBody {
            code: admin_code(&self.0).into(),
            message: self.0.to_string(),
        };
        (
            crate::apiserver::status::classify(&self.0).0,
            axum::Json(body),
        )
            .into_response()
    }
}

/// The admin socket's machine-readable code (`rk3s_api::admin::ErrorBody`),
/// from the same classification as the API's status.
fn admin_code(e: &KubeError) -> &'static str {
    match e {
        KubeError::AgentMode => "agent_mode",
        _ => match crate::apiserver::status::classify(e).1 {
            "NotFound" => "not_found",
            "AlreadyExists" | "Conflict" => "conflict",
            "Invalid" | "BadRequest" => "bad_request",
            "Unauthorized" => "unauthorized",
            "Forbidden" => "forbidden",
            "TooManyRequests" => "too_many_requests",
            "ServiceUnavailable" | "Timeout" => "unavailable",
            "RequestEntityTooLarge" => "too_large",
            _ => "internal",
        },
    }
}

type R = Result<Response, AdminError>;

fn server_only(b: &Backend) -> Result<&Arc<Supervisor>, KubeError> {
    match b {
        Backend::Server(sv) => Ok(sv),
        Backend::Agent(..) => Err(KubeError::AgentMode),
    }
}

async fn status(State(b): State<Backend>) -> R {
    let resp = match &b {
        Backend::Server(sv) => {
            // Status must answer during a datastore outage: that is when
            // an operator asks.
            let node_count = sv
                .api
                .objects
                .list("nodes", None)
                .await
                .map(|(_, n)| n.len())
                .ok();
            let (connected_server, registration) = match &sv.embedded_agent {
                Some(a) => (
                    a.connected_server.lock().expect("lock").clone(),
                    Some(a.registration.lock().expect("lock").clone()),
                ),
                None => (None, Some("disabled (--disable-agent)".into())),
            };
            let heartbeat_rtt = sv.embedded_agent.as_ref().and_then(|a| a.heartbeat_rtt());
            StatusResponse {
                mode: Mode::Server,
                version: rk3s_api::VERSION.into(),
                node_name: sv.server_name.clone(),
                uptime_seconds: sv.started.elapsed().as_secs(),
                pid: std::process::id(),
                datastore: Some(sv.api.objects.store.describe()),
                datastore_revision: sv.api.objects.store.current_revision().await.ok(),
                node_count,
                connected_agents: Some(sv.tunnels.count()),
                api_address: Some(sv.api.advertise_address.clone()),
                connected_server,
                registration,
                datastore_error: sv.api.objects.store.outage(),
                servers: sv.membership.servers(),
                leader: Some(sv.membership.leader_name()).filter(|l| !l.is_empty()),
                heartbeat_rtt,
            }
        }
        Backend::Agent(state, info) => StatusResponse {
            mode: Mode::Agent,
            version: rk3s_api::VERSION.into(),
            node_name: state.node_name.lock().expect("lock").clone(),
            uptime_seconds: info.started.elapsed().as_secs(),
            pid: std::process::id(),
            datastore: None,
            datastore_revision: None,
            node_count: None,
            connected_agents: None,
            api_address: Some(info.server_url.clone()),
            connected_server: state.connected_server.lock().expect("lock").clone(),
            registration: Some(state.registration.lock().expect("lock").clone()),
            datastore_error: None,
            servers: state.servers.lock().expect("lock").clone(),
            leader: None,
            heartbeat_rtt: state.heartbeat_rtt(),
        },
    };
    Ok(Json(resp).into_response())
}

async fn list_nodes(State(b): State<Backend>) -> R {
    let sv = server_only(&b)?;
    Ok(Json(nodes::list(sv).await?).into_response())
}

async fn list_manifests(State(b): State<Backend>) -> R {
    let sv = server_only(&b)?;
    Ok(Json(crate::server::deploy::summaries(&sv.api.objects).await?).into_response())
}

async fn show_node(State(b): State<Backend>, Path(name): Path<String>) -> R {
    let sv = server_only(&b)?;
    Ok(Json(nodes::show(sv, &name).await?).into_response())
}

#[derive(serde::Deserialize)]
struct ForgetQuery {
    #[serde(default)]
    force: bool,
}

async fn forget_node(
    State(b): State<Backend>,
    Path(name): Path<String>,
    Query(q): Query<ForgetQuery>,
) -> R {
    let sv = server_only(&b)?;
    Ok(Json(nodes::forget(sv, &name, q.force).await?).into_response())
}

async fn rotate(State(b): State<Backend>, Path(name): Path<String>) -> R {
    let sv = server_only(&b)?;
    Ok(Json(nodes::rotate_password(sv, &name).await?).into_response())
}

async fn token(State(b): State<Backend>) -> R {
    let sv = server_only(&b)?;
    Ok(Json(TokenResponse {
        token_file: sv.token_file.display().to_string(),
        token: sv.token.expose(),
        agent_token: sv.agent_token.as_ref().map(|t| t.expose()),
    })
    .into_response())
}

#[derive(serde::Deserialize)]
struct RotateKeyQuery {
    grace: Option<String>,
}

/// Tokens outlive a rotation by this much unless told otherwise: upstream's
/// default token lifetime is an hour, kubelets refresh at 80 %.
const DEFAULT_KEY_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

async fn rotate_sa_key(State(b): State<Backend>, Query(q): Query<RotateKeyQuery>) -> R {
    let sv = server_only(&b)?;
    let grace = match q.grace.as_deref() {
        None | Some("") => DEFAULT_KEY_GRACE,
        Some(g) => crate::config::parse_duration(g)
            .map_err(|e| KubeError::BadRequest(format!("--grace {g:?}: {e}")))?,
    };
    let key_id = sv
        .api
        .auth
        .tokens
        .rotate(&sv.api.objects.store, grace)
        .await
        .map_err(|e| KubeError::Internal(e.to_string()))?;
    let until = chrono::Utc::now() + chrono::Duration::seconds(grace.as_secs() as i64);
    tracing::info!(key_id, "service-account signing key rotated");
    Ok(Json(rk3s_api::admin::KeyRotateResult {
        key_id,
        previous_keys_valid_until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
    .into_response())
}

async fn fallback(uri: axum::http::Uri) -> Response {
    AdminError(KubeError::NotFoundMessage(format!(
        "no admin route {} (is rk3sctl newer than rk3sd?)",
        uri.path()
    )))
    .into_response()
}

/// The admin API; public so the parser harness can drive it in memory.
pub fn router(b: Backend) -> Router {
    Router::new()
        .route(routes::STATUS, get(status))
        .route(routes::NODES, get(list_nodes))
        .route("/v1/nodes/{name}", get(show_node).delete(forget_node))
        .route("/v1/nodes/{name}/rotate-password", post(rotate))
        .route(routes::TOKEN, get(token))
        .route(routes::MANIFESTS, get(list_manifests))
        .route(routes::ROTATE_SA_KEY, post(rotate_sa_key))
        .fallback(fallback)
        .with_state(b)
}
