//! `rk3sd server`: the datastore, credentials, the API and supervisor
//! routes on :6443, the agent tunnels, cluster membership, and the work
//! only the leader does (controllers, node monitor, compaction, manifests).
//! [`start`] runs the phases in order and returns a running [`Server`];
//! the entry point adds the admin socket and the server's own agent.

pub mod bootstrap;
pub mod builtins;
pub mod cluster;
pub mod deploy;
pub mod gate;
pub mod https;
pub mod ipam;
pub mod lifecycle;
pub mod nodepasswords;
pub mod nodes;
pub mod registration;
pub mod relay;
pub mod routes;
pub mod session;
pub mod settings;
pub mod supervisor;
pub mod tunnels;

use crate::agent::state::AgentState;
use crate::apiserver::state::ApiState;
use crate::auth::Auth;
use crate::datastore::objects::Objects;
use crate::datastore::{sqlite::SqliteBackend, Datastore};
use crate::host::{fsutil, nodeinfo, systemd};
use crate::registry::Registry;
use anyhow::{bail, Context};
use cluster::Membership;
use settings::Settings;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use supervisor::Supervisor;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tunnels::Tunnels;

/// A started server; [`Server::stop`] takes it down in order.
pub struct Server {
    pub supervisor: Arc<Supervisor>,
    /// Where local clients (the server's own agent, the admin kubeconfig)
    /// reach the API: loopback unless it listens on one address only.
    pub local_url: String,
    /// This server's node IP (`--node-ip`, a specific `--bind-address`, or
    /// the host's first address), which agents reach it at.
    pub node_ip: String,
    https: JoinHandle<()>,
    http_cancel: CancellationToken,
    background: CancellationToken,
    tasks: TaskTracker,
}

/// Start the server: every phase that can fail fails here, before it
/// serves. `own_agent`: the state of the node agent the entry point runs
/// beside it, if any.
pub async fn start(
    cfg: Settings,
    own_agent: Option<Arc<AgentState>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Server> {
    let server_dir = prepare_dirs(&cfg.data_dir)?;
    systemd::status("opening the datastore");
    let store = open_datastore(&cfg, &server_dir).await?;
    let objects = Objects::new(store.clone());
    tracing::info!(datastore = %store.describe(), "datastore open");

    let creds = bootstrap::credentials(&cfg, &store, &server_dir, &subject_names(&cfg)).await?;
    let registry = open_registry(objects.clone(), &server_dir).await?;
    let listener = listen(&cfg).await?;
    let port = listener.local_addr()?.port();
    let node_ip = node_ip(&cfg);
    let advertise_address = host_port(&node_ip, port);
    let local_url = local_url(&cfg, port);
    crate::credentials::kubeconfig::write_admin(
        &creds.pki,
        &server_dir.join("tls"),
        &cfg.kubeconfig,
        cfg.kubeconfig_mode,
        &local_url,
    )?;
    let manifests_dir = server_dir.join("manifests");
    write_manifests(&manifests_dir, &advertise_address, &creds.pki, &cfg.disable)?;

    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    let auth = start_auth(&cfg, &store, &registry, &creds.secret, &background, &tasks).await?;
    let kubernetes_service = cluster::KubernetesService {
        port,
        ip: cfg.services.api_ip().to_string(),
    };
    // Through the registry, so its address is claimed like any Service's.
    // Not fatal: the leader keeps trying every 10 s.
    if let Err(e) = cluster::ensure_service(&registry, &kubernetes_service).await {
        tracing::warn!(error = %e, "could not create the default/kubernetes Service yet; the leader will retry");
    }

    let tunnels = Arc::new(Tunnels::default());
    let kubelets = relay::Dialer::new(
        tunnels.clone(),
        objects.clone(),
        &cfg.node_name,
        cfg.grace_period,
        &creds.pki,
    )
    .context("minting this server's certificate for relaying kubelet streams")?;
    let front_proxy = {
        let (cert, key) = creds
            .pki
            .issue_client_keypair(crate::apiserver::aggregator::PROXY_USER, &[])
            .context("minting the aggregator's front-proxy certificate")?;
        crate::apiserver::state::Aggregation::new(cert, key)
    };
    let api = Arc::new(ApiState::new(
        objects.clone(),
        registry.clone(),
        auth,
        crate::controllers::client::server_recorder(registry.clone()),
        advertise_address.clone(),
        Arc::new(kubelets),
        front_proxy,
    ));
    let membership = Arc::new(Membership::new(
        &cfg.node_name,
        &advertise_address,
        cfg.cluster,
    ));
    let sv = Arc::new(Supervisor {
        api,
        pki: creds.pki,
        token: creds.token,
        agent_token: creds.agent_token,
        token_file: creds.token_file,
        tunnels,
        server_name: cfg.node_name.clone(),
        own_node: own_agent.is_some().then(|| cfg.node_name.clone()),
        heartbeat_interval: cfg.heartbeat_interval,
        keepalive_timeout: rk3s_api::tunnel::keepalive_for(cfg.heartbeat_interval),
        grace_period: cfg.grace_period,
        shutdown: shutdown.child_token(),
        started: Instant::now(),
        embedded_agent: own_agent,
        membership: membership.clone(),
        ipam: cfg.ipam,
        pod_cidrs: Default::default(),
        registrations: gate::Gate::new(cfg.max_registrations_inflight, Duration::from_secs(6)),
    });
    registry.set_deletions(Arc::new(nodes::NodeDeletions(Arc::downgrade(&sv))));

    let http_cancel = shutdown.child_token();
    let https = tokio::spawn(https::serve_tls(
        listener,
        sv.pki.server_config()?,
        routes::router(sv.clone()),
        cfg.limits,
        http_cancel.clone(),
    ));
    tasks.spawn(cluster::run(
        objects,
        membership.clone(),
        background.clone(),
    ));
    tasks.spawn(registry.clone().follow_crds(background.clone()));
    tasks.spawn(registry.clone().follow_namespaces(background.clone()));
    lead_when_elected(
        &sv,
        &cfg,
        &store,
        manifests_dir,
        kubernetes_service,
        &background,
        &tasks,
    );
    {
        // The watchdog is fed while the API's accept loop lives and the
        // runtime turns; a wedged daemon stops feeding it.
        let https_alive = http_cancel.clone();
        tasks.spawn(systemd::watchdog(background.clone(), move || {
            let alive = !https_alive.is_cancelled();
            async move { alive }
        }));
    }
    sv.api.set_ready();
    tracing::info!(
        address = %format!("{}:{port}", cfg.bind_address),
        token_file = %sv.token_file.display(),
        kubeconfig = %cfg.kubeconfig.display(),
        data_dir = %cfg.data_dir.display(),
        "rk3s server is serving"
    );
    Ok(Server {
        supervisor: sv,
        local_url,
        node_ip,
        https,
        http_cancel,
        background,
        tasks,
    })
}

impl Server {
    /// host:port agents reach this server at.
    pub fn advertise_address(&self) -> &str {
        &self.supervisor.api.advertise_address
    }

    /// Close the tunnels, drain the API's connections, stop the background
    /// work and hand leadership over.
    pub async fn stop(self) {
        let sv = self.supervisor;
        sv.tunnels.close_all();
        self.http_cancel.cancel();
        let _ = self.https.await;
        self.background.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        cluster::resign(&sv.api.objects, &sv.membership).await;
    }
}

fn prepare_dirs(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let server_dir = data_dir.join("server");
    fsutil::ensure_dir(data_dir, 0o700)?;
    fsutil::ensure_dir(&server_dir.join("db"), 0o700)?;
    fsutil::ensure_dir(&server_dir.join("cred"), 0o700)?;
    Ok(server_dir)
}

/// The names the serving certificate covers.
fn subject_names(cfg: &Settings) -> Vec<String> {
    let mut sans = vec![nodeinfo::hostname(), cfg.node_name.clone()];
    sans.extend(cfg.node_ips.iter().cloned());
    sans.extend(nodeinfo::host_ips());
    sans.extend(cfg.tls_sans.iter().cloned());
    if !cfg.bind_address.is_unspecified() {
        sans.push(cfg.bind_address.to_string());
    }
    sans
}

/// The registry over the datastore, with what every cluster has.
async fn open_registry(objects: Objects, server_dir: &Path) -> anyhow::Result<Arc<Registry>> {
    let registry = Arc::new(Registry::new(objects).await);
    builtins::ensure(&registry).await?;
    nodepasswords::import_legacy(&registry, &server_dir.join("cred").join("node-passwd"))
        .await
        .context("importing legacy node passwords")?;
    Ok(registry)
}

async fn listen(cfg: &Settings) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((cfg.bind_address, cfg.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{} (--bind-address/--https-listen-port)",
                cfg.bind_address, cfg.port
            )
        })
}

/// --node-ip, else a specific --bind-address, else the host's first
/// address (loopback only as a last resort).
fn node_ip(cfg: &Settings) -> String {
    if let Some(ip) = cfg.node_ips.first() {
        return ip.clone();
    }
    if cfg.bind_address.is_unspecified() {
        nodeinfo::host_ips()
            .into_iter()
            .next()
            .unwrap_or_else(|| "127.0.0.1".into())
    } else {
        cfg.bind_address.to_string()
    }
}

fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn local_url(cfg: &Settings, port: u16) -> String {
    if cfg.bind_address.is_unspecified() {
        format!("https://127.0.0.1:{port}")
    } else {
        format!("https://{}", host_port(&cfg.bind_address.to_string(), port))
    }
}

/// The bundled manifests, with this server's address and CA filled in.
fn write_manifests(
    dir: &Path,
    advertise_address: &str,
    pki: &crate::credentials::certs::Pki,
    disable: &[String],
) -> anyhow::Result<()> {
    use base64::Engine;
    let values = deploy::Placeholders {
        cluster_domain: "cluster.local".into(),
        server_url: format!("https://{advertise_address}"),
        ca_cert_base64: base64::engine::general_purpose::STANDARD.encode(&pki.server_ca_pem),
    };
    deploy::write_bundled(dir, &values, disable).context("writing the bundled manifests")
}

/// Authorization and the token issuer, wired into the registry's
/// admission, with the default RBAC policy reconciled and read: nobody is
/// served before the bindings are known, so nobody is denied by a policy
/// not yet read.
async fn start_auth(
    cfg: &Settings,
    store: &Datastore,
    registry: &Arc<Registry>,
    secret: &str,
    background: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<Arc<Auth>> {
    let objects = registry.objects.clone();
    let issuer = crate::auth::tokens::Issuer::load(store, secret, cfg.max_token_expiration)
        .await
        .context("loading the service-account signing key")?;
    let auth = Arc::new(Auth::new(Arc::new(issuer), objects.clone()));
    registry.set_admission(Arc::new(crate::auth::admission::Admit {
        auth: auth.clone(),
        objects,
    }));
    registry.set_allocator(
        "services",
        Arc::new(crate::registry::ranges::Allocator::new(
            cfg.services.clone(),
            store.clone(),
        )),
    );
    crate::auth::policy::reconcile(registry)
        .await
        .context("reconciling the default RBAC policy")?;
    tasks.spawn(auth.clone().follow(store.clone(), background.clone()));
    if tokio::time::timeout(Duration::from_secs(30), auth.rbac.synced())
        .await
        .is_err()
    {
        bail!("could not read the RBAC policy from the datastore within 30 s");
    }
    Ok(auth)
}

/// Singleton work, run while this server leads: the controllers, the node
/// monitor, compaction, the kubernetes Endpoints and the manifests.
fn lead_when_elected(
    sv: &Arc<Supervisor>,
    cfg: &Settings,
    store: &Datastore,
    manifests_dir: PathBuf,
    kubernetes_service: cluster::KubernetesService,
    background: &CancellationToken,
    tasks: &TaskTracker,
) {
    let (sv, store) = (sv.clone(), store.clone());
    let disable = cfg.disable.clone();
    let controller_settings = cfg.controllers.clone();
    let (grace, period, keep, every) = (
        cfg.grace_period,
        cfg.monitor_period,
        cfg.compaction_keep,
        cfg.compaction_interval,
    );
    tasks.spawn(cluster::while_leader(
        sv.membership.clone(),
        background.clone(),
        move |term| {
            let (sv, store) = (sv.clone(), store.clone());
            let (dir, disable, svc) = (manifests_dir.clone(), disable.clone(), kubernetes_service.clone());
            let settings = controller_settings.clone();
            async move {
                tracing::info!("leading: running the node monitor, compaction, the kubernetes Endpoints, the manifests, the garbage collector and namespace termination");
                let api = &sv.api;
                tokio::join!(
                    crate::controllers::run(
                        api.registry.clone(),
                        crate::controllers::Inputs {
                            auth: api.auth.clone(),
                            ca_pem: sv.pki.server_ca_pem.clone(),
                            events: api.events.clone(),
                            metrics: Arc::new(crate::apiserver::aggregator::Metrics(api.clone())),
                            extensions: Arc::new(crate::apiserver::aggregator::Prober(api.clone())),
                            client_ca_pem: sv.pki.client_ca_pem.clone(),
                            settings,
                        },
                        term.clone(),
                    ),
                    term.run_until_cancelled(lifecycle::monitor_loop(api.objects.clone(), grace, period)),
                    term.run_until_cancelled(crate::datastore::compaction_loop(store, keep, every)),
                    term.run_until_cancelled(cluster::endpoints_loop(api.registry.clone(), sv.membership.clone(), svc)),
                    deploy::run(api.clone(), dir, disable, term.clone()),
                );
            }
        },
    ));
}

/// How long a server waits for an unreachable external datastore at
/// startup before giving up (systemd then restarts it).
const DATASTORE_STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

async fn open_datastore(cfg: &Settings, server_dir: &std::path::Path) -> anyhow::Result<Datastore> {
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
                systemd::status(&format!(
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
