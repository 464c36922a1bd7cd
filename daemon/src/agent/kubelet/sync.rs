//! The kubelet's sync loop: each pod new or changed is synced as soon as
//! the watch brings it, and every pod once a second (upstream's relist),
//! each in a worker of its own, eight at a time; pods being deleted are
//! stopped in tasks of their own; pods not yet run pass admission first;
//! dead containers, sandboxes and orphans are collected on the resync.

use super::desired::Desired;
use super::node::NodeCtx;
use super::{admission, container_gc, containers, events, eviction, listing, node_status};
use super::{pods, sandbox, settings, workers};
use crate::agent::apiclient::Api;
use crate::agent::runtime::cri::Cri;
use crate::kube::placement::finished;
use k8s_openapi::api::core::v1::{Node, Pod};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pods synced at once.
const PARALLEL_SYNCS: usize = 8;
/// How often every pod is synced again without a change.
const RESYNC: Duration = Duration::from_secs(1);

/// What the loop works with and what it remembers between passes.
pub struct SyncLoop {
    pub api: Api,
    pub cri: Cri,
    pub node: Arc<NodeCtx>,
    pub settings: settings::Settings,
    pub desired: Arc<Desired>,
    /// Pods the evictor is ending: left alone until their status says so.
    pub evicting: eviction::Evicting,
    /// Node conditions as observed, for admission.
    pub observed: Arc<node_status::Observed>,
}

/// A pass's pods, sorted out.
#[derive(Default)]
struct Sorted {
    /// Not run here yet: judged by admission first.
    newcomers: Vec<(String, Arc<Pod>)>,
    /// Admitted: synced now.
    starting: Vec<(String, Arc<Pod>, pods::Tracked)>,
}

/// The loop's memory between passes.
struct Passes {
    tracked: HashMap<String, pods::Tracked>,
    /// Pods that passed admission (or were running before a restart):
    /// only these are started.
    admitted: HashSet<String>,
    node_cache: NodeCache,
    /// Pods being stopped, each in a task of its own: a grace period must
    /// not hold up the other pods.
    terminating: Arc<Mutex<HashSet<String>>>,
    workers: workers::Workers,
}

impl SyncLoop {
    /// Sync pods until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut m = Passes {
            tracked: HashMap::new(),
            admitted: HashSet::new(),
            node_cache: NodeCache {
                max_age: self.settings.status_update_frequency,
                seen: None,
            },
            terminating: Arc::default(),
            workers: workers::Workers::new(PARALLEL_SYNCS),
        };
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (pass, mut synced) = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.desired.changed.notified() => (false, false),
                (uid, st) = m.workers.finished() => {
                    m.tracked.insert(uid, st);
                    (false, true)
                }
                _ = resync.tick() => (true, false),
            };
            while let Some((uid, st)) = m.workers.try_finished() {
                m.tracked.insert(uid, st);
                synced = true;
            }
            if synced && m.workers.idle() {
                // The last syncs' listings and statuses are dropped by now:
                // hand what they held back before idling.
                crate::host::memory::release_freed();
            }
            self.pass(&mut m, pass).await;
        }
    }

    /// One pass: the pods marked since the last (all of them on a resync).
    async fn pass(&self, m: &mut Passes, resync: bool) {
        let dirty = self.desired.take_dirty();
        // A worker that finished with nothing changed: nothing to look
        // at until the next change or resync.
        if !resync && dirty.is_empty() {
            return;
        }
        let snapshot = self.desired.snapshot();
        let due = self.due(m, &snapshot, &dirty, resync);
        if due.is_empty() && !resync {
            return;
        }
        // One listing of sandboxes and containers for the pods started
        // now (a failed list falls back to asking per pod). It is taken
        // after each of their last workers ended, so none of them reads
        // the runtime from before its own last sync.
        let listing = listing::Listing::fetch(&self.cri).await.ok().map(Arc::new);
        let mut sorted = self.sort(m, due, listing.as_deref());
        self.admit_newcomers(m, &snapshot, &mut sorted).await;
        for (uid, pod, st) in sorted.starting {
            // Each in a worker of its own (see [`workers`]).
            let (api, cri, node, listing) = (
                self.api.clone(),
                self.cri.clone(),
                self.node.clone(),
                listing.clone(),
            );
            m.workers.start(uid, st, move |mut st| async move {
                sync_one(&api, &cri, &node, &pod, &mut st, listing.as_deref()).await;
                st
            });
        }
        if resync {
            self.collect(m, &snapshot, listing.as_deref()).await;
        }
    }

    /// The pods to sync now: those marked (all on a resync) whose worker
    /// is not busy; a marked pod with a busy worker goes again after it.
    fn due(
        &self,
        m: &Passes,
        snapshot: &[(String, Arc<Pod>)],
        dirty: &HashSet<String>,
        resync: bool,
    ) -> Vec<(String, Arc<Pod>)> {
        let mut due = Vec::new();
        let mut later = Vec::new();
        for (uid, pod) in snapshot {
            if !resync && !dirty.contains(uid) {
                continue;
            }
            if m.workers.busy(uid) {
                // Its worker may have read the pod before the change: it
                // goes again once that worker is done.
                if dirty.contains(uid) {
                    later.push(uid.clone());
                }
                continue;
            }
            due.push((uid.clone(), pod.clone()));
        }
        self.desired.dirty.lock().expect("dirty").extend(later);
        due
    }

    /// Deleted pods go to their own termination tasks, evicted ones wait,
    /// admitted ones are synced, the rest are judged first.
    fn sort(
        &self,
        m: &mut Passes,
        due: Vec<(String, Arc<Pod>)>,
        listing: Option<&listing::Listing>,
    ) -> Sorted {
        let mut sorted = Sorted::default();
        for (uid, pod) in due {
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate_in_background(m, uid, pod);
                continue;
            }
            // Being evicted: left alone until its status says Failed, or
            // this sync would start it again.
            let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
            let mut ev = self.evicting.lock().expect("evicting");
            if !failed && ev.contains(&uid) {
                continue;
            }
            ev.remove(&uid);
            drop(ev);
            if !m.admitted.contains(&uid) {
                // What the runtime already holds for a pod was admitted
                // before a restart: it is adopted, not judged again. A
                // finished pod with nothing here has nothing to sync. The
                // rest wait for a listing to tell them apart.
                let Some(l) = listing else { continue };
                if m.tracked.contains_key(&uid) || l.knows(&uid) {
                    m.admitted.insert(uid.clone());
                } else {
                    if !finished(&pod) {
                        sorted.newcomers.push((uid, pod));
                    }
                    continue;
                }
            }
            let st = m.tracked.remove(&uid).unwrap_or_default();
            sorted.starting.push((uid, pod, st));
        }
        sorted
    }

    fn terminate_in_background(&self, m: &Passes, uid: String, pod: Arc<Pod>) {
        if !m
            .terminating
            .lock()
            .expect("terminating")
            .insert(uid.clone())
        {
            return;
        }
        let (api, cri, node, terminating) = (
            self.api.clone(),
            self.cri.clone(),
            self.node.clone(),
            m.terminating.clone(),
        );
        tokio::spawn(async move {
            terminate(&api, &cri, &node, &uid, &pod).await;
            terminating.lock().expect("terminating").remove(&uid);
        });
    }

    /// Judge the newcomers against the Node and the admitted pods; the
    /// admitted ones join those starting.
    async fn admit_newcomers(
        &self,
        m: &mut Passes,
        snapshot: &[(String, Arc<Pod>)],
        sorted: &mut Sorted,
    ) {
        if sorted.newcomers.is_empty() {
            return;
        }
        // Without the Node nobody is judged now (the others are still
        // synced): a failing API is no reason to refuse a pod.
        let Some(node_object) = m.node_cache.get(&self.api, &self.node.name).await else {
            return;
        };
        let period = self.settings.pressure_transition_period;
        let conditions: Vec<&str> = admission::PRESSURES
            .into_iter()
            .filter(|c| self.observed.within(c, period))
            .collect();
        // What the admitted pods hold: those running or starting, and
        // those being deleted until they have stopped, as upstream
        // counts them; not those being evicted.
        let others: Vec<Arc<Pod>> = {
            let ev = self.evicting.lock().expect("evicting");
            snapshot
                .iter()
                .filter(|(uid, pod)| {
                    m.admitted.contains(uid) && !finished(pod) && !ev.contains(uid)
                })
                .map(|(_, pod)| pod.clone())
                .collect()
        };
        let judge = admission::Judge {
            conditions: &conditions,
            sysctls: &self.settings.sysctls,
        };
        let newcomers = std::mem::take(&mut sorted.newcomers);
        for (uid, pod) in admit(
            &self.api,
            &self.node,
            node_object,
            others,
            newcomers,
            &judge,
        )
        .await
        {
            m.admitted.insert(uid.clone());
            sorted.starting.push((uid, pod, pods::Tracked::default()));
        }
    }

    /// On a resync: dead containers and sandboxes, and what belongs to
    /// pods that no longer exist.
    async fn collect(
        &self,
        m: &mut Passes,
        snapshot: &[(String, Arc<Pod>)],
        listing: Option<&listing::Listing>,
    ) {
        if let Some(l) = listing {
            container_gc::collect(&self.cri, &self.node, l).await;
            sandbox::collect(&self.cri, l).await;
        }
        if self.desired.listed() {
            let live: HashSet<&String> = snapshot.iter().map(|(u, _)| u).collect();
            m.tracked.retain(|u, _| live.contains(u));
            m.admitted.retain(|u| live.contains(u));
            remove_orphans(&self.cri, &self.node, &live).await;
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
    node: &NodeCtx,
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
async fn terminate(api: &Api, cri_: &Cri, node: &NodeCtx, uid: &str, pod: &Pod) {
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
    node: &NodeCtx,
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
async fn remove_orphans(cri_: &Cri, node: &NodeCtx, live: &std::collections::HashSet<&String>) {
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
