//! The node agent: bootstrap (token → CA pin → node password), then a
//! websocket tunnel to the server kept alive with heartbeats, reconnected
//! with capped, jittered backoff. Runs standalone (`rk3sd agent`) or inside
//! a server (its own node).

use crate::apiclient::Identity;
use crate::config::NodeSettings;
use crate::loadbalancer::{self, LoadBalancer};
use crate::nodepassword;
use crate::systemd::Shutdown;
use crate::token::Token;
use crate::{certs, fsutil, nodeinfo};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use rk3s_api::routes::{CACERTS, CONNECT, HEADER_NODE_IP, HEADER_NODE_NAME, HEADER_NODE_PASSWORD};
use rk3s_api::tunnel::{AgentMessage, NodeInfo, ServerMessage, MAX_MESSAGE_BYTES, WS_BUFFER_BYTES};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

pub type Tunnel = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("token CA hash does not match the Cluster CA certificate hash: {expected} (token) != {actual} (server {server})")]
    CaMismatch {
        expected: String,
        actual: String,
        server: String,
    },
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("server {server} rejected the token (401): {message}. Check --token/--token-file against <data-dir>/server/token on the server")]
    Unauthorized { server: String, message: String },
    #[error("Node password rejected by {server}: {message}")]
    PasswordRejected { server: String, message: String },
    #[error("server {server} refused the registration ({status}): {message}")]
    Refused {
        server: String,
        status: u16,
        message: String,
        /// The server's Retry-After, when it gave one.
        retry_after: Option<Duration>,
    },
    #[error("tunnel: {0}")]
    Tunnel(String),
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
}

/// What `rk3sctl status` shows about the agent.
#[derive(Debug)]
pub struct AgentState {
    pub node_name: Mutex<String>,
    pub connected_server: Mutex<Option<String>>,
    pub registration: Mutex<String>,
    /// Set once the first registration succeeded.
    pub registered: tokio::sync::watch::Sender<bool>,
    /// The servers the load balancer knows (`host:port`).
    pub servers: Mutex<Vec<String>>,
    /// The cluster CIDR the servers announce (empty until the first hello).
    pub cluster_cidr: tokio::sync::watch::Sender<String>,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            node_name: Mutex::new(String::new()),
            connected_server: Mutex::new(None),
            registration: Mutex::new("starting".into()),
            registered: tokio::sync::watch::channel(false).0,
            servers: Mutex::new(Vec::new()),
            cluster_cidr: tokio::sync::watch::channel(String::new()).0,
        }
    }
}

impl AgentState {
    fn set_servers(&self, lb: &LoadBalancer) {
        *self.servers.lock().expect("lock") = lb.servers();
    }

    fn set(&self, registration: &str, server: Option<&str>) {
        *self.registration.lock().expect("lock") = registration.to_string();
        *self.connected_server.lock().expect("lock") = server.map(str::to_string);
    }
}

pub struct AgentParams {
    pub server_url: String,
    pub token: Token,
    pub node: NodeSettings,
    pub data_dir: PathBuf,
    /// Already known (embedded agent): skip the /cacerts bootstrap.
    pub ca_pem: Option<Vec<u8>>,
    /// Follow the cluster's server list (standalone agents). A server's
    /// embedded agent stays on its own server.
    pub balance: bool,
}

fn host_port(url: &str) -> &str {
    url.strip_prefix("https://")
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// GET /cacerts without verification, then pin it against the token hash.
pub async fn fetch_ca(server_url: &str, token: &Token) -> Result<Vec<u8>, AgentError> {
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| AgentError::Tunnel(e.to_string()))?;
    let url = format!("{server_url}{CACERTS}");
    let unreachable = |e: &dyn std::fmt::Display| AgentError::Unreachable {
        url: url.clone(),
        message: e.to_string(),
    };
    let resp = client.get(&url).send().await.map_err(|e| unreachable(&e))?;
    if !resp.status().is_success() {
        return Err(unreachable(&format!("HTTP {}", resp.status())));
    }
    let body = resp.bytes().await.map_err(|e| unreachable(&e))?.to_vec();
    let actual = crate::token::ca_hash(&body);
    match &token.ca_hash {
        Some(expected) if *expected != actual => Err(AgentError::CaMismatch {
            expected: expected.clone(),
            actual,
            server: server_url.to_string(),
        }),
        Some(_) => Ok(body),
        None => {
            tracing::warn!(server = server_url, ca_hash = %actual, "the token has no CA hash, so the server's CA is trusted as presented; use the full K10... token from <data-dir>/server/token to pin it");
            Ok(body)
        }
    }
}

/// Open a registered tunnel: the handshake carries the token and node
/// credentials; a refusal comes back as a Kubernetes Status.
pub async fn connect_tunnel(
    server_url: &str,
    tls: Arc<rustls::ClientConfig>,
    token_secret: &str,
    node_name: &str,
    password: &str,
    node_ips: &[String],
) -> Result<Tunnel, AgentError> {
    let url = format!("wss://{}{CONNECT}", host_port(server_url));
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| AgentError::Tunnel(e.to_string()))?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("node:{token_secret}"));
    let h = req.headers_mut();
    let hv = |s: &str| {
        http::HeaderValue::from_str(s)
            .map_err(|_| AgentError::Tunnel("header value is not valid".into()))
    };
    h.insert(http::header::AUTHORIZATION, hv(&format!("Basic {basic}"))?);
    h.insert(HEADER_NODE_NAME, hv(node_name)?);
    h.insert(HEADER_NODE_PASSWORD, hv(password)?);
    if !node_ips.is_empty() {
        h.insert(HEADER_NODE_IP, hv(&node_ips.join(","))?);
    }
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_MESSAGE_BYTES);
    cfg.max_frame_size = Some(MAX_MESSAGE_BYTES);
    cfg.read_buffer_size = WS_BUFFER_BYTES;
    cfg.write_buffer_size = WS_BUFFER_BYTES;
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let fut =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(cfg), true, Some(connector));
    let server = server_url.to_string();
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Err(_) => Err(AgentError::Unreachable {
            url,
            message: "timed out after 10s".into(),
        }),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let message = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| resp.status().to_string());
            Err(match status {
                401 => AgentError::Unauthorized { server, message },
                403 => AgentError::PasswordRejected { server, message },
                _ => AgentError::Refused {
                    server,
                    status,
                    message,
                    retry_after: retry_after(resp.headers()),
                },
            })
        }
        Ok(Err(e)) => Err(AgentError::Unreachable {
            url,
            message: e.to_string(),
        }),
    }
}

/// A Retry-After in seconds (the only form rk3s servers send).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(600)))
}

impl AgentError {
    /// When the server said to come back, spread over one more second
    /// (Retry-After has whole seconds, and every agent told "5" must not
    /// arrive in the same instant).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AgentError::Refused {
                retry_after: Some(d),
                ..
            } => Some(*d + Duration::from_secs(1).mul_f64(rand::thread_rng().gen_range(0.0..1.0))),
            _ => None,
        }
    }
}

/// Renew the node client certificate when less than this is left.
const CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);

/// Days of validity left in a PEM certificate (None if unreadable).
fn remaining(cert_pem: &[u8]) -> Option<Duration> {
    let der = rustls_pemfile::certs(&mut &cert_pem[..]).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let left = cert.validity().not_after.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(left.max(0) as u64))
}

/// Make sure `<data-dir>/agent/<identity>.crt` holds a client certificate
/// with time left; for the kubelet's, also write
/// `<data-dir>/agent/kubelet.kubeconfig` using it.
pub async fn ensure_node_cert(
    identity: Identity,
    server_url: &str,
    ca_pem: &[u8],
    token_secret: &str,
    node_name: &str,
    password: &str,
    data_dir: &std::path::Path,
) -> Result<(), AgentError> {
    let dir = data_dir.join("agent");
    let crt = dir.join(format!("{}.crt", identity.stem()));
    let key = dir.join(format!("{}.key", identity.stem()));
    let current = fsutil::read_optional(&crt)?;
    if current
        .as_deref()
        .and_then(remaining)
        .is_some_and(|left| left > CERT_RENEW_BEFORE)
        && key.exists()
    {
        return Ok(());
    }
    let kp = rcgen::KeyPair::generate().map_err(|e| AgentError::Tunnel(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity.common_name(node_name));
    let csr = params
        .serialize_request(&kp)
        .map_err(|e| AgentError::Tunnel(e.to_string()))?;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(ca_pem)
                .map_err(|e| AgentError::Tunnel(e.to_string()))?,
        )
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| AgentError::Tunnel(e.to_string()))?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("node:{token_secret}"));
    let url = format!("{server_url}{}", identity.route());
    let resp = client
        .post(&url)
        .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
        .header(HEADER_NODE_NAME, node_name)
        .header(HEADER_NODE_PASSWORD, password)
        .body(csr.der().to_vec())
        .send()
        .await
        .map_err(|e| AgentError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
    if !resp.status().is_success() {
        return Err(AgentError::Refused {
            server: server_url.to_string(),
            status: resp.status().as_u16(),
            message: format!("{} certificate request refused", identity.stem()),
            retry_after: retry_after(resp.headers()),
        });
    }
    let pem = resp
        .bytes()
        .await
        .map_err(|e| AgentError::Tunnel(e.to_string()))?;
    fsutil::ensure_dir(&dir, 0o700)?;
    fsutil::write_atomic(&key, kp.serialize_pem().as_bytes(), 0o600)?;
    fsutil::write_atomic(&crt, &pem, 0o644)?;
    tracing::info!(file = %crt.display(), "client certificate issued");
    if identity != Identity::Kubelet {
        return Ok(());
    }
    let kubeconfig = crate::kubeconfig::render(
        server_url,
        &String::from_utf8_lossy(ca_pem),
        &String::from_utf8_lossy(&pem),
        &kp.serialize_pem(),
    );
    fsutil::write_atomic(
        &dir.join("kubelet.kubeconfig"),
        kubeconfig.as_bytes(),
        0o600,
    )?;
    Ok(())
}

/// Resolve the node name: --node-name or the hostname, plus `-<id>` with --with-node-id.
pub fn node_name(node: &NodeSettings) -> Result<String, AgentError> {
    let base = node.node_name.clone().unwrap_or_else(nodeinfo::hostname);
    if node.with_node_id {
        let id = nodepassword::load_or_create_node_id(&node.node_config_dir)?;
        Ok(format!("{base}-{id}"))
    } else {
        Ok(base)
    }
}

/// Reconnection delays of an agent (public for the benchmarks, whose
/// simulated agents must storm a restarted server as real ones do).
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(250);

    pub fn new(max: Duration) -> Self {
        Self {
            next: Self::MIN.min(max),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = Self::MIN.min(self.max);
    }

    /// Jittered to 50-100% of the step so a server restart is not met by
    /// every agent at the same instant.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// For refusals an operator must fix: slow, but not giving up.
    fn slow(&self) -> Duration {
        self.max
            .min(Duration::from_secs(10))
            .mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

/// Run the agent until `cancel`. Returns early only for errors retrying
/// cannot fix (CA mismatch, unusable files).
/// How a session that ended for a host shutdown reports it.
const ENDED_FOR_SHUTDOWN: &str = "node shutting down";

pub async fn run(
    params: AgentParams,
    state: Arc<AgentState>,
    mut shutdowns: mpsc::Receiver<Shutdown>,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let mut backoff = Backoff::new(params.node.reconnect_backoff_max);
    let name = node_name(&params.node)?;
    *state.node_name.lock().expect("lock") = name.clone();
    // The runtime starts at once; its state rides on the node status.
    let (runtime_tx, runtime_rx) = tokio::sync::watch::channel(None);
    // (CRI socket, CNI config dir when the agent configures containerd).
    let mut kubelet_runtime = None;
    let imports = crate::runtime::images::Imports::default();
    if let Some(rt) = &params.node.runtime {
        let data_dir = params.data_dir.clone();
        let (settings, cni_conf_dir) = match rt {
            crate::config::Runtime::Containerd => {
                let paths = crate::runtime::containerd::Paths::new(&data_dir);
                (
                    crate::runtime::RuntimeSettings::Containerd { data_dir },
                    Some(paths.cni_conf_dir),
                )
            }
            crate::config::Runtime::Endpoint(socket) => (
                crate::runtime::RuntimeSettings::Endpoint {
                    socket: socket.clone(),
                    data_dir,
                },
                None,
            ),
        };
        kubelet_runtime = Some((settings.socket(), cni_conf_dir));
        tokio::spawn(crate::runtime::run(
            settings,
            imports.clone(),
            runtime_tx,
            cancel.child_token(),
        ));
    }
    let lb = Arc::new(if params.balance {
        LoadBalancer::load(&params.server_url, &params.data_dir, &name)
    } else {
        LoadBalancer::fixed(&params.server_url)
    });
    state.set_servers(&lb);
    let ca_pem = match &params.ca_pem {
        Some(c) => c.clone(),
        None => loop {
            // Any server hands out the cluster CA; the pin decides.
            let mut fetched = None;
            for url in lb.candidates() {
                state.set(&format!("fetching CA certificate from {url}"), None);
                match fetch_ca(&url, &params.token).await {
                    Ok(c) => {
                        fetched = Some(c);
                        break;
                    }
                    Err(e @ AgentError::CaMismatch { .. }) => return Err(e),
                    Err(e) => tracing::warn!(error = %e, "waiting for the server"),
                }
            }
            if let Some(c) = fetched {
                let dir = params.data_dir.join("agent");
                fsutil::ensure_dir(&dir, 0o700)?;
                fsutil::write_atomic(&dir.join("server-ca.crt"), &c, 0o644)?;
                break c;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff.step()) => continue,
            }
        },
    };
    let tls = Arc::new(certs::client_config_pinned(&ca_pem)?);
    // The kubelet reaches the API through the same servers, in the load
    // balancer's order, with the node certificate registration obtains.
    if let Some((cri_socket, cni_conf_dir)) = kubelet_runtime {
        let servers_lb = lb.clone();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let log_root = if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/var/log/pods")
        } else {
            params.data_dir.join("agent/pod-logs")
        };
        let servers: crate::apiclient::Servers = Arc::new(move || servers_lb.candidates());
        let kp = crate::kubelet::KubeletParams {
            node: name.clone(),
            agent_dir: params.data_dir.join("agent"),
            ca_pem: ca_pem.clone(),
            servers: servers.clone(),
            cri_socket,
            log_root,
            pods_root: params.data_dir.join("agent/pods"),
            imports: imports.clone(),
            settings: params.node.kubelet.clone(),
        };
        // A runtime the agent did not configure has a network of its own.
        if let Some(cni_conf_dir) = cni_conf_dir {
            let np = crate::network::NetworkParams {
                node: name.clone(),
                agent_dir: params.data_dir.join("agent"),
                ca_pem: ca_pem.clone(),
                servers,
                cni_conf_dir,
                cni_state_dir: params.data_dir.join("agent/cni/networks"),
                bridge: crate::runtime::containerd::Paths::new(&params.data_dir).bridge,
            };
            tokio::spawn(crate::network::run(
                np,
                state.cluster_cidr.subscribe(),
                cancel.child_token(),
            ));
        }
        tokio::spawn(crate::kubelet::run(
            kp,
            runtime_rx.clone(),
            cancel.child_token(),
        ));
    }
    let mut password = nodepassword::load_or_create(&params.node.node_config_dir)?;
    let password_file = params.node.node_config_dir.join("password");
    if params.balance {
        let every = params
            .node
            .heartbeat_interval
            .clamp(Duration::from_secs(1), Duration::from_secs(5));
        let st = state.clone();
        tokio::spawn(loadbalancer::health_checks(
            lb.clone(),
            ca_pem.clone(),
            every,
            move || st.connected_server.lock().expect("lock").is_some(),
            cancel.child_token(),
        ));
    }
    backoff.reset();
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let (url, attempt) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = try_servers(&lb, &params, &state, tls.clone(), &name, &password) => r,
        };
        let wait = match attempt {
            Ok((ws, ips)) => {
                lb.connected(&url);
                state.set("registered", Some(&url));
                state.registered.send_replace(true);
                tracing::info!(node = %name, server = %url, "registered; tunnel up");
                let identities: &[Identity] = if params.node.runtime.is_some() {
                    &[Identity::Kubelet, Identity::Controller]
                } else {
                    &[Identity::Kubelet]
                };
                for id in identities {
                    if let Err(e) = ensure_node_cert(
                        *id,
                        &url,
                        &ca_pem,
                        params.token.secret(),
                        &name,
                        &password,
                        &params.data_dir,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "could not obtain a client certificate; will retry on the next connection");
                    }
                }
                let info = nodeinfo::collect(ips, params.node.labels.clone());
                let started = Instant::now();
                let link = Link {
                    params: &params,
                    lb: &lb,
                    state: &state,
                    runtime: runtime_rx.clone(),
                };
                let end = session(ws, link, &info, &mut password, &mut shutdowns, &cancel).await;
                if end == ENDED_FOR_SHUTDOWN {
                    // The host is going down: stay disconnected until
                    // systemd stops us; the node is cordoned meanwhile.
                    state.set("host shutting down; tunnel closed", None);
                    cancel.cancelled().await;
                    return Ok(());
                }
                let server = state
                    .connected_server
                    .lock()
                    .expect("lock")
                    .clone()
                    .unwrap_or_else(|| url.clone());
                state.set(&format!("disconnected: {end}"), None);
                if cancel.is_cancelled() {
                    return Ok(());
                }
                // Whatever ended it, the next attempt goes to another server
                // first; health checks bring this one back.
                lb.failed(&server);
                tracing::warn!(node = %name, server = %server, reason = %end, "tunnel lost; reconnecting");
                // A session that lived a while earns a fast first retry.
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                backoff.step()
            }
            Err(e @ AgentError::PasswordRejected { .. }) => {
                tracing::error!(node = %name, password_file = %password_file.display(), error = %e,
                    "Node password rejected, duplicate hostname or contents of {} may not match the server's record; \
                     try a unique node name with --with-node-id, or run `rk3sctl node forget {}` on a server if this host was rebuilt",
                    password_file.display(), name);
                state.set(
                    &format!(
                        "rejected: node password does not match ({})",
                        password_file.display()
                    ),
                    None,
                );
                backoff.slow()
            }
            Err(e @ AgentError::Unauthorized { .. }) => {
                tracing::error!(error = %e, "registration refused");
                state.set("rejected: token not accepted (401)", None);
                backoff.slow()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with any server; retrying");
                state.set(&format!("connecting: {e}"), None);
                // A server shedding load says when to come back.
                e.retry_after().unwrap_or_else(|| backoff.step())
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
            Some(sd) = shutdowns.recv() => {
                // The host goes down while we are between tunnels: one
                // immediate attempt to get the node cordoned, then let go.
                match try_servers(&lb, &params, &state, tls.clone(), &name, &password).await {
                    (_, Ok((mut ws, _))) => cordon_and_close(&mut ws, &sd.reason).await,
                    (url, Err(e)) => tracing::warn!(server = %url, error = %e, "host shutting down but no server reachable to cordon the node"),
                }
                let _ = sd.done.send(());
                state.set("host shutting down; tunnel closed", None);
                cancel.cancelled().await;
                return Ok(());
            }
        }
    }
}

/// One pass over the load balancer's candidates: the first tunnel that
/// comes up wins. An unreachable or unready server moves on to the next at
/// once; a refused token or password stops the pass (every server would
/// say the same).
async fn try_servers(
    lb: &LoadBalancer,
    params: &AgentParams,
    state: &AgentState,
    tls: Arc<rustls::ClientConfig>,
    name: &str,
    password: &str,
) -> (String, Result<(Tunnel, Vec<String>), AgentError>) {
    let creds = Credentials {
        tls,
        secret: params.token.secret(),
        name,
        password,
    };
    connect_any(lb, &creds, &params.node.node_ips, |url| {
        state.set(&format!("connecting to {url}"), None)
    })
    .await
}

/// What an agent presents to register.
pub struct Credentials<'a> {
    pub tls: Arc<rustls::ClientConfig>,
    pub secret: &'a str,
    pub name: &'a str,
    pub password: &'a str,
}

/// Register through the first server that takes the agent, in the load
/// balancer's order (public for the benchmarks, whose simulated agents
/// must pick servers as real ones do). `node_ips` empty: the address
/// towards each server. A server that is busy (it answered, with a
/// Retry-After) is not marked failed, and when every server refused, its
/// answer is the one returned: an agent waits as told instead of backing
/// off on the word of a server that is down.
pub async fn connect_any(
    lb: &LoadBalancer,
    creds: &Credentials<'_>,
    node_ips: &[String],
    mut trying: impl FnMut(&str),
) -> (String, Result<(Tunnel, Vec<String>), AgentError>) {
    let mut last = None;
    let mut busy: Option<(Duration, String, AgentError)> = None;
    for url in lb.candidates() {
        trying(&url);
        let mut ips = node_ips.to_vec();
        if ips.is_empty() {
            if let Some(ip) = nodeinfo::local_ip_towards(host_port(&url)).await {
                ips.push(ip);
            }
        }
        match connect_tunnel(
            &url,
            creds.tls.clone(),
            creds.secret,
            creds.name,
            creds.password,
            &ips,
        )
        .await
        {
            Ok(ws) => return (url, Ok((ws, ips))),
            Err(e @ (AgentError::PasswordRejected { .. } | AgentError::Unauthorized { .. })) => {
                return (url, Err(e))
            }
            Err(
                e @ AgentError::Refused {
                    retry_after: Some(wait),
                    ..
                },
            ) => {
                tracing::info!(server = %url, error = %e, "server busy; trying the next one");
                // The busy server that asked for the shortest wait.
                if busy.as_ref().is_none_or(|(had, ..)| wait < *had) {
                    busy = Some((wait, url, e));
                }
            }
            Err(e) => {
                tracing::info!(server = %url, error = %e, "server unavailable; trying the next one");
                lb.failed(&url);
                last = Some((url, Err(e)));
            }
        }
    }
    if let Some((_, url, e)) = busy {
        return (url, Err(e));
    }
    last.unwrap_or_else(|| {
        (
            lb.fixed_url().to_string(),
            Err(AgentError::Tunnel("no server to connect to".into())),
        )
    })
}

async fn send(ws: &mut Tunnel, msg: &AgentMessage) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// Tell the server the host is going down (it cordons the node and acks
/// within 5 s), then close the tunnel cleanly.
async fn cordon_and_close(ws: &mut Tunnel, reason: &str) {
    tracing::info!(
        reason,
        "host shutting down: asking the server to cordon this node"
    );
    let _ = send(
        ws,
        &AgentMessage::ShuttingDown {
            reason: reason.to_string(),
        },
    )
    .await;
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Text(t) = frame {
                if matches!(
                    serde_json::from_str::<ServerMessage>(t.as_str()),
                    Ok(ServerMessage::ShutdownAck)
                ) {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !acked {
        tracing::warn!("the server did not confirm the shutdown cordon within 5 s");
    }
    let _ = ws.close(None).await;
}

/// One tunnel session; returns why it ended.
/// What a session works with besides the socket.
struct Link<'a> {
    params: &'a AgentParams,
    lb: &'a LoadBalancer,
    state: &'a AgentState,
    /// The container runtime's state (`None`: no runtime, or not known yet).
    runtime: tokio::sync::watch::Receiver<Option<rk3s_api::tunnel::RuntimeInfo>>,
}

async fn session(
    mut ws: Tunnel,
    link: Link<'_>,
    info: &NodeInfo,
    password: &mut String,
    shutdowns: &mut mpsc::Receiver<Shutdown>,
    cancel: &CancellationToken,
) -> String {
    let Link {
        params,
        lb,
        state,
        mut runtime,
    } = link;
    let hb_every = params.node.heartbeat_interval;
    let keepalive = crate::tunnels::keepalive_for(hb_every);
    let mut info = info.clone();
    info.runtime = runtime.borrow_and_update().clone();
    if let Err(e) = send(
        &mut ws,
        &AgentMessage::NodeStatus {
            info: Box::new(info.clone()),
        },
    )
    .await
    {
        return e;
    }
    let mut hb = tokio::time::interval(hb_every);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(keepalive / 5);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(Duration::from_secs(60));
    refresh.tick().await;
    let mut seq = 0u64;
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Stopped because the host goes down (a root `systemctl
                // poweroff` bypasses logind): cordon the node first.
                if crate::systemd::host_shutting_down().await {
                    cordon_and_close(&mut ws, "the host is shutting down (systemd is stopping)").await;
                    return ENDED_FOR_SHUTDOWN.into();
                }
                let _ = ws.close(None).await;
                return "agent stopping".into();
            }
            Some(sd) = shutdowns.recv() => {
                // logind announced the shutdown: cordon, close, let it go on.
                cordon_and_close(&mut ws, &sd.reason).await;
                let _ = sd.done.send(());
                return ENDED_FOR_SHUTDOWN.into();
            }
            _ = hb.tick() => {
                seq += 1;
                if let Err(e) = send(&mut ws, &AgentMessage::Heartbeat { seq }).await {
                    return e;
                }
            }
            _ = ping.tick() => {
                if last_rx.elapsed() > keepalive {
                    return format!("server silent for {:?}", last_rx.elapsed());
                }
                // Only a quiet tunnel needs a ping (heartbeat acks are
                // traffic too): a dead server is still noticed within
                // `keepalive` and a fifth.
                let half = keepalive / 2;
                if last_rx.elapsed() >= half && last_ping.elapsed() >= half {
                    last_ping = Instant::now();
                    if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                        return e.to_string();
                    }
                }
            }
            Ok(()) = runtime.changed() => {
                info.runtime = runtime.borrow_and_update().clone();
                if let Err(e) = send(&mut ws, &AgentMessage::NodeStatus { info: Box::new(info.clone()) }).await {
                    return e;
                }
            }
            _ = refresh.tick() => {
                let mut fresh = nodeinfo::collect(info.internal_ips.clone(), info.labels.clone());
                fresh.runtime = info.runtime.clone();
                if fresh != info {
                    info = fresh;
                    if let Err(e) = send(&mut ws, &AgentMessage::NodeStatus { info: Box::new(info.clone()) }).await {
                        return e;
                    }
                }
            }
            frame = ws.next() => {
                last_rx = Instant::now();
                let text = match frame {
                    None => return "server closed the connection".into(),
                    Some(Err(e)) => return e.to_string(),
                    Some(Ok(Message::Close(f))) => {
                        return match f {
                            Some(f) if !f.reason.is_empty() => format!("server closed the tunnel: {}", f.reason),
                            _ => "server closed the tunnel".into(),
                        }
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<ServerMessage>(text.as_str()) {
                    Ok(ServerMessage::Hello { server_name, server_address, servers, cluster_cidr, .. }) => {
                        tracing::debug!(server_name, server_address, ?servers, "server hello");
                        if !cluster_cidr.is_empty() {
                            state.cluster_cidr.send_if_modified(|c| {
                                let changed = *c != cluster_cidr;
                                *c = cluster_cidr;
                                changed
                            });
                        }
                        if !server_address.is_empty() {
                            // Through the fixed address, this names the
                            // server really reached; reconnects prefer it.
                            let actual = format!("https://{server_address}");
                            lb.connected(&actual);
                            *state.connected_server.lock().expect("lock") = Some(actual);
                        }
                        if lb.update(servers) {
                            state.set_servers(lb);
                        }
                    }
                    Ok(ServerMessage::Servers { servers }) => {
                        if lb.update(servers) {
                            state.set_servers(lb);
                        }
                    }
                    Ok(ServerMessage::HeartbeatAck { .. } | ServerMessage::ShutdownAck) => {}
                    Ok(ServerMessage::Error { message }) => tracing::warn!(message, "server reported an error"),
                    Ok(ServerMessage::RotatePassword { rotation_id, password: new }) => {
                        let reply = match nodepassword::store(&params.node.node_config_dir, &new.0) {
                            Ok(()) => {
                                *password = new.0;
                                tracing::info!(file = %params.node.node_config_dir.join("password").display(), "node password rotated by the server");
                                if std::env::var_os("RK3S_TEST_EXIT_AFTER_PASSWORD_WRITE").is_some() {
                                    // Test hook: die between the write and the ack.
                                    std::process::exit(3);
                                }
                                AgentMessage::PasswordAck { rotation_id }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot store the rotated node password; keeping the old one");
                                AgentMessage::PasswordNack { rotation_id, error: e.to_string() }
                            }
                        };
                        if let Err(e) = send(&mut ws, &reply).await {
                            return e;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a message this agent does not understand"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_with_retry_after_is_waited_out_with_a_second_of_spread() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "4".parse().unwrap());
        let e = AgentError::Refused {
            server: "https://s:6443".into(),
            status: 429,
            message: "busy".into(),
            retry_after: retry_after(&h),
        };
        let d = e.retry_after().expect("the server said when");
        assert!(
            d >= Duration::from_secs(4) && d < Duration::from_secs(5),
            "{d:?}"
        );
        // An HTTP date or garbage is not understood: the backoff decides.
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        let other = AgentError::Tunnel("x".into());
        assert_eq!(other.retry_after(), None);
    }

    /// One server down, the other shedding load: the agent is told to
    /// wait as the busy one said (not backed off on the dead one's word),
    /// and the busy one stays ahead of the dead one for the next round.
    #[tokio::test]
    async fn a_busy_server_is_waited_for_and_a_dead_one_goes_last() {
        let dir = tempfile::tempdir().unwrap();
        let pki = certs::Pki::load_or_create(dir.path(), &[]).unwrap();
        let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy_addr = busy.local_addr().unwrap().to_string();
        // A server that answers every request 429 with Retry-After: 7.
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config().unwrap());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = busy.accept() => r.unwrap(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = r#"{"kind":"Status","message":"too many registrations at once"}"#;
                    let reply = format!(
                        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        for order in [
            vec![dead_addr.clone(), busy_addr.clone()],
            vec![busy_addr.clone(), dead_addr.clone()],
        ] {
            let lb = LoadBalancer::in_memory(order, "node-a");
            let creds = Credentials {
                tls: Arc::new(certs::client_config_pinned(pki.ca_bundle()).unwrap()),
                secret: "secret",
                name: "node-a",
                password: "pw",
            };
            let mut tried = Vec::new();
            let (url, r) = connect_any(&lb, &creds, &["127.0.0.1".into()], |u| {
                tried.push(u.to_string())
            })
            .await;
            assert_eq!(tried.len(), 2, "{tried:?}");
            assert_eq!(url, format!("https://{busy_addr}"));
            let Err(e) = r else {
                panic!("a server took the agent")
            };
            let wait = e.retry_after().expect("the busy server's Retry-After");
            assert!(wait >= Duration::from_secs(7), "{wait:?}");
            assert_eq!(lb.candidates()[0], format!("https://{busy_addr}"));
        }
        cancel.cancel();
    }
}
