//! Hard eviction, as upstream's eviction manager does it.
//!
//! Every `housekeeping-interval` the kubelet measures the node's signals
//! (`memory.available`, `nodefs.available`, `nodefs.inodesFree`,
//! `pid.available`) against `eviction-hard`. While one is under its
//! threshold it ends one pod per pass, picked in upstream's order: pods
//! using more of the starved resource than they requested first, then
//! lower priority, then (memory) the most used above the request or (disk)
//! the most used; for processes, which nobody requests, lower priority
//! then the most processes (`processes`). Critical pods (priority of
//! `system-cluster-critical` and above) rank last by their priority but
//! may still go, as upstream's do: it spares only critical static pods,
//! and rk3s has no static pods.
//! Under a disk signal, unused images are removed first (`image_gc`'s
//! rules) and a pod is evicted only if that was not enough.
//!
//! An evicted pod is not deleted: its containers are killed at once (hard
//! thresholds have no grace period), its sandbox stopped and its volumes
//! removed, and its status says `Failed` with reason `Evicted`, upstream's
//! message and a `DisruptionTarget` condition. Its controller replaces it
//! (a ReplicaSet counts only active pods), and the node's pressure
//! condition keeps the scheduler away meanwhile.

use super::listing::{containers_of, sandboxes_of, LABEL_UID};
use super::node::NodeCtx;
use super::node_status::{measure, Measured, Observed};
use super::settings::{Settings, Threshold};
use crate::agent::apiclient::Api;
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Attempts at writing an evicted pod's status, a second apart.
const STATUS_TRIES: u32 = 10;

/// The eviction signals rk3s measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Memory,
    NodeFs,
    NodeFsInodes,
    Pids,
}

impl Signal {
    /// The resource the message names (upstream's `signalToResource`).
    fn resource(self) -> &'static str {
        match self {
            Signal::Memory => "memory",
            Signal::NodeFs => "ephemeral-storage",
            Signal::NodeFsInodes => "inodes",
            Signal::Pids => "pids",
        }
    }
}

impl Signal {
    /// The node condition this signal drives.
    pub fn condition(self) -> &'static str {
        match self {
            Signal::Memory => "MemoryPressure",
            Signal::NodeFs | Signal::NodeFsInodes => "DiskPressure",
            Signal::Pids => "PIDPressure",
        }
    }

    /// Whether images taking the disk can relieve it.
    fn is_disk(self) -> bool {
        matches!(self, Signal::NodeFs | Signal::NodeFsInodes)
    }
}

/// A signal under its threshold: (signal, threshold, available).
pub type Met = (Signal, u64, u64);

fn met(signal: Signal, available: u64, total: u64, t: Option<Threshold>) -> Option<Met> {
    let t = t?.of(total);
    (total > 0 && available < t).then_some((signal, t, available))
}

/// The signals under their thresholds in `m`, memory first.
pub fn signals_met(m: &Measured, s: &Settings) -> Vec<Met> {
    let e = &s.eviction;
    [
        met(
            Signal::Memory,
            m.memory_available,
            m.memory_total,
            e.memory_available,
        ),
        met(
            Signal::NodeFs,
            m.fs_available,
            m.fs_total,
            e.nodefs_available,
        ),
        met(
            Signal::NodeFsInodes,
            m.inodes_free,
            m.inodes_total,
            e.nodefs_inodes_free,
        ),
        met(
            Signal::Pids,
            m.pid_max.saturating_sub(m.pids_used),
            m.pid_max,
            e.pid_available,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// What a pod uses and asked for of the resource under pressure.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub uid: String,
    pub priority: i32,
    pub used: u64,
    pub requested: u64,
    /// Per container: (name, used, requested).
    pub containers: Vec<(String, u64, u64)>,
}

impl Usage {
    fn exceeds(&self) -> bool {
        self.used > self.requested
    }
}

/// Upstream's ranking (`rankMemoryPressure`, `rankDiskPressureFunc`,
/// `rankPIDPressure`): the first pod is the one to evict.
pub fn rank(signal: Signal, pods: &mut [Usage]) {
    // Nobody requests processes: no pod is over a request.
    let exceeds = |u: &Usage| signal != Signal::Pids && u.exceeds();
    pods.sort_by(|a, b| {
        exceeds(b)
            .cmp(&exceeds(a))
            .then(a.priority.cmp(&b.priority))
            .then_with(|| match signal {
                Signal::Memory => {
                    let above = |u: &Usage| u.used as i128 - u.requested as i128;
                    above(b).cmp(&above(a))
                }
                Signal::NodeFs | Signal::NodeFsInodes | Signal::Pids => b.used.cmp(&a.used),
            })
            .then_with(|| a.uid.cmp(&b.uid))
    });
}

/// A byte count as a Kubernetes quantity, the way upstream prints one.
fn quantity(n: u64) -> String {
    const KI: u64 = 1024;
    if n == 0 {
        "0".into()
    } else if n.is_multiple_of(KI * KI) {
        format!("{}Mi", n / (KI * KI))
    } else if n.is_multiple_of(KI) {
        format!("{}Ki", n / KI)
    } else {
        n.to_string()
    }
}

/// Upstream's eviction message: the starved resource, the threshold and
/// what was left, and each container that used more than it requested.
pub fn message(m: &Met, victim: &Usage) -> String {
    let (signal, threshold, available) = *m;
    let amount = |n: u64| match signal {
        Signal::NodeFsInodes | Signal::Pids => n.to_string(),
        _ => quantity(n),
    };
    let mut out = format!(
        "The node was low on resource: {}. Threshold quantity: {}, available: {}. ",
        signal.resource(),
        amount(threshold),
        amount(available)
    );
    // Upstream names containers over their request only for memory and
    // ephemeral storage.
    let per_container = matches!(signal, Signal::Memory | Signal::NodeFs);
    for (name, used, requested) in victim.containers.iter().filter(|_| per_container) {
        if used > requested {
            out.push_str(&format!(
                "Container {name} was using {}, request is {}, has larger consumption of {}. ",
                amount(*used),
                amount(*requested),
                signal.resource()
            ));
        }
    }
    out
}

/// The container's request of `resource`, in bytes.
fn requested(c: &k8s_openapi::api::core::v1::Container, resource: &str) -> u64 {
    c.resources
        .as_ref()
        .and_then(|r| super::resources::quantity(&r.requests, resource))
        .map_or(0, |m| (m.max(0) / 1000) as u64)
}

/// Bytes and inodes under `dir` (not following links; another
/// filesystem's mounts are not counted).
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let dev = top.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// Per-container usage from the runtime: (pod uid, container) → (memory
/// working set, writable layer bytes, writable layer inodes).
async fn container_stats(cri_: &Cri) -> HashMap<(String, String), (u64, u64, u64)> {
    let Ok(r) = cri_
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
    else {
        return HashMap::new();
    };
    r.stats
        .into_iter()
        .filter_map(|s| {
            let a = s.attributes?;
            let uid = a.labels.get(LABEL_UID)?.clone();
            let name = a.metadata.map(|m| m.name).unwrap_or_default();
            let mem = s
                .memory
                .and_then(|m| m.working_set_bytes)
                .map_or(0, |v| v.value);
            let (bytes, inodes) = s.writable_layer.map_or((0, 0), |w| {
                (
                    w.used_bytes.map_or(0, |v| v.value),
                    w.inodes_used.map_or(0, |v| v.value),
                )
            });
            Some(((uid, name), (mem, bytes, inodes)))
        })
        .collect()
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Pods that may be evicted: running ones, not being deleted.
pub fn candidates<'a>(pods: &'a [Pod], skip: &HashSet<String>) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !crate::kube::placement::finished(p))
        .filter(|p| !skip.contains(&uid_of(p)))
        .collect()
}

/// What each candidate uses of the resource under `signal`. Disk counts
/// the containers' writable layers, their logs and the pod's volumes.
async fn usages(cri_: &Cri, node: &NodeCtx, pods: &[&Pod], signal: Signal) -> Vec<Usage> {
    let stats = container_stats(cri_).await;
    let processes = match signal {
        Signal::Pids => super::processes::per_container(cri_).await,
        _ => HashMap::new(),
    };
    pods.iter()
        .map(|p| {
            let uid = uid_of(p);
            let spec = p.spec.clone().unwrap_or_default();
            let containers: Vec<(String, u64, u64)> = spec
                .containers
                .iter()
                .map(|c| {
                    let key = (uid.clone(), c.name.clone());
                    let (mem, layer, layer_inodes) = stats.get(&key).copied().unwrap_or_default();
                    let used = match signal {
                        Signal::Memory => mem,
                        Signal::NodeFs => layer,
                        Signal::NodeFsInodes => layer_inodes,
                        Signal::Pids => processes.get(&key).copied().unwrap_or(0),
                    };
                    // Nobody requests inodes or processes.
                    let req = match signal {
                        Signal::NodeFsInodes | Signal::Pids => 0,
                        _ => requested(c, signal.resource()),
                    };
                    (c.name.clone(), used, req)
                })
                .collect();
            let mut used: u64 = containers.iter().map(|c| c.1).sum();
            if signal.is_disk() {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let (vb, vi) = du(&node.pod_dir(&uid));
                let (lb, li) = du(&node.log_dir(&ns, &name, &uid));
                used += match signal {
                    Signal::NodeFs => vb + lb,
                    _ => vi + li,
                };
            }
            Usage {
                uid,
                priority: spec.priority.unwrap_or(0),
                used,
                requested: containers.iter().map(|c| c.2).sum(),
                containers,
            }
        })
        .collect()
}

/// The status that says the pod was evicted: upstream's phase, reason,
/// message and `DisruptionTarget` condition; Ready goes False.
pub fn evicted_status(pod: &Pod, message: &str, now: &str) -> Value {
    let mut conditions: Vec<Value> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "DisruptionTarget")
        .map(|c| {
            let mut v = serde_json::to_value(&c).unwrap_or(Value::Null);
            if matches!(c.type_.as_str(), "Ready" | "ContainersReady") && c.status != "False" {
                v["status"] = json!("False");
                v["lastTransitionTime"] = json!(now);
                v["reason"] = json!("PodFailed");
            }
            v
        })
        .collect();
    conditions.push(json!({
        "type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
        "lastTransitionTime": now, "reason": "TerminationByKubelet", "message": message,
    }));
    json!({
        "phase": "Failed",
        "reason": "Evicted",
        "message": message,
        "conditions": conditions,
    })
}

/// End `pod` for eviction: kill its containers, stop its sandbox, free
/// its volumes, and report it Failed/Evicted.
async fn evict(
    api: &Api,
    cri_: &Cri,
    node: &NodeCtx,
    pod: &Pod,
    message: &str,
) -> Result<(), String> {
    let uid = uid_of(pod);
    let (ns, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    let rt = &cri_;
    let e = |s: tonic::Status| s.message().to_string();
    // The dead containers stay, as upstream's do, so the status shows how
    // they ended; the pod's deletion removes them.
    for c in containers_of(rt, &uid)
        .await
        .map_err(e)?
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
    {
        rt.stop_container(cri::StopContainerRequest {
            container_id: c.id.clone(),
            timeout: 0,
        })
        .await
        .map_err(e)?;
    }
    for s in sandboxes_of(rt, &uid).await.map_err(e)? {
        super::sandbox::stop(cri_, &s.id).await.map_err(e)?;
    }
    let volumes = node.pod_dir(&uid).join("volumes");
    if let Err(err) = std::fs::remove_dir_all(&volumes) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %volumes.display(), error = %err, "evicted pod's volumes not removed");
        }
    }
    let now = crate::datastore::objects::now_rfc3339();
    // The containers are already stopped: without this status the pod
    // loop would start them again, so a failed write is retried (the
    // servers may be failing over) before giving up.
    let status = evicted_status(pod, message, &now);
    let mut tries = 0;
    while let Err(e) = api.patch_pod_status(&ns, &name, &status).await {
        tries += 1;
        if tries >= STATUS_TRIES {
            return Err(e.to_string());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    node.events
        .pod(pod, super::events::Warning, "Evicted", message);
    Ok(())
}

/// Pods being evicted, by uid: the pod loop leaves them alone until their
/// status says Failed.
pub type Evicting = Arc<Mutex<HashSet<String>>>;

/// What the eviction loop works with.
pub struct Evictor {
    pub api: Api,
    pub cri: Cri,
    pub node: Arc<NodeCtx>,
    pub settings: Settings,
    pub evicting: Evicting,
    pub observed: Arc<Observed>,
    /// For the node-level reclaim before a disk eviction.
    pub images: Arc<super::image_gc::ImageGc>,
}

/// The eviction loop (see the module's comment). `pods` gives the pods
/// bound to this node as the watch last saw them.
pub async fn run(
    ev: Evictor,
    pods: impl Fn() -> Vec<Pod> + Send + 'static,
    cancel: CancellationToken,
) {
    let Evictor {
        api,
        cri: cri_,
        node,
        settings,
        evicting,
        observed,
        images,
    } = ev;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(settings.housekeeping_interval) => {}
        }
        let m = measure(&node.pods_root);
        let met = signals_met(&m, &settings);
        for (signal, ..) in &met {
            observed.saw(signal.condition());
        }
        let Some(mut worst) = met.into_iter().next() else {
            continue;
        };
        // Disk: unused images go before any pod, and a pod is evicted only
        // if the threshold still holds after (upstream's node-level reclaim).
        if worst.0.is_disk() {
            match images.delete_unused().await {
                Ok(0) => {}
                Ok(freed) => {
                    tracing::info!(freed, "under disk pressure: removed unused images");
                    let after = signals_met(&measure(&node.pods_root), &settings);
                    match after.into_iter().next() {
                        Some(still) => worst = still,
                        None => continue,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "under disk pressure: removing unused images failed")
                }
            }
        }
        let all = pods();
        let skip = evicting.lock().expect("evicting").clone();
        let chosen = candidates(&all, &skip);
        let mut usage = usages(&cri_, &node, &chosen, worst.0).await;
        rank(worst.0, &mut usage);
        let Some(victim) = usage.first() else {
            tracing::warn!(node = %node.name, resource = worst.0.resource(), "node under an eviction threshold with no pod to evict");
            continue;
        };
        let Some(pod) = chosen.iter().find(|p| uid_of(p) == victim.uid) else {
            continue;
        };
        let msg = message(&worst, victim);
        evicting
            .lock()
            .expect("evicting")
            .insert(victim.uid.clone());
        let name = pod.metadata.name.clone().unwrap_or_default();
        match evict(&api, &cri_, &node, pod, &msg).await {
            Ok(()) => {
                tracing::warn!(pod = %name, used = victim.used, message = %msg, "pod evicted")
            }
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "eviction failed; trying again next pass");
                evicting.lock().expect("evicting").remove(&victim.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(uid: &str, priority: i32, used: u64, requested: u64) -> Usage {
        Usage {
            uid: uid.into(),
            priority,
            used,
            requested,
            containers: vec![("c".into(), used, requested)],
        }
    }

    #[test]
    fn over_request_goes_first_then_priority_then_usage() {
        let mut v = vec![
            u("within", 0, 500, 1000),
            u("over-high-prio", 100, 300, 100),
            u("over-small", 0, 200, 100),
            u("over-big", 0, 900, 100),
        ];
        rank(Signal::Memory, &mut v);
        let order: Vec<&str> = v.iter().map(|u| u.uid.as_str()).collect();
        assert_eq!(
            order,
            ["over-big", "over-small", "over-high-prio", "within"]
        );
        // Disk ranks by usage, not by usage above the request.
        let mut v = vec![u("a", 0, 900, 850), u("b", 0, 800, 0)];
        rank(Signal::NodeFs, &mut v);
        assert_eq!(v[0].uid, "a");
        rank(Signal::Memory, &mut v);
        assert_eq!(v[0].uid, "b");
        // Processes: nobody requests them, so priority first, then the
        // most processes.
        let mut v = vec![
            u("many-prio", 10, 50, 0),
            u("few", 0, 2, 0),
            u("many", 0, 40, 0),
        ];
        rank(Signal::Pids, &mut v);
        let order: Vec<&str> = v.iter().map(|u| u.uid.as_str()).collect();
        assert_eq!(order, ["many", "few", "many-prio"]);
    }

    #[test]
    fn message_is_upstreams() {
        let victim = u("x", 0, 30 << 20, 0);
        let m = message(&(Signal::NodeFs, 6 << 20, 5 << 20), &victim);
        assert_eq!(
            m,
            "The node was low on resource: ephemeral-storage. Threshold quantity: 6Mi, available: 5Mi. \
             Container c was using 30Mi, request is 0, has larger consumption of ephemeral-storage. "
        );
        let within = u("y", 0, 10, 20);
        assert_eq!(
            message(&(Signal::Memory, 100 << 20, 1536), &within),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 1536. "
        );
        // Counts, and no container lines (upstream has them only for
        // memory and ephemeral storage).
        assert_eq!(
            message(&(Signal::Pids, 1000, 900), &victim),
            "The node was low on resource: pids. Threshold quantity: 1000, available: 900. "
        );
    }

    #[test]
    fn thresholds_are_met_below_not_at() {
        let s = Settings::default();
        let m = Measured {
            memory_total: 1 << 30,
            memory_available: 100 << 20,
            fs_total: 1000,
            fs_available: 99,
            inodes_total: 100,
            inodes_free: 50,
            ..Default::default()
        };
        // 100Mi available is not under 100Mi; 99 of 1000 is under 10 %.
        assert_eq!(signals_met(&m, &s), vec![(Signal::NodeFs, 100, 99)]);
        // pid.available counts tasks against pid_max; not set by default.
        let pids = Measured {
            pid_max: 1000,
            pids_used: 950,
            ..Default::default()
        };
        assert!(signals_met(&pids, &s).is_empty());
        let s = crate::agent::kubelet::settings::parse(&["eviction-hard=pid.available<10%".into()])
            .unwrap();
        assert_eq!(signals_met(&pids, &s), vec![(Signal::Pids, 100, 50)]);
    }

    #[test]
    fn terminal_and_deleting_pods_are_not_candidates_and_critical_ones_are() {
        let pod = |name: &str, priority: i32, phase: &str, deleting: bool| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": name,
                    "deletionTimestamp": if deleting { json!("2026-01-01T00:00:00Z") } else { Value::Null }},
                "spec": {"priority": priority, "containers": []},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let pods = vec![
            pod("ok", 0, "Running", false),
            pod(
                "critical",
                super::super::admission::CRITICAL_PRIORITY,
                "Running",
                false,
            ),
            pod("done", 0, "Succeeded", false),
            pod("going", 0, "Running", true),
            pod("busy", 0, "Running", false),
        ];
        let skip: HashSet<String> = ["busy".to_string()].into();
        let names: Vec<_> = candidates(&pods, &skip)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["ok", "critical"]);
    }

    #[test]
    fn evicted_status_keeps_other_conditions_and_says_why() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ]},
        }))
        .unwrap();
        let s = evicted_status(&pod, "low", "2026-02-02T00:00:00Z");
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "Evicted");
        let c = s["conditions"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["status"], "False");
        assert_eq!(c[1]["status"], "True");
        assert_eq!(c[2]["type"], "DisruptionTarget");
        assert_eq!(c[2]["reason"], "TerminationByKubelet");
    }
}
