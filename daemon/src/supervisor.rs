//! The server's shared state, handed to everything the server runs (API,
//! tunnels, registration, manifests, admin socket). `server` builds it and
//! starts those; they import it from here, so nothing points back up at
//! `server`.

use crate::agent::AgentState;
use crate::certs::Pki;
use crate::cluster::Membership;
use crate::objects::Objects;
use crate::token::Token;
use crate::tunnels::Tunnels;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Shared state of a running server.
pub struct Supervisor {
    pub objects: Objects,
    /// Kinds and the write path every API write goes through.
    pub registry: Arc<crate::registry::Registry>,
    pub pki: Pki,
    pub token: Token,
    pub agent_token: Option<Token>,
    pub token_file: PathBuf,
    pub tunnels: Tunnels,
    /// This server's name (its node name), shown as CONNECTED.
    pub server_name: String,
    /// The server's own node, when it runs its embedded agent.
    pub own_node: Option<String>,
    /// host:port agents can reach this server at.
    pub advertise_address: String,
    pub heartbeat_interval: Duration,
    pub keepalive_timeout: Duration,
    pub grace_period: Duration,
    pub shutdown: CancellationToken,
    pub started: Instant,
    pub(crate) ready: AtomicBool,
    pub embedded_agent: Option<Arc<AgentState>>,
    pub membership: Arc<Membership>,
    /// Pod CIDRs for nodes.
    pub ipam: crate::ipam::Ipam,
    /// The pod CIDR claims this server knows of.
    pub pod_cidrs: crate::ipam::Claims,
    /// Authorization, the token issuer, and what they follow.
    pub auth: Arc<crate::auth::Auth>,
    /// Registrations in progress (`--max-registrations-inflight`).
    pub registrations: crate::gate::Gate,
    /// The one Event recorder of the server's components.
    pub events: crate::controllers::recorder::Recorder,
}

impl Supervisor {
    /// Serving, and the datastore answered the last time it was asked.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.objects.store.outage().is_none()
    }
}

/// Namespaces that always exist, as in Kubernetes.
pub use crate::registry::core::SYSTEM_NAMESPACES;
