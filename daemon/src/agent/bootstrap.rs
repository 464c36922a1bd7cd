//! Joining a cluster before the first tunnel: the cluster CA fetched and
//! pinned against the token, and the node's client certificates (kubelet,
//! controller) issued against the node password.

use super::apiclient::Identity;
use super::loadbalancer::LoadBalancer;
use super::state::AgentState;
use super::{retry_after, AgentError, AgentParams, Backoff};
use crate::credentials::token::Token;
use crate::host::fsutil;
use base64::Engine;
use rk3s_api::routes::{CACERTS, HEADER_NODE_NAME, HEADER_NODE_PASSWORD};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The cluster CA: the one the server passed in (embedded agent), else
/// fetched from any server and checked against the token's pin, then kept
/// in `<data-dir>/agent/server-ca.crt`. `None`: cancelled while waiting.
pub async fn obtain_ca(
    lb: &LoadBalancer,
    params: &AgentParams,
    state: &AgentState,
    backoff: &mut Backoff,
    cancel: &CancellationToken,
) -> Result<Option<Vec<u8>>, AgentError> {
    if let Some(c) = &params.ca_pem {
        return Ok(Some(c.clone()));
    }
    loop {
        // Any server hands out the cluster CA; the pin decides.
        for url in lb.candidates() {
            state.set(&format!("fetching CA certificate from {url}"), None);
            match fetch_ca(&url, &params.token).await {
                Ok(c) => {
                    let dir = params.data_dir.join("agent");
                    fsutil::ensure_dir(&dir, 0o700)?;
                    fsutil::write_atomic(&dir.join("server-ca.crt"), &c, 0o644)?;
                    return Ok(Some(c));
                }
                Err(e @ AgentError::CaMismatch { .. }) => return Err(e),
                Err(e) => tracing::warn!(error = %e, "waiting for the server"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff.step()) => {}
        }
    }
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
    let actual = crate::credentials::token::ca_hash(&body);
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
    let kubeconfig = crate::credentials::kubeconfig::render(
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
