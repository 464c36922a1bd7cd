//! A pod's sandbox after it starts, as upstream's kubelet treats it:
//! - a finished pod (Succeeded or Failed) has its sandbox stopped, so its
//!   address and network namespace go back to the node while the pod
//!   object stays (its status keeps the last address, as upstream's does);
//! - a pod that must go on running and whose sandbox died (its pause
//!   process killed, or the host rebooted) gets a new one: its containers
//!   still running in the old one are stopped first, the old sandboxes
//!   are stopped (their network torn down, so host-local's reservation
//!   goes), then a sandbox with the next attempt number is created and the
//!   containers start over in it;
//! - a stopped sandbox that no container refers to any more is removed,
//!   except each pod's newest ([`dead`], run with the container GC).

use super::listing::{labels, uid, Listing, LABEL_NAME, LABEL_NAMESPACE, LABEL_UID};
use super::node::NodeCtx;
use super::resources;
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The sandbox config of `pod`.
pub fn config(pod: &Pod, node: &NodeCtx, attempt: u32) -> cri::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let (ns, name, uid) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
        uid(pod),
    );
    let host_net = spec.host_network.unwrap_or(false);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: ns.clone(),
            attempt,
        }),
        // Host-network pods share the host's UTS namespace: runc refuses
        // to set a hostname there (it is the node's already).
        hostname: if host_net {
            String::new()
        } else {
            spec.hostname.clone().unwrap_or_else(|| name.clone())
        },
        log_directory: node.log_dir(&ns, &name, &uid).display().to_string(),
        labels: labels(&[
            (LABEL_UID, &uid),
            (LABEL_NAME, &name),
            (LABEL_NAMESPACE, &ns),
        ]),
        port_mappings: resources::port_mappings(&spec),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(&spec)),
                privileged: resources::privileged(&spec),
                ..Default::default()
            }),
            // Admission let only allowed ones through.
            sysctls: crate::kube::sysctls::of(pod),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's namespaces: its own, or the host's where it asks for them.
pub fn namespaces(spec: &PodSpec) -> cri::NamespaceOption {
    let mode = |host: Option<bool>, default: cri::NamespaceMode| {
        if host.unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else {
            default as i32
        }
    };
    let pid_default = if spec.share_process_namespace.unwrap_or(false) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: mode(spec.host_network, cri::NamespaceMode::Pod),
        pid: mode(spec.host_pid, pid_default),
        ipc: mode(spec.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

pub fn ready(s: &cri::PodSandbox) -> bool {
    s.state == cri::PodSandboxState::SandboxReady as i32
}

fn attempt(s: &cri::PodSandbox) -> u32 {
    s.metadata.as_ref().map_or(0, |m| m.attempt)
}

/// The attempt number of a new sandbox: one past the highest so far. Not
/// the count: GC may have removed older ones, and the runtime refuses a
/// name (which carries the attempt) that a kept sandbox still has.
pub fn next_attempt(sandboxes: &[cri::PodSandbox]) -> u32 {
    sandboxes.iter().map(|s| attempt(s) + 1).max().unwrap_or(0)
}

/// Stop sandbox `id`: the runtime kills what still runs in it and tears
/// down its network, which releases its address. A stopped one may be
/// stopped again.
pub async fn stop(cri_: &Cri, id: &str) -> Result<(), tonic::Status> {
    cri_.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .map(|_| ())
}

/// Stop sandbox `id` and remove it.
pub async fn remove(cri_: &Cri, id: &str) -> Result<(), tonic::Status> {
    stop(cri_, id).await?;
    cri_.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    })
    .await
    .map(|_| ())
}

/// Stop sandbox `id`; a failure is logged and the next pass tries again.
async fn stop_logged(cri_: &Cri, id: &str) {
    if let Err(e) = stop(cri_, id).await {
        tracing::warn!(sandbox = %id, error = %e.message(), "pod sandbox not stopped; trying again next pass");
    }
}

/// Stop the finished pod's sandboxes that still run. Its containers have
/// all exited by then.
pub async fn finish(cri_: &Cri, sandboxes: &[cri::PodSandbox]) {
    for s in sandboxes.iter().filter(|s| ready(s)) {
        stop_logged(cri_, &s.id).await;
    }
}

/// Stop every sandbox of a pod whose sandbox is being replaced, ready or
/// not: for one that died, this is what releases its address.
pub async fn retire(cri_: &Cri, sandboxes: &[cri::PodSandbox]) {
    for s in sandboxes {
        stop_logged(cri_, &s.id).await;
    }
}

/// Whether a container-stop sent for a sandbox replacement is still
/// awaited: sent less than the grace period (plus the runtime's own
/// margin) ago. After that it is sent again, so a lost stop cannot wedge
/// the pod.
pub fn stop_pending(sent: Option<Instant>, grace: i64) -> bool {
    sent.is_some_and(|t| t.elapsed() < Duration::from_secs(grace.max(0) as u64 + 10))
}

/// The stopped sandboxes to remove from `listing`: those that no
/// container refers to, except the newest of each pod (upstream keeps it
/// for the pod's status). Ready sandboxes are never picked.
pub fn dead(listing: &Listing) -> Vec<&cri::PodSandbox> {
    let used: HashSet<&str> = listing
        .containers()
        .map(|c| c.pod_sandbox_id.as_str())
        .collect();
    let mut out = Vec::new();
    for sandboxes in listing.sandboxes() {
        let newest = sandboxes.iter().max_by_key(|s| (s.created_at, attempt(s)));
        out.extend(sandboxes.iter().filter(|s| {
            !ready(s) && !used.contains(s.id.as_str()) && newest.map(|n| &n.id) != Some(&s.id)
        }));
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Remove what [`dead`] picks.
pub async fn collect(cri_: &Cri, listing: &Listing) {
    for s in dead(listing) {
        if let Err(e) = remove(cri_, &s.id).await {
            tracing::debug!(sandbox = %s.id, error = %e.message(), "dead sandbox not removed; trying again next pass");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, uid: &str, attempt: u32, created: i64, ready: bool) -> cri::PodSandbox {
        cri::PodSandbox {
            id: id.into(),
            metadata: Some(cri::PodSandboxMetadata {
                attempt,
                uid: uid.into(),
                ..Default::default()
            }),
            state: if ready {
                cri::PodSandboxState::SandboxReady as i32
            } else {
                cri::PodSandboxState::SandboxNotready as i32
            },
            created_at: created,
            labels: [(LABEL_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        }
    }

    fn container(id: &str, uid: &str, sandbox: &str) -> cri::Container {
        cri::Container {
            id: id.into(),
            pod_sandbox_id: sandbox.into(),
            labels: [(LABEL_UID.to_string(), uid.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn keeps_ready_used_and_newest_sandboxes() {
        let listing = Listing::from_parts(
            vec![
                // Pod a: two dead ones, one still holding a container,
                // and the ready one that replaced them.
                sandbox("a0", "a", 0, 1, false),
                sandbox("a1", "a", 1, 2, false),
                sandbox("a2", "a", 2, 3, true),
                // Pod b: finished, its only sandbox stopped.
                sandbox("b0", "b", 0, 1, false),
                // Pod c: two dead, none used; the newest stays.
                sandbox("c0", "c", 0, 1, false),
                sandbox("c1", "c", 1, 2, false),
            ],
            vec![container("x", "a", "a1"), container("y", "a", "a2")],
        );
        let ids: Vec<&str> = dead(&listing).iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a0", "c0"]);
    }

    #[test]
    fn a_new_attempt_is_past_every_kept_one() {
        assert_eq!(next_attempt(&[]), 0);
        // 0 was collected; 1 and 3 remain: the next is 4, not 2.
        let kept = [
            sandbox("1", "a", 1, 1, false),
            sandbox("3", "a", 3, 2, false),
        ];
        assert_eq!(next_attempt(&kept), 4);
    }

    #[test]
    fn a_stop_is_awaited_for_the_grace_period() {
        assert!(!stop_pending(None, 30));
        assert!(stop_pending(Some(Instant::now()), 0));
        let long_ago = Instant::now().checked_sub(Duration::from_secs(41));
        assert!(!stop_pending(long_ago, 30));
    }
}
