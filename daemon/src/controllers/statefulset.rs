//! The StatefulSet controller: pods with stable names `<set>-<ordinal>`,
//! hostnames (`hostname` = pod name, `subdomain` = serviceName) and claims
//! (`<template>-<pod>` from each volumeClaimTemplate, created once and
//! kept, as the default Retain policy says; without a provisioner they
//! stay Pending, as upstream's would).
//!
//! OrderedReady creates ordinals in order, each after the previous one is
//! Running and Ready, and removes them from the highest down, one at a
//! time; Parallel does both at once. RollingUpdate replaces pods of an
//! older revision from the highest ordinal down to `partition`, one at a
//! time, each after the previous one is Ready; OnDelete waits for users.
//! Templates are ControllerRevisions; `currentRevision` becomes the update
//! revision once every pod runs it.

use super::client::{controlled, controller_ref, s, Client};
use super::expectations::Expectations;
use super::predicates::{available, deleting, ready, terminal};
use super::runtime::{all, own, owner, Controller, Requeue};
use std::sync::LazyLock;

use super::revisions::{self, HASH_LABEL};
use crate::registry::cache::Cache;
use crate::registry::kinds;
use crate::registry::KubeError;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const COMPONENT: &str = "statefulset-controller";
static PREFIX: LazyLock<String> = LazyLock::new(|| kinds::STATEFUL_SETS.prefix(None));
const RESYNC: Duration = Duration::from_secs(5);
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of `pod` in set `set` (`web-3` → 3).
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_and_ready(p: &Value) -> bool {
    s(p, "/status/phase") == "Running" && ready(p)
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
    expected: Expectations,
}

impl Ctl {
    async fn sync(&self, key: &str) {
        let Some(v) = self.cache.get(key) else {
            return;
        };
        let Ok(sts) = serde_json::from_value::<StatefulSet>(v.clone()) else {
            return;
        };
        let uid = s(&v, "/metadata/uid").to_string();
        if deleting(&v) || !self.expected.satisfied(&self.cache, &uid) {
            return;
        }
        let ns = s(&v, "/metadata/namespace").to_string();
        let name = s(&v, "/metadata/name").to_string();
        let spec = sts.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");

        let mut pods: BTreeMap<i32, Value> = BTreeMap::new();
        let mut stray: Vec<Value> = vec![];
        for p in controlled(&self.cache, &uid, &kinds::PODS.prefix(None)) {
            match ordinal(&name, s(&p, "/metadata/name")) {
                Some(i) => {
                    pods.insert(i, (*p).clone());
                }
                None => stray.push((*p).clone()),
            }
        }
        let in_use: HashSet<String> = pods
            .values()
            .map(|p| s(p, &format!("/metadata/labels/{HASH_LABEL}")).to_string())
            .collect();
        let limit = spec.revision_history_limit.unwrap_or(10).into();
        let cur = match revisions::ensure(&self.c, &self.cache, &v, "StatefulSet", limit, &in_use)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(statefulset = %name, error = %e, "could not record the template revision");
                return;
            }
        };
        let revision_of = |p: &Value| s(p, &format!("/metadata/labels/{HASH_LABEL}")).to_string();
        let wanted = start..start + replicas;

        // Create or replace missing and failed ordinals.
        let mut blocked = false;
        let mut acted = false;
        for i in wanted.clone() {
            match pods.get(&i) {
                Some(p) if deleting(p) => {
                    blocked = true;
                }
                Some(p) if terminal(p) => {
                    // Failed (or finished) pods are recreated under the same name.
                    self.delete_pod(&v, &uid, p).await;
                    blocked = true;
                    acted = true;
                }
                Some(p) => {
                    if !running_and_ready(p) {
                        blocked = true;
                    }
                }
                None => {
                    if blocked && !parallel {
                        break;
                    }
                    if let Err(e) = self.create_pod(&v, &sts, &ns, &name, i, &cur.name).await {
                        let msg = format!(
                            "create Pod {name}-{i} in StatefulSet {name} failed error: {e}"
                        );
                        self.c
                            .event(&v, "Warning", "FailedCreate", &msg, COMPONENT)
                            .await;
                        break;
                    }
                    acted = true;
                    blocked = true;
                }
            }
            if blocked && !parallel {
                break;
            }
        }

        // Surplus ordinals (and strays), highest first.
        let all_healthy = pods
            .iter()
            .filter(|(i, _)| wanted.contains(i))
            .all(|(_, p)| running_and_ready(p) && !deleting(p));
        let mut surplus: Vec<&Value> = pods
            .iter()
            .rev()
            .filter(|(i, _)| !wanted.contains(i))
            .map(|(_, p)| p)
            .chain(stray.iter())
            .filter(|p| !deleting(p))
            .collect();
        if !parallel {
            let any_going = pods.values().any(deleting);
            if !all_healthy || any_going || acted {
                surplus.clear();
            }
            surplus.truncate(1);
        }
        for p in surplus {
            self.delete_pod(&v, &uid, p).await;
            acted = true;
        }

        // Rolling update: the highest outdated ordinal at or above the
        // partition goes, when every wanted pod is healthy.
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        let partition = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0);
        if rolling && !acted && all_healthy && pods.len() as i32 >= replicas {
            if let Some(p) = pods
                .iter()
                .rev()
                .filter(|(i, _)| wanted.contains(i) && **i - start >= partition)
                .map(|(_, p)| p)
                .find(|p| revision_of(p) != cur.name)
            {
                self.delete_pod(&v, &uid, p).await;
            }
        }

        // Status.
        let now = chrono::Utc::now();
        let min_ready = spec.min_ready_seconds.unwrap_or(0).into();
        let live: Vec<&Value> = pods
            .values()
            .filter(|p| !terminal(p) && !deleting(p))
            .collect();
        let old = sts.status.clone().unwrap_or_default();
        let updated = live.iter().filter(|p| revision_of(p) == cur.name).count() as i32;
        let current_revision = match old.current_revision.clone() {
            Some(c) if updated < replicas || live.len() as i32 != replicas => Some(c),
            _ => Some(cur.name.clone()),
        };
        let current = live
            .iter()
            .filter(|p| Some(revision_of(p)) == current_revision)
            .count() as i32;
        let status = StatefulSetStatus {
            replicas: live.len() as i32,
            ready_replicas: Some(live.iter().filter(|p| ready(p)).count() as i32),
            available_replicas: Some(
                live.iter().filter(|p| available(p, min_ready, now)).count() as i32
            ),
            current_replicas: Some(current),
            updated_replicas: Some(updated),
            current_revision,
            update_revision: Some(cur.name.clone()),
            observed_generation: sts.metadata.generation,
            collision_count: Some(old.collision_count.unwrap_or(0)),
            conditions: old.conditions.clone(),
        };
        if status != old {
            let rt = kinds::STATEFUL_SETS.resource_type();
            self.c
                .write_status(&rt, &ns, &name, &uid, json!(status))
                .await;
        }
    }

    async fn delete_pod(&self, set: &Value, uid: &str, p: &Value) {
        let rt = kinds::PODS.resource_type();
        let pname = s(p, "/metadata/name");
        if self
            .c
            .delete(
                &rt,
                s(p, "/metadata/namespace"),
                pname,
                s(p, "/metadata/uid"),
            )
            .await
            .is_ok()
        {
            self.expected.deleted(uid, pname);
            let msg = format!(
                "delete Pod {pname} in StatefulSet {} successful",
                s(set, "/metadata/name")
            );
            self.c
                .event(set, "Normal", "SuccessfulDelete", &msg, COMPONENT)
                .await;
        }
    }

    async fn create_pod(
        &self,
        v: &Value,
        sts: &StatefulSet,
        ns: &str,
        name: &str,
        i: i32,
        revision: &str,
    ) -> Result<(), KubeError> {
        let spec = sts.spec.clone().unwrap_or_default();
        let pod_name = format!("{name}-{i}");
        let mut meta = json!(spec.template.metadata.clone().unwrap_or_default());
        meta["name"] = json!(pod_name);
        meta["namespace"] = json!(ns);
        meta["labels"][HASH_LABEL] = json!(revision);
        meta["labels"][POD_NAME_LABEL] = json!(pod_name);
        meta["labels"][POD_INDEX_LABEL] = json!(i.to_string());
        meta["ownerReferences"] = json!([controller_ref(v, "apps/v1", "StatefulSet")]);
        let mut pspec = json!(spec.template.spec.clone().unwrap_or_default());
        pspec["hostname"] = json!(pod_name);
        if !spec.service_name.as_deref().unwrap_or("").is_empty() {
            pspec["subdomain"] = json!(spec.service_name);
        }
        // Each claim template becomes this pod's own claim.
        let pvc_rt = kinds::PERSISTENT_VOLUME_CLAIMS.resource_type();
        for t in spec.volume_claim_templates.iter().flatten() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let claim = format!("{tname}-{pod_name}");
            if self
                .cache
                .get(&kinds::PERSISTENT_VOLUME_CLAIMS.key(Some(ns), &claim))
                .is_none()
            {
                let mut pvc = json!(t);
                pvc["apiVersion"] = json!("v1");
                pvc["kind"] = json!("PersistentVolumeClaim");
                pvc["metadata"] = json!({"name": claim, "namespace": ns,
                    "labels": spec.selector.match_labels.clone().unwrap_or_default()});
                pvc.as_object_mut().map(|m| m.remove("status"));
                match self.c.create(&pvc_rt, ns, pvc).await {
                    Ok(_) => {
                        let msg = format!(
                            "create Claim {claim} Pod {pod_name} in StatefulSet {name} success"
                        );
                        self.c
                            .event(v, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                            .await;
                    }
                    Err(KubeError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let vol = json!({"name": tname, "persistentVolumeClaim": {"claimName": claim}});
            let vols = pspec["volumes"].as_array_mut();
            match vols {
                Some(vs) => {
                    vs.retain(|x| x["name"] != json!(tname));
                    vs.push(vol);
                }
                None => pspec["volumes"] = json!([vol]),
            }
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pspec});
        let rt = kinds::PODS.resource_type();
        match self.c.create(&rt, ns, pod).await {
            Ok(_) => {
                self.expected.created(s(v, "/metadata/uid"), &pod_name);
                let msg = format!("create Pod {pod_name} in StatefulSet {name} successful");
                self.c
                    .event(v, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                    .await;
                Ok(())
            }
            Err(KubeError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Run until `stop`.
/// StatefulSets: their own changes and their pods', and a resync.
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let ctl = Arc::new(Ctl {
        c,
        cache,
        expected: Expectations::default(),
    });
    Controller::new(COMPONENT, move |key: String| {
        let ctl = ctl.clone();
        async move {
            ctl.sync(&key).await;
            Ok(Requeue::Never)
        }
    })
    .watches(own(PREFIX.as_str()))
    .watches(owner(kinds::PODS.prefix(None), PREFIX.as_str()))
    .lists(all(PREFIX.as_str()), Some(RESYNC))
    .concurrency(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
    }
}
