//! The kubelet: runs the pods bound to this node on the container runtime.
//!
//! A real API client with the node's certificate (`api`), so the Node
//! authorizer limits it to this node's pods and their objects. It lists
//! and watches `pods?fieldSelector=spec.nodeName=<node>` (`desired`), and
//! syncs each pod against the runtime (`pods`) when it is new or changed
//! and every second, each in a worker of its own, eight at a time
//! (`sync`, `workers`): sandbox, containers, restarts, status. A pod it has
//! not run yet must first pass admission (`admission`): node pressure,
//! then the scheduler's fit rules; a refused one ends Failed. A pod being
//! deleted is stopped in a task of its own (its grace period), torn down,
//! and then deleted for good by the kubelet, as upstream's does; sandboxes
//! of pods that no longer exist are removed. Under a hard eviction
//! threshold, unused images are removed first and then pods are evicted
//! one at a time (`eviction`); unused images are also collected when the
//! image filesystem fills up (`image_gc`), and dead containers once a
//! second (`container_gc`). Its own API (`serving`: container logs,
//! read by `container_logs`; exec, attach and port-forward passed on to
//! the runtime's stream server by `streaming`) answers the servers
//! through the tunnel.

pub mod admission;
pub mod backoff;
pub mod container_gc;
pub mod container_logs;
pub mod containers;
pub mod desired;
pub mod downward;
pub mod events;
pub mod eviction;
pub mod hooks;
pub mod image_gc;
pub mod listing;
pub mod logs;
pub mod lookup;
pub mod node;
pub mod node_status;
pub mod pod_status;
pub mod pods;
pub mod probes;
pub mod processes;
pub mod resources;
pub mod sandbox;
pub mod serving;
pub mod settings;
pub mod streaming;
pub mod sync;
pub mod usage;
pub mod volumes;
pub mod workers;

use crate::agent::apiclient::{self, Api, Identity};
use crate::agent::runtime::cri::Cri;
use desired::Desired;
use k8s_openapi::api::core::v1::Pod;
use rk3s_api::tunnel::RuntimeInfo;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub struct KubeletParams {
    pub node: String,
    /// Where the node's client certificate lands (`<data-dir>/agent`).
    pub agent_dir: PathBuf,
    pub ca_pem: Vec<u8>,
    pub servers: apiclient::Servers,
    pub cri_socket: PathBuf,
    /// `/var/log/pods` (as root) or under the data dir.
    pub log_root: PathBuf,
    /// Pods' volumes (`<data-dir>/agent/pods`).
    pub pods_root: PathBuf,
    /// `--kubelet-arg` settings.
    pub settings: settings::Settings,
    /// Shared with the image importer: image GC holds it while it decides.
    pub imports: crate::agent::runtime::images::Imports,
    /// Where the kubelet publishes its API once it runs (`serving`); the
    /// tunnel session serves the server's streams with it.
    pub api: watch::Sender<Option<axum::Router>>,
}

/// The node's InternalIP from its Node object (the pods' hostIP).
async fn node_ip(api: &Api, node: &str, cancel: &CancellationToken) -> Option<String> {
    loop {
        if let Ok(v) = api.get(&format!("/api/v1/nodes/{node}")).await {
            let ip = v["status"]["addresses"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["type"] == "InternalIP")
                    .and_then(|x| x["address"].as_str().map(str::to_string))
            });
            if ip.is_some() {
                return ip;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Run the kubelet until `cancel`: connect (node certificate, a ready
/// runtime, the node's IP), start the node's own loops (status, logs, the
/// pod watch, image GC, eviction), then sync pods.
pub async fn run(
    p: KubeletParams,
    runtime: watch::Receiver<Option<RuntimeInfo>>,
    cancel: CancellationToken,
) {
    let Some((api, cri, ip)) = connect(&p, runtime, &cancel).await else {
        return;
    };
    let events = events::Events::new(api.clone(), &p.node);
    let node = Arc::new(node::NodeCtx {
        name: p.node.clone(),
        ip,
        events: events.clone(),
        allocatable: node_status::allocatable(&node_status::measure(&p.pods_root), &p.settings),
        log_root: p.log_root.clone(),
        pods_root: p.pods_root.clone(),
    });
    if let Err(e) = std::fs::create_dir_all(&p.pods_root) {
        tracing::warn!(dir = %p.pods_root.display(), error = %e, "kubelet: cannot create the pods directory");
    }
    let sync = start_node_loops(&p, api, cri, node, &cancel);
    tracing::info!(node = %p.node, "kubelet running pods on the container runtime");
    sync.run(cancel).await
}

/// The API as this node (once registration has written its certificate),
/// the CRI (once the runtime is ready), and the node's InternalIP. `None`:
/// cancelled while waiting.
async fn connect(
    p: &KubeletParams,
    mut runtime: watch::Receiver<Option<RuntimeInfo>>,
    cancel: &CancellationToken,
) -> Option<(Api, Cri, String)> {
    let cert = p.agent_dir.join("client-kubelet.crt");
    let api = loop {
        if cert.exists() {
            match Api::new(
                &p.agent_dir,
                Identity::Kubelet,
                &p.ca_pem,
                p.servers.clone(),
            ) {
                Ok(a) => break a,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet: the node certificate is not usable yet")
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => return None,
        _ = runtime.wait_for(|r| r.as_ref().is_some_and(|r| r.ready)) => {}
    }
    let cri = loop {
        match Cri::connect_with(&p.cri_socket, p.settings.runtime_request_timeout).await {
            Ok(c) => break c,
            Err(e) => tracing::warn!(error = %e, "kubelet: CRI not reachable; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let ip = node_ip(&api, &p.node, cancel).await?;
    Some((api, cri, ip))
}

/// The loops beside the pod syncs: node status, container logs, the pod
/// watch, image GC and eviction; returns the sync loop they feed.
fn start_node_loops(
    p: &KubeletParams,
    api: Api,
    cri: Cri,
    node: Arc<node::NodeCtx>,
    cancel: &CancellationToken,
) -> sync::SyncLoop {
    let events = node.events.clone();
    let observed = Arc::new(node_status::Observed::default());
    node_status::started(&events, &p.agent_dir);
    tokio::spawn(node_status::run(
        api.clone(),
        cri.clone(),
        events.clone(),
        p.pods_root.clone(),
        p.settings.clone(),
        observed.clone(),
        cancel.child_token(),
    ));
    tokio::spawn(logs::run(
        cri.clone(),
        p.settings.clone(),
        cancel.child_token(),
    ));
    let desired = Arc::new(Desired::default());
    let usage = Arc::new(usage::Usage::new(&p.node));
    tokio::spawn(usage::run(
        usage.clone(),
        cri.clone(),
        p.settings.housekeeping_interval,
        cancel.child_token(),
    ));
    p.api.send_replace(Some(serving::router(lookup::Lookup {
        cri: cri.clone(),
        desired: desired.clone(),
        usage,
    })));
    tokio::spawn(desired::follow(
        api.clone(),
        p.node.clone(),
        desired.clone(),
        cancel.child_token(),
    ));
    let images = Arc::new(image_gc::ImageGc::new(
        cri.clone(),
        p.cri_socket.clone(),
        p.imports.clone(),
        &p.settings,
    ));
    tokio::spawn(image_gc::run(
        images.clone(),
        events,
        p.settings.image_gc_period,
        cancel.child_token(),
    ));
    let evicting = eviction::Evicting::default();
    let evictor = eviction::Evictor {
        api: api.clone(),
        cri: cri.clone(),
        node: node.clone(),
        settings: p.settings.clone(),
        evicting: evicting.clone(),
        observed: observed.clone(),
        images,
    };
    let watched = desired.clone();
    tokio::spawn(eviction::run(
        evictor,
        move || {
            watched
                .pods
                .lock()
                .expect("pods")
                .values()
                .map(|p| Pod::clone(p))
                .collect()
        },
        cancel.child_token(),
    ));
    sync::SyncLoop {
        api,
        cri,
        node,
        settings: p.settings.clone(),
        desired,
        evicting,
        observed,
    }
}
