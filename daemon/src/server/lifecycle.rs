//! Node lifecycle: the Node and Lease objects an agent's tunnel keeps
//! alive, and the monitor that marks a silent node `Ready=Unknown` after the
//! grace period (40 s by default, as kube-controller-manager does).

use crate::datastore::objects::{self, now_micro, now_rfc3339, parse_time, Objects, Ref};
use rk3s_api::tunnel::NodeInfo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease annotation naming the server that holds the node's tunnel.
pub const ANNOTATION_CONNECTED_TO: &str = "rk3s.io/connected-to";
pub const LABEL_CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";
/// Node annotation set by a graceful shutdown, with its reason; cleared
/// (with the cordon it brought) when the node registers again.
pub const ANNOTATION_SHUTDOWN: &str = "rk3s.io/shutdown-reason";
const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Taint (NoSchedule) of a node whose agent runs no container runtime
/// (`--disable-runtime`): pods bound there would never start, nor finish
/// a graceful delete, so the scheduler keeps them off it.
pub const TAINT_NO_RUNTIME: &str = "rk3s.io/no-runtime";

/// Add or remove the no-runtime taint, leaving other taints alone.
fn mark_runtime(node: &mut Value, has_runtime: bool) {
    let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let taints = spec.entry("taints").or_insert_with(|| json!([]));
    let Some(list) = taints.as_array_mut() else {
        return;
    };
    list.retain(|t| t["key"] != TAINT_NO_RUNTIME);
    if !has_runtime {
        list.push(json!({"key": TAINT_NO_RUNTIME, "effect": "NoSchedule"}));
    }
    if list.is_empty() {
        spec.remove("taints");
    }
}
/// A healthy node's Ready condition heartbeat is refreshed every this many
/// heartbeats (a minute at the default 10 s); the Lease carries every
/// heartbeat, as upstream splits lease and status updates.
pub const STATUS_REFRESH_HEARTBEATS: u32 = 6;

pub fn node_ref(name: &str) -> Ref {
    Ref::cluster("nodes", name)
}

pub fn lease_ref(name: &str) -> Ref {
    Ref::namespaced("leases", LEASE_NAMESPACE, name)
}

/// Remove a node's Lease (gone already is fine).
pub async fn delete_lease(objects: &Objects, name: &str) -> crate::datastore::objects::Result<()> {
    objects.raw().delete(&lease_ref(name)).await.map(|_| ())
}

fn ready_condition(status: &str, now: &str, transition: &str) -> Value {
    let (reason, message) = match status {
        "True" => ("KubeletReady", "rk3s agent is posting ready status"),
        "False" => (
            "KubeletNotReady",
            "rk3s agent reports the node is not ready",
        ),
        _ => (
            "NodeStatusUnknown",
            "rk3s agent stopped posting node status",
        ),
    };
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": now,
        "lastTransitionTime": transition,
    })
}

/// Ready condition status of a node object (`None` if it has none).
pub fn ready_status(node: &Value) -> Option<&str> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .get("status")?
        .as_str()
}

/// The Kubernetes version the node's kubelet implements (an agent older
/// than the field sent only its rk3s release).
fn kubelet_version(info: &NodeInfo) -> &str {
    if info.kubelet_version.is_empty() {
        &info.rk3s_version
    } else {
        &info.kubelet_version
    }
}

/// `v0.1.0+rk3s` as a label value (`v0.1.0`: no `+` there).
fn version_label(rk3s_version: &str) -> String {
    let v = rk3s_version.split('+').next().unwrap_or_default();
    v.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect()
}

fn labels_for(name: &str, info: &NodeInfo) -> serde_json::Map<String, Value> {
    let mut l = serde_json::Map::new();
    let version = version_label(&info.rk3s_version);
    if !version.is_empty() {
        l.insert(rk3s_api::VERSION_LABEL.into(), json!(version));
    }
    l.insert("kubernetes.io/hostname".into(), json!(name));
    l.insert("kubernetes.io/os".into(), json!(info.os));
    l.insert("kubernetes.io/arch".into(), json!(info.architecture));
    l.insert("beta.kubernetes.io/os".into(), json!(info.os));
    l.insert("beta.kubernetes.io/arch".into(), json!(info.architecture));
    if info.control_plane {
        l.insert(LABEL_CONTROL_PLANE.into(), json!("true"));
    }
    for (k, v) in &info.labels {
        l.insert(k.clone(), json!(v));
    }
    l
}

/// Apply what the agent reported to a node object (new or existing),
/// keeping fields others own (spec.unschedulable, taints, extra labels).
/// Undo what [`shutting_down`] did, if it did: the node is back.
fn clear_shutdown(node: &mut Value) {
    let marked = node
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
        .and_then(|a| a.remove(ANNOTATION_SHUTDOWN))
        .is_some();
    if !marked {
        return;
    }
    if let Some(spec) = node.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("unschedulable");
        if let Some(taints) = spec.get_mut("taints").and_then(Value::as_array_mut) {
            taints.retain(|t| t["key"] != TAINT_UNSCHEDULABLE);
        }
    }
}

/// The node's agent says its host is going down: cordon it (unschedulable,
/// with the taint the scheduler honours) and say why in its Ready condition.
pub async fn shutting_down(objects: &Objects, name: &str, reason: &str) -> objects::Result<()> {
    let now = now_rfc3339();
    objects
        .raw()
        .modify(&node_ref(name), |node| {
            node["metadata"]["annotations"][ANNOTATION_SHUTDOWN] = json!(reason);
            node["spec"]["unschedulable"] = json!(true);
            let taints = node["spec"]
                .as_object_mut()
                .expect("spec")
                .entry("taints")
                .or_insert_with(|| json!([]));
            if let Some(t) = taints.as_array_mut() {
                if !t.iter().any(|x| x["key"] == TAINT_UNSCHEDULABLE) {
                    t.push(json!({"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule", "timeAdded": now}));
                }
            }
            set_ready(
                node,
                json!({"type": "Ready", "status": "False", "reason": "NodeShutdown",
                       "message": reason, "lastHeartbeatTime": now, "lastTransitionTime": now}),
            );
            true
        })
        .await?;
    Ok(())
}

fn apply_info(node: &mut Value, name: &str, info: &NodeInfo) {
    clear_shutdown(node);
    mark_runtime(node, info.runtime.is_some());
    let now = now_rfc3339();
    let labels = node["metadata"]
        .as_object_mut()
        .expect("metadata")
        .entry("labels")
        .or_insert_with(|| json!({}));
    if let Some(m) = labels.as_object_mut() {
        m.extend(labels_for(name, info));
    }
    let mut addresses: Vec<Value> = info
        .internal_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": info.hostname}));
    let capacity = json!({
        "cpu": info.cpu.to_string(),
        "memory": format!("{}Ki", info.memory_kib),
        "pods": "110",
    });
    // The runtime decides Ready (upstream: "container runtime is down").
    let not_ready = info.runtime.as_ref().and_then(|r| {
        if !r.ready {
            Some(r.message.clone())
        } else {
            r.network_not_ready.clone()
        }
    });
    let want = if not_ready.is_some() { "False" } else { "True" };
    let transition = if ready_status(node) == Some(want) {
        node.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&now)
            .to_string()
    } else {
        now.clone()
    };
    let runtime_version = info
        .runtime
        .as_ref()
        .map(|r| r.version.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| format!("rk3s://{}", rk3s_api::VERSION));
    let status = node
        .as_object_mut()
        .expect("object")
        .entry("status")
        .or_insert_with(|| json!({}));
    status["addresses"] = json!(addresses);
    // A node with a runtime has a kubelet, which owns capacity and
    // allocatable (reserved resources, ephemeral storage); until its first
    // report the agent's figures stand in.
    if info.runtime.is_none() || status.get("capacity").is_none() {
        status["capacity"] = capacity.clone();
        status["allocatable"] = capacity;
    }
    status["nodeInfo"] = json!({
        "architecture": info.architecture,
        "operatingSystem": info.os,
        "osImage": info.os_image,
        "kernelVersion": info.kernel_version,
        "kubeletVersion": kubelet_version(info),
        "kubeProxyVersion": kubelet_version(info),
        "containerRuntimeVersion": runtime_version,
        "machineID": "",
        "systemUUID": "",
        "bootID": "",
    });
    let mut ready = ready_condition(want, &now, &transition);
    if let Some(m) = not_ready {
        ready["message"] = json!(m);
    }
    // The kubelet's pressure conditions stay as it wrote them.
    set_ready(node, ready);
}

/// Create or refresh the Node from an agent's report, and renew (or
/// create) its Lease; returns the Node and the Lease as stored (no Lease
/// when it was created). A Node this call creates
/// gets the pod CIDR `new_pod_cidr` yields (asked only then), so a first
/// registration writes the Node once instead of again for its CIDR.
pub async fn upsert_node<F, Fut>(
    objects: &Objects,
    name: &str,
    info: &NodeInfo,
    server: &str,
    new_pod_cidr: F,
) -> objects::Result<(Value, Option<Value>)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let r = node_ref(name);
    let refresh = |node: &mut Value| {
        apply_info(node, name, info);
        true
    };
    let stored = match objects.raw().modify(&r, refresh).await? {
        Some(node) => node,
        None => {
            let mut node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {}, "spec": {}});
            node["metadata"]["name"] = json!(name);
            if let Some(cidr) = new_pod_cidr().await {
                node["spec"]["podCIDR"] = json!(cidr);
                node["spec"]["podCIDRs"] = json!([cidr]);
            }
            apply_info(&mut node, name, info);
            match objects.raw().create(&r, node).await {
                Ok(node) => node,
                // Lost a race with another connection of the same node: refresh.
                Err(objects::ObjectError::Store(
                    crate::datastore::DatastoreError::AlreadyExists(_),
                )) => objects.raw().modify(&r, refresh).await?.ok_or_else(|| {
                    objects::ObjectError::Store(crate::datastore::DatastoreError::Unavailable(
                        format!("node {name} was created and deleted at once; try again"),
                    ))
                })?,
                Err(e) => return Err(e),
            }
        }
    };
    let lease = renew_lease_read(objects, name, Some(server)).await?;
    Ok((stored, lease))
}

/// What a tunnel session remembers between heartbeats so that most of
/// them cost one datastore write and no read.
#[derive(Default)]
pub struct HeartbeatState {
    /// The Lease as this session last wrote it (encoded: a tenth of its
    /// size as a `Value`); the next renewal writes over that revision.
    lease: Option<(String, crate::datastore::Revision)>,
    /// Until when the Node needs no look: its Ready condition was checked
    /// or written by this session.
    node_checked_until: Option<std::time::Instant>,
    /// Until when a heartbeat needs no renewal: the node status stored
    /// just now renewed the Lease.
    renewed_until: Option<std::time::Instant>,
}

impl HeartbeatState {
    /// Forget everything: after a failed write or a node status from the
    /// agent, the next heartbeat reads again.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// The agent's node status was just stored by [`upsert_node`], with a
    /// fresh Ready condition and `lease` renewed. An agent sends its first
    /// heartbeat right behind its status: renewing again then would be a
    /// second Lease write (and two reads) per registration. Heartbeats
    /// within `quiet` write nothing, which keeps the Lease's age under
    /// `quiet` plus one interval; the Node needs no look for half of
    /// `status_refresh` and up to as long again, picked at random.
    pub fn stored(&mut self, lease: Option<Value>, quiet: Duration, status_refresh: Duration) {
        let now = std::time::Instant::now();
        self.remember(lease);
        self.renewed_until = Some(now + quiet);
        // Looks come every half period after the first. A fleet that
        // (re)connected within seconds would otherwise read and refresh
        // its Nodes in the same few seconds of every half minute: at
        // 10,000 agents a wave of writes that held heartbeats up for
        // 100-600 ms. Spread, they are a steady trickle.
        let spread = (status_refresh / 2).mul_f64(rand::random::<f64>());
        self.node_checked_until = Some(now + status_refresh / 2 + spread);
    }

    fn remember(&mut self, written: Option<Value>) {
        self.lease = written.map(|mut v| {
            let rev = objects::revision_of(&v);
            if let Some(m) = v["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            (v.to_string(), rev)
        });
    }
}

fn set_renewed(lease: &mut Value, name: &str, now: &str, connected: Option<&str>) {
    lease["spec"]["renewTime"] = json!(now);
    lease["spec"]["holderIdentity"] = json!(name);
    if let Some(s) = connected {
        lease["metadata"]["annotations"][ANNOTATION_CONNECTED_TO] = json!(s);
    }
}

/// Renew over the Lease this session wrote last; `Ok(None)` when there is
/// none or someone else wrote it since (the caller reads it then).
async fn renew_remembered(
    objects: &Objects,
    name: &str,
    server: &str,
    st: &mut HeartbeatState,
) -> objects::Result<Option<Value>> {
    let Some((text, rev)) = st.lease.take() else {
        return Ok(None);
    };
    let Ok(mut lease) = serde_json::from_str::<Value>(&text) else {
        return Ok(None);
    };
    lease["metadata"]["resourceVersion"] = json!(rev.to_string());
    set_renewed(&mut lease, name, &now_micro(), Some(server));
    match objects.raw().update(&lease_ref(name), lease).await {
        Ok(v) => Ok(Some(v)),
        Err(objects::ObjectError::Store(
            crate::datastore::DatastoreError::Conflict { .. }
            | crate::datastore::DatastoreError::NotFound(_),
        )) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Renew the node's Lease; `connected` also records which server holds the tunnel.
pub async fn renew_lease(
    objects: &Objects,
    name: &str,
    connected: Option<&str>,
) -> objects::Result<()> {
    renew_lease_read(objects, name, connected).await.map(|_| ())
}

/// `renew_lease`, returning the Lease as written (None if it was created).
async fn renew_lease_read(
    objects: &Objects,
    name: &str,
    connected: Option<&str>,
) -> objects::Result<Option<Value>> {
    let r = lease_ref(name);
    let now = now_micro();
    let set = |lease: &mut Value| {
        set_renewed(lease, name, &now, connected);
        true
    };
    if let Some(v) = objects.raw().modify(&r, set).await? {
        return Ok(Some(v));
    }
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"annotations": {}},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    });
    if let Some(node) = objects.get(&node_ref(name)).await? {
        lease["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"],
        }]);
    }
    if let Some(s) = connected {
        lease["metadata"]["annotations"][ANNOTATION_CONNECTED_TO] = json!(s);
    }
    objects
        .raw()
        .create_if_absent(&r, lease)
        .await
        .map(|_| None)
}

/// A heartbeat: renew the Lease; bring the node back to Ready if it was not,
/// and refresh the Ready heartbeat time once every `status_refresh`.
/// `st` carries what the session's previous heartbeats learned; on an
/// error the caller resets it.
pub async fn heartbeat(
    objects: &Objects,
    name: &str,
    server: &str,
    status_refresh: Duration,
    st: &mut HeartbeatState,
) -> objects::Result<()> {
    if st
        .renewed_until
        .take()
        .is_some_and(|t| std::time::Instant::now() < t)
    {
        return Ok(());
    }
    let written = match renew_remembered(objects, name, server, st).await? {
        Some(v) => Some(v),
        None => renew_lease_read(objects, name, Some(server)).await?,
    };
    st.remember(written);
    // The Node changes only when Ready must come back or its heartbeat
    // time is due; between those, no read. Another server marks it
    // Unknown only once the Lease went stale, which these renewals
    // prevent, and a new session starts with a read.
    if st
        .node_checked_until
        .is_some_and(|t| std::time::Instant::now() < t)
    {
        return Ok(());
    }
    st.node_checked_until = Some(std::time::Instant::now() + status_refresh / 2);
    let status_refresh =
        chrono::Duration::from_std(status_refresh).unwrap_or(chrono::Duration::seconds(60));
    let now = chrono::Utc::now();
    let stamp = now_rfc3339();
    objects
        .raw()
        .modify(&node_ref(name), |node| {
            let stale = node
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| {
                    // False is the agent's own report (runtime down,
                    // shutdown): only its next node status changes it.
                    c["status"] == "Unknown"
                        || c["status"] == "True"
                            && c["lastHeartbeatTime"]
                                .as_str()
                                .and_then(parse_time)
                                .is_none_or(|t| now - t > status_refresh)
                })
                .unwrap_or(true);
            if !stale {
                return false;
            }
            let transition = if ready_status(node) == Some("True") {
                node.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c["lastTransitionTime"].as_str())
                    .unwrap_or(&stamp)
                    .to_string()
            } else {
                tracing::info!(node = name, "node is Ready again");
                stamp.clone()
            };
            set_ready(node, ready_condition("True", &stamp, &transition));
            true
        })
        .await?;
    Ok(())
}

fn set_ready(node: &mut Value, cond: Value) {
    let status = node
        .as_object_mut()
        .expect("object")
        .entry("status")
        .or_insert_with(|| json!({}));
    let conds = status
        .as_object_mut()
        .expect("status object")
        .entry("conditions")
        .or_insert_with(|| json!([]));
    if let Some(arr) = conds.as_array_mut() {
        arr.retain(|c| c["type"] != "Ready");
        arr.push(cond);
    }
}

/// The tunnel closed: forget which server held it (if it was `server`).
pub async fn disconnected(objects: &Objects, name: &str, server: &str) -> objects::Result<()> {
    objects
        .raw()
        .modify(&lease_ref(name), |lease| {
            let holder = lease.pointer(&format!(
                "/metadata/annotations/{}",
                ANNOTATION_CONNECTED_TO.replace('/', "~1")
            ));
            if holder.and_then(Value::as_str) != Some(server) {
                return false;
            }
            if let Some(a) = lease["metadata"]["annotations"].as_object_mut() {
                a.remove(ANNOTATION_CONNECTED_TO);
            }
            true
        })
        .await?;
    Ok(())
}

/// Last renewal time of a Lease object.
pub fn lease_renewed(lease: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    lease
        .pointer("/spec/renewTime")
        .and_then(Value::as_str)
        .and_then(parse_time)
}

/// What the monitor reads of a Node.
#[derive(serde::Deserialize)]
struct NodeLiveness {
    metadata: NameAndAge,
    #[serde(default)]
    status: ConditionsOnly,
}

#[derive(serde::Deserialize)]
struct NameAndAge {
    name: String,
    #[serde(rename = "creationTimestamp", default)]
    created: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct ConditionsOnly {
    #[serde(default)]
    conditions: Vec<ConditionStatus>,
}

#[derive(serde::Deserialize)]
struct ConditionStatus {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

/// What the monitor reads of a Lease.
#[derive(serde::Deserialize)]
struct LeaseRenewal {
    metadata: NameAndAge,
    #[serde(default)]
    spec: RenewTime,
}

#[derive(serde::Deserialize, Default)]
struct RenewTime {
    #[serde(rename = "renewTime", default)]
    renew_time: Option<String>,
}

/// One pass of the monitor: every node whose lease is older than `grace`
/// and is not yet Unknown becomes Unknown. Returns the nodes it changed.
pub async fn mark_silent_nodes(objects: &Objects, grace: Duration) -> objects::Result<Vec<String>> {
    let nodes: Vec<NodeLiveness> = objects.list_as("nodes", None).await?;
    let leases: Vec<LeaseRenewal> = objects.list_as("leases", Some(LEASE_NAMESPACE)).await?;
    let now = chrono::Utc::now();
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::seconds(40));
    // By name: a scan per node was quadratic, 10^8 comparisons a pass at
    // ten thousand nodes.
    let renewed_at: HashMap<&str, chrono::DateTime<chrono::Utc>> = leases
        .iter()
        .filter_map(|l| {
            Some((
                l.metadata.name.as_str(),
                parse_time(l.spec.renew_time.as_deref()?)?,
            ))
        })
        .collect();
    let mut changed = Vec::new();
    for node in &nodes {
        let name = node.metadata.name.as_str();
        let ready = node.status.conditions.iter().find(|c| c.type_ == "Ready");
        if ready.is_some_and(|c| c.status == "Unknown") {
            continue;
        }
        let renewed = renewed_at
            .get(name)
            .copied()
            .or_else(|| node.metadata.created.as_deref().and_then(parse_time));
        if renewed.is_some_and(|t| now - t <= grace) {
            continue;
        }
        let stamp = now_rfc3339();
        let done = objects
            .raw()
            .modify(&node_ref(name), |n| {
                if ready_status(n) == Some("Unknown") {
                    return false;
                }
                let last_hb = n
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c["lastHeartbeatTime"].as_str())
                    .unwrap_or(&stamp)
                    .to_string();
                set_ready(n, ready_condition("Unknown", &last_hb, &stamp));
                // Upstream's node lifecycle: every condition the kubelet
                // reports is unknown once it stops reporting.
                for c in n
                    .pointer_mut("/status/conditions")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                    .filter(|c| c["type"] != "Ready" && c["status"] != "Unknown")
                {
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                    c["lastTransitionTime"] = json!(stamp);
                }
                true
            })
            .await?;
        if done.is_some() {
            tracing::warn!(
                node = name,
                grace_seconds = grace.num_seconds(),
                "no heartbeat within the grace period; node is now Ready=Unknown"
            );
            changed.push(name.to_string());
        }
    }
    Ok(changed)
}

/// The node monitor. It judges nodes only after it has itself been able to
/// read the datastore for a whole grace period: a leader that just took
/// over, or a datastore that just came back, has not seen the heartbeats
/// the nodes sent meanwhile, and must not call them dead for it.
pub async fn monitor_loop(objects: Objects, grace: Duration, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watching_since = std::time::Instant::now();
    loop {
        tick.tick().await;
        if watching_since.elapsed() < grace {
            if let Err(e) = objects.store.current_revision().await {
                tracing::debug!(error = %e, "node monitor cannot read the datastore");
                watching_since = std::time::Instant::now();
            }
            continue;
        }
        if let Err(e) = mark_silent_nodes(&objects, grace).await {
            tracing::warn!(error = %e, "node monitor pass failed; will retry");
            watching_since = std::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rk3s_api::tunnel::RuntimeInfo;

    fn ready_of(node: &Value) -> (String, String) {
        let c = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        (
            c["status"].as_str().unwrap().to_string(),
            c["message"].as_str().unwrap_or("").to_string(),
        )
    }

    #[test]
    fn ready_needs_the_runtime_and_its_network() {
        let mut info = NodeInfo {
            hostname: "n".into(),
            ..Default::default()
        };
        let mut node = json!({"metadata": {}, "spec": {}});
        let runtime = |ready: bool, network: Option<&str>| RuntimeInfo {
            version: "containerd://1.6.20".into(),
            ready,
            message: if ready { "" } else { "runtime down" }.into(),
            network_not_ready: network.map(str::to_string),
        };
        info.runtime = Some(runtime(false, None));
        apply_info(&mut node, "n", &info);
        assert_eq!(ready_of(&node), ("False".into(), "runtime down".into()));
        let net = "container runtime network not ready: NetworkReady=false";
        info.runtime = Some(runtime(true, Some(net)));
        apply_info(&mut node, "n", &info);
        assert_eq!(ready_of(&node), ("False".into(), net.into()));
        info.runtime = Some(runtime(true, None));
        apply_info(&mut node, "n", &info);
        assert_eq!(ready_of(&node).0, "True");
        assert_eq!(
            node["status"]["nodeInfo"]["containerRuntimeVersion"],
            "containerd://1.6.20"
        );
        assert!(node["spec"].get("taints").is_none(), "{node}");
        // An agent without a runtime (tests, benches) is Ready as before,
        // and tainted so no pod is scheduled where none can run; an
        // operator's taint stays through both.
        node["spec"]["taints"] = json!([{"key": "dedicated", "effect": "NoSchedule"}]);
        info.runtime = None;
        apply_info(&mut node, "n", &info);
        assert_eq!(ready_of(&node).0, "True");
        let keys = |n: &Value| -> Vec<String> {
            n["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| t["key"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(keys(&node), ["dedicated", TAINT_NO_RUNTIME]);
        info.runtime = Some(runtime(true, None));
        apply_info(&mut node, "n", &info);
        assert_eq!(keys(&node), ["dedicated"]);
    }

    #[test]
    fn the_kubelet_reports_the_kubernetes_version_and_a_label_rk3s_own() {
        let info = crate::host::nodeinfo::collect(vec![], Default::default());
        let mut node = json!({"metadata": {}, "spec": {}});
        apply_info(&mut node, "n", &info);
        let kubelet = node["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .unwrap();
        // Semver with rk3s's release as build metadata, as K3s's v1.32.5+k3s1.
        assert_eq!(kubelet, format!("v1.32.0+rk3s.{}", rk3s_api::VERSION));
        assert_eq!(node["status"]["nodeInfo"]["kubeProxyVersion"], kubelet);
        assert_eq!(
            node["metadata"]["labels"][rk3s_api::VERSION_LABEL],
            format!("v{}", rk3s_api::VERSION)
        );
        // An agent from before the field: its rk3s release, as it said then.
        let old = NodeInfo {
            rk3s_version: "v0.0.9+rk3s".into(),
            ..Default::default()
        };
        let mut node = json!({"metadata": {}, "spec": {}});
        apply_info(&mut node, "n", &old);
        assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v0.0.9+rk3s");
        assert_eq!(version_label("v0.0.9+rk3s"), "v0.0.9");
        assert_eq!(version_label("v1 bad/+x"), "v1bad");
    }

    #[tokio::test]
    async fn a_first_status_writes_the_node_once_and_the_next_heartbeat_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend =
            crate::datastore::sqlite::SqliteBackend::open(&dir.path().join("s.db")).unwrap();
        let objects = Objects::new(crate::datastore::Datastore::new(std::sync::Arc::new(
            backend,
        )));
        let info = NodeInfo {
            hostname: "n".into(),
            ..Default::default()
        };
        let (node, lease) = upsert_node(&objects, "n", &info, "s1", || async {
            Some("10.42.0.0/24".to_string())
        })
        .await
        .unwrap();
        assert_eq!(node["spec"]["podCIDR"], "10.42.0.0/24", "{node}");
        let kv = objects
            .store
            .get(&node_ref("n").key())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            kv.create_revision, kv.mod_revision,
            "the Node was written once"
        );
        assert!(lease.is_none(), "the Lease was created");
        let created = lease_rv(&objects).await;

        // The heartbeat the agent sends right behind its status renews
        // nothing; the one after the quiet time does.
        let mut st = HeartbeatState::default();
        let quiet = Duration::from_millis(300);
        st.stored(lease, quiet, Duration::from_secs(60));
        heartbeat(&objects, "n", "s1", Duration::from_secs(60), &mut st)
            .await
            .unwrap();
        assert_eq!(lease_rv(&objects).await, created);
        tokio::time::sleep(quiet).await;
        heartbeat(&objects, "n", "s1", Duration::from_secs(60), &mut st)
            .await
            .unwrap();
        assert_ne!(lease_rv(&objects).await, created);

        // A status for a Node that exists keeps its CIDR and asks for none.
        let asked = std::cell::Cell::new(false);
        let (again, lease) = upsert_node(&objects, "n", &info, "s1", || async {
            asked.set(true);
            None
        })
        .await
        .unwrap();
        assert!(!asked.get());
        assert_eq!(again["spec"]["podCIDR"], "10.42.0.0/24");
        assert!(lease.is_some(), "the Lease was renewed");
    }

    async fn lease_rv(objects: &Objects) -> Value {
        objects.get(&lease_ref("n")).await.unwrap().unwrap()["metadata"]["resourceVersion"].clone()
    }
}
