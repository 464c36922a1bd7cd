//! Node operations an operator asks for: list, show, forget, rotate the
//! password. The admin socket calls these; the Kubernetes API's Node delete
//! will call the same `forget`.

use crate::credentials::nodepassword;
use crate::datastore::objects::parse_time;
use crate::registry::admission::Deletions;
use crate::registry::{kinds, DeleteOptions, KubeError, ResourceType};
use crate::server::lifecycle::{self, lease_ref, node_ref, ready_status, ANNOTATION_CONNECTED_TO};
use crate::server::nodepasswords as secrets;
use crate::server::supervisor::Supervisor;
use rk3s_api::admin::{Address, Condition, ForgetResult, NodeDetail, NodeSummary, RotateResult};
use rk3s_api::tunnel::{SecretString, ServerMessage};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.pointer("/metadata/annotations")?.get(key)?.as_str()
}

/// The server holding `name`'s tunnel, empty if none. A tunnel on this
/// server is authoritative; otherwise the Lease's record counts only while
/// the Lease is fresh (the server that wrote it may have died).
fn connected_server(sv: &Supervisor, name: &str, lease: Option<&Value>) -> String {
    if sv.tunnels.get(name).is_some() {
        return sv.server_name.clone();
    }
    let grace = chrono::Duration::from_std(sv.grace_period).unwrap_or_default();
    let fresh = lease
        .and_then(lifecycle::lease_renewed)
        .is_some_and(|t| chrono::Utc::now() - t <= grace);
    match lease.and_then(|l| annotation(l, ANNOTATION_CONNECTED_TO)) {
        Some(s) if fresh => s.to_string(),
        _ => String::new(),
    }
}

fn summarize(sv: &Supervisor, node: &Value, lease: Option<&Value>) -> NodeSummary {
    let name = str_at(node, "/metadata/name").to_string();
    let status = match ready_status(node) {
        Some("True") => "Ready",
        Some("False") => "NotReady",
        _ => "Unknown",
    };
    let roles = crate::registry::core::node_roles(node);
    let renewed = lease.and_then(lifecycle::lease_renewed);
    let connected = connected_server(sv, &name, lease);
    let internal_ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("")
        .to_string();
    let created = parse_time(str_at(node, "/metadata/creationTimestamp"));
    NodeSummary {
        name,
        status: status.into(),
        roles,
        connected,
        internal_ip,
        // rk3s's own release (the Kubernetes one is kubectl's VERSION).
        version: node
            .pointer("/metadata/labels")
            .and_then(|l| l.get(rk3s_api::VERSION_LABEL))
            .and_then(Value::as_str)
            .unwrap_or_else(|| str_at(node, "/status/nodeInfo/kubeletVersion"))
            .to_string(),
        last_heartbeat: renewed.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        age_seconds: created
            .map(|c| (chrono::Utc::now() - c).num_seconds().max(0))
            .unwrap_or(0),
        unschedulable: node
            .pointer("/spec/unschedulable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

pub async fn list(sv: &Supervisor) -> Result<Vec<NodeSummary>, KubeError> {
    let (_, nodes) = sv.api.objects.list("nodes", None).await?;
    let (_, leases) = sv
        .api
        .objects
        .list("leases", Some(lifecycle::LEASE_NAMESPACE))
        .await?;
    let by_name: BTreeMap<&str, &Value> = leases
        .iter()
        .map(|l| (str_at(l, "/metadata/name"), l))
        .collect();
    Ok(nodes
        .iter()
        .map(|n| summarize(sv, n, by_name.get(str_at(n, "/metadata/name")).copied()))
        .collect())
}

fn not_found(name: &str) -> KubeError {
    KubeError::NotFoundMessage(format!(
        "node {name:?} not found; `rk3sctl node list` shows the known nodes"
    ))
}

pub async fn show(sv: &Supervisor, name: &str) -> Result<NodeDetail, KubeError> {
    let node = sv
        .api
        .objects
        .get(&node_ref(name))
        .await?
        .ok_or_else(|| not_found(name))?;
    let lease = sv.api.objects.get(&lease_ref(name)).await?;
    let secret = sv.api.objects.get(&secrets::secret_ref(name)).await?;
    let (password_set, pending) = secret
        .as_ref()
        .map(secrets::describe)
        .unwrap_or((None, false));
    let labels = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    let conditions = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| Condition {
                    type_: str_at(c, "/type").into(),
                    status: str_at(c, "/status").into(),
                    reason: str_at(c, "/reason").into(),
                    message: str_at(c, "/message").into(),
                    last_heartbeat_time: c["lastHeartbeatTime"].as_str().map(str::to_string),
                    last_transition_time: c["lastTransitionTime"].as_str().map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| Address {
                    type_: str_at(x, "/type").into(),
                    address: str_at(x, "/address").into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(NodeDetail {
        summary: summarize(sv, &node, lease.as_ref()),
        labels,
        conditions,
        addresses,
        os_image: str_at(&node, "/status/nodeInfo/osImage").into(),
        kernel_version: str_at(&node, "/status/nodeInfo/kernelVersion").into(),
        architecture: str_at(&node, "/status/nodeInfo/architecture").into(),
        created: node["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_string),
        password_set,
        password_rotation_pending: pending,
    })
}

/// Delete the node, its Lease and its password secret, and close its
/// tunnel. A connected node is refused unless `force`. The Node goes
/// through the registry like any delete; [`NodeDeletions`] removes the
/// rest, here also for a node whose Node object is gone already.
pub async fn forget(sv: &Supervisor, name: &str, force: bool) -> Result<ForgetResult, KubeError> {
    if !force {
        let lease = sv.api.objects.get(&lease_ref(name)).await?;
        if !connected_server(sv, name, lease.as_ref()).is_empty() {
            return Err(KubeError::ConflictMessage(format!(
                "node {name:?} is connected; stop its agent first, or use --force (it will re-register at once if its agent keeps running)"
            )));
        }
    }
    let tunnel_closed = sv.tunnels.close(name);
    let lease_deleted = sv.api.objects.get(&lease_ref(name)).await?.is_some();
    let password_secret_deleted = sv
        .api
        .objects
        .get(&secrets::secret_ref(name))
        .await?
        .is_some();
    let nodes = kinds::NODES.resource_type();
    let node_deleted = match sv
        .api
        .registry
        .delete(&nodes, None, name, &DeleteOptions::default())
        .await
    {
        Ok((_, gone)) => gone,
        Err(KubeError::NotFound(_)) => false,
        Err(e) => return Err(e),
    };
    forget_rest(sv, name).await?;
    if !(node_deleted || lease_deleted || password_secret_deleted || tunnel_closed) {
        return Err(not_found(name));
    }
    tracing::info!(
        node = name,
        node_deleted,
        lease_deleted,
        password_secret_deleted,
        tunnel_closed,
        "node forgotten"
    );
    Ok(ForgetResult {
        name: name.to_string(),
        node_deleted,
        lease_deleted,
        password_secret_deleted,
        tunnel_closed,
    })
}

/// What goes with a node: its tunnel, pod CIDR, Lease and password
/// Secret. Gone already is fine.
async fn forget_rest(sv: &Supervisor, name: &str) -> Result<(), KubeError> {
    sv.tunnels.close(name);
    if let Err(e) = crate::server::ipam::release(&sv.api.objects.store, &sv.pod_cidrs, name).await {
        tracing::warn!(node = name, error = %e, "could not release the node's pod CIDR");
    }
    lifecycle::delete_lease(&sv.api.objects, name).await?;
    let secret = secrets::secret_ref(name);
    let r = sv
        .api
        .registry
        .delete(
            &kinds::SECRETS.resource_type(),
            secret.namespace.as_deref(),
            &secret.name,
            &DeleteOptions::default(),
        )
        .await;
    match r {
        Ok(_) | Err(KubeError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A Node deleted through the API (`kubectl delete node`) takes with it
/// what `rk3sctl node forget` removes.
pub struct NodeDeletions(pub std::sync::Weak<Supervisor>);

#[async_trait::async_trait]
impl Deletions for NodeDeletions {
    async fn deleted(&self, rt: &ResourceType, obj: &Value) {
        if !rt.is(&kinds::NODES) {
            return;
        }
        let (Some(sv), Some(name)) = (
            self.0.upgrade(),
            obj.pointer("/metadata/name").and_then(Value::as_str),
        ) else {
            return;
        };
        if let Err(e) = forget_rest(&sv, name).await {
            tracing::warn!(node = name, error = %e, "a deleted node's lease, password or pod CIDR not removed");
        }
    }
}

const ROTATION_TIMEOUT: Duration = Duration::from_secs(15);

/// Rotate a connected node's password: record the new hash as pending,
/// send the password, and swap only once the agent confirms it is on disk.
pub async fn rotate_password(sv: &Supervisor, name: &str) -> Result<RotateResult, KubeError> {
    if sv.api.objects.get(&node_ref(name)).await?.is_none() {
        return Err(not_found(name));
    }
    let session = sv.tunnels.get(name).ok_or_else(|| {
        KubeError::ConflictMessage(format!(
            "node {name:?} is not connected to this server ({}); its agent must be online to receive a new password",
            sv.server_name
        ))
    })?;
    let password = nodepassword::generate();
    let pw = password.clone();
    let new_hash = secrets::blocking(move || nodepassword::hash(&pw)).await;
    if !secrets::set_pending(&sv.api.registry, name, &new_hash).await? {
        return Err(KubeError::NotFoundMessage(format!(
            "node {name:?} has no password secret"
        )));
    }
    let rotation_id = uuid::Uuid::new_v4().to_string();
    let reply = session.await_rotation(&rotation_id);
    let msg = ServerMessage::RotatePassword {
        rotation_id,
        password: SecretString(password),
    };
    let unconfirmed = || {
        KubeError::Unavailable(format!(
            "node {name:?} did not confirm the new password; nothing is lost: the rotation completes or is rolled back when the node next connects"
        ))
    };
    session
        .tx
        .send(Box::new(msg))
        .await
        .map_err(|_| unconfirmed())?;
    let r = secrets::secret_ref(name);
    match tokio::time::timeout(ROTATION_TIMEOUT, reply).await {
        Ok(Ok(Ok(()))) => {
            if std::env::var_os("RK3S_TEST_EXIT_BEFORE_PASSWORD_SWAP").is_some() {
                // Test hook: die between the agent's ack and the swap.
                std::process::exit(3);
            }
            secrets::settle(&sv.api.registry, &r, Some(&new_hash), Some(&new_hash)).await?;
            let (set, _) = sv
                .api
                .objects
                .get(&r)
                .await?
                .as_ref()
                .map(secrets::describe)
                .unwrap_or((None, false));
            tracing::info!(node = name, "node password rotated");
            Ok(RotateResult {
                name: name.to_string(),
                password_set: set.unwrap_or_default(),
            })
        }
        Ok(Ok(Err(agent_error))) => {
            secrets::settle(&sv.api.registry, &r, Some(&new_hash), None).await?;
            Err(KubeError::Internal(format!(
                "node {name:?} could not store the new password ({agent_error}); it keeps its current password"
            )))
        }
        _ => Err(unconfirmed()),
    }
}
