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

/// Largest payload of one [`StreamFrame::Data`]: small enough that a
/// heartbeat queued behind it waits a few milliseconds at most.
pub const STREAM_CHUNK_BYTES: usize = 32 * 1024;

/// Bytes either end of a stream may send before the other grants more
/// (HTTP/2's default window is 64 KiB; a tunnel's round trip is longer).
pub const STREAM_WINDOW_BYTES: u32 = 256 * 1024;

/// Streams multiplexed on the tunnel travel in websocket *binary* frames
/// (control messages stay JSON text): one kind byte, the stream id (u32,
/// big-endian), then the payload. Flow control is per stream, as in
/// HTTP/2: each end may have at most [`STREAM_WINDOW_BYTES`] unacknowledged
/// `Data` in flight and the reader grants more with `Window` as it
/// consumes, so one stalled reader holds one window, never the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// Open stream `id` to a named service on the peer (only the server
    /// opens streams today; `kubelet` is the node's kubelet API).
    Open {
        id: u32,
        target: String,
    },
    Data {
        id: u32,
        data: Vec<u8>,
    },
    /// The sender may send `increment` more bytes on `id`.
    Window {
        id: u32,
        increment: u32,
    },
    /// The sender has nothing more to send on `id` (half close).
    Close {
        id: u32,
    },
    /// The stream is gone on the sender's side; `reason` for the log.
    Reset {
        id: u32,
        reason: String,
    },
}

/// Why a binary tunnel frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("stream frame of {0} bytes is shorter than its 5-byte header")]
    Short(usize),
    #[error("stream frame has unknown kind {0}")]
    Kind(u8),
    #[error("stream frame of kind {kind} has a malformed payload of {len} bytes")]
    Payload { kind: u8, len: usize },
}

impl StreamFrame {
    const OPEN: u8 = 0;
    const DATA: u8 = 1;
    const WINDOW: u8 = 2;
    const CLOSE: u8 = 3;
    const RESET: u8 = 4;

    pub fn id(&self) -> u32 {
        match self {
            Self::Open { id, .. }
            | Self::Data { id, .. }
            | Self::Window { id, .. }
            | Self::Close { id }
            | Self::Reset { id, .. } => *id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            Self::Open { target, .. } => (Self::OPEN, target.as_bytes()),
            Self::Data { data, .. } => (Self::DATA, data),
            Self::Window { .. } => (Self::WINDOW, &[]),
            Self::Close { .. } => (Self::CLOSE, &[]),
            Self::Reset { reason, .. } => (Self::RESET, reason.as_bytes()),
        };
        let mut out = Vec::with_capacity(9 + payload.len());
        out.push(kind);
        out.extend_from_slice(&self.id().to_be_bytes());
        if let Self::Window { increment, .. } = self {
            out.extend_from_slice(&increment.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, FrameError> {
        if b.len() < 5 {
            return Err(FrameError::Short(b.len()));
        }
        let kind = b[0];
        let id = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        let p = &b[5..];
        let bad = || FrameError::Payload { kind, len: p.len() };
        let text = |p: &[u8]| String::from_utf8(p.to_vec()).map_err(|_| bad());
        Ok(match kind {
            Self::OPEN => Self::Open {
                id,
                target: text(p)?,
            },
            Self::DATA => Self::Data {
                id,
                data: p.to_vec(),
            },
            Self::WINDOW => {
                let n: [u8; 4] = p.try_into().map_err(|_| bad())?;
                Self::Window {
                    id,
                    increment: u32::from_be_bytes(n),
                }
            }
            Self::CLOSE if p.is_empty() => Self::Close { id },
            Self::RESET => Self::Reset {
                id,
                reason: String::from_utf8_lossy(p).into_owned(),
            },
            Self::CLOSE => return Err(bad()),
            k => return Err(FrameError::Kind(k)),
        })
    }
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
    fn stream_frames_round_trip() {
        for f in [
            StreamFrame::Open {
                id: 1,
                target: "kubelet".into(),
            },
            StreamFrame::Data {
                id: u32::MAX,
                data: vec![0, 1, 2, 255],
            },
            StreamFrame::Window {
                id: 7,
                increment: 65536,
            },
            StreamFrame::Close { id: 7 },
            StreamFrame::Reset {
                id: 9,
                reason: "gone".into(),
            },
        ] {
            assert_eq!(StreamFrame::decode(&f.encode()).unwrap(), f);
        }
        assert_eq!(StreamFrame::decode(&[1, 0, 0]), Err(FrameError::Short(3)));
        assert_eq!(
            StreamFrame::decode(&[9, 0, 0, 0, 1]),
            Err(FrameError::Kind(9))
        );
        assert!(StreamFrame::decode(&[2, 0, 0, 0, 1, 0]).is_err());
    }

    #[test]
    fn unknown_type_is_an_error() {
        assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"launch_missiles"}"#).is_err());
    }
}
