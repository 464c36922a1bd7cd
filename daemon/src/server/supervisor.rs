//! The server's shared state, handed to what the server runs beside the
//! API (tunnel sessions, registration, node removal, the admin socket); the
//! API's own state is kept in it. `server::start` builds it; the modules
//! import it from here rather than from `server`'s root.

use crate::agent::state::AgentState;
use crate::apiserver::state::ApiState;
use crate::credentials::certs::Pki;
use crate::credentials::token::Token;
use crate::server::cluster::Membership;
use crate::server::tunnels::Tunnels;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Shared state of a running server.
pub struct Supervisor {
    /// The API's state: objects, registry, auth, the Event recorder.
    pub api: Arc<ApiState>,
    pub pki: Pki,
    pub token: Token,
    pub agent_token: Option<Token>,
    pub token_file: PathBuf,
    pub tunnels: Arc<Tunnels>,
    /// This server's name (its node name), shown as CONNECTED.
    pub server_name: String,
    /// The server's own node, when it runs its embedded agent.
    pub own_node: Option<String>,
    pub heartbeat_interval: Duration,
    pub keepalive_timeout: Duration,
    pub grace_period: Duration,
    pub shutdown: CancellationToken,
    pub started: Instant,
    pub embedded_agent: Option<Arc<AgentState>>,
    pub membership: Arc<Membership>,
    /// Pod CIDRs for nodes.
    pub ipam: crate::server::ipam::Ipam,
    /// The pod CIDR claims this server knows of.
    pub pod_cidrs: crate::server::ipam::Claims,
    /// Registrations in progress (`--max-registrations-inflight`).
    pub registrations: crate::server::gate::Gate,
}
