//! What the API handlers work with. The server builds it and keeps it in
//! its supervisor; the API imports nothing of the server.

use crate::auth::Auth;
use crate::controllers::recorder::Recorder;
use crate::datastore::objects::Objects;
use crate::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A byte stream to a kubelet's API (one HTTP/1.1 connection).
pub trait KubeletIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> KubeletIo for T {}

pub type KubeletStream = Box<dyn KubeletIo>;

/// The front-proxy identity the aggregator presents to extension API
/// servers (`aggregator`): a client certificate for `system:auth-proxy`.
#[derive(Clone, Default)]
pub struct Aggregation {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Aggregation {
    pub fn new(cert_pem: String, key_pem: String) -> Self {
        Aggregation { cert_pem, key_pem }
    }
}

/// How the API reaches a node's kubelet: a byte stream carrying one
/// HTTP/1.1 connection to its API. The server implements it with the
/// agent tunnels, its own and (through a relay) the other servers'; an
/// error is the Status the client gets (naming the node and why it cannot
/// be reached).
pub trait Kubelets: Send + Sync {
    /// Through the node's tunnel to this server only.
    fn here(&self, node: &str) -> Result<tokio::io::DuplexStream, crate::registry::KubeError>;
    /// Through this server's tunnel, else through the server that holds
    /// the node's tunnel.
    fn dial<'a>(
        &'a self,
        node: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<KubeletStream, crate::registry::KubeError>>
                + Send
                + 'a,
        >,
    >;
}

/// The error for a kubelet that cannot be reached, and why.
pub fn unreachable(node: &str, why: impl std::fmt::Display) -> crate::registry::KubeError {
    crate::registry::KubeError::Unavailable(format!(
        "cannot reach the kubelet on node {node:?}: {why}"
    ))
}

pub struct ApiState {
    pub objects: Objects,
    /// Kinds and the write path every API write goes through.
    pub registry: Arc<Registry>,
    /// Authorization, the token issuer, and what they follow.
    pub auth: Arc<Auth>,
    /// The server components' one Event recorder.
    pub events: Recorder,
    /// host:port clients reach this server at (discovery, OIDC issuer).
    pub advertise_address: String,
    /// The nodes' kubelets (`pods/log`).
    pub kubelets: Arc<dyn Kubelets>,
    /// The front-proxy identity for extension API servers.
    pub aggregation: Aggregation,
    ready: AtomicBool,
}

impl ApiState {
    pub fn new(
        objects: Objects,
        registry: Arc<Registry>,
        auth: Arc<Auth>,
        events: Recorder,
        advertise_address: String,
        kubelets: Arc<dyn Kubelets>,
        aggregation: Aggregation,
    ) -> Self {
        Self {
            objects,
            registry,
            auth,
            events,
            advertise_address,
            kubelets,
            aggregation,
            ready: AtomicBool::new(false),
        }
    }

    /// Called once the server's core runs; until then /readyz says no.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The core is up (see [`Self::set_ready`]), whatever the datastore.
    pub fn core_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Serving, and the datastore answered the last time it was asked.
    pub fn is_ready(&self) -> bool {
        self.core_ready() && self.objects.store.outage().is_none()
    }
}
