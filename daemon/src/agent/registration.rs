//! Registering: a tunnel opened through the first server that takes the
//! node, and kept (reconnected with back-off, refusals waited out, the
//! host's shutdown reported) until the agent stops.

use super::apiclient::Identity;
use super::bootstrap::ensure_node_cert;
use super::loadbalancer::LoadBalancer;
use super::session::{cordon_and_close, session, Link, Tunnel, ENDED_FOR_SHUTDOWN};
use super::state::AgentState;
use super::{retry_after, AgentError, AgentParams, Backoff};
use crate::credentials::{certs, nodepassword};
use crate::host::nodeinfo;
use crate::host::systemd::Shutdown;
use base64::Engine;
use rk3s_api::routes::{CONNECT, HEADER_NODE_IP, HEADER_NODE_NAME, HEADER_NODE_PASSWORD};
use rk3s_api::tunnel::{RuntimeInfo, MAX_MESSAGE_BYTES, WS_BUFFER_BYTES};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

fn host_port(url: &str) -> &str {
    url.strip_prefix("https://")
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Open a registered tunnel: the handshake carries the token and node
/// credentials; a refusal comes back as a Kubernetes Status.
pub async fn connect_tunnel(
    server_url: &str,
    tls: Arc<rustls::ClientConfig>,
    token_secret: &str,
    node_name: &str,
    password: &str,
    node_ips: &[String],
) -> Result<Tunnel, AgentError> {
    let url = format!("wss://{}{CONNECT}", host_port(server_url));
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| AgentError::Tunnel(e.to_string()))?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("node:{token_secret}"));
    let h = req.headers_mut();
    let hv = |s: &str| {
        http::HeaderValue::from_str(s)
            .map_err(|_| AgentError::Tunnel("header value is not valid".into()))
    };
    h.insert(http::header::AUTHORIZATION, hv(&format!("Basic {basic}"))?);
    h.insert(HEADER_NODE_NAME, hv(node_name)?);
    h.insert(HEADER_NODE_PASSWORD, hv(password)?);
    if !node_ips.is_empty() {
        h.insert(HEADER_NODE_IP, hv(&node_ips.join(","))?);
    }
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_MESSAGE_BYTES);
    cfg.max_frame_size = Some(MAX_MESSAGE_BYTES);
    cfg.read_buffer_size = WS_BUFFER_BYTES;
    cfg.write_buffer_size = WS_BUFFER_BYTES;
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let fut =
        tokio_tungstenite::connect_async_tls_with_config(req, Some(cfg), true, Some(connector));
    let server = server_url.to_string();
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Err(_) => Err(AgentError::Unreachable {
            url,
            message: "timed out after 10s".into(),
        }),
        Ok(Ok((ws, _))) => {
            limit_unsent(&ws);
            Ok(ws)
        }
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            let message = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| resp.status().to_string());
            Err(match status {
                401 => AgentError::Unauthorized { server, message },
                403 => AgentError::PasswordRejected { server, message },
                _ => AgentError::Refused {
                    server,
                    status,
                    message,
                    retry_after: retry_after(resp.headers()),
                },
            })
        }
        Ok(Err(e)) => Err(AgentError::Unreachable {
            url,
            message: e.to_string(),
        }),
    }
}

/// What the tunnel's socket may hold unsent in the kernel. The session
/// sends heartbeats before stream data, but bytes already queued in the
/// socket go first: without a cap a transfer queues megabytes there and a
/// heartbeat waits behind them (TCP_NOTSENT_LOWAT, as HTTP/2 servers set it).
const UNSENT_BYTES: libc::c_int = 16 * 1024;

fn limit_unsent(ws: &Tunnel) {
    use std::os::fd::AsRawFd;
    let tcp = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(t) => t,
        tokio_tungstenite::MaybeTlsStream::Rustls(t) => t.get_ref().0,
        _ => return,
    };
    // SAFETY: setsockopt on a socket this stream owns, with a c_int value
    // of the size given; a failure only leaves the kernel's default.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&UNSENT_BYTES as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set on the tunnel");
    }
}

/// One pass over the load balancer's candidates: the first tunnel that
/// comes up wins. An unreachable or unready server moves on to the next at
/// once; a refused token or password stops the pass (every server would
/// say the same).
async fn try_servers(
    lb: &LoadBalancer,
    params: &AgentParams,
    state: &AgentState,
    tls: Arc<rustls::ClientConfig>,
    name: &str,
    password: &str,
) -> (String, Result<(Tunnel, Vec<String>), AgentError>) {
    let creds = Credentials {
        tls,
        secret: params.token.secret(),
        name,
        password,
    };
    connect_any(lb, &creds, &params.node.node_ips, |url| {
        state.set(&format!("connecting to {url}"), None)
    })
    .await
}

/// What an agent presents to register.
pub struct Credentials<'a> {
    pub tls: Arc<rustls::ClientConfig>,
    pub secret: &'a str,
    pub name: &'a str,
    pub password: &'a str,
}

/// Register through the first server that takes the agent, in the load
/// balancer's order (public for the benchmarks, whose simulated agents
/// must pick servers as real ones do). `node_ips` empty: the address
/// towards each server. A server that is busy (it answered, with a
/// Retry-After) is not marked failed, and when every server refused, its
/// answer is the one returned: an agent waits as told instead of backing
/// off on the word of a server that is down.
pub async fn connect_any(
    lb: &LoadBalancer,
    creds: &Credentials<'_>,
    node_ips: &[String],
    mut trying: impl FnMut(&str),
) -> (String, Result<(Tunnel, Vec<String>), AgentError>) {
    let mut last = None;
    let mut busy: Option<(Duration, String, AgentError)> = None;
    for url in lb.candidates() {
        trying(&url);
        let mut ips = node_ips.to_vec();
        if ips.is_empty() {
            if let Some(ip) = nodeinfo::local_ip_towards(host_port(&url)).await {
                ips.push(ip);
            }
        }
        match connect_tunnel(
            &url,
            creds.tls.clone(),
            creds.secret,
            creds.name,
            creds.password,
            &ips,
        )
        .await
        {
            Ok(ws) => return (url, Ok((ws, ips))),
            Err(e @ (AgentError::PasswordRejected { .. } | AgentError::Unauthorized { .. })) => {
                return (url, Err(e))
            }
            Err(
                e @ AgentError::Refused {
                    retry_after: Some(wait),
                    ..
                },
            ) => {
                tracing::info!(server = %url, error = %e, "server busy; trying the next one");
                // The busy server that asked for the shortest wait.
                if busy.as_ref().is_none_or(|(had, ..)| wait < *had) {
                    busy = Some((wait, url, e));
                }
            }
            Err(e) => {
                tracing::info!(server = %url, error = %e, "server unavailable; trying the next one");
                lb.failed(&url);
                last = Some((url, Err(e)));
            }
        }
    }
    if let Some((_, url, e)) = busy {
        return (url, Err(e));
    }
    last.unwrap_or_else(|| {
        (
            lb.fixed_url().to_string(),
            Err(AgentError::Tunnel("no server to connect to".into())),
        )
    })
}

/// The node once it holds the cluster CA: what keeping it registered
/// works with.
pub(crate) struct Joined<'a> {
    pub params: &'a AgentParams,
    pub state: &'a AgentState,
    pub lb: &'a LoadBalancer,
    pub name: &'a str,
    pub ca_pem: &'a [u8],
    /// The container runtime's state, reported on the node status.
    pub runtime: watch::Receiver<Option<RuntimeInfo>>,
    /// The kubelet's API once it runs (`None` before, and without a runtime).
    pub kubelet_api: watch::Receiver<Option<axum::Router>>,
}

/// Register, run the session, and register again when it ends, until
/// `cancel` (or the host's shutdown, once the node is cordoned). Returns
/// early only for errors retrying cannot fix.
pub(crate) async fn stay_registered(
    joined: Joined<'_>,
    mut backoff: Backoff,
    shutdowns: &mut mpsc::Receiver<Shutdown>,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let Joined {
        params,
        state,
        lb,
        name,
        ca_pem,
        runtime,
        kubelet_api,
    } = joined;
    let tls = Arc::new(certs::client_config_pinned(ca_pem)?);
    let mut password = nodepassword::load_or_create(&params.node.node_config_dir)?;
    let password_file = params.node.node_config_dir.join("password");
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let (url, attempt) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = try_servers(lb, params, state, tls.clone(), name, &password) => r,
        };
        let wait = match attempt {
            Ok((ws, ips)) => {
                lb.connected(&url);
                state.set("registered", Some(&url));
                state.registered.send_replace(true);
                tracing::info!(node = %name, server = %url, "registered; tunnel up");
                let identities: &[Identity] = if params.node.runtime.is_some() {
                    &[Identity::Kubelet, Identity::Controller]
                } else {
                    &[Identity::Kubelet]
                };
                for id in identities {
                    if let Err(e) = ensure_node_cert(
                        *id,
                        &url,
                        ca_pem,
                        params.token.secret(),
                        name,
                        &password,
                        &params.data_dir,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "could not obtain a client certificate; will retry on the next connection");
                    }
                }
                let info = nodeinfo::collect(ips, params.node.labels.clone());
                let started = Instant::now();
                let link = Link {
                    params,
                    lb,
                    state,
                    runtime: runtime.clone(),
                    kubelet_api: kubelet_api.clone(),
                };
                let end = session(ws, link, &info, &mut password, shutdowns, cancel).await;
                if end == ENDED_FOR_SHUTDOWN {
                    // The host is going down: stay disconnected until
                    // systemd stops us; the node is cordoned meanwhile.
                    state.set("host shutting down; tunnel closed", None);
                    cancel.cancelled().await;
                    return Ok(());
                }
                let server = state
                    .connected_server
                    .lock()
                    .expect("lock")
                    .clone()
                    .unwrap_or_else(|| url.clone());
                state.set(&format!("disconnected: {end}"), None);
                if cancel.is_cancelled() {
                    return Ok(());
                }
                // Whatever ended it, the next attempt goes to another server
                // first; health checks bring this one back.
                lb.failed(&server);
                tracing::warn!(node = %name, server = %server, reason = %end, "tunnel lost; reconnecting");
                // A session that lived a while earns a fast first retry.
                if started.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                backoff.step()
            }
            Err(e @ AgentError::PasswordRejected { .. }) => {
                tracing::error!(node = %name, password_file = %password_file.display(), error = %e,
                    "Node password rejected, duplicate hostname or contents of {} may not match the server's record; \
                     try a unique node name with --with-node-id, or run `rk3sctl node forget {}` on a server if this host was rebuilt",
                    password_file.display(), name);
                state.set(
                    &format!(
                        "rejected: node password does not match ({})",
                        password_file.display()
                    ),
                    None,
                );
                backoff.slow()
            }
            Err(e @ AgentError::Unauthorized { .. }) => {
                tracing::error!(error = %e, "registration refused");
                state.set("rejected: token not accepted (401)", None);
                backoff.slow()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot register with any server; retrying");
                state.set(&format!("connecting: {e}"), None);
                // A server shedding load says when to come back.
                e.retry_after().unwrap_or_else(|| backoff.step())
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
            Some(sd) = shutdowns.recv() => {
                // The host goes down while we are between tunnels: one
                // immediate attempt to get the node cordoned, then let go.
                match try_servers(lb, params, state, tls.clone(), name, &password).await {
                    (_, Ok((mut ws, _))) => cordon_and_close(&mut ws, &sd.reason).await,
                    (url, Err(e)) => tracing::warn!(server = %url, error = %e, "host shutting down but no server reachable to cordon the node"),
                }
                let _ = sd.done.send(());
                state.set("host shutting down; tunnel closed", None);
                cancel.cancelled().await;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_with_retry_after_is_waited_out_with_a_second_of_spread() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "4".parse().unwrap());
        let e = AgentError::Refused {
            server: "https://s:6443".into(),
            status: 429,
            message: "busy".into(),
            retry_after: retry_after(&h),
        };
        let d = e.retry_after().expect("the server said when");
        assert!(
            d >= Duration::from_secs(4) && d < Duration::from_secs(5),
            "{d:?}"
        );
        // An HTTP date or garbage is not understood: the backoff decides.
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        let other = AgentError::Tunnel("x".into());
        assert_eq!(other.retry_after(), None);
    }

    /// One server down, the other shedding load: the agent is told to
    /// wait as the busy one said (not backed off on the dead one's word),
    /// and the busy one stays ahead of the dead one for the next round.
    #[tokio::test]
    async fn a_busy_server_is_waited_for_and_a_dead_one_goes_last() {
        let dir = tempfile::tempdir().unwrap();
        let pki = certs::Pki::load_or_create(dir.path(), &[]).unwrap();
        let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy_addr = busy.local_addr().unwrap().to_string();
        // A server that answers every request 429 with Retry-After: 7.
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config().unwrap());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = busy.accept() => r.unwrap(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = r#"{"kind":"Status","message":"too many registrations at once"}"#;
                    let reply = format!(
                        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let dead_addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        for order in [
            vec![dead_addr.clone(), busy_addr.clone()],
            vec![busy_addr.clone(), dead_addr.clone()],
        ] {
            let lb = LoadBalancer::in_memory(order, "node-a");
            let creds = Credentials {
                tls: Arc::new(certs::client_config_pinned(pki.ca_bundle()).unwrap()),
                secret: "secret",
                name: "node-a",
                password: "pw",
            };
            let mut tried = Vec::new();
            let (url, r) = connect_any(&lb, &creds, &["127.0.0.1".into()], |u| {
                tried.push(u.to_string())
            })
            .await;
            assert_eq!(tried.len(), 2, "{tried:?}");
            assert_eq!(url, format!("https://{busy_addr}"));
            let Err(e) = r else {
                panic!("a server took the agent")
            };
            let wait = e.retry_after().expect("the busy server's Retry-After");
            assert!(wait >= Duration::from_secs(7), "{wait:?}");
            assert_eq!(lb.candidates()[0], format!("https://{busy_addr}"));
        }
        cancel.cancel();
    }
}
