//! The kubelet: runs the pods bound to this node on the container runtime.
//!
//! A real API client with the node's certificate (`api`), so the Node
//! authorizer limits it to this node's pods and their objects. It lists
//! and watches `pods?fieldSelector=spec.nodeName=<node>`, and syncs each
//! pod against the runtime (`pods`) when it is new or changed and every
//! second, each in a worker of its own, eight at a time (`workers`):
//! sandbox, containers, restarts, status. A pod it has
//! not run yet must first pass admission (`admission`): node pressure,
//! then the scheduler's fit rules; a refused one ends Failed. A pod being
//! deleted is stopped in a task of its own (its grace period), torn down,
//! and then deleted for good by the kubelet, as upstream's does; sandboxes
//! of pods that no longer exist are removed. Under a hard eviction
//! threshold, unused images are removed first and then pods are evicted
//! one at a time (`eviction`); unused images are also collected when the
//! image filesystem fills up (`image_gc`), and dead containers once a
//! second (`container_gc`).

pub mod admission;
pub mod backoff;
pub mod container_gc;
pub mod containers;
pub mod downward;
pub mod events;
pub mod eviction;
pub mod hooks;
pub mod image_gc;
pub mod listing;
pub mod logs;
pub mod node;
pub mod node_status;
pub mod pod_status;
pub mod pods;
pub mod probes;
pub mod processes;
pub mod resources;
pub mod sandbox;
pub mod settings;
pub mod volumes;
pub mod workers;

use crate::apiclient::{self, Api, Identity};
use crate::placement::finished;
use crate::runtime::cri::Cri;
use k8s_openapi::api::core::v1::{Node, Pod};
use rk3s_api::tunnel::RuntimeInfo;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Pods synced at once.
const PARALLEL_SYNCS: usize = 8;
/// How often every pod is synced again without a change.
const RESYNC: Duration = Duration::from_secs(1);

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
    pub imports: crate::runtime::images::Imports,
}

/// The pods bound to this node, by uid, as the watch last saw them.
#[derive(Default)]
struct Desired {
    /// Shared with the syncs: they take references, not copies of every
    /// pod.
    pods: Mutex<HashMap<String, Arc<Pod>>>,
    /// Pods new to the kubelet or changed in what it acts on since it
    /// last looked, synced without waiting for the next resync.
    dirty: Mutex<HashSet<String>>,
    /// Set once a list succeeded: before that, no sandbox is an orphan.
    listed: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl Desired {
    fn mark(&self, uid: String) {
        self.dirty.lock().expect("dirty").insert(uid);
        self.changed.notify_one();
    }

    fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().expect("dirty"))
    }
}

/// Whether a pod changed in what the kubelet acts on, as upstream's pod
/// config tells updates apart: its own status writes come back through
/// the watch, and syncing again for each would double a burst's work.
fn differs(old: &Pod, new: &Pod) -> bool {
    let (a, b) = (&old.metadata, &new.metadata);
    old.spec != new.spec
        || a.labels != b.labels
        || a.annotations != b.annotations
        || a.deletion_timestamp != b.deletion_timestamp
        || a.deletion_grace_period_seconds != b.deletion_grace_period_seconds
}

/// A pod from the API as the kubelet keeps it: without its managed
/// fields, which nothing here reads and which are most of a running pod's
/// size (a field tree for every status the kubelet wrote).
fn kept(v: Value) -> Option<(String, Arc<Pod>)> {
    let uid = uid_of(&v)?;
    let mut pod: Pod = serde_json::from_value(v).ok()?;
    pod.metadata.managed_fields = None;
    Some((uid, Arc::new(pod)))
}

fn uid_of(v: &Value) -> Option<String> {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// List and watch this node's pods into `desired` until `cancel`.
async fn follow(api: Api, node: String, desired: Arc<Desired>, cancel: CancellationToken) {
    loop {
        let listed = tokio::select! {
            _ = cancel.cancelled() => return,
            r = api.list_pods(&node) => r,
        };
        let rv = match listed {
            Ok((items, rv)) => {
                let map: HashMap<String, Arc<Pod>> = items.into_iter().filter_map(kept).collect();
                desired
                    .dirty
                    .lock()
                    .expect("dirty")
                    .extend(map.keys().cloned());
                *desired.pods.lock().expect("pods") = map;
                desired
                    .listed
                    .store(true, std::sync::atomic::Ordering::Release);
                desired.changed.notify_one();
                rv
            }
            Err(e) => {
                tracing::debug!(error = %e, "kubelet: listing pods failed; retrying");
                tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                continue;
            }
        };
        let d = desired.clone();
        let watched = api.watch_pods(&node, &rv, |kind, obj| match kind {
            "DELETED" => {
                let Some(uid) = uid_of(&obj) else { return };
                d.pods.lock().expect("pods").remove(&uid);
            }
            "ADDED" | "MODIFIED" => {
                let Some((uid, pod)) = kept(obj) else { return };
                let before = d
                    .pods
                    .lock()
                    .expect("pods")
                    .insert(uid.clone(), pod.clone());
                if before.is_none_or(|b| differs(&b, &pod)) {
                    d.mark(uid);
                }
            }
            _ => {}
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = watched => if let Err(e) = r {
                tracing::debug!(error = %e, "kubelet: pod watch ended; listing again");
            }
        }
    }
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

/// Run the kubelet until `cancel`. Waits for the node certificate and a
/// ready runtime first.
pub async fn run(
    p: KubeletParams,
    mut runtime: watch::Receiver<Option<RuntimeInfo>>,
    cancel: CancellationToken,
) {
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
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = runtime.wait_for(|r| r.as_ref().is_some_and(|r| r.ready)) => {}
    }
    let cri_ = loop {
        match Cri::connect_with(&p.cri_socket, p.settings.runtime_request_timeout).await {
            Ok(c) => break c,
            Err(e) => tracing::warn!(error = %e, "kubelet: CRI not reachable; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let Some(ip) = node_ip(&api, &p.node, &cancel).await else {
        return;
    };
    let events = events::Events::new(api.clone(), &p.node);
    let node = node::NodeCtx {
        name: p.node.clone(),
        ip,
        events: events.clone(),
        allocatable: node_status::allocatable(&node_status::measure(&p.pods_root), &p.settings),
        log_root: p.log_root.clone(),
        pods_root: p.pods_root.clone(),
    };
    if let Err(e) = std::fs::create_dir_all(&p.pods_root) {
        tracing::warn!(dir = %p.pods_root.display(), error = %e, "kubelet: cannot create the pods directory");
    }
    let observed = Arc::new(node_status::Observed::default());
    node_status::started(&events, &p.agent_dir);
    tokio::spawn(node_status::run(
        api.clone(),
        cri_.clone(),
        events.clone(),
        p.pods_root.clone(),
        p.settings.clone(),
        observed.clone(),
        cancel.child_token(),
    ));
    tokio::spawn(logs::run(
        cri_.clone(),
        p.settings.clone(),
        cancel.child_token(),
    ));
    tracing::info!(node = %p.node, "kubelet running pods on the container runtime");
    let desired = Arc::new(Desired::default());
    tokio::spawn(follow(
        api.clone(),
        p.node.clone(),
        desired.clone(),
        cancel.child_token(),
    ));
    let node = Arc::new(node);
    let images = Arc::new(image_gc::ImageGc::new(
        cri_.clone(),
        p.cri_socket.clone(),
        p.imports.clone(),
        &p.settings,
    ));
    tokio::spawn(image_gc::run(
        images.clone(),
        events.clone(),
        p.settings.image_gc_period,
        cancel.child_token(),
    ));
    let evicting = eviction::Evicting::default();
    let watched = desired.clone();
    let evictor = eviction::Evictor {
        api: api.clone(),
        cri: cri_.clone(),
        node: node.clone(),
        settings: p.settings.clone(),
        evicting: evicting.clone(),
        observed: observed.clone(),
        images,
    };
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
    let mut tracked: HashMap<String, pods::Tracked> = HashMap::new();
    // Pods that passed admission (or were running before a restart): only
    // these are started.
    let mut admitted: std::collections::HashSet<String> = Default::default();
    let pressure_period = p.settings.pressure_transition_period;
    let mut node_cache = NodeCache {
        max_age: p.settings.status_update_frequency,
        seen: None,
    };
    // Pods being stopped, each in a task of its own: a grace period must
    // not hold up the other pods.
    let terminating: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut workers = workers::Workers::new(PARALLEL_SYNCS);
    // Once a second every pod not being synced is synced again, with one
    // listing of the runtime for all of them (upstream's relist); a pod
    // that is new or changed is synced as soon as the watch brings it.
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (pass, mut synced) = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = desired.changed.notified() => (false, false),
            (uid, st) = workers.finished() => {
                tracked.insert(uid, st);
                (false, true)
            }
            _ = resync.tick() => (true, false),
        };
        while let Some((uid, st)) = workers.try_finished() {
            tracked.insert(uid, st);
            synced = true;
        }
        if synced && workers.idle() {
            // The last syncs' listings and statuses are dropped by now:
            // hand what they held back before idling.
            crate::memory::release_freed();
        }
        let dirty = desired.take_dirty();
        // A worker that finished with nothing changed: nothing to look
        // at until the next change or resync.
        if !pass && dirty.is_empty() {
            continue;
        }
        let snapshot: Vec<(String, Arc<Pod>)> = desired
            .pods
            .lock()
            .expect("pods")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut due = Vec::new();
        let mut later = Vec::new();
        for (uid, pod) in &snapshot {
            if !pass && !dirty.contains(uid) {
                continue;
            }
            if workers.busy(uid) {
                // Its worker may have read the pod before the change: it
                // goes again once that worker is done.
                if dirty.contains(uid) {
                    later.push(uid.clone());
                }
                continue;
            }
            due.push((uid.clone(), pod.clone()));
        }
        desired.dirty.lock().expect("dirty").extend(later);
        if due.is_empty() && !pass {
            continue;
        }
        // One listing of sandboxes and containers for the pods started
        // now (a failed list falls back to asking per pod). It is taken
        // after each of their last workers ended, so none of them reads
        // the runtime from before its own last sync.
        let listing = listing::Listing::fetch(&cri_).await.ok().map(Arc::new);
        let mut newcomers = Vec::new();
        let mut starting = Vec::new();
        for (uid, pod) in due {
            if pod.metadata.deletion_timestamp.is_some() {
                if terminating.lock().expect("terminating").insert(uid.clone()) {
                    let (api, cri_, node, terminating) =
                        (api.clone(), cri_.clone(), node.clone(), terminating.clone());
                    tokio::spawn(async move {
                        terminate(&api, &cri_, &node, &uid, &pod).await;
                        terminating.lock().expect("terminating").remove(&uid);
                    });
                }
                continue;
            }
            // Being evicted: left alone until its status says Failed, or
            // this sync would start it again.
            let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
            let mut ev = evicting.lock().expect("evicting");
            if !failed && ev.contains(&uid) {
                continue;
            }
            ev.remove(&uid);
            drop(ev);
            if !admitted.contains(&uid) {
                // What the runtime already holds for a pod was admitted
                // before a restart: it is adopted, not judged again. A
                // finished pod with nothing here has nothing to sync. The
                // rest wait for a listing to tell them apart.
                let Some(l) = &listing else { continue };
                if tracked.contains_key(&uid) || l.knows(&uid) {
                    admitted.insert(uid.clone());
                } else {
                    if !finished(&pod) {
                        newcomers.push((uid, pod));
                    }
                    continue;
                }
            }
            let st = tracked.remove(&uid).unwrap_or_default();
            starting.push((uid, pod, st));
        }
        // Without the Node nobody is judged now (the others are still
        // synced): a failing API is no reason to refuse a pod.
        let node_object = if newcomers.is_empty() {
            None
        } else {
            node_cache.get(&api, &node.name).await
        };
        if let Some(node_object) = node_object {
            let conditions: Vec<&str> = admission::PRESSURES
                .into_iter()
                .filter(|c| observed.within(c, pressure_period))
                .collect();
            // What the admitted pods hold: those running or starting, and
            // those being deleted until they have stopped, as upstream
            // counts them; not those being evicted.
            let others: Vec<Arc<Pod>> = {
                let ev = evicting.lock().expect("evicting");
                snapshot
                    .iter()
                    .filter(|(uid, pod)| {
                        admitted.contains(uid) && !finished(pod) && !ev.contains(uid)
                    })
                    .map(|(_, pod)| pod.clone())
                    .collect()
            };
            let judge = admission::Judge {
                conditions: &conditions,
                sysctls: &p.settings.sysctls,
            };
            for (uid, pod) in admit(&api, &node, node_object, others, newcomers, &judge).await {
                admitted.insert(uid.clone());
                starting.push((uid, pod, pods::Tracked::default()));
            }
        }
        for (uid, pod, st) in starting {
            // Each in a worker of its own (see [`workers`]).
            let (api, cri_, node, listing) =
                (api.clone(), cri_.clone(), node.clone(), listing.clone());
            workers.start(uid, st, move |mut st| async move {
                sync_one(&api, &cri_, &node, &pod, &mut st, listing.as_deref()).await;
                st
            });
        }
        if !pass {
            continue;
        }
        if let Some(l) = &listing {
            container_gc::collect(&cri_, &node, l).await;
            sandbox::collect(&cri_, l).await;
        }
        if desired.listed.load(std::sync::atomic::Ordering::Acquire) {
            let live: HashSet<&String> = snapshot.iter().map(|(u, _)| u).collect();
            tracked.retain(|u, _| live.contains(u));
            admitted.retain(|u| live.contains(u));
            remove_orphans(&cri_, &node, &live).await;
        }
    }
}

/// This node's Node object as admission judges against it, read again
/// once older than `max_age` (upstream's kubelet reads it from an
/// informer): a read per new pod would add a round trip to every pod start.
struct NodeCache {
    max_age: Duration,
    seen: Option<(std::time::Instant, Node)>,
}

impl NodeCache {
    /// The Node, or None when it cannot be read now (logged).
    async fn get(&mut self, api: &Api, name: &str) -> Option<&Node> {
        let fresh = self
            .seen
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < self.max_age);
        if !fresh {
            let read = api
                .get(&format!("/api/v1/nodes/{name}?resourceVersion=0"))
                .await
                .map_err(|e| e.to_string())
                .and_then(|v| serde_json::from_value::<Node>(v).map_err(|e| e.to_string()));
            self.seen = match read {
                Ok(n) => Some((std::time::Instant::now(), n)),
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "kubelet: cannot read the node to admit new pods; trying again");
                    None
                }
            };
        }
        self.seen.as_ref().map(|(_, n)| n)
    }
}

/// Judge the pods this kubelet has not started yet, oldest first as
/// upstream does, each against `node_object`, `others` (the admitted pods
/// that have not ended) and the ones admitted before it; returns the
/// admitted ones. A refused pod is ended at once with the reason.
async fn admit(
    api: &Api,
    node: &node::NodeCtx,
    node_object: &Node,
    mut others: Vec<Arc<Pod>>,
    mut newcomers: Vec<(String, Arc<Pod>)>,
    judge: &admission::Judge<'_>,
) -> Vec<(String, Arc<Pod>)> {
    newcomers.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(&a.1).cmp(&created(&b.1))
    });
    let mut admitted = Vec::new();
    for (uid, pod) in newcomers {
        let Some(rejection) = judge.admit(&pod, node_object, &others) else {
            others.push(pod.clone());
            admitted.push((uid, pod));
            continue;
        };
        let (ns, name) = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        // Not written: the pod is judged again next pass.
        if let Err(e) = api.patch_pod_status(&ns, &name, &rejection.status()).await {
            tracing::debug!(pod = %name, error = %e, "kubelet: rejection not written; retrying");
            continue;
        }
        tracing::warn!(namespace = %ns, pod = %name, reason = %rejection.reason, message = %rejection.message, "pod rejected by admission");
        node.events
            .pod(&pod, events::Warning, &rejection.reason, &rejection.message);
    }
    admitted
}

/// Stop a deleted pod within what is left of its grace period, remove
/// its files, and delete it for good.
async fn terminate(api: &Api, cri_: &Cri, node: &node::NodeCtx, uid: &str, pod: &Pod) {
    let (ns, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    let grace = containers::grace_left(pod, chrono::Utc::now());
    match pods::teardown(cri_, uid, grace, Some((pod, &node.events))).await {
        Ok(()) => {
            // Its files go first: once the object is gone nothing
            // points at them.
            node.remove_pod_files(&ns, &name, uid);
            match api.delete_pod(&ns, &name, uid).await {
                Ok(()) => {
                    tracing::info!(namespace = %ns, pod = %name, "pod terminated and deleted")
                }
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "kubelet: final delete failed; retrying")
                }
            }
        }
        Err(e) => {
            tracing::warn!(pod = %name, error = %e.message(), "kubelet: stopping the pod failed; retrying");
            let m = format!("error killing pod: {}", e.message());
            node.events.pod(pod, events::Warning, "FailedKillPod", m);
        }
    }
}

async fn sync_one(
    api: &Api,
    cri_: &Cri,
    node: &node::NodeCtx,
    pod: &Pod,
    st: &mut pods::Tracked,
    listing: Option<&listing::Listing>,
) {
    let (ns, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    if st.start_time.is_none() {
        st.start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
    match pods::sync(cri_, api, node, pod, st, listing).await {
        Ok(status) => {
            if st.sent.as_ref() != Some(&status) {
                match api.patch_pod_status(&ns, &name, &status).await {
                    Ok(()) => st.sent = Some(status),
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "kubelet: status not written; retrying")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(pod = %name, error = %e, "kubelet: pod sync failed; retrying"),
    }
}

/// Tear down sandboxes whose pod is gone (deleted while the agent was
/// down, or force-deleted).
async fn remove_orphans(
    cri_: &Cri,
    node: &node::NodeCtx,
    live: &std::collections::HashSet<&String>,
) {
    let Ok(list) = cri_
        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
        .await
    else {
        return;
    };
    for s in list.items {
        let Some(uid) = s.labels.get(listing::LABEL_UID) else {
            continue;
        };
        if live.contains(uid) {
            continue;
        }
        tracing::info!(
            uid,
            "removing the containers of a pod that no longer exists"
        );
        if let Err(e) = pods::teardown(cri_, uid, 0, None).await {
            tracing::warn!(uid, error = %e.message(), "could not remove an orphaned pod sandbox");
        }
        let m = s.metadata.clone().unwrap_or_default();
        node.remove_pod_files(&m.namespace, &m.name, uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u", "labels": {"app": "a"}, "resourceVersion": "1"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap()
    }

    #[test]
    fn its_own_status_writes_are_no_change_to_the_kubelet() {
        let old = pod();
        let mut new = pod();
        new.metadata.resource_version = Some("2".into());
        new.status = Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
        assert!(!differs(&old, &new), "a status write is not a change");

        let mut spec = pod();
        spec.spec.as_mut().unwrap().containers[0].image = Some("other".into());
        assert!(differs(&old, &spec));
        let mut deleting = serde_json::to_value(pod()).unwrap();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
        assert!(differs(&old, &serde_json::from_value(deleting).unwrap()));
        let mut labelled = pod();
        labelled.metadata.labels = None;
        assert!(differs(&old, &labelled));
    }

    #[test]
    fn a_pod_seen_again_is_marked_once_and_taken_once() {
        let d = Desired::default();
        d.mark("a".into());
        d.mark("a".into());
        d.mark("b".into());
        let taken = d.take_dirty();
        assert_eq!(taken.len(), 2);
        assert!(d.take_dirty().is_empty());
    }
}
