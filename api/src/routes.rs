//! Route and header names. The supervisor routes live under `/v1-rk3s/`
//! (K3s uses `/v1-k3s/`); the admin socket routes under `/v1/`.

/// Unauthenticated: the cluster CA bundle agents pin against the token hash.
pub const CACERTS: &str = "/cacerts";
/// Unauthenticated liveness probe, answers `pong`.
pub const PING: &str = "/ping";
/// Readiness of the supervisor: `ok`, or 503 with a reason.
pub const READYZ: &str = "/v1-rk3s/readyz";
/// Websocket tunnel; registration happens in its HTTP handshake.
pub const CONNECT: &str = "/v1-rk3s/connect";

/// Token-authenticated: JSON list of live server addresses (`host:port`).
pub const APISERVERS: &str = "/v1-rk3s/apiservers";

/// POST a DER CSR, get the node's client certificate (PEM).
pub const CLIENT_KUBELET_CERT: &str = "/v1-rk3s/client-kubelet.crt";
/// POST a DER CSR, get the agent's controller certificate (PEM): the
/// identity its pod-network code watches Nodes with (K3s's
/// `client-k3s-controller.crt`).
pub const CLIENT_CONTROLLER_CERT: &str = "/v1-rk3s/client-rk3s-controller.crt";

/// Server to server, with a client certificate of the cluster's servers:
/// `GET <KUBELET_RELAY>/<node>` upgraded to [`KUBELET_RELAY_PROTOCOL`]
/// becomes a stream to the node's kubelet through the node's tunnel to
/// the answering server.
pub const KUBELET_RELAY: &str = "/v1-rk3s/kubelet";
pub const KUBELET_RELAY_PROTOCOL: &str = "rk3s-kubelet";

/// Header carrying the agent's node name.
pub const HEADER_NODE_NAME: &str = "Rk3s-Node-Name";
/// Header carrying the agent's node password (over TLS only).
pub const HEADER_NODE_PASSWORD: &str = "Rk3s-Node-Password";
/// Header carrying the agent's node IPs, comma separated.
pub const HEADER_NODE_IP: &str = "Rk3s-Node-IP";

/// Admin socket routes.
pub mod admin {
    pub const STATUS: &str = "/v1/status";
    pub const NODES: &str = "/v1/nodes";
    pub const TOKEN: &str = "/v1/token";
    pub const MANIFESTS: &str = "/v1/manifests";
    /// POST `?grace=<duration>`: sign service-account tokens with a new key.
    pub const ROTATE_SA_KEY: &str = "/v1/service-account-key/rotate";

    pub fn node(name: &str) -> String {
        format!("/v1/nodes/{name}")
    }

    pub fn rotate_password(name: &str) -> String {
        format!("/v1/nodes/{name}/rotate-password")
    }
}
