//! Node lifecycle, the part kube-controller-manager runs on the leader:
//! conditions become taints, and NoExecute taints evict pods.
//!
//! Ready=False taints `node.kubernetes.io/not-ready`, Ready=Unknown (the
//! server's monitor marks silent nodes) `node.kubernetes.io/unreachable`,
//! each as NoSchedule and as NoExecute with the time it was added; the
//! pressure conditions taint NoSchedule. Taints of conditions that cleared
//! go; other taints are left alone.
//!
//! A pod on a node with a NoExecute taint it does not tolerate is deleted;
//! one that tolerates it for `tolerationSeconds` (admission gives every
//! pod 300 s for not-ready and unreachable) is deleted when that runs out,
//! counted from the taint's `timeAdded`. Its controller then replaces it
//! elsewhere: a deleted pod no longer counts as one of its replicas.

use super::client::{s, time, to_utc, Client};
use super::predicates::{deleting, terminal};
use super::runtime::{Controller, Requeue};
use std::sync::LazyLock;

use crate::datastore::EventKind;
use crate::kube::placement::tolerates;
use crate::registry::cache::Cache;
use crate::registry::kinds;
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COMPONENT: &str = "node-controller";
const PERIOD: Duration = Duration::from_secs(1);
static NODES: LazyLock<String> = LazyLock::new(|| kinds::NODES.prefix(None));
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// (condition, status) → taint key and effects, as upstream's
/// TaintNodesByCondition and TaintBasedEvictions.
const BY_CONDITION: &[(&str, &str, &str, &[&str])] = &[
    ("Ready", "False", NOT_READY, &["NoSchedule", "NoExecute"]),
    (
        "Ready",
        "Unknown",
        UNREACHABLE,
        &["NoSchedule", "NoExecute"],
    ),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
        &["NoSchedule"],
    ),
    (
        "DiskPressure",
        "True",
        "node.kubernetes.io/disk-pressure",
        &["NoSchedule"],
    ),
    (
        "PIDPressure",
        "True",
        "node.kubernetes.io/pid-pressure",
        &["NoSchedule"],
    ),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
        &["NoSchedule"],
    ),
];

fn managed(t: &Taint) -> bool {
    BY_CONDITION
        .iter()
        .any(|(_, _, key, effects)| *key == t.key && effects.contains(&t.effect.as_str()))
}

/// The node's taints as its conditions want them: unmanaged ones kept,
/// managed ones present only while their condition holds (keeping the
/// time they were first added).
pub fn wanted_taints(node: &Node, now: DateTime<Utc>) -> Vec<Taint> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut out: Vec<Taint> = current.iter().filter(|t| !managed(t)).cloned().collect();
    for (cond, status, key, effects) in BY_CONDITION {
        if !conds
            .iter()
            .any(|c| c.type_ == *cond && c.status == *status)
        {
            continue;
        }
        for effect in *effects {
            let kept = current
                .iter()
                .find(|t| t.key == *key && t.effect == *effect)
                .cloned();
            out.push(kept.unwrap_or_else(|| Taint {
                key: key.to_string(),
                effect: effect.to_string(),
                value: None,
                time_added: (*effect == "NoExecute").then(|| time(now)),
            }));
        }
    }
    out
}

/// When the pod must go because of `taints` (the node's NoExecute ones):
/// now if one is not tolerated, else when the shortest
/// `tolerationSeconds` counted from its taint's `timeAdded` runs out;
/// `None` if it tolerates them all forever.
pub fn eviction_time(pod: &Pod, taints: &[Taint], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut at: Option<DateTime<Utc>> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<_> = tolerations
            .iter()
            .filter(|tol| tolerates(std::slice::from_ref(*tol), t))
            .collect();
        if matching.is_empty() {
            return Some(now);
        }
        // Any toleration without seconds tolerates forever.
        if matching.iter().any(|m| m.toleration_seconds.is_none()) {
            continue;
        }
        let secs = matching
            .iter()
            .filter_map(|m| m.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = t.time_added.as_ref().map(to_utc).unwrap_or(now);
        let due = added + chrono::Duration::seconds(secs);
        at = Some(at.map_or(due, |a| a.min(due)));
    }
    at
}

/// A node as the taint logic reads it: its spec and conditions, without
/// typing the rest (images and nodeInfo are most of a Node).
fn taint_view(v: &Value) -> Node {
    Node {
        metadata: ObjectMeta {
            name: v
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string),
            ..Default::default()
        },
        spec: v.get("spec").and_then(|x| NodeSpec::deserialize(x).ok()),
        status: Some(NodeStatus {
            conditions: v
                .pointer("/status/conditions")
                .and_then(|x| Vec::<NodeCondition>::deserialize(x).ok()),
            ..Default::default()
        }),
    }
}

fn no_execute(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoExecute")
        .cloned()
        .collect()
}

/// Bring the taints of the `changed` nodes (None: deleted) in line with
/// their conditions and record their NoExecute taints in `tainted`.
/// Returns the nodes whose write failed, to try again.
async fn sync_taints(
    c: &Client,
    changed: HashMap<String, Option<Arc<Value>>>,
    tainted: &mut HashMap<String, Vec<Taint>>,
    now: DateTime<Utc>,
) -> HashMap<String, Option<Arc<Value>>> {
    let rt = kinds::NODES.resource_type();
    let mut retry = HashMap::new();
    for (name, v) in changed {
        let Some(v) = v else {
            tainted.remove(&name);
            continue;
        };
        let node = taint_view(&v);
        let ts = no_execute(&node);
        if ts.is_empty() {
            tainted.remove(&name);
        } else {
            tainted.insert(name.clone(), ts);
        }
        let want = wanted_taints(&node, now);
        let have = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if want == have {
            continue;
        }
        let uid = s(&v, "/metadata/uid").to_string();
        let r = c
            .update(&rt, "", &name, false, |n| {
                if s(n, "/metadata/uid") != uid {
                    return false;
                }
                let want = wanted_taints(&taint_view(n), now);
                if want.is_empty() {
                    n["spec"].as_object_mut().map(|m| m.remove("taints"));
                } else {
                    n["spec"]["taints"] = json!(want);
                }
                true
            })
            .await;
        match r {
            // The write comes back as a change and is read again then.
            Ok(()) => {
                tracing::info!(node = %name, taints = ?want.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints follow its conditions")
            }
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "taints not written");
                retry.insert(name, Some(v));
            }
        }
    }
    retry
}

async fn evict(
    c: &Client,
    cache: &Cache,
    tainted: &HashMap<String, Vec<Taint>>,
    now: DateTime<Utc>,
    logged: &mut HashMap<String, DateTime<Utc>>,
) {
    if tainted.is_empty() {
        logged.clear();
        return;
    }
    let rt = kinds::PODS.resource_type();
    let mut pending = HashMap::new();
    for (_, v) in cache.list(&kinds::PODS.prefix(None)) {
        let Some(taints) = tainted.get(s(&v, "/spec/nodeName")) else {
            continue;
        };
        if deleting(&v) || terminal(&v) {
            continue;
        }
        let Ok(pod) = Pod::deserialize(&*v) else {
            continue;
        };
        let Some(at) = eviction_time(&pod, taints, now) else {
            continue;
        };
        let uid = s(&v, "/metadata/uid").to_string();
        if at > now {
            pending.insert(uid.clone(), at);
            if logged.get(&uid) != Some(&at) {
                tracing::debug!(pod = s(&v, "/metadata/name"), at = %at, "pod will be evicted from a tainted node");
            }
            continue;
        }
        let (ns, name) = (s(&v, "/metadata/namespace"), s(&v, "/metadata/name"));
        let msg = format!("Marking for deletion Pod {ns}/{name}");
        c.event(&v, "Normal", "TaintManagerEviction", &msg, COMPONENT)
            .await;
        match c.delete(&rt, ns, name, &uid).await {
            Ok(()) => tracing::info!(
                namespace = ns,
                pod = name,
                node = s(&v, "/spec/nodeName"),
                "evicted a pod from a node with a NoExecute taint"
            ),
            Err(e) => tracing::warn!(pod = name, error = %e, "could not evict a pod"),
        }
    }
    *logged = pending;
}

fn all_nodes(cache: &Cache) -> HashMap<String, Option<Arc<Value>>> {
    cache
        .list(NODES.as_str())
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(NODES.as_str())?.to_string(), Some(v))))
        .collect()
}

/// What the controller carries from one pass to the next.
#[derive(Default)]
struct State {
    /// Nodes changed since the last pass (`None`: deleted).
    changed: HashMap<String, Option<Arc<Value>>>,
    tainted: HashMap<String, Vec<Taint>>,
    logged: HashMap<String, DateTime<Utc>>,
}

/// One key, a pass every [`PERIOD`] over the nodes that changed since the
/// last (all of them at start and after the change feed lagged): with ten
/// thousand nodes, re-reading each one every second was most of the
/// leader's work. Node changes are only noted; the pass picks them up.
pub fn controller(c: Client, cache: Arc<Cache>) -> Controller {
    let state = Arc::new(Mutex::new(State::default()));
    let noted = state.clone();
    let listed = state.clone();
    Controller::new(COMPONENT, move |_key: String| {
        let (c, cache, state) = (c.clone(), cache.clone(), state.clone());
        async move {
            let now = Utc::now();
            let (changed, mut tainted, mut logged) = {
                let mut st = state.lock().expect("node controller");
                (
                    std::mem::take(&mut st.changed),
                    std::mem::take(&mut st.tainted),
                    std::mem::take(&mut st.logged),
                )
            };
            let left = sync_taints(&c, changed, &mut tainted, now).await;
            evict(&c, &cache, &tainted, now, &mut logged).await;
            let mut st = state.lock().expect("node controller");
            // Noted meanwhile wins over what is left to do again.
            for (k, v) in left {
                st.changed.entry(k).or_insert(v);
            }
            st.tainted = tainted;
            st.logged = logged;
            Ok(Requeue::After(PERIOD))
        }
    })
    .watches(Box::new(move |ch, _| {
        if let Some(name) = ch.key.strip_prefix(NODES.as_str()) {
            let v = (ch.kind != EventKind::Delete).then(|| ch.object.clone());
            noted
                .lock()
                .expect("node controller")
                .changed
                .insert(name.to_string(), v);
        }
        vec![]
    }))
    .lists(
        Box::new(move |cache| {
            let mut st = listed.lock().expect("node controller");
            st.tainted.clear();
            st.changed = all_nodes(cache);
            vec!["nodes".to_string()]
        }),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(conds: &[(&str, &str)], taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"taints": taints},
            "status": {"conditions": conds.iter().map(|(t, s)| json!({"type": t, "status": s})).collect::<Vec<_>>()}}))
        .unwrap()
    }

    #[test]
    fn conditions_become_taints_and_clear() {
        let now = Utc::now();
        let n = node(
            &[("Ready", "Unknown"), ("DiskPressure", "True")],
            json!([{"key": "own", "effect": "NoSchedule"}]),
        );
        let t = wanted_taints(&n, now);
        let keys: Vec<String> = t
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        assert_eq!(
            keys,
            [
                "own:NoSchedule",
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute",
                "node.kubernetes.io/disk-pressure:NoSchedule"
            ]
        );
        assert!(t[2].time_added.is_some() && t[1].time_added.is_none());
        // Ready again: only the node's own taint stays.
        let back = node(&[("Ready", "True")], json!(t));
        let t = wanted_taints(&back, now);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key, "own");
    }

    #[test]
    fn tolerations_delay_or_prevent_eviction() {
        let now = Utc::now();
        let added = now - chrono::Duration::seconds(10);
        let taints = vec![Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(time(added)),
        }];
        let pod = |tols: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tols}}))
                .unwrap()
        };
        assert_eq!(eviction_time(&pod(json!([])), &taints, now), Some(now));
        let five = pod(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
        );
        assert_eq!(
            eviction_time(&five, &taints, now),
            Some(time_round(added) + chrono::Duration::seconds(5))
        );
        let forever = pod(json!([{"operator": "Exists"}]));
        assert_eq!(eviction_time(&forever, &taints, now), None);
    }

    fn time_round(t: DateTime<Utc>) -> DateTime<Utc> {
        to_utc(&time(t))
    }
}
