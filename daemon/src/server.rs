//! `rk3sd server`: datastore, PKI, token, the HTTPS supervisor routes, node
//! lifecycle, the admin socket, and the server's own node agent.

use crate::agent::{self, AgentParams, AgentState};
use crate::certs::Pki;
use crate::cluster::{self, Membership};
use crate::config::ServerConfig;
use crate::datastore::{sqlite::SqliteBackend, Datastore};
use crate::objects::{Objects, Ref};
use crate::supervisor::{Supervisor, SYSTEM_NAMESPACES};
use crate::token::{self, Token};
use crate::tunnels::Tunnels;
use crate::{admin, fsutil, https, lifecycle, nodeinfo, nodepassword, registration};
use anyhow::{bail, Context};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn ensure_namespaces(registry: &crate::registry::Registry) -> anyhow::Result<()> {
    for ns in SYSTEM_NAMESPACES {
        let r = Ref::cluster("namespaces", ns);
        if registry.objects.get(&r).await?.is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match registry.create_at(&r, obj).await {
                Ok(_) | Err(crate::registry::KubeError::AlreadyExists(_)) => {}
                Err(e) => return Err(e).context("creating system namespaces"),
            }
        }
    }
    Ok(())
}

/// The cluster token's secret: the configured one, else the stored one,
/// else a new one.
fn token_secret(cfg: &ServerConfig, token_file: &std::path::Path) -> anyhow::Result<String> {
    Ok(match &cfg.token {
        Some(t) => t.secret().to_string(),
        None => match fsutil::read_optional(token_file)? {
            Some(b) => Token::parse(&String::from_utf8_lossy(&b))
                .with_context(|| {
                    format!(
                        "{} is not a valid token; delete it to generate a new one",
                        token_file.display()
                    )
                })?
                .secret()
                .to_string(),
            None => token::random_secret(),
        },
    })
}

/// A configured token pinned to another CA is refused.
fn check_pin(cfg: &ServerConfig, pki: &Pki, token_file: &std::path::Path) -> anyhow::Result<()> {
    let our_hash = token::ca_hash(pki.ca_bundle());
    if let Some(h) = cfg.token.as_ref().and_then(|t| t.ca_hash.as_ref()) {
        if *h != our_hash {
            bail!(
                "the configured token is pinned to CA hash {h}, but this server's CA ({}) hashes to {our_hash}; \
                 use the token from {} or only its secret part",
                pki_dir_hint(cfg),
                token_file.display()
            );
        }
    }
    Ok(())
}

fn pki_dir_hint(cfg: &ServerConfig) -> String {
    cfg.data_dir
        .join("server/tls/server-ca.crt")
        .display()
        .to_string()
}

async fn readyz(State(sv): State<Arc<Supervisor>>) -> axum::response::Response {
    if !sv.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "runtime core not ready").into_response();
    }
    match sv.objects.store.outage() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("datastore unavailable: {why}"),
        )
            .into_response(),
    }
}

/// The live servers, for agents' load balancers (token required, as for
/// registration).
async fn apiservers(
    State(sv): State<Arc<Supervisor>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    match registration::check_token(&sv, &headers) {
        Err(e) => e.into_response(),
        Ok(()) => axum::Json(sv.membership.servers()).into_response(),
    }
}

async fn cacerts(State(sv): State<Arc<Supervisor>>) -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/x-pem-file")],
        sv.pki.server_ca_pem.clone(),
    )
}

async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    crate::registry::KubeError::NotFoundMessage(format!(
        "the server could not find the requested resource ({})",
        uri.path()
    ))
    .into_response()
}

pub fn router(sv: Arc<Supervisor>) -> Router {
    use rk3s_api::routes::*;
    Router::new()
        .route(CACERTS, get(cacerts))
        .route(PING, get(|| async { "pong" }))
        .route(READYZ, get(readyz))
        .route(APISERVERS, get(apiservers))
        .route(CONNECT, get(registration::connect))
        .route(
            CLIENT_KUBELET_CERT,
            axum::routing::post(registration::client_kubelet_cert),
        )
        .route(
            CLIENT_CONTROLLER_CERT,
            axum::routing::post(registration::client_controller_cert),
        )
        .with_state(sv.clone())
        .merge(crate::apiserver::router(sv))
        .fallback(not_found)
}

/// The two PriorityClasses every cluster has, as upstream bootstraps them.
async fn ensure_priority_classes(registry: &crate::registry::Registry) -> anyhow::Result<()> {
    for (name, value, what) in [
        ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
        ("system-cluster-critical", 2_000_000_000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
    ] {
        let r = Ref::cluster("scheduling.k8s.io/priorityclasses", name);
        let obj = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                         "value": value, "description": what, "preemptionPolicy": "PreemptLowerPriority"});
        match registry.create_at(&r, obj).await {
            Ok(_) | Err(crate::registry::KubeError::AlreadyExists(_)) => {}
            Err(e) => return Err(e).context("creating the system PriorityClasses"),
        }
    }
    Ok(())
}

/// How long a server waits for an unreachable external datastore at
/// startup before giving up (systemd then restarts it).
const DATASTORE_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

async fn open_datastore(
    cfg: &ServerConfig,
    server_dir: &std::path::Path,
) -> anyhow::Result<Datastore> {
    let Some(endpoint) = &cfg.datastore_endpoint else {
        let db_path = server_dir.join("db").join("state.db");
        let backend = SqliteBackend::open(&db_path)
            .with_context(|| format!("opening datastore {}", db_path.display()))?;
        return Ok(Datastore::new(Arc::new(backend)));
    };
    let shown = crate::datastore::postgres::redact(endpoint);
    // Settings errors (URL, TLS files) do not get better by waiting.
    crate::datastore::postgres::check_settings(endpoint, &cfg.datastore_tls)
        .context("checking --datastore-endpoint and its TLS files")?;
    let deadline = Instant::now() + DATASTORE_STARTUP_TIMEOUT;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match crate::datastore::postgres::PostgresBackend::connect(endpoint, &cfg.datastore_tls)
            .await
        {
            Ok(b) => return Ok(Datastore::new(Arc::new(b))),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(datastore = %shown, attempt, error = %e, "external datastore not reachable yet; retrying");
                crate::systemd::status(&format!(
                    "waiting for the external datastore {shown} (attempt {attempt})"
                ));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => {
                bail!(
                    "external datastore {shown} unreachable for {}s, giving up: {e}",
                    DATASTORE_STARTUP_TIMEOUT.as_secs()
                )
            }
        }
    }
}

/// Start the server and run until `shutdown` fires.
pub async fn run(cfg: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server_dir = cfg.data_dir.join("server");
    fsutil::ensure_dir(&cfg.data_dir, 0o700)?;
    fsutil::ensure_dir(&server_dir.join("db"), 0o700)?;
    fsutil::ensure_dir(&server_dir.join("cred"), 0o700)?;

    crate::systemd::status("opening the datastore");
    let store = open_datastore(&cfg, &server_dir).await?;
    let objects = Objects::new(store.clone());
    tracing::info!(datastore = %store.describe(), "datastore open");

    let node_name = agent::node_name(&cfg.node).context("resolving the node name")?;
    let mut sans = vec![nodeinfo::hostname(), node_name.clone()];
    sans.extend(cfg.node.node_ips.iter().cloned());
    sans.extend(nodeinfo::host_ips());
    sans.extend(cfg.tls_sans.iter().cloned());
    if !cfg.bind_address.is_unspecified() {
        sans.push(cfg.bind_address.to_string());
    }
    let token_file = server_dir.join("token");
    let secret = token_secret(&cfg, &token_file)?;
    let tls_dir = server_dir.join("tls");
    if cfg.datastore_endpoint.is_some() {
        // Servers sharing a datastore share their CAs through it.
        crate::bootstrap::reconcile(&store, &secret, &tls_dir, || {
            Pki::load_or_create(&tls_dir, &sans)
                .map(|_| ())
                .map_err(Into::into)
        })
        .await
        .context("reconciling bootstrap data with the external datastore")?;
    }
    let pki = Pki::load_or_create(&tls_dir, &sans).context("preparing TLS certificates")?;
    check_pin(&cfg, &pki, &token_file)?;
    let token = Token::secure(pki.ca_bundle(), "server", &secret);
    fsutil::write_atomic(
        &token_file,
        format!("{}\n", token.expose()).as_bytes(),
        0o600,
    )?;
    let agent_token = cfg
        .agent_token
        .as_ref()
        .map(|t| Token::secure(pki.ca_bundle(), "node", t.secret()));
    if let Some(t) = &agent_token {
        fsutil::write_atomic(
            &server_dir.join("agent-token"),
            format!("{}\n", t.expose()).as_bytes(),
            0o600,
        )?;
    }

    let registry = Arc::new(crate::registry::Registry::new(objects.clone()).await);
    ensure_namespaces(&registry).await?;
    nodepassword::secrets::import_legacy(&registry, &server_dir.join("cred").join("node-passwd"))
        .await
        .context("importing legacy node passwords")?;

    let listener = tokio::net::TcpListener::bind((cfg.bind_address, cfg.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (--bind-address/--https-listen-port)",
                cfg.bind_address, cfg.port
            )
        })?;
    let port = listener.local_addr()?.port();
    // The server's node IP: --node-ip, else a specific --bind-address, else
    // the host's first address (loopback only as a last resort).
    let mut node_settings = cfg.node.clone();
    if node_settings.node_ips.is_empty() {
        let ip = if cfg.bind_address.is_unspecified() {
            nodeinfo::host_ips()
                .into_iter()
                .next()
                .unwrap_or_else(|| "127.0.0.1".into())
        } else {
            cfg.bind_address.to_string()
        };
        node_settings.node_ips.push(ip);
    }
    let advertise_ip = node_settings.node_ips[0].clone();
    let advertise_address = if advertise_ip.contains(':') {
        format!("[{advertise_ip}]:{port}")
    } else {
        format!("{advertise_ip}:{port}")
    };

    // Local clients (the embedded agent, the admin kubeconfig) use loopback
    // unless the API listens on one address only.
    let local_url = if cfg.bind_address.is_unspecified() {
        format!("https://127.0.0.1:{port}")
    } else if cfg.bind_address.is_ipv6() {
        format!("https://[{}]:{port}", cfg.bind_address)
    } else {
        format!("https://{}:{port}", cfg.bind_address)
    };
    crate::kubeconfig::write_admin(
        &pki,
        &server_dir.join("tls"),
        &cfg.kubeconfig,
        cfg.kubeconfig_mode,
        &local_url,
    )?;
    let kubernetes_service = cluster::KubernetesService {
        port,
        ip: cfg.services.api_ip().to_string(),
    };
    ensure_priority_classes(&registry).await?;
    let manifests_dir = server_dir.join("manifests");
    {
        use base64::Engine;
        let values = crate::deploy::Placeholders {
            cluster_domain: "cluster.local".into(),
            server_url: format!("https://{advertise_address}"),
            ca_cert_base64: base64::engine::general_purpose::STANDARD.encode(&pki.server_ca_pem),
        };
        crate::deploy::write_bundled(&manifests_dir, &values, &cfg.disable)
            .context("writing the bundled manifests")?;
    }
    let membership = Arc::new(Membership::new(&node_name, &advertise_address, cfg.cluster));

    let embedded = (!cfg.disable_agent).then(|| Arc::new(AgentState::default()));
    let issuer = crate::auth::tokens::Issuer::load(&store, &secret, cfg.max_token_expiration)
        .await
        .context("loading the service-account signing key")?;
    let auth = Arc::new(crate::auth::Auth::new(Arc::new(issuer), objects.clone()));
    registry.set_admission(Arc::new(crate::auth::admission::Admit {
        auth: auth.clone(),
        objects: objects.clone(),
    }));
    registry.set_allocator(
        "services",
        Arc::new(crate::registry::ranges::Allocator::new(
            cfg.services.clone(),
            store.clone(),
        )),
    );
    crate::auth::policy::reconcile(&registry)
        .await
        .context("reconciling the default RBAC policy")?;
    // Through the registry, so its address is claimed like any Service's.
    // Not fatal: the leader keeps trying every 10 s.
    if let Err(e) = cluster::ensure_service(&registry, &kubernetes_service).await {
        tracing::warn!(error = %e, "could not create the default/kubernetes Service yet; the leader will retry");
    }
    let background = CancellationToken::new();
    let bg = tokio_util::task::TaskTracker::new();
    bg.spawn(auth.clone().follow(store.clone(), background.clone()));
    // Serve only once the bindings are known, so nobody is denied by a
    // policy not yet read.
    if tokio::time::timeout(Duration::from_secs(30), auth.rbac.synced())
        .await
        .is_err()
    {
        anyhow::bail!("could not read the RBAC policy from the datastore within 30 s");
    }
    let sv = Arc::new(Supervisor {
        objects: objects.clone(),
        registry: registry.clone(),
        pki,
        token: token.clone(),
        agent_token,
        token_file: token_file.clone(),
        tunnels: Tunnels::default(),
        server_name: node_name.clone(),
        own_node: (!cfg.disable_agent).then(|| node_name.clone()),
        advertise_address: advertise_address.clone(),
        heartbeat_interval: cfg.node.heartbeat_interval,
        keepalive_timeout: crate::tunnels::keepalive_for(cfg.node.heartbeat_interval),
        grace_period: cfg.grace_period,
        shutdown: shutdown.child_token(),
        started: Instant::now(),
        ready: AtomicBool::new(false),
        embedded_agent: embedded.clone(),
        membership: membership.clone(),
        ipam: cfg.ipam,
        pod_cidrs: Default::default(),
        auth,
        registrations: crate::gate::Gate::new(
            cfg.max_registrations_inflight,
            Duration::from_secs(6),
        ),
        events: crate::controllers::client::server_recorder(registry.clone()),
    });
    registry.set_deletions(Arc::new(crate::nodes::NodeDeletions(Arc::downgrade(&sv))));

    let tls = sv.pki.server_config()?;
    let http_cancel = shutdown.child_token();
    let https_task = tokio::spawn(https::serve_tls(
        listener,
        tls,
        router(sv.clone()),
        cfg.limits,
        http_cancel.clone(),
    ));
    let admin_cancel = shutdown.child_token();
    let admin_listener = admin::bind(&cfg.admin_socket)?;
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin::Backend::Server(sv.clone()),
        admin_cancel.clone(),
    ));

    bg.spawn(cluster::run(
        objects.clone(),
        membership.clone(),
        background.clone(),
    ));
    bg.spawn(registry.clone().follow_crds(background.clone()));
    bg.spawn(registry.clone().follow_namespaces(background.clone()));
    // Singleton work, on the leader only.
    {
        let (o, s, m, sv) = (
            objects.clone(),
            store.clone(),
            membership.clone(),
            sv.clone(),
        );
        let (dir, disable) = (manifests_dir.clone(), cfg.disable.clone());
        let (grace, period, keep, every) = (
            cfg.grace_period,
            cfg.monitor_period,
            cfg.compaction_keep,
            cfg.compaction_interval,
        );
        bg.spawn(cluster::while_leader(
            membership.clone(),
            background.clone(),
            move |term| {
                let (o, s, m, sv) = (o.clone(), s.clone(), m.clone(), sv.clone());
                let (dir, disable, svc) = (dir.clone(), disable.clone(), kubernetes_service.clone());
                async move {
                    tracing::info!("leading: running the node monitor, compaction, the kubernetes Endpoints, the manifests, the garbage collector and namespace termination");
                    tokio::join!(
                        crate::controllers::run(sv.registry.clone(), sv.auth.clone(), sv.pki.server_ca_pem.clone(), sv.events.clone(), term.clone()),
                        term.run_until_cancelled(lifecycle::monitor_loop(o.clone(), grace, period)),
                        term.run_until_cancelled(crate::datastore::compaction_loop(s, keep, every)),
                        term.run_until_cancelled(cluster::endpoints_loop(sv.registry.clone(), m, svc)),
                        crate::deploy::run(sv, dir, disable, term.clone()),
                    );
                }
            },
        ));
    }
    sv.ready.store(true, Ordering::Release);
    crate::systemd::ready(&format!("serving on {advertise_address}"));
    {
        // The watchdog is fed while the API's accept loop lives and the
        // runtime turns; a wedged daemon stops feeding it.
        let https_alive = http_cancel.clone();
        bg.spawn(crate::systemd::watchdog(background.clone(), move || {
            let alive = !https_alive.is_cancelled();
            async move { alive }
        }));
    }
    tracing::info!(
        address = %format!("{}:{port}", cfg.bind_address),
        token_file = %token_file.display(),
        kubeconfig = %cfg.kubeconfig.display(),
        admin_socket = %cfg.admin_socket.display(),
        data_dir = %cfg.data_dir.display(),
        "rk3s server is serving"
    );

    let agent_cancel = shutdown.child_token();
    let (shutdown_tx, shutdowns) = tokio::sync::mpsc::channel(1);
    if embedded.is_some() {
        tokio::spawn(crate::systemd::shutdown_inhibitor(
            shutdown_tx,
            Duration::from_secs(10),
            agent_cancel.clone(),
        ));
    }
    let agent_task = embedded.map(|state| {
        let params = AgentParams {
            server_url: local_url.clone(),
            token: token.clone(),
            node: node_settings.clone(),
            data_dir: cfg.data_dir.clone(),
            ca_pem: Some(sv.pki.ca_bundle().to_vec()),
            balance: false,
        };
        let c = agent_cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = agent::run(params, state, shutdowns, c).await {
                tracing::error!(error = %e, "embedded agent stopped");
            }
        })
    });

    shutdown.cancelled().await;
    crate::systemd::stopping("closing tunnels and draining connections");
    tracing::info!("shutting down: closing tunnels and draining connections");
    agent_cancel.cancel();
    if let Some(t) = agent_task {
        let _ = t.await;
    }
    sv.tunnels.close_all();
    http_cancel.cancel();
    admin_cancel.cancel();
    let _ = https_task.await;
    let _ = admin_task.await;
    background.cancel();
    bg.close();
    bg.wait().await;
    cluster::resign(&objects, &membership).await;
    let _ = std::fs::remove_file(&cfg.admin_socket);
    tracing::info!("server stopped");
    Ok(())
}
