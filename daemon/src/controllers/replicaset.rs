//! The ReplicaSet controller, which also runs ReplicationControllers (the
//! same behaviour under v1): keeps `spec.replicas` pods of the template
//! (owned by the set through a controller reference) and reports how many
//! exist, are ready and available.
//!
//! Like upstream's it waits for its expectations (what it just created or
//! deleted) before acting on a set again. Surplus pods go unscheduled
//! first, then pending, not ready, and newest.

use super::client::{controlled, controller_ref, controller_uid, s, Client};
use super::expectations::Expectations;
use super::predicates::{available, deleting, ready, terminal};
use super::runtime::{all, own, owner, Controller, Requeue};
use crate::registry::cache::Cache;
use crate::registry::error::KubeError;
use crate::registry::kinds;
use crate::registry::resource::Builtin;
use crate::registry::validation::selector_matches;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Full pass over every set this often, besides the changes.
const RESYNC: Duration = Duration::from_secs(5);
/// Upstream's burst: at most this many creations or deletions per pass.
const BURST: usize = 500;

/// Which of the two kinds a controller instance runs.
pub struct Flavor {
    of: &'static Builtin,
    group: &'static str,
    api_version: &'static str,
    kind: &'static str,
    component: &'static str,
}

pub const REPLICA_SETS: Flavor = Flavor {
    of: &kinds::REPLICA_SETS,
    group: "apps",
    api_version: "apps/v1",
    kind: "ReplicaSet",
    component: "replicaset-controller",
};

pub const REPLICATION_CONTROLLERS: Flavor = Flavor {
    of: &kinds::REPLICATION_CONTROLLERS,
    group: "",
    api_version: "v1",
    kind: "ReplicationController",
    component: "replication-controller",
};

fn labels(v: &Value) -> std::collections::BTreeMap<String, String> {
    serde_json::from_value(v.pointer("/metadata/labels").cloned().unwrap_or(json!({})))
        .unwrap_or_default()
}

/// The set's pods that count: owned, not finished, not being deleted.
pub fn active_pods(cache: &Cache, rs: &Value) -> Vec<Arc<Value>> {
    controlled(cache, s(rs, "/metadata/uid"), &kinds::PODS.prefix(None))
        .into_iter()
        .filter(|p| !terminal(p) && !deleting(p))
        .collect()
}

/// Deletion order: unscheduled, pending, not ready, then the newest first.
fn deletion_rank(p: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    (
        u8::from(!s(p, "/spec/nodeName").is_empty()),
        u8::from(s(p, "/status/phase") != "Pending"),
        u8::from(ready(p)),
        std::cmp::Reverse(s(p, "/metadata/creationTimestamp").to_string()),
    )
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
    expected: Expectations,
    flavor: Flavor,
}

impl Ctl {
    async fn sync(&self, key: &str) {
        let Some(rs) = self.cache.get(key) else {
            return;
        };
        let uid = s(&rs, "/metadata/uid").to_string();
        if deleting(&rs) || !self.expected.satisfied(&self.cache, &uid) {
            return;
        }
        let ns = s(&rs, "/metadata/namespace").to_string();
        let name = s(&rs, "/metadata/name").to_string();
        let want = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        if self.adopt(&rs, &ns).await {
            // The next pass counts them, once the cache shows them owned.
            return;
        }
        let pods = active_pods(&self.cache, &rs);
        let pods_rt = kinds::PODS.resource_type();
        if pods.len() < want {
            let mut template = rs["spec"]["template"].clone();
            let mut meta = template["metadata"].take();
            if !meta.is_object() {
                meta = json!({});
            }
            meta["generateName"] = json!(format!("{name}-"));
            meta["namespace"] = json!(ns);
            meta["ownerReferences"] = json!([controller_ref(
                &rs,
                self.flavor.api_version,
                self.flavor.kind
            )]);
            for k in ["name", "uid", "resourceVersion", "creationTimestamp"] {
                meta.as_object_mut().map(|m| m.remove(k));
            }
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]});
            // Upstream's slow start: batches of 1, 2, 4... created at
            // once; a failure stops the rest (a quota or a webhook saying
            // no would say it to all of them).
            let mut remaining = (want - pods.len()).min(BURST);
            let mut batch = 1;
            while remaining > 0 {
                let n = batch.min(remaining);
                // Each create its own task, so a batch's admission and
                // encoding use every core, as concurrent API clients would.
                let results = futures_util::future::join_all((0..n).map(|_| {
                    let (c, rt, ns, pod) =
                        (self.c.clone(), pods_rt.clone(), ns.clone(), pod.clone());
                    tokio::spawn(async move { c.create(&rt, &ns, pod).await })
                }))
                .await;
                let mut failed = false;
                for r in results {
                    let r = r.unwrap_or_else(|e| {
                        Err(KubeError::Internal(format!("pod create task failed: {e}")))
                    });
                    match r {
                        Ok(created) => {
                            let pname = s(&created, "/metadata/name").to_string();
                            self.expected.created(&uid, &pname);
                            self.c
                                .event(
                                    &rs,
                                    "Normal",
                                    "SuccessfulCreate",
                                    &format!("Created pod: {pname}"),
                                    self.flavor.component,
                                )
                                .await;
                        }
                        Err(e) => {
                            failed = true;
                            tracing::warn!(namespace = %ns, replicaset = %name, error = %e, "could not create a pod");
                            self.c
                                .event(
                                    &rs,
                                    "Warning",
                                    "FailedCreate",
                                    &format!("Error creating: {e}"),
                                    self.flavor.component,
                                )
                                .await;
                        }
                    }
                }
                if failed {
                    break;
                }
                remaining -= n;
                batch *= 2;
            }
        } else if pods.len() > want {
            let mut victims = pods.clone();
            victims.sort_by_key(|p| deletion_rank(p));
            for p in victims.iter().take((pods.len() - want).min(BURST)) {
                let pname = s(p, "/metadata/name").to_string();
                match self
                    .c
                    .delete(&pods_rt, &ns, &pname, s(p, "/metadata/uid"))
                    .await
                {
                    Ok(()) => {
                        self.expected.deleted(&uid, &pname);
                        self.c
                            .event(
                                &rs,
                                "Normal",
                                "SuccessfulDelete",
                                &format!("Deleted pod: {pname}"),
                                self.flavor.component,
                            )
                            .await;
                    }
                    Err(e) => tracing::warn!(pod = %pname, error = %e, "could not delete a pod"),
                }
            }
        }
        self.write_status(&rs, &pods).await;
    }

    /// Adopt the namespace's pods that match the selector and have no
    /// controller (upstream's ControllerRefManager); whether any was.
    async fn adopt(&self, rs: &Value, ns: &str) -> bool {
        let selector = &rs["spec"]["selector"];
        let sel: LabelSelector = if self.flavor.group.is_empty() {
            // A ReplicationController's selector is a plain label map.
            LabelSelector {
                match_labels: serde_json::from_value(selector.clone()).ok(),
                match_expressions: None,
            }
        } else {
            serde_json::from_value(selector.clone()).unwrap_or_default()
        };
        if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
        {
            return false;
        }
        let orphans = self.cache.list_where(&kinds::PODS.prefix(Some(ns)), |p| {
            controller_uid(p).is_none()
                && !deleting(p)
                && !terminal(p)
                && selector_matches(&sel, Some(&labels(p)))
        });
        let pods_rt = kinds::PODS.resource_type();
        let owner = controller_ref(rs, self.flavor.api_version, self.flavor.kind);
        let mut adopted = false;
        for (_, p) in orphans {
            let pname = s(&p, "/metadata/name").to_string();
            let r = self
                .c
                .update(&pods_rt, ns, &pname, false, |o| {
                    if controller_uid(o).is_some() || deleting(o) {
                        return false;
                    }
                    match o["metadata"]["ownerReferences"].as_array_mut() {
                        Some(refs) => refs.push(owner.clone()),
                        None => o["metadata"]["ownerReferences"] = json!([owner.clone()]),
                    }
                    true
                })
                .await;
            match r {
                Ok(()) => {
                    adopted = true;
                    tracing::info!(namespace = ns, pod = %pname, owner = s(rs, "/metadata/name"), "adopted an orphaned pod");
                }
                Err(e) => tracing::debug!(pod = %pname, error = %e, "could not adopt a pod"),
            }
        }
        adopted
    }

    async fn write_status(&self, rs: &Value, pods: &[Arc<Value>]) {
        let now = chrono::Utc::now();
        let min_ready = rs
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let template_labels = labels(&rs["spec"]["template"]);
        let sel: LabelSelector =
            serde_json::from_value(rs["spec"]["template"]["metadata"]["labels"].clone())
                .map(|m| LabelSelector {
                    match_labels: Some(m),
                    ..Default::default()
                })
                .unwrap_or_default();
        let fully = pods
            .iter()
            .filter(|p| template_labels.is_empty() || selector_matches(&sel, Some(&labels(p))))
            .count();
        let status = json!({
            "replicas": pods.len(),
            "fullyLabeledReplicas": fully,
            "readyReplicas": pods.iter().filter(|p| ready(p)).count(),
            "availableReplicas": pods.iter().filter(|p| available(p, min_ready, now)).count(),
            "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        });
        if same_counts(&rs["status"], &status) {
            return;
        }
        let rt = self.flavor.of.resource_type();
        let r = self
            .c
            .update(
                &rt,
                s(rs, "/metadata/namespace"),
                s(rs, "/metadata/name"),
                true,
                |o| {
                    if same_counts(&o["status"], &status) {
                        return false;
                    }
                    let conditions = o["status"]["conditions"].take();
                    o["status"] = status.clone();
                    if !conditions.is_null() {
                        o["status"]["conditions"] = conditions;
                    }
                    true
                },
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(replicaset = s(rs, "/metadata/name"), error = %e, "status not written");
        }
    }
}

/// Do two statuses agree on the counts (zeros being absent upstream)?
fn same_counts(a: &Value, b: &Value) -> bool {
    [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .all(|k| a[k].as_i64().unwrap_or(0) == b[k].as_i64().unwrap_or(0))
}

/// Run the controller of `flavor` until `stop`.
/// The controller of `flavor`'s sets: a set's own changes and those of
/// the pods it controls, and a resync.
pub fn controller(c: Client, cache: Arc<Cache>, flavor: Flavor) -> Controller {
    let (own_prefix, name) = (flavor.of.prefix(None), flavor.component);
    let ctl = Arc::new(Ctl {
        c,
        cache,
        expected: Expectations::default(),
        flavor,
    });
    let pods = kinds::PODS.prefix(None);
    Controller::new(name, move |key: String| {
        let ctl = ctl.clone();
        async move {
            ctl.sync(&key).await;
            Ok(Requeue::Never)
        }
    })
    .watches(own(own_prefix.clone()))
    .watches(owner(pods, own_prefix.clone()))
    .lists(all(own_prefix), Some(RESYNC))
    .concurrency(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surplus_pods_go_unscheduled_then_unready_then_newest() {
        let p = |name: &str, node: &str, phase: &str, ready: bool, created: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": created},
                "spec": {"nodeName": node},
                "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
        };
        let mut pods = [
            p("old-ready", "n", "Running", true, "2026-01-01T00:00:00Z"),
            p("new-ready", "n", "Running", true, "2026-01-02T00:00:00Z"),
            p("unready", "n", "Running", false, "2026-01-01T00:00:00Z"),
            p("pending", "n", "Pending", false, "2026-01-01T00:00:00Z"),
            p("unbound", "", "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let order: Vec<&str> = pods.iter().map(|p| s(p, "/metadata/name")).collect();
        assert_eq!(
            order,
            ["unbound", "pending", "unready", "new-ready", "old-ready"]
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now = chrono::Utc::now();
        let since = |secs: i64| {
            json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": (now - chrono::Duration::seconds(secs)).to_rfc3339()}]}})
        };
        assert!(available(&since(1), 0, now));
        assert!(!available(&since(1), 5, now));
        assert!(available(&since(10), 5, now));
        assert!(!available(&json!({}), 0, now));
    }
}
