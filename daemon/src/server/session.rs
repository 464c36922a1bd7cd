//! Server side of the agent tunnel: the message loop of one node's
//! websocket session (registered in `tunnels`), which turns heartbeats
//! into Lease renewals and carries the streams the server opens to the
//! node (binary frames, `streams::mux`).

use crate::server::lifecycle;
use crate::server::supervisor::Supervisor;
use crate::server::tunnels::{RotationReply, Session};
use crate::streams::mux::Mux;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use rk3s_api::tunnel::{AgentMessage, NodeInfo, ServerMessage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Why a session ended, for the log.
enum End {
    Cancelled,
    PeerClosed,
    Silent,
    Protocol(String),
    Transport(String),
}

/// Run one node's session until it ends.
pub async fn serve_session(sv: Arc<Supervisor>, mut ws: WebSocket, node: String) {
    let (tx, mut rx) = mpsc::channel::<Box<ServerMessage>>(16);
    // Only the server opens streams: the agent's attempts are refused.
    let (mux, mut mux_out) = Mux::new(None);
    let session = sv.tunnels.insert(&node, tx, mux, &sv.shutdown);
    tracing::info!(node = %node, "tunnel connected");
    let hello = ServerMessage::Hello {
        node_name: node.clone(),
        server_name: sv.server_name.clone(),
        server_address: sv.api.advertise_address.clone(),
        servers: sv.membership.servers(),
        heartbeat_interval_ms: sv.heartbeat_interval.as_millis() as u64,
        cluster_cidr: sv.ipam.cidr(),
    };
    // Agents ping a quiet tunnel (see `agent`); the server pings only one
    // that has been quiet for longer (an agent that does not), and gives
    // up later than an agent would. Both sides pinging every tunnel every
    // 1.2 s was 33,000 frames a second at ten thousand agents, most of an
    // idle server's work.
    let keepalive = sv.keepalive_timeout;
    let silent_after = keepalive * 2;
    let mut ping = tokio::time::interval(keepalive / 2);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = Instant::now();
    let mut registered = false;
    let mut beats = lifecycle::HeartbeatState::default();
    let mut servers = sv.membership.watch_servers();
    servers.mark_unchanged();
    let end = 'outer: {
        if let Err(e) = send(&mut ws, &hello, keepalive).await {
            break 'outer End::Transport(e);
        }
        loop {
            // Biased: control messages and what the agent sends go before
            // stream data (bounded by each stream's window).
            tokio::select! {
                biased;
                _ = session.cancel.cancelled() => break 'outer End::Cancelled,
                Some(msg) = rx.recv() => {
                    if let Err(e) = send(&mut ws, &msg, keepalive).await {
                        break 'outer End::Transport(e);
                    }
                }
                Ok(()) = servers.changed() => {
                    let list = servers.borrow_and_update().clone();
                    if let Err(e) = send(&mut ws, &ServerMessage::Servers { servers: list }, keepalive).await {
                        break 'outer End::Transport(e);
                    }
                }
                _ = ping.tick() => {
                    let quiet = last_rx.elapsed();
                    if quiet > silent_after {
                        break 'outer End::Silent;
                    }
                    if quiet > keepalive {
                        if let Err(e) = send_frame(&mut ws, Message::Ping(Default::default()), keepalive).await {
                            break 'outer End::Transport(e);
                        }
                    }
                }
                frame = ws.recv() => {
                    last_rx = Instant::now();
                    let text = match frame {
                        None => break 'outer End::PeerClosed,
                        Some(Err(e)) => break 'outer End::Transport(e.to_string()),
                        Some(Ok(Message::Close(_))) => break 'outer End::PeerClosed,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(b))) => {
                            if let Err(e) = session.mux.deliver(&b) {
                                break 'outer End::Protocol(e.to_string());
                            }
                            continue;
                        }
                        Some(Ok(Message::Text(t))) => t,
                    };
                    let msg = match serde_json::from_str::<AgentMessage>(text.as_str()) {
                        Ok(m) => m,
                        Err(e) => break 'outer End::Protocol(format!("invalid message: {e}")),
                    };
                    // Boxed: the handlers' futures (datastore writes) are
                    // many KiB; inline they would make every idle session
                    // that big, for as long as it lives.
                    if let Err(e) = Box::pin(handle(&sv, &session, &node, (&mut registered, &mut beats), msg, &mut ws)).await {
                        break 'outer e;
                    }
                }
                Some(frame) = mux_out.recv() => {
                    if let Err(e) = send_frame(&mut ws, Message::Binary(frame.into()), keepalive).await {
                        break 'outer End::Transport(e);
                    }
                }
            }
        }
    };
    let (close_code, reason) = match &end {
        End::Cancelled => (1001, "server closing the tunnel".to_string()),
        End::Protocol(m) => (1008, m.clone()),
        _ => (1000, String::new()),
    };
    match &end {
        End::Cancelled => tracing::info!(node = %node, "tunnel closed by the server"),
        End::PeerClosed => tracing::info!(node = %node, "tunnel closed by the agent"),
        End::Silent => {
            tracing::warn!(node = %node, timeout_ms = silent_after.as_millis() as u64, "agent went silent; closing its tunnel")
        }
        End::Protocol(m) => {
            tracing::warn!(node = %node, error = %m, "protocol violation; closing the tunnel")
        }
        End::Transport(m) => tracing::info!(node = %node, error = %m, "tunnel transport error"),
    }
    session.mux.shutdown();
    let truncated: String = reason.chars().take(120).collect();
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: close_code,
            reason: truncated.into(),
        })))
        .await;
    if sv.tunnels.remove_if(&node, session.id) {
        if let Err(e) = lifecycle::disconnected(&sv.api.objects, &node, &sv.server_name).await {
            tracing::debug!(node = %node, error = %e, "could not record the disconnect");
        }
    }
}

/// Send one frame, giving up after `limit`: an agent that stops reading
/// would otherwise park this session in a full socket buffer, where its
/// silence check cannot run.
async fn send_frame(ws: &mut WebSocket, frame: Message, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, ws.send(frame)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the agent read nothing for {} ms; closing its tunnel",
            limit.as_millis()
        )),
    }
}

async fn send(ws: &mut WebSocket, msg: &ServerMessage, limit: Duration) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    send_frame(ws, Message::Text(text.into()), limit).await
}

async fn handle(
    sv: &Arc<Supervisor>,
    session: &Arc<Session>,
    node: &str,
    (registered, beats): (&mut bool, &mut lifecycle::HeartbeatState),
    msg: AgentMessage,
    ws: &mut WebSocket,
) -> Result<(), End> {
    match msg {
        AgentMessage::NodeStatus { info } => {
            let mut info = sanitize(*info);
            // Only the server decides who is control plane.
            info.control_plane = sv.own_node.as_deref() == Some(node);
            // The status may change Ready: the next heartbeat looks again.
            beats.reset();
            // A new Node is created with its pod CIDR (`ipam::for_new_node`);
            // one that has none yet gets it from `ipam::assign`.
            let claim = || {
                crate::server::ipam::for_new_node(
                    &sv.api.objects.store,
                    &sv.pod_cidrs,
                    &sv.ipam,
                    node,
                )
            };
            match lifecycle::upsert_node(&sv.api.objects, node, &info, &sv.server_name, claim).await
            {
                Ok((stored, lease)) => {
                    *registered = true;
                    beats.stored(
                        lease,
                        sv.heartbeat_interval / 2,
                        sv.heartbeat_interval * lifecycle::STATUS_REFRESH_HEARTBEATS,
                    );
                    if let Err(e) = crate::server::ipam::assign(
                        &sv.api.registry,
                        &sv.api.events,
                        &sv.pod_cidrs,
                        &sv.ipam,
                        &stored,
                    )
                    .await
                    {
                        tracing::warn!(node, error = %e, "could not assign the node's pod CIDR; retrying with its next status");
                    }
                }
                Err(e) => {
                    // Keep the tunnel; the next heartbeat retries.
                    tracing::warn!(node, error = %e, "could not store node status");
                    let _ = send(
                        ws,
                        &ServerMessage::Error {
                            message: "node status not stored; retrying on next heartbeat".into(),
                        },
                        sv.keepalive_timeout,
                    )
                    .await;
                }
            }
        }
        AgentMessage::Heartbeat { seq } => {
            if !*registered {
                return Err(End::Protocol("heartbeat before node_status".into()));
            }
            if let Err(e) = lifecycle::heartbeat(
                &sv.api.objects,
                node,
                &sv.server_name,
                sv.heartbeat_interval * lifecycle::STATUS_REFRESH_HEARTBEATS,
                beats,
            )
            .await
            {
                beats.reset();
                tracing::warn!(node, error = %e, "could not record heartbeat");
                return Ok(());
            }
            send(
                ws,
                &ServerMessage::HeartbeatAck { seq },
                sv.keepalive_timeout,
            )
            .await
            .map_err(End::Transport)?;
        }
        AgentMessage::PasswordAck { rotation_id } => reply_rotation(session, &rotation_id, Ok(())),
        AgentMessage::PasswordNack { rotation_id, error } => {
            reply_rotation(session, &rotation_id, Err(error))
        }
        AgentMessage::ShuttingDown { reason } => {
            tracing::info!(node, reason = %reason, "node reports it is shutting down; cordoning it");
            let reason: String = reason.chars().take(256).collect();
            if let Err(e) = lifecycle::shutting_down(&sv.api.objects, node, &reason).await {
                tracing::warn!(node, error = %e, "could not mark the node as shutting down");
            }
            send(ws, &ServerMessage::ShutdownAck, sv.keepalive_timeout)
                .await
                .map_err(End::Transport)?;
        }
    }
    Ok(())
}

fn reply_rotation(session: &Session, id: &str, reply: RotationReply) {
    if let Some(tx) = session.rotations.lock().expect("lock").remove(id) {
        let _ = tx.send(reply);
    }
}

/// Agents are trusted with their own facts, not with unbounded strings.
fn sanitize(mut info: NodeInfo) -> NodeInfo {
    // At a character boundary: `String::truncate` panics inside a
    // multi-byte character.
    let cut = |s: &mut String| {
        if s.len() > 256 {
            let end = (0..=256)
                .rev()
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(0);
            s.truncate(end);
        }
    };
    for s in [
        &mut info.hostname,
        &mut info.os,
        &mut info.os_image,
        &mut info.kernel_version,
        &mut info.architecture,
        &mut info.rk3s_version,
        &mut info.kubelet_version,
    ] {
        cut(s);
    }
    if let Some(r) = &mut info.runtime {
        cut(&mut r.version);
        cut(&mut r.message);
        if let Some(n) = &mut r.network_not_ready {
            cut(n);
        }
    }
    info.internal_ips
        .retain(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    info.internal_ips.truncate(8);
    let labels = std::mem::take(&mut info.labels);
    info.labels = labels
        .into_iter()
        .filter(|(k, v)| k.len() <= 317 && v.len() <= 63)
        .take(64)
        .collect();
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_multibyte_strings_are_cut_at_a_character() {
        let mut info = crate::host::nodeinfo::collect(vec![], Default::default());
        info.hostname = "é".repeat(200);
        info.runtime = Some(rk3s_api::tunnel::RuntimeInfo {
            version: "ü".repeat(300),
            ready: false,
            message: "x".repeat(1000),
            network_not_ready: Some("ß".repeat(300)),
        });
        let s = sanitize(info);
        assert!(s.hostname.len() <= 256 && s.hostname.chars().all(|c| c == 'é'));
        let r = s.runtime.unwrap();
        assert!(r.version.len() <= 256 && r.message.len() == 256);
        assert!(r.network_not_ready.unwrap().len() == 256);
    }
}
