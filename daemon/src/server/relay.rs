//! How this server reaches any node's kubelet (`apiserver::state::Kubelets`):
//! through the node's tunnel if it is on this server, else through the
//! server that holds it. The holder is the one the node's Lease names
//! (`rk3s.io/connected-to`, written with each heartbeat, trusted while
//! the Lease is fresh), its address the one its own server Lease
//! announces. This server then opens TLS to it (verifying it against the
//! cluster's server CA), presents a client certificate for
//! `system:rk3s-server:<name>` in group `rk3s:servers` (minted at start
//! from the shared client CA), and upgrades `GET /v1-rk3s/kubelet/<node>`
//! to a raw stream that the holder splices to its tunnel
//! (`apiserver::connect::relay`). The holder never relays again, so a
//! stream takes at most one hop; K3s's 502 "failed to find Session" on a
//! server without the tunnel becomes a working stream, or a 503 naming
//! the node, the holder and why.

use super::cluster;
use super::lifecycle::{lease_ref, lease_renewed, ANNOTATION_CONNECTED_TO};
use super::tunnels::Tunnels;
use crate::apiserver::state::{unreachable, KubeletStream, Kubelets};
use crate::credentials::certs::{self, Pki};
use crate::datastore::objects::Objects;
use crate::registry::KubeError;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rk3s_api::routes::{KUBELET_RELAY, KUBELET_RELAY_PROTOCOL};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long the holder may take to connect and switch protocols.
const RELAY_CONNECT: Duration = Duration::from_secs(10);
/// How much of the holder's refusal becomes the message.
const REFUSAL_BYTES: usize = 4096;

pub struct Dialer {
    tunnels: Arc<Tunnels>,
    objects: Objects,
    server_name: String,
    /// How long a node's Lease names its tunnel's holder after it was
    /// last renewed (the node monitor's grace period).
    grace: Duration,
    tls: tokio_rustls::TlsConnector,
}

impl Dialer {
    pub fn new(
        tunnels: Arc<Tunnels>,
        objects: Objects,
        server_name: &str,
        grace: Duration,
        pki: &Pki,
    ) -> Result<Self, certs::CertError> {
        let (cert, key) = pki.issue_client_keypair(
            &format!("system:rk3s-server:{server_name}"),
            &[crate::auth::SERVERS],
        )?;
        let tls = certs::client_config_with_identity(pki.server_ca_pem.as_bytes(), &cert, &key)?;
        Ok(Dialer {
            tunnels,
            objects,
            server_name: server_name.to_string(),
            grace,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }

    /// The server holding `node`'s tunnel, by its Lease, if fresh.
    async fn holder(&self, node: &str) -> Option<String> {
        let lease = self.objects.get(&lease_ref(node)).await.ok()??;
        let grace = chrono::Duration::from_std(self.grace).unwrap_or_default();
        let fresh = lease_renewed(&lease).is_some_and(|t| chrono::Utc::now() - t <= grace);
        let holder = lease
            .pointer("/metadata/annotations")?
            .get(ANNOTATION_CONNECTED_TO)?
            .as_str()?;
        (fresh && !holder.is_empty()).then(|| holder.to_string())
    }

    async fn relay(&self, node: &str, holder: &str) -> Result<KubeletStream, KubeError> {
        let address = match cluster::server_address(&self.objects, holder).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(unreachable(
                    node,
                    format!("its tunnel is on server {holder:?}, which has no fresh address Lease"),
                ))
            }
            Err(e) => return Err(unreachable(node, e)),
        };
        let failed = |why: String| {
            unreachable(
                node,
                format!("its tunnel is on server {holder:?} ({address}): {why}"),
            )
        };
        let open = async {
            let tcp = tokio::net::TcpStream::connect(&address)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let host = address
                .rsplit_once(':')
                .map_or(address.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let name =
                rustls::pki_types::ServerName::try_from(host).map_err(|e| failed(e.to_string()))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| failed(format!("TLS: {e}")))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| failed(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "kubelet relay connection ended");
                }
            });
            let req = Request::get(format!("{KUBELET_RELAY}/{node}"))
                .header(header::HOST, &address)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, KUBELET_RELAY_PROTOCOL)
                .body(Body::empty())
                .map_err(|e| failed(e.to_string()))?;
            let mut resp = sender
                .send_request(req)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = resp.status();
                let body = http_body_util::Limited::new(resp.into_body(), REFUSAL_BYTES)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                // The holder's Status says why (its tunnel closed meanwhile).
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
                return Err(failed(format!("it answered {status}: {message}")));
            }
            let upgraded = hyper::upgrade::on(&mut resp)
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok(Box::new(TokioIo::new(upgraded)) as KubeletStream)
        };
        tokio::time::timeout(RELAY_CONNECT, open)
            .await
            .unwrap_or_else(|_| {
                Err(failed(format!(
                    "no answer within {} s",
                    RELAY_CONNECT.as_secs()
                )))
            })
    }
}

impl Kubelets for Dialer {
    fn here(&self, node: &str) -> Result<tokio::io::DuplexStream, KubeError> {
        self.tunnels.here(node)
    }

    fn dial<'a>(
        &'a self,
        node: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<KubeletStream, KubeError>> + Send + 'a>> {
        Box::pin(async move {
            let local = match self.tunnels.here(node) {
                Ok(s) => return Ok(Box::new(s) as KubeletStream),
                Err(e) => e,
            };
            match self.holder(node).await {
                Some(h) if h != self.server_name => self.relay(node, &h).await,
                // Its Lease says this server, which a moment ago was true.
                Some(_) => Err(local),
                None => Err(unreachable(
                    node,
                    format!(
                        "{}, and no other server holds it (its Lease names none, or has not been renewed within {} s)",
                        self.tunnels.absence(node),
                        self.grace.as_secs()
                    ),
                )),
            }
        })
    }
}
