//! rk3sd: the rk3s server (control plane) and node agent as a library; the
//! binary in `main.rs` only parses flags and calls [`run`], which starts
//! the parts in named phases. docs/architecture.md maps the layers.

pub mod admin;
pub mod agent;
pub mod apiserver;
pub mod auth;
pub mod config;
pub mod controllers;
pub mod credentials;
pub mod datastore;
pub mod host;
pub mod kube;
pub mod registry;
pub mod server;
pub mod streams;

use crate::agent::{AgentParams, AgentState, NodeSettings};
use crate::host::process::init_logging;
use crate::host::{fsutil, systemd};
use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

pub async fn run(cli: config::Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    {
        let s = shutdown.clone();
        tokio::spawn(async move {
            termination().await;
            s.cancel();
        });
    }
    match cli.command {
        config::Command::Server(args) => {
            let cfg = config::ServerConfig::resolve(&args)?;
            init_logging(cfg.debug);
            let span = tracing::info_span!("rk3s", role = "server");
            run_server(cfg, shutdown).instrument(span).await
        }
        config::Command::Agent(args) => {
            let cfg = config::AgentConfig::resolve(&args)?;
            init_logging(cfg.debug);
            let span = tracing::info_span!("rk3s", role = "agent");
            run_agent(cfg, shutdown).instrument(span).await
        }
    }
}

/// `rk3sd server`: the server, its admin socket, then its own node agent
/// (unless --disable-agent); on SIGTERM the agent stops first, then the
/// server drains.
async fn run_server(cfg: config::ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let own_agent = cfg.agent.as_ref().map(|_| Arc::new(AgentState::default()));
    let data_dir = cfg.server.data_dir.clone();
    let server = server::start(cfg.server, own_agent.clone(), &shutdown).await?;
    let backend = admin::Backend::Server(server.supervisor.clone());
    let admin = match admin::Socket::start(&cfg.admin_socket, backend, &shutdown) {
        Ok(a) => a,
        Err(e) => {
            server.stop().await;
            return Err(e);
        }
    };
    systemd::ready(&format!("serving on {}", server.advertise_address()));
    tracing::info!(admin_socket = %cfg.admin_socket.display(), "admin socket listening");
    let agent = own_agent
        .zip(cfg.agent)
        .map(|(state, node)| start_own_agent(&server, node, data_dir, state, &shutdown));

    shutdown.cancelled().await;
    systemd::stopping("closing tunnels and draining connections");
    tracing::info!("shutting down: closing tunnels and draining connections");
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    server.stop().await;
    admin.stop().await;
    tracing::info!("server stopped");
    Ok(())
}

/// The server's own node: an agent that registers through loopback with
/// the CA it already has, and stays on this server.
fn start_own_agent(
    server: &server::Server,
    mut node: NodeSettings,
    data_dir: std::path::PathBuf,
    state: Arc<AgentState>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if node.node_ips.is_empty() {
        node.node_ips.push(server.node_ip.clone());
    }
    let sv = &server.supervisor;
    let params = AgentParams {
        server_url: server.local_url.clone(),
        token: sv.token.clone(),
        node,
        data_dir,
        ca_pem: Some(sv.pki.ca_bundle().to_vec()),
        balance: false,
    };
    let cancel = shutdown.child_token();
    let (tx, shutdowns) = tokio::sync::mpsc::channel(1);
    tokio::spawn(systemd::shutdown_inhibitor(
        tx,
        std::time::Duration::from_secs(10),
        cancel.clone(),
    ));
    tokio::spawn(async move {
        if let Err(e) = agent::run(params, state, shutdowns, cancel).await {
            tracing::error!(error = %e, "embedded agent stopped");
        }
    })
}

/// `rk3sd agent`: the admin socket, systemd's inhibitor, watchdog and
/// status, and the agent until SIGTERM.
async fn run_agent(cfg: config::AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    fsutil::ensure_dir(&cfg.data_dir, 0o700)?;
    let state = Arc::new(AgentState::default());
    let info = Arc::new(admin::AgentInfo {
        started: std::time::Instant::now(),
        server_url: cfg.server_url.clone(),
    });
    let admin = admin::Socket::start(
        &cfg.admin_socket,
        admin::Backend::Agent(state.clone(), info),
        &shutdown,
    )?;
    tracing::info!(server = %cfg.server_url, data_dir = %cfg.data_dir.display(), "rk3s agent starting");
    let params = AgentParams {
        server_url: cfg.server_url.clone(),
        token: cfg.token.clone(),
        node: cfg.node.clone(),
        data_dir: cfg.data_dir.clone(),
        ca_pem: None,
        balance: true,
    };
    let (tx, shutdowns) = tokio::sync::mpsc::channel(1);
    tokio::spawn(systemd::shutdown_inhibitor(
        tx,
        std::time::Duration::from_secs(10),
        shutdown.child_token(),
    ));
    tokio::spawn(systemd::watchdog(shutdown.child_token(), || async { true }));
    tokio::spawn(report_agent_progress(state.clone(), shutdown.child_token()));
    let result = agent::run(params, state, shutdowns, shutdown.clone()).await;
    systemd::stopping("agent stopping");
    admin.stop().await;
    result.context("agent stopped")?;
    tracing::info!("agent stopped");
    Ok(())
}

/// STATUS= with the agent's registration state; READY=1 once the first
/// registration succeeded (until then systemd shows what it waits for).
async fn report_agent_progress(state: Arc<agent::AgentState>, cancel: CancellationToken) {
    let mut registered = state.registered.subscribe();
    let mut last = String::new();
    let mut ready = false;
    loop {
        let now = state.registration.lock().expect("lock").clone();
        if *registered.borrow_and_update() && !ready {
            ready = true;
            let server = state
                .connected_server
                .lock()
                .expect("lock")
                .clone()
                .unwrap_or_default();
            systemd::ready(&format!("registered with {server}"));
        } else if now != last {
            systemd::status(&now);
        }
        last = now;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = registered.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
