//! One tunnel session: node status, heartbeats and keepalive pings out;
//! server hellos, server lists and password rotations in; and the
//! streams the server opens (binary frames, `streams::mux`), served by
//! the kubelet's API.

use super::loadbalancer::LoadBalancer;
use super::state::AgentState;
use super::AgentParams;
use crate::credentials::nodepassword;
use crate::host::nodeinfo;
use crate::host::systemd::Shutdown;
use crate::streams::mux::{Accepted, Mux};
use futures_util::{SinkExt, StreamExt};
use rk3s_api::tunnel::{AgentMessage, NodeInfo, ServerMessage};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The websocket an agent registered through.
pub type Tunnel = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a session that ended for a host shutdown reports it.
pub(crate) const ENDED_FOR_SHUTDOWN: &str = "node shutting down";

pub(crate) async fn send(ws: &mut Tunnel, msg: &AgentMessage) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// Tell the server the host is going down (it cordons the node and acks
/// within 5 s), then close the tunnel cleanly.
pub(crate) async fn cordon_and_close(ws: &mut Tunnel, reason: &str) {
    tracing::info!(
        reason,
        "host shutting down: asking the server to cordon this node"
    );
    let _ = send(
        ws,
        &AgentMessage::ShuttingDown {
            reason: reason.to_string(),
        },
    )
    .await;
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Text(t) = frame {
                if matches!(
                    serde_json::from_str::<ServerMessage>(t.as_str()),
                    Ok(ServerMessage::ShutdownAck)
                ) {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !acked {
        tracing::warn!("the server did not confirm the shutdown cordon within 5 s");
    }
    let _ = ws.close(None).await;
}

/// What a session works with besides the socket.
pub(crate) struct Link<'a> {
    pub params: &'a AgentParams,
    pub lb: &'a LoadBalancer,
    pub state: &'a AgentState,
    /// The container runtime's state (`None`: no runtime, or not known yet).
    pub runtime: tokio::sync::watch::Receiver<Option<rk3s_api::tunnel::RuntimeInfo>>,
    /// The kubelet's API, for the streams the server opens.
    pub kubelet_api: tokio::sync::watch::Receiver<Option<axum::Router>>,
}

/// Streams a server may have opening at once before it is refused.
const ACCEPT_BACKLOG: usize = 64;

/// Ends a session's streams however the session ends.
struct EndStreams(Mux);

impl Drop for EndStreams {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Serve a stream the server opened: `kubelet` is the kubelet's API (a
/// 503 until the kubelet runs); anything else is refused by closing it.
fn serve_stream(acc: Accepted, kubelet_api: &tokio::sync::watch::Receiver<Option<axum::Router>>) {
    if acc.target != "kubelet" {
        tracing::warn!(target = %acc.target, "the server opened a stream to an unknown target; closing it");
        return;
    }
    let router = kubelet_api.borrow().clone().unwrap_or_else(|| {
        axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the kubelet on this node is not running yet (waiting for the container runtime)",
            )
        })
    });
    tokio::spawn(crate::agent::kubelet::serving::serve(acc.stream, router));
}

pub(crate) async fn session(
    mut ws: Tunnel,
    link: Link<'_>,
    info: &NodeInfo,
    password: &mut String,
    shutdowns: &mut mpsc::Receiver<Shutdown>,
    cancel: &CancellationToken,
) -> String {
    let Link {
        params,
        lb,
        state,
        mut runtime,
        kubelet_api,
    } = link;
    let (accepted, mut accepts) = mpsc::channel(ACCEPT_BACKLOG);
    let (mux, mut mux_out) = Mux::new(Some(accepted));
    let _end_streams = EndStreams(mux.clone());
    let hb_every = params.node.heartbeat_interval;
    let keepalive = rk3s_api::tunnel::keepalive_for(hb_every);
    let mut info = info.clone();
    info.runtime = runtime.borrow_and_update().clone();
    if let Err(e) = send(
        &mut ws,
        &AgentMessage::NodeStatus {
            info: Box::new(info.clone()),
        },
    )
    .await
    {
        return e;
    }
    let mut hb = tokio::time::interval(hb_every);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(keepalive / 5);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(Duration::from_secs(60));
    refresh.tick().await;
    let mut seq = 0u64;
    // The newest heartbeat's send time: its ack gives the round trip.
    let mut beat_sent = (0u64, Instant::now());
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        // Biased: heartbeats, pings and what the server sends go before
        // stream data (bounded by the streams' windows, so it cannot
        // starve the rest either: a sender out of window waits for grants).
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // Stopped because the host goes down (a root `systemctl
                // poweroff` bypasses logind): cordon the node first.
                if crate::host::systemd::host_shutting_down().await {
                    cordon_and_close(&mut ws, "the host is shutting down (systemd is stopping)").await;
                    return ENDED_FOR_SHUTDOWN.into();
                }
                let _ = ws.close(None).await;
                return "agent stopping".into();
            }
            Some(sd) = shutdowns.recv() => {
                // logind announced the shutdown: cordon, close, let it go on.
                cordon_and_close(&mut ws, &sd.reason).await;
                let _ = sd.done.send(());
                return ENDED_FOR_SHUTDOWN.into();
            }
            _ = hb.tick() => {
                seq += 1;
                beat_sent = (seq, Instant::now());
                if let Err(e) = send(&mut ws, &AgentMessage::Heartbeat { seq }).await {
                    return e;
                }
            }
            _ = ping.tick() => {
                if last_rx.elapsed() > keepalive {
                    return format!("server silent for {:?}", last_rx.elapsed());
                }
                // Only a quiet tunnel needs a ping (heartbeat acks are
                // traffic too): a dead server is still noticed within
                // `keepalive` and a fifth.
                let half = keepalive / 2;
                if last_rx.elapsed() >= half && last_ping.elapsed() >= half {
                    last_ping = Instant::now();
                    if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                        return e.to_string();
                    }
                }
            }
            Ok(()) = runtime.changed() => {
                info.runtime = runtime.borrow_and_update().clone();
                if let Err(e) = send(&mut ws, &AgentMessage::NodeStatus { info: Box::new(info.clone()) }).await {
                    return e;
                }
            }
            _ = refresh.tick() => {
                let mut fresh = nodeinfo::collect(info.internal_ips.clone(), info.labels.clone());
                fresh.runtime = info.runtime.clone();
                if fresh != info {
                    info = fresh;
                    if let Err(e) = send(&mut ws, &AgentMessage::NodeStatus { info: Box::new(info.clone()) }).await {
                        return e;
                    }
                }
            }
            frame = ws.next() => {
                last_rx = Instant::now();
                let text = match frame {
                    None => return "server closed the connection".into(),
                    Some(Err(e)) => return e.to_string(),
                    Some(Ok(Message::Close(f))) => {
                        return match f {
                            Some(f) if !f.reason.is_empty() => format!("server closed the tunnel: {}", f.reason),
                            _ => "server closed the tunnel".into(),
                        }
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(b))) => {
                        if let Err(e) = mux.deliver(&b) {
                            let _ = ws.close(None).await;
                            return format!("server sent an unreadable stream frame: {e}");
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<ServerMessage>(text.as_str()) {
                    Ok(ServerMessage::Hello { server_name, server_address, servers, cluster_cidr, .. }) => {
                        tracing::debug!(server_name, server_address, ?servers, "server hello");
                        if !cluster_cidr.is_empty() {
                            state.cluster_cidr.send_if_modified(|c| {
                                let changed = *c != cluster_cidr;
                                *c = cluster_cidr;
                                changed
                            });
                        }
                        if !server_address.is_empty() {
                            // Through the fixed address, this names the
                            // server really reached; reconnects prefer it.
                            let actual = format!("https://{server_address}");
                            lb.connected(&actual);
                            *state.connected_server.lock().expect("lock") = Some(actual);
                        }
                        if lb.update(servers) {
                            state.set_servers(lb.servers());
                        }
                    }
                    Ok(ServerMessage::Servers { servers }) => {
                        if lb.update(servers) {
                            state.set_servers(lb.servers());
                        }
                    }
                    Ok(ServerMessage::HeartbeatAck { seq: acked }) => {
                        if acked == beat_sent.0 {
                            state.record_rtt(beat_sent.1.elapsed());
                        }
                    }
                    Ok(ServerMessage::ShutdownAck) => {}
                    Ok(ServerMessage::Error { message }) => tracing::warn!(message, "server reported an error"),
                    Ok(ServerMessage::RotatePassword { rotation_id, password: new }) => {
                        let reply = match nodepassword::store(&params.node.node_config_dir, &new.0) {
                            Ok(()) => {
                                *password = new.0;
                                tracing::info!(file = %params.node.node_config_dir.join("password").display(), "node password rotated by the server");
                                if std::env::var_os("RK3S_TEST_EXIT_AFTER_PASSWORD_WRITE").is_some() {
                                    // Test hook: die between the write and the ack.
                                    std::process::exit(3);
                                }
                                AgentMessage::PasswordAck { rotation_id }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot store the rotated node password; keeping the old one");
                                AgentMessage::PasswordNack { rotation_id, error: e.to_string() }
                            }
                        };
                        if let Err(e) = send(&mut ws, &reply).await {
                            return e;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "ignoring a message this agent does not understand"),
                }
            }
            Some(acc) = accepts.recv() => serve_stream(acc, &kubelet_api),
            Some(frame) = mux_out.recv() => {
                if let Err(e) = ws.send(Message::binary(frame)).await {
                    return e.to_string();
                }
            }
        }
    }
}
