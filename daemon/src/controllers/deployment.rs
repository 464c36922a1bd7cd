//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`), rolled as upstream does.
//!
//! RollingUpdate scales the new set up within `replicas + maxSurge` and the
//! old ones down while `replicas - maxUnavailable` stay available;
//! Recreate empties the old sets before the new one gets pods. Revisions
//! are the sets' `deployment.kubernetes.io/revision` annotations (so
//! `kubectl rollout history/undo` work), old empty sets beyond
//! `revisionHistoryLimit` are deleted, a paused Deployment only scales.
//! Status carries the counts and the Available and Progressing conditions
//! `kubectl rollout status` reads, ProgressDeadlineExceeded included.

use super::client::{controlled, controller_ref, s, Client};
use super::predicates::{available, deleting};
use super::replicaset::active_pods;
use super::runtime::{all, own, owner, Controller, Requeue};
use crate::registry::cache::Cache;
use crate::registry::kinds;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

const COMPONENT: &str = "deployment-controller";
static PREFIX: LazyLock<String> = LazyLock::new(|| kinds::DEPLOYMENTS.prefix(None));
static RS_PREFIX: LazyLock<String> = LazyLock::new(|| kinds::REPLICA_SETS.prefix(None));
const RESYNC: Duration = Duration::from_secs(5);
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// Upstream's alphabet for generated name parts (no vowels, no lookalikes).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash of a template: stable, short, safe in names.
pub fn template_hash(template: &Value, collisions: i64) -> String {
    let mut h = Sha256::new();
    // serde_json's maps are ordered, so equal templates print the same.
    h.update(template.to_string());
    if collisions > 0 {
        h.update(collisions.to_le_bytes());
    }
    let d = h.finalize();
    let mut n = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    (0..10)
        .map(|_| {
            let c = SAFE[(n % SAFE.len() as u64) as usize] as char;
            n /= SAFE.len() as u64;
            c
        })
        .collect()
}

/// An int-or-percent against `total`, rounded up or down.
pub fn scaled(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(p) => {
            let pct: i64 = p.trim_end_matches('%').parse().unwrap_or(0);
            if round_up {
                (pct * total + 99) / 100
            } else {
                pct * total / 100
            }
        }
        _ => 0,
    }
}

/// maxSurge and maxUnavailable of a rolling update (25 % each by default).
pub fn surge_and_unavailable(d: &Value, replicas: i64) -> (i64, i64) {
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = scaled(
        ru.and_then(|r| r.get("maxSurge")).unwrap_or(&json!("25%")),
        replicas,
        true,
    );
    let mut unavailable = scaled(
        ru.and_then(|r| r.get("maxUnavailable"))
            .unwrap_or(&json!("25%")),
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

fn int(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn revision(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
}

impl Ctl {
    fn owned_sets(&self, d: &Value) -> Vec<Value> {
        let uid = s(d, "/metadata/uid");
        let mut v: Vec<Value> = controlled(&self.cache, uid, RS_PREFIX.as_str())
            .into_iter()
            .map(|rs| (*rs).clone())
            .collect();
        v.sort_by_key(|rs| {
            (
                revision(rs),
                s(rs, "/metadata/creationTimestamp").to_string(),
            )
        });
        v
    }

    async fn scale(&self, d: &Value, rs: &Value, to: i64) {
        let from = int(rs, "/spec/replicas");
        if from == to {
            return;
        }
        let rt = kinds::REPLICA_SETS.resource_type();
        let want = int(d, "/spec/replicas");
        let (surge, _) = surge_and_unavailable(d, want);
        // Decided on what the cache showed: a set that changed since is
        // left for the next pass (upstream's update with resourceVersion).
        let seen = s(rs, "/metadata/resourceVersion").to_string();
        let mut stale = false;
        let r = self
            .c
            .update(
                &rt,
                s(rs, "/metadata/namespace"),
                s(rs, "/metadata/name"),
                false,
                |o| {
                    if s(o, "/metadata/resourceVersion") != seen {
                        stale = true;
                        return false;
                    }
                    o["spec"]["replicas"] = json!(to);
                    o["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                        json!(want.to_string());
                    o["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] =
                        json!((want + surge).to_string());
                    true
                },
            )
            .await;
        match r {
            Ok(()) if stale => {}
            Ok(()) => {
                let dir = if to > from { "up" } else { "down" };
                let msg = format!(
                    "Scaled {dir} replica set {} to {to} from {from}",
                    s(rs, "/metadata/name")
                );
                self.c
                    .event(d, "Normal", "ScalingReplicaSet", &msg, COMPONENT)
                    .await;
            }
            Err(e) => {
                tracing::warn!(replicaset = s(rs, "/metadata/name"), error = %e, "could not scale")
            }
        }
    }

    /// The set for the current template, created (replicas 0) if missing;
    /// its revision made the newest.
    async fn new_set(&self, d: &Value, sets: &[Value]) -> Option<Value> {
        let template = d["spec"]["template"].clone();
        let collisions = int(d, "/status/collisionCount");
        let hash = template_hash(&template, collisions);
        let newest = sets.iter().map(revision).max().unwrap_or(0);
        let rt = kinds::REPLICA_SETS.resource_type();
        let ns = s(d, "/metadata/namespace");
        if let Some(rs) = sets
            .iter()
            .find(|rs| s(rs, &format!("/metadata/labels/{HASH_LABEL}")) == hash)
        {
            if revision(rs) < newest || revision(rs) == 0 {
                // `rollout undo` brought an old template back.
                let next = (newest + 1).to_string();
                let _ = self
                    .c
                    .update(&rt, ns, s(rs, "/metadata/name"), false, |o| {
                        o["metadata"]["annotations"][REVISION] = json!(next);
                        true
                    })
                    .await;
            }
            return Some(rs.clone());
        }
        let name = format!("{}-{hash}", s(d, "/metadata/name"));
        let mut t = template;
        t["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut labels = t["metadata"]["labels"].clone();
        labels[HASH_LABEL] = json!(hash);
        let want = int(d, "/spec/replicas");
        let (surge, _) = surge_and_unavailable(d, want);
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "annotations": {REVISION: (newest + 1).to_string(),
                    "deployment.kubernetes.io/desired-replicas": want.to_string(),
                    "deployment.kubernetes.io/max-replicas": (want + surge).to_string()},
                "ownerReferences": [controller_ref(d, "apps/v1", "Deployment")]},
            "spec": {"replicas": 0, "minReadySeconds": int(d, "/spec/minReadySeconds"),
                "selector": selector, "template": t},
        });
        match self.c.create(&rt, ns, rs).await {
            Ok(created) => {
                self.set_progressing(
                    d,
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set \"{name}\""),
                )
                .await;
                Some(created)
            }
            Err(crate::registry::error::KubeError::AlreadyExists(_)) => {
                // Someone else's set has the name: count a collision so the
                // next hash differs, as upstream does.
                let dt = kinds::DEPLOYMENTS.resource_type();
                let _ = self
                    .c
                    .update(&dt, ns, s(d, "/metadata/name"), true, |o| {
                        o["status"]["collisionCount"] = json!(collisions + 1);
                        true
                    })
                    .await;
                None
            }
            Err(e) => {
                tracing::warn!(deployment = s(d, "/metadata/name"), error = %e, "could not create a replica set");
                None
            }
        }
    }

    /// The Deployment carries its current revision, as upstream's does
    /// (`kubectl rollout undo` patches that annotation).
    async fn annotate_revision(&self, d: &Value, new: &Value) {
        let Some(rev) = new
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(REVISION))
            .cloned()
        else {
            return;
        };
        if d.pointer("/metadata/annotations")
            .and_then(|a| a.get(REVISION))
            == Some(&rev)
        {
            return;
        }
        let dt = kinds::DEPLOYMENTS.resource_type();
        let r = self
            .c
            .update(
                &dt,
                s(d, "/metadata/namespace"),
                s(d, "/metadata/name"),
                false,
                |o| {
                    if !o["metadata"]["annotations"].is_object() {
                        o["metadata"]["annotations"] = json!({});
                    }
                    if o["metadata"]["annotations"][REVISION] == rev {
                        return false;
                    }
                    o["metadata"]["annotations"][REVISION] = rev.clone();
                    true
                },
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(deployment = s(d, "/metadata/name"), error = %e, "revision annotation not written");
        }
    }

    async fn set_progressing(&self, d: &Value, status: &str, reason: &str, message: &str) {
        let dt = kinds::DEPLOYMENTS.resource_type();
        let now = crate::datastore::objects::now_rfc3339();
        let _ = self
            .c
            .update(
                &dt,
                s(d, "/metadata/namespace"),
                s(d, "/metadata/name"),
                true,
                |o| set_condition(o, "Progressing", status, reason, message, &now),
            )
            .await;
    }

    async fn sync(&self, key: &str) {
        let Some(d) = self.cache.get(key) else { return };
        if deleting(&d) {
            return;
        }
        let want = d
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0);
        let sets = self.owned_sets(&d);
        let paused = d.pointer("/spec/paused") == Some(&json!(true));
        let new = if paused {
            let hash = template_hash(&d["spec"]["template"], int(&d, "/status/collisionCount"));
            sets.iter()
                .find(|rs| s(rs, &format!("/metadata/labels/{HASH_LABEL}")) == hash)
                .cloned()
        } else {
            self.new_set(&d, &sets).await
        };
        if let Some(n) = &new {
            self.annotate_revision(&d, n).await;
        }
        let new_uid = new.as_ref().map(|n| s(n, "/metadata/uid").to_string());
        let old: Vec<&Value> = sets
            .iter()
            .filter(|rs| Some(s(rs, "/metadata/uid").to_string()) != new_uid)
            .collect();
        let old_total: i64 = old.iter().map(|rs| int(rs, "/spec/replicas")).sum();
        let recreate = s(&d, "/spec/strategy/type") == "Recreate";
        if let Some(new) = &new {
            if paused || old_total == 0 {
                // Nothing to roll: the new set simply has the replicas.
                self.scale(&d, new, want).await;
            } else if recreate {
                for rs in &old {
                    self.scale(&d, rs, 0).await;
                }
                let old_pods: usize = old
                    .iter()
                    .map(|rs| active_pods(&self.cache, rs).len())
                    .sum();
                if old_pods == 0 {
                    self.scale(&d, new, want).await;
                }
            } else {
                self.roll(&d, new, &old, want).await;
            }
        } else if paused {
            // Paused on a template with no set yet: keep the old ones scaled.
            if let Some(last) = old.last() {
                if old.len() == 1 {
                    self.scale(&d, last, want).await;
                }
            }
        }
        self.cleanup(&d, &sets, new_uid.as_deref()).await;
        self.write_status(&d, new.as_ref(), &sets, want).await;
    }

    /// One step of a rolling update (upstream's reconcileNewReplicaSet and
    /// reconcileOldReplicaSets).
    async fn roll(&self, d: &Value, new: &Value, old: &[&Value], want: i64) {
        let (surge, max_unavailable) = surge_and_unavailable(d, want);
        let new_count = int(new, "/spec/replicas");
        let all: i64 = new_count + old.iter().map(|rs| int(rs, "/spec/replicas")).sum::<i64>();
        if new_count < want {
            let room = want + surge - all;
            if room > 0 {
                // Old sets wait for the next pass, which sees this one.
                self.scale(d, new, (new_count + room).min(want)).await;
                return;
            }
        } else if new_count > want {
            self.scale(d, new, want).await;
            return;
        }
        let min_available = want - max_unavailable;
        let new_unavailable = new_count - int(new, "/status/availableReplicas");
        let mut budget = all - min_available - new_unavailable;
        if budget <= 0 {
            return;
        }
        // Unhealthy old pods first: they count for nothing.
        let mut scaled: Vec<(String, i64)> = old
            .iter()
            .map(|rs| {
                (
                    s(rs, "/metadata/uid").to_string(),
                    int(rs, "/spec/replicas"),
                )
            })
            .collect();
        for (i, rs) in old.iter().enumerate() {
            if budget <= 0 {
                break;
            }
            let unhealthy = (scaled[i].1 - int(rs, "/status/availableReplicas")).max(0);
            let cut = unhealthy.min(budget);
            if cut > 0 {
                scaled[i].1 -= cut;
                budget -= cut;
                self.scale(d, rs, scaled[i].1).await;
            }
        }
        // Then available ones, oldest sets first, keeping min_available.
        let available_now: i64 = int(new, "/status/availableReplicas")
            + old
                .iter()
                .map(|rs| int(rs, "/status/availableReplicas"))
                .sum::<i64>();
        let mut can = (available_now - min_available).min(budget);
        for (i, rs) in old.iter().enumerate() {
            if can <= 0 {
                break;
            }
            let cut = scaled[i].1.min(can);
            if cut > 0 {
                scaled[i].1 -= cut;
                can -= cut;
                self.scale(d, rs, scaled[i].1).await;
            }
        }
    }

    /// Delete empty old sets beyond `revisionHistoryLimit` (10), oldest first.
    async fn cleanup(&self, d: &Value, sets: &[Value], new_uid: Option<&str>) {
        let limit = d
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10)
            .max(0) as usize;
        let idle: Vec<&Value> = sets
            .iter()
            .filter(|rs| Some(s(rs, "/metadata/uid")) != new_uid)
            .filter(|rs| int(rs, "/spec/replicas") == 0 && int(rs, "/status/replicas") == 0)
            .filter(|rs| !deleting(rs))
            .collect();
        let rt = kinds::REPLICA_SETS.resource_type();
        for rs in idle.iter().take(idle.len().saturating_sub(limit)) {
            let _ = self
                .c
                .delete(
                    &rt,
                    s(rs, "/metadata/namespace"),
                    s(rs, "/metadata/name"),
                    s(rs, "/metadata/uid"),
                )
                .await;
        }
    }

    async fn write_status(&self, d: &Value, new: Option<&Value>, sets: &[Value], want: i64) {
        let sum = |p: &str| sets.iter().map(|rs| int(rs, p)).sum::<i64>();
        let (_, max_unavailable) = surge_and_unavailable(d, want);
        let available_n = sum("/status/availableReplicas");
        let updated = new.map_or(0, |n| int(n, "/status/replicas"));
        let new_name = new
            .map(|n| s(n, "/metadata/name").to_string())
            .unwrap_or_default();
        let now = chrono::Utc::now();
        // The new set's pods, to tell progress from a stall.
        let new_available = new.map_or(0, |n| {
            active_pods(&self.cache, n)
                .iter()
                .filter(|p| available(p, int(d, "/spec/minReadySeconds"), now))
                .count() as i64
        });
        let complete = updated == want
            && sum("/status/replicas") == want
            && new_available >= want
            && new.is_some_and(|n| int(n, "/spec/replicas") == want);
        let deadline = d
            .pointer("/spec/progressDeadlineSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(600);
        let stamp = crate::datastore::objects::now_rfc3339();
        let dt = kinds::DEPLOYMENTS.resource_type();
        let generation = d
            .pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(1));
        let r = self
            .c
            .update(
                &dt,
                s(d, "/metadata/namespace"),
                s(d, "/metadata/name"),
                true,
                |o| {
                    let before = o["status"].clone();
                    let st = &mut o["status"];
                    if !st.is_object() {
                        *st = json!({});
                    }
                    st["observedGeneration"] = generation.clone();
                    st["replicas"] = json!(sum("/status/replicas"));
                    st["updatedReplicas"] = json!(updated);
                    st["readyReplicas"] = json!(sum("/status/readyReplicas"));
                    st["availableReplicas"] = json!(available_n);
                    st["unavailableReplicas"] = json!((want - available_n).max(0));
                    if available_n >= want - max_unavailable {
                        set_condition(
                            o,
                            "Available",
                            "True",
                            "MinimumReplicasAvailable",
                            "Deployment has minimum availability.",
                            &stamp,
                        );
                    } else {
                        set_condition(
                            o,
                            "Available",
                            "False",
                            "MinimumReplicasUnavailable",
                            "Deployment does not have minimum availability.",
                            &stamp,
                        );
                    }
                    if !new_name.is_empty() {
                        let prog = o["status"]["conditions"]
                            .as_array()
                            .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
                            .cloned()
                            .unwrap_or_default();
                        if complete {
                            set_condition(
                                o,
                                "Progressing",
                                "True",
                                "NewReplicaSetAvailable",
                                &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                                &stamp,
                            );
                        } else if d.pointer("/spec/paused") == Some(&json!(true)) {
                            set_condition(
                                o,
                                "Progressing",
                                "Unknown",
                                "DeploymentPaused",
                                "Deployment is paused",
                                &stamp,
                            );
                        } else {
                            let last = prog["lastUpdateTime"]
                                .as_str()
                                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                                .map(|t| t.with_timezone(&chrono::Utc));
                            let moved = before["updatedReplicas"] != json!(updated)
                                || before["availableReplicas"] != json!(available_n)
                                || prog["reason"] == "NewReplicaSetAvailable"
                                || prog.is_null();
                            if moved {
                                set_condition(
                                    o,
                                    "Progressing",
                                    "True",
                                    "ReplicaSetUpdated",
                                    &format!("ReplicaSet \"{new_name}\" is progressing."),
                                    &stamp,
                                );
                                o["status"]["conditions"]
                                    .as_array_mut()
                                    .into_iter()
                                    .flatten()
                                    .filter(|c| c["type"] == "Progressing")
                                    .for_each(|c| c["lastUpdateTime"] = json!(stamp));
                            } else if prog["reason"] != "ProgressDeadlineExceeded"
                                && last.is_some_and(|t| (now - t).num_seconds() > deadline)
                            {
                                set_condition(
                                    o,
                                    "Progressing",
                                    "False",
                                    "ProgressDeadlineExceeded",
                                    &format!(
                                        "ReplicaSet \"{new_name}\" has timed out progressing."
                                    ),
                                    &stamp,
                                );
                            }
                        }
                    }
                    o["status"] != before
                },
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(deployment = s(d, "/metadata/name"), error = %e, "status not written");
        }
    }
}

/// Set a condition; its times move only when its status changes (the
/// update time also when its reason does). Returns whether it changed.
fn set_condition(
    o: &mut Value,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> bool {
    if !o["status"].is_object() {
        o["status"] = json!({});
    }
    if !o["status"]["conditions"].is_array() {
        o["status"]["conditions"] = json!([]);
    }
    let conds = o["status"]["conditions"].as_array_mut().expect("array");
    match conds.iter_mut().find(|c| c["type"] == kind) {
        Some(c) => {
            if c["status"] == status && c["reason"] == reason && c["message"] == message {
                return false;
            }
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now);
            }
            c["lastUpdateTime"] = json!(now);
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => conds.push(
            json!({"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": now}),
        ),
    }
    true
}

/// Run until `stop`.
/// Deployments: their own changes and their ReplicaSets', and a resync.
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let ctl = Arc::new(Ctl { c, cache });
    Controller::new(COMPONENT, move |key: String| {
        let ctl = ctl.clone();
        async move {
            ctl.sync(&key).await;
            Ok(Requeue::Never)
        }
    })
    .watches(own(PREFIX.as_str()))
    .watches(owner(RS_PREFIX.as_str(), PREFIX.as_str()))
    .lists(all(PREFIX.as_str()), Some(RESYNC))
    .concurrency(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surge_and_unavailable_round_as_upstream() {
        let d = |ru: Value| json!({"spec": {"strategy": {"rollingUpdate": ru}}});
        assert_eq!(surge_and_unavailable(&d(json!({})), 3), (1, 0));
        assert_eq!(surge_and_unavailable(&d(json!({})), 10), (3, 2));
        assert_eq!(
            surge_and_unavailable(&d(json!({"maxSurge": 0, "maxUnavailable": 0})), 3),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(&d(json!({"maxSurge": 2, "maxUnavailable": "50%"})), 5),
            (2, 2)
        );
    }

    #[test]
    fn template_hashes_are_stable_safe_and_differ() {
        let a = json!({"spec": {"containers": [{"name": "c", "image": "one"}]}});
        let b = json!({"spec": {"containers": [{"name": "c", "image": "two"}]}});
        let h = template_hash(&a, 0);
        assert_eq!(h, template_hash(&a.clone(), 0));
        assert_ne!(h, template_hash(&b, 0));
        assert_ne!(h, template_hash(&a, 1));
        assert!(h.bytes().all(|c| SAFE.contains(&c)), "{h}");
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut o = json!({});
        assert!(set_condition(&mut o, "Available", "True", "R", "m", "t1"));
        assert!(!set_condition(&mut o, "Available", "True", "R", "m", "t2"));
        assert!(set_condition(&mut o, "Available", "True", "R2", "m", "t3"));
        assert_eq!(o["status"]["conditions"][0]["lastTransitionTime"], "t1");
        assert!(set_condition(&mut o, "Available", "False", "R2", "m", "t4"));
        assert_eq!(o["status"]["conditions"][0]["lastTransitionTime"], "t4");
    }
}
