//! The DaemonSet controller: one pod of the template on every node whose
//! labels and taints it accepts, including nodes that join later.
//!
//! As upstream, each pod is pinned to its node by required node affinity
//! (`matchFields metadata.name`) and placed by the scheduler, and carries
//! the tolerations daemons get (not-ready, unreachable, pressure,
//! unschedulable), so cordoned or pressured nodes keep their daemons.
//! Templates are ControllerRevisions (labelled `controller-revision-hash`
//! on the pods); RollingUpdate replaces old pods node by node within
//! `maxUnavailable`, OnDelete only when a user deletes them. Failed pods
//! and pods on nodes that no longer accept them are deleted.

use super::client::{controlled, controller_ref, s, Client};
use super::deployment::scaled;
use super::expectations::Expectations;
use super::predicates::{available, deleting, ready};
use super::runtime::{all, own, owner, Controller, Requeue};
use std::sync::LazyLock;

use super::revisions::{self, HASH_LABEL};
use super::scheduler::node_accepts;
use crate::registry::cache::Cache;
use crate::registry::kinds;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, PodSpec, Toleration};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "daemonset-controller";
static PREFIX: LazyLock<String> = LazyLock::new(|| kinds::DAEMON_SETS.prefix(None));
/// Also how soon a new node gets its daemons.
const RESYNC: Duration = Duration::from_secs(2);

/// The tolerations upstream adds to every daemon pod.
fn daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let ts = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let present = ts
            .iter()
            .any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect));
        if !present {
            ts.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Default::default()
            });
        }
    }
}

/// Pin the pod to `node` (replacing any required node terms, as upstream).
fn pin(spec: &mut Value, node: &str) {
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
        "nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]});
}

/// The node a daemon pod is for: its binding, or its pin.
fn pod_node(p: &Value) -> String {
    match s(p, "/spec/nodeName") {
        "" => p
            .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        n => n.to_string(),
    }
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
    expected: Expectations,
}

impl Ctl {
    async fn sync(&self, key: &str, nodes: &[Node]) {
        let Some(v) = self.cache.get(key) else {
            return;
        };
        let Ok(ds) = serde_json::from_value::<DaemonSet>(v.clone()) else {
            return;
        };
        let uid = s(&v, "/metadata/uid").to_string();
        if deleting(&v) || !self.expected.satisfied(&self.cache, &uid) {
            return;
        }
        let ns = s(&v, "/metadata/namespace").to_string();
        let name = s(&v, "/metadata/name").to_string();
        let spec = ds.spec.clone().unwrap_or_default();
        let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
        daemon_tolerations(&mut pod_spec);

        // Pods by node; finished ones are deleted (and replaced).
        let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut doomed: Vec<Value> = vec![];
        for p in controlled(&self.cache, &uid, &kinds::PODS.prefix(None)) {
            if deleting(&p) {
                continue;
            }
            if s(&p, "/status/phase") == "Failed" {
                doomed.push((*p).clone());
            } else {
                by_node.entry(pod_node(&p)).or_default().push((*p).clone());
            }
        }
        let in_use: HashSet<String> = by_node
            .values()
            .flatten()
            .map(|p| format!("{name}-{}", s(p, &format!("/metadata/labels/{HASH_LABEL}"))))
            .collect();
        let limit = spec.revision_history_limit.unwrap_or(10).into();
        let cur = match revisions::ensure(&self.c, &self.cache, &v, "DaemonSet", limit, &in_use)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(daemonset = %name, error = %e, "could not record the template revision");
                return;
            }
        };
        let hash_of = |p: &Value| s(p, &format!("/metadata/labels/{HASH_LABEL}")).to_string();
        let now = chrono::Utc::now();
        let min_ready = spec.min_ready_seconds.unwrap_or(0).into();

        let mut create_on: Vec<String> = vec![];
        let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
        let (mut n_ready, mut n_available, mut updated) = (0, 0, 0);
        let mut old_pods: Vec<(Value, bool)> = vec![];
        for node in nodes {
            let nname = node.metadata.name.clone().unwrap_or_default();
            let pods = by_node.remove(&nname).unwrap_or_default();
            let should = node_accepts(&pod_spec, node);
            if !should {
                misscheduled +=
                    usize::from(pods.iter().any(|p| !s(p, "/spec/nodeName").is_empty()));
                doomed.extend(pods);
                continue;
            }
            desired += 1;
            let Some((keep, extra)) = pods.split_first() else {
                create_on.push(nname);
                continue;
            };
            // One per node: the oldest stays.
            doomed.extend(extra.iter().cloned());
            current += usize::from(!s(keep, "/spec/nodeName").is_empty());
            n_ready += usize::from(ready(keep));
            let avail = available(keep, min_ready, now);
            n_available += usize::from(avail);
            if hash_of(keep) == cur.hash {
                updated += 1;
            } else {
                old_pods.push((keep.clone(), avail));
            }
        }
        // Pods for nodes that are gone.
        doomed.extend(by_node.into_values().flatten());

        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if rolling {
            let max_unavailable = spec
                .update_strategy
                .as_ref()
                .and_then(|u| u.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref())
                .map(|m| scaled(&json!(m), desired as i64, true))
                .unwrap_or(1)
                .max(1);
            let mut unavailable = desired as i64 - n_available as i64;
            for (p, avail) in old_pods {
                // Unavailable old pods cost nothing to replace.
                if !avail {
                    doomed.push(p);
                } else if unavailable < max_unavailable {
                    unavailable += 1;
                    doomed.push(p);
                }
            }
        }

        let pods_rt = kinds::PODS.resource_type();
        for p in &doomed {
            let pname = s(p, "/metadata/name");
            if self
                .c
                .delete(&pods_rt, &ns, pname, s(p, "/metadata/uid"))
                .await
                .is_ok()
            {
                self.expected.deleted(&uid, pname);
                let msg = format!("Deleted pod: {pname}");
                self.c
                    .event(&v, "Normal", "SuccessfulDelete", &msg, COMPONENT)
                    .await;
            }
        }
        for node in &create_on {
            let mut meta = json!(spec.template.metadata.clone().unwrap_or_default());
            meta["generateName"] = json!(format!("{name}-"));
            meta["namespace"] = json!(ns);
            meta["labels"][HASH_LABEL] = json!(cur.hash);
            meta["labels"]["pod-template-generation"] =
                json!(ds.metadata.generation.unwrap_or(1).to_string());
            meta["ownerReferences"] = json!([controller_ref(&v, "apps/v1", "DaemonSet")]);
            let mut pspec = json!(pod_spec);
            pin(&mut pspec, node);
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pspec});
            match self.c.create(&pods_rt, &ns, pod).await {
                Ok(p) => {
                    let pname = s(&p, "/metadata/name").to_string();
                    self.expected.created(&uid, &pname);
                    let msg = format!("Created pod: {pname}");
                    self.c
                        .event(&v, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                        .await;
                }
                Err(e) => {
                    let msg = format!("Error creating: {e}");
                    self.c
                        .event(&v, "Warning", "FailedCreate", &msg, COMPONENT)
                        .await;
                    break;
                }
            }
        }

        let old = ds.status.clone().unwrap_or_default();
        let status = DaemonSetStatus {
            current_number_scheduled: current as i32,
            desired_number_scheduled: desired as i32,
            number_misscheduled: misscheduled as i32,
            number_ready: n_ready as i32,
            number_available: Some(n_available as i32).filter(|n| *n > 0),
            number_unavailable: Some((desired - n_available) as i32).filter(|n| *n > 0),
            updated_number_scheduled: Some(updated).filter(|n| *n > 0),
            observed_generation: ds.metadata.generation,
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
        };
        if status != old {
            let rt = kinds::DAEMON_SETS.resource_type();
            self.c
                .write_status(&rt, &ns, &name, &uid, json!(status))
                .await;
        }
        tracing::trace!(daemonset = %name, revision = cur.number, "synced");
    }
}

/// Run until `stop`.
/// DaemonSets: their own changes and their pods', and a resync (which
/// also brings new nodes).
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let ctl = Arc::new(Ctl {
        c,
        cache,
        expected: Expectations::default(),
    });
    Controller::new(COMPONENT, move |key: String| {
        let ctl = ctl.clone();
        async move {
            let nodes: Vec<Node> = ctl
                .cache
                .list(&kinds::NODES.prefix(None))
                .into_iter()
                .filter_map(|(_, n)| Node::deserialize(&*n).ok())
                .collect();
            ctl.sync(&key, &nodes).await;
            Ok(Requeue::Never)
        }
    })
    .watches(own(PREFIX.as_str()))
    .watches(owner(kinds::PODS.prefix(None), PREFIX.as_str()))
    .lists(all(PREFIX.as_str()), Some(RESYNC))
    .concurrency(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_tolerate_what_upstream_lets_them() {
        let mut spec = PodSpec::default();
        daemon_tolerations(&mut spec);
        let keys: Vec<_> = spec
            .tolerations
            .iter()
            .flatten()
            .filter_map(|t| t.key.clone())
            .collect();
        assert_eq!(keys.len(), 6);
        assert!(keys.iter().any(|k| k == "node.kubernetes.io/unschedulable"));
        daemon_tolerations(&mut spec);
        assert_eq!(spec.tolerations.unwrap().len(), 6, "added once");
        let mut host = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        daemon_tolerations(&mut host);
        assert_eq!(host.tolerations.unwrap().len(), 7);
    }

    #[test]
    fn a_pinned_pod_names_its_node() {
        let mut spec = json!({"containers": []});
        pin(&mut spec, "n1");
        assert_eq!(pod_node(&json!({"spec": spec})), "n1");
        assert_eq!(pod_node(&json!({"spec": {"nodeName": "n2"}})), "n2");
    }
}
