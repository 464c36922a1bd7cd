//! Messages on the agent tunnel (websocket text frames, one JSON object each).
//!
//! Tagged enums keep the protocol extensible: a new variant is a new `type`,
//! and an old peer answers an unknown one with an error frame instead of
//! guessing.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Largest frame either side accepts. Messages are small JSON objects; a
/// megabyte frame is an attack or a bug.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Read/write buffer of each websocket end; grows on demand up to
/// [`MAX_MESSAGE_BYTES`] for the rare large message.
pub const WS_BUFFER_BYTES: usize = 4 * 1024;

/// What the agent reports about its host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeInfo {
    pub hostname: String,
    pub internal_ips: Vec<String>,
    pub os: String,
    pub os_image: String,
    pub kernel_version: String,
    pub architecture: String,
    /// rk3s's own release ([`crate::node_version`]).
    pub rk3s_version: String,
    /// The Kubernetes version its kubelet implements ([`crate::kube_version`]);
    /// empty from agents older than this field.
    #[serde(default)]
    pub kubelet_version: String,
    pub cpu: u32,
    /// MemTotal in KiB.
    pub memory_kib: u64,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Set on servers' embedded agents: adds the control-plane role label.
    pub control_plane: bool,
    /// The container runtime, when the agent runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeInfo>,
}

/// The container runtime as the agent's kubelet sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RuntimeInfo {
    /// `containerd://1.6.20`, as Kubernetes reports containerRuntimeVersion.
    pub version: String,
    /// CRI answers and reports RuntimeReady.
    pub ready: bool,
    /// Why not, for the node's Ready condition (empty when ready).
    #[serde(default)]
    pub message: String,
    /// Set while the pod network is not ready (CRI NetworkReady=false: no
    /// CNI config yet), with upstream's wording. The node is NotReady, but
    /// the kubelet may run host-network pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_not_ready: Option<String>,
}

/// A new node password in transit. Debug never prints it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Sent first after the upgrade and whenever the host facts change.
    NodeStatus { info: Box<NodeInfo> },
    /// Liveness and lease renewal; `seq` is echoed in `HeartbeatAck`.
    Heartbeat { seq: u64 },
    /// The new password is durably on disk.
    PasswordAck { rotation_id: String },
    /// The new password could not be stored; the old one stays valid.
    PasswordNack { rotation_id: String, error: String },
    /// The node is going down on purpose (graceful shutdown).
    ShuttingDown { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First frame from the server after the upgrade.
    Hello {
        node_name: String,
        server_name: String,
        /// `host:port` of the answering server: the agent may have come
        /// through the fixed registration address (a TCP load balancer).
        #[serde(default)]
        server_address: String,
        /// Every live server address (`host:port`), for the agent's load balancer.
        servers: Vec<String>,
        heartbeat_interval_ms: u64,
        /// The cluster CIDR pods get addresses from (`--cluster-cidr`):
        /// the agent's pod network masquerades only traffic leaving it.
        #[serde(default)]
        cluster_cidr: String,
    },
    HeartbeatAck {
        seq: u64,
    },
    /// The live servers changed (one joined, or one's lease expired).
    Servers {
        servers: Vec<String>,
    },
    RotatePassword {
        rotation_id: String,
        password: SecretString,
    },
    /// The node is cordoned after `ShuttingDown`; the agent may close.
    ShutdownAck,
    /// The server refuses a frame; the tunnel stays up.
    Error {
        message: String,
    },
}

/// Default silence after which either side drops the tunnel.
pub fn keepalive_for(heartbeat: Duration) -> Duration {
    // The agent checks every fifth of this, so a dead server (a cut
    // cable: no FIN, no RST) is noticed within ~7 s and the agent can fail
    // over well inside the 40 s grace period. The agent pings a tunnel
    // quiet for half of this; the server allows twice this.
    (heartbeat * 3).clamp(Duration::from_secs(1), Duration::from_secs(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug() {
        let m = ServerMessage::RotatePassword {
            rotation_id: "r1".into(),
            password: SecretString("hunter2hunter2".into()),
        };
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        let wire = serde_json::to_string(&m).unwrap();
        assert!(wire.contains("\"type\":\"rotate_password\""), "{wire}");
        assert_eq!(serde_json::from_str::<ServerMessage>(&wire).unwrap(), m);
    }

    #[test]
    fn unknown_type_is_an_error() {
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"launch_missiles"}"#).is_err());
    }
}
