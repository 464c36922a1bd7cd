//! The node agent: it joins a cluster (token → CA pin → node password →
//! client certificates), keeps a websocket tunnel to a server (heartbeats,
//! reconnection with capped, jittered back-off), and runs the node's
//! container runtime, kubelet and pod network. Runs standalone (`rk3sd
//! agent`) or inside a server (its own node).

pub mod apiclient;
pub mod backoff;
pub mod bootstrap;
pub mod kubelet;
pub mod loadbalancer;
pub mod network;
pub mod registration;
pub mod runtime;
pub mod session;
pub mod settings;
pub mod state;

pub use backoff::Backoff;
pub use settings::{NodeSettings, Runtime};
pub use state::AgentState;

use crate::credentials::certs;
use crate::credentials::token::Token;
use crate::host::fsutil;
use crate::host::systemd::Shutdown;
use loadbalancer::LoadBalancer;
use rand::Rng;
use rk3s_api::tunnel::RuntimeInfo;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

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

/// A Retry-After in seconds (the only form rk3s servers send).
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
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

/// Run the agent until `cancel`. Returns early only for errors retrying
/// cannot fix (CA mismatch, unusable files).
pub async fn run(
    params: AgentParams,
    state: Arc<AgentState>,
    mut shutdowns: mpsc::Receiver<Shutdown>,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let name = params.node.resolve_name()?;
    *state.node_name.lock().expect("lock") = name.clone();
    // The runtime starts at once; its state rides on the node status.
    let node_runtime = start_runtime(&params, &cancel);
    let lb = Arc::new(if params.balance {
        LoadBalancer::load(&params.server_url, &params.data_dir, &name)
    } else {
        LoadBalancer::fixed(&params.server_url)
    });
    state.set_servers(lb.servers());
    let mut backoff = Backoff::new(params.node.reconnect_backoff_max);
    let Some(ca_pem) = bootstrap::obtain_ca(&lb, &params, &state, &mut backoff, &cancel).await?
    else {
        return Ok(());
    };
    backoff.reset();
    // The kubelet's API, once it runs; the tunnel serves the servers' streams with it.
    let (kubelet_api, kubelet_api_rx) = watch::channel(None);
    if let Some(node_runtime) = &node_runtime {
        let kubelet = Kubelet {
            runtime: node_runtime,
            api: kubelet_api,
        };
        start_kubelet_and_network(&params, &name, &ca_pem, &lb, &state, kubelet, &cancel);
    }
    if params.balance {
        start_health_checks(&params, &lb, &ca_pem, &state, &cancel);
    }
    let joined = registration::Joined {
        params: &params,
        state: &state,
        lb: &lb,
        name: &name,
        ca_pem: &ca_pem,
        runtime: node_runtime
            .map(|r| r.status)
            .unwrap_or_else(|| watch::channel(None).1),
        kubelet_api: kubelet_api_rx,
    };
    registration::stay_registered(joined, backoff, &mut shutdowns, &cancel).await
}

/// The node's container runtime, as the kubelet reaches it.
struct NodeRuntime {
    cri_socket: PathBuf,
    /// Where the pod network's CNI config goes, when the agent configured
    /// containerd (a runtime it did not configure has a network of its own).
    cni_conf_dir: Option<PathBuf>,
    imports: runtime::images::Imports,
    /// Its state (`None` until known), for the node status.
    status: watch::Receiver<Option<RuntimeInfo>>,
}

/// What the kubelet runs on and where it publishes its API.
struct Kubelet<'a> {
    runtime: &'a NodeRuntime,
    api: watch::Sender<Option<axum::Router>>,
}

/// Start containerd (or wait on the configured CRI socket); `None` with
/// `--disable-runtime`.
fn start_runtime(params: &AgentParams, cancel: &CancellationToken) -> Option<NodeRuntime> {
    let rt = params.node.runtime.as_ref()?;
    let data_dir = params.data_dir.clone();
    let (settings, cni_conf_dir) = match rt {
        Runtime::Containerd => {
            let paths = runtime::containerd::Paths::new(&data_dir);
            (
                runtime::RuntimeSettings::Containerd { data_dir },
                Some(paths.cni_conf_dir),
            )
        }
        Runtime::Endpoint(socket) => (
            runtime::RuntimeSettings::Endpoint {
                socket: socket.clone(),
                data_dir,
            },
            None,
        ),
    };
    let (tx, status) = watch::channel(None);
    let imports = runtime::images::Imports::default();
    let cri_socket = settings.socket();
    tokio::spawn(runtime::run(
        settings,
        imports.clone(),
        tx,
        cancel.child_token(),
    ));
    Some(NodeRuntime {
        cri_socket,
        cni_conf_dir,
        imports,
        status,
    })
}

/// The kubelet and the pod network reach the API through the same
/// servers, in the load balancer's order, with the node certificates
/// registration obtains.
fn start_kubelet_and_network(
    params: &AgentParams,
    name: &str,
    ca_pem: &[u8],
    lb: &Arc<LoadBalancer>,
    state: &AgentState,
    kubelet: Kubelet<'_>,
    cancel: &CancellationToken,
) {
    let node_runtime = kubelet.runtime;
    let servers_lb = lb.clone();
    let servers: apiclient::Servers = Arc::new(move || servers_lb.candidates());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let log_root = if unsafe { libc::geteuid() } == 0 {
        PathBuf::from("/var/log/pods")
    } else {
        params.data_dir.join("agent/pod-logs")
    };
    let agent_dir = params.data_dir.join("agent");
    if let Some(cni_conf_dir) = &node_runtime.cni_conf_dir {
        let np = network::NetworkParams {
            node: name.to_string(),
            agent_dir: agent_dir.clone(),
            ca_pem: ca_pem.to_vec(),
            servers: servers.clone(),
            cni_conf_dir: cni_conf_dir.clone(),
            cni_state_dir: params.data_dir.join("agent/cni/networks"),
            bridge: runtime::containerd::Paths::new(&params.data_dir).bridge,
        };
        tokio::spawn(network::run(
            np,
            state.cluster_cidr.subscribe(),
            cancel.child_token(),
        ));
    }
    let kp = kubelet::KubeletParams {
        node: name.to_string(),
        agent_dir,
        ca_pem: ca_pem.to_vec(),
        servers,
        cri_socket: node_runtime.cri_socket.clone(),
        log_root,
        pods_root: params.data_dir.join("agent/pods"),
        imports: node_runtime.imports.clone(),
        settings: params.node.kubelet.clone(),
        api: kubelet.api,
    };
    tokio::spawn(kubelet::run(
        kp,
        node_runtime.status.clone(),
        cancel.child_token(),
    ));
}

/// A standalone agent probes the servers it is not connected to, so a
/// failed one comes back into the load balancer's rotation.
fn start_health_checks(
    params: &AgentParams,
    lb: &Arc<LoadBalancer>,
    ca_pem: &[u8],
    state: &Arc<AgentState>,
    cancel: &CancellationToken,
) {
    let every = params
        .node
        .heartbeat_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(5));
    let st = state.clone();
    tokio::spawn(loadbalancer::health_checks(
        lb.clone(),
        ca_pem.to_vec(),
        every,
        move || st.connected_server.lock().expect("lock").is_some(),
        cancel.child_token(),
    ));
}
