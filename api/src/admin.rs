//! Admin-socket API (HTTP/JSON over a Unix socket, routes in
//! [`crate::routes::admin`]).

use serde::{Deserialize, Serialize};

/// One row of `rk3sctl node list`. Field names are the JSON contract of
/// `rk3sctl node list -o json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSummary {
    pub name: String,
    /// `Ready`, `NotReady` or `Unknown` (from the node's Ready condition).
    pub status: String,
    pub roles: Vec<String>,
    /// The server holding this node's tunnel, empty when none does.
    pub connected: String,
    pub internal_ip: String,
    pub version: String,
    /// RFC 3339 time of the last heartbeat (the node Lease's renewTime).
    pub last_heartbeat: Option<String>,
    pub age_seconds: i64,
    /// Set when the node is cordoned (e.g. shutting down).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unschedulable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_heartbeat_time: Option<String>,
    pub last_transition_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Address {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

/// `rk3sctl node show NAME`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub summary: NodeSummary,
    pub labels: std::collections::BTreeMap<String, String>,
    pub conditions: Vec<Condition>,
    pub addresses: Vec<Address>,
    pub os_image: String,
    pub kernel_version: String,
    pub architecture: String,
    pub created: Option<String>,
    /// When the node's password hash was first stored or last rotated.
    pub password_set: Option<String>,
    /// A rotation started but not yet confirmed by the agent.
    #[serde(default)]
    pub password_rotation_pending: bool,
}

/// Result of `rk3sctl node forget`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ForgetResult {
    pub name: String,
    pub node_deleted: bool,
    pub lease_deleted: bool,
    pub password_secret_deleted: bool,
    pub tunnel_closed: bool,
}

/// Result of `rk3sctl node rotate-password`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RotateResult {
    pub name: String,
    pub password_set: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Server,
    Agent,
}

/// `rk3sctl status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusResponse {
    pub mode: Mode,
    pub version: String,
    pub node_name: String,
    pub uptime_seconds: u64,
    pub pid: u32,
    /// Server: the datastore kind and location (credentials removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_agents: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_address: Option<String>,
    /// Agent (and the server's embedded agent): where the tunnel goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_server: Option<String>,
    /// Agent: `registered`, `connecting`, `rejected: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// Server: why the datastore cannot be reached, while it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore_error: Option<String>,
    /// Server: the live servers. Agent: the servers its load balancer knows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Server: the server holding the leader lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Agent (and the server's embedded agent): heartbeat round trips on
    /// the tunnel, the most recent ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_rtt: Option<RttSummary>,
}

/// Round trips of the last `samples` heartbeats (heartbeat → ack).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RttSummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// `rk3sctl token`: where the token lives. The secret itself is returned
/// only because the socket is root-only; rk3sctl prints it on request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenResponse {
    pub token_file: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
}

/// The answer to a service-account signing key rotation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRotateResult {
    /// `kid` of the key that signs from now on.
    pub key_id: String,
    /// Until when tokens signed by the previous keys still verify (RFC 3339).
    pub previous_keys_valid_until: String,
}

/// Every admin error is this JSON body with a matching HTTP status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// Machine-readable: `not_found`, `conflict`, `agent_mode`, ...
    pub code: String,
    /// A sentence a person can act on.
    pub message: String,
}

/// `rk3sctl manifest list`: one auto-deployed manifest (its Addon).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestSummary {
    pub name: String,
    pub file: String,
    pub checksum: String,
    pub objects: usize,
    /// When it was last applied (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    /// Empty when the last apply succeeded.
    #[serde(default)]
    pub error: String,
}
