//! rk3sd: the rk3s server (control plane) and node agent as a library; the
//! binary in `main.rs` only parses flags and calls [`run`].

pub mod addons;
pub mod admin;
pub mod agent;
pub mod apiclient;
pub mod apiserver;
pub mod auth;
pub mod bootstrap;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod controllers;
pub mod datastore;
pub mod deploy;
pub mod fsutil;
pub mod gate;
pub mod https;
pub mod ipam;
pub mod kubeconfig;
pub mod kubelet;
pub mod lifecycle;
pub mod loadbalancer;
pub mod memory;
pub mod names;
pub mod network;
pub mod nodeinfo;
pub mod nodepassword;
pub mod nodes;
pub mod objects;
pub mod placement;
pub mod quantity;
pub mod registration;
pub mod registry;
pub mod runtime;
pub mod server;
pub mod supervisor;
pub mod sysctls;
pub mod systemd;
pub mod token;
pub mod tunnel;
pub mod tunnels;
pub mod yaml;

use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Flags whose values are secrets: moved into the environment by
/// [`hide_secret_args`] so they do not linger in `ps` output.
const SECRET_FLAGS: [(&str, &str); 2] = [
    ("--token", "RK3S_TOKEN"),
    ("--agent-token", "RK3S_AGENT_TOKEN"),
];

/// If a secret was passed as a flag, re-exec without it (value moved to
/// the environment, readable only by the process owner). Returns only if
/// there was nothing to hide or the re-exec failed.
pub fn hide_secret_args() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut kept = Vec::with_capacity(args.len());
    let mut env = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        let hit = SECRET_FLAGS.iter().find_map(|(flag, var)| {
            if s == *flag || (*flag == "--token" && s == "-t") {
                Some((*var, it.next().map(|v| v.to_string_lossy().into_owned())))
            } else {
                s.strip_prefix(&format!("{flag}="))
                    .map(|v| (*var, Some(v.to_string())))
            }
        });
        match hit {
            Some((var, Some(v))) => env.push((var, v)),
            Some((_, None)) => kept.push(a.clone()),
            None => kept.push(a.clone()),
        }
        if s == "--" {
            kept.extend(it.cloned());
            break;
        }
    }
    if env.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .arg0(args[0].clone())
        .args(kept)
        .envs(env)
        .exec();
    eprintln!("warning: could not re-exec to hide secret flags from ps: {err}");
}

/// Raise the open-file soft limit to the hard limit: a server holds a
/// socket per agent, and the common default of 1024 is far too low.
pub fn raise_nofile_limit() {
    // SAFETY: plain libc calls on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn init_logging(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "debug,hyper=info,rustls=info,tungstenite=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_env("RK3S_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd, log to the journal natively: structured fields
    // (NODE=, SERVER=, ...) and priorities instead of parsed text.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(layer) = tracing_journald::layer() {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("rk3sd".into());
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(layer)
                .try_init();
            return;
        }
    }
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

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
            server::run(cfg, shutdown).instrument(span).await
        }
        config::Command::Agent(args) => {
            let cfg = config::AgentConfig::resolve(&args)?;
            init_logging(cfg.debug);
            let span = tracing::info_span!("rk3s", role = "agent");
            run_agent(cfg, shutdown).instrument(span).await
        }
    }
}

async fn run_agent(cfg: config::AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    fsutil::ensure_dir(&cfg.data_dir, 0o700)?;
    let state = Arc::new(agent::AgentState::default());
    let info = Arc::new(admin::AgentInfo {
        started: std::time::Instant::now(),
        server_url: cfg.server_url.clone(),
    });
    let listener = admin::bind(&cfg.admin_socket)?;
    let admin_cancel = shutdown.child_token();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        admin::Backend::Agent(state.clone(), info),
        admin_cancel.clone(),
    ));
    tracing::info!(server = %cfg.server_url, data_dir = %cfg.data_dir.display(), "rk3s agent starting");
    let params = agent::AgentParams {
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
    admin_cancel.cancel();
    let _ = admin_task.await;
    let _ = std::fs::remove_file(&cfg.admin_socket);
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
