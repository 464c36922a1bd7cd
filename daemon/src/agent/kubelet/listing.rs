//! What the runtime holds for this node's pods, found by the CRI labels
//! the kubelet puts on every sandbox and container (upstream's names), so
//! a restarted agent finds its pods' containers again.

use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use std::collections::HashMap;

pub const LABEL_UID: &str = "io.kubernetes.pod.uid";
pub(super) const LABEL_NAME: &str = "io.kubernetes.pod.name";
pub(super) const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub(super) const LABEL_CONTAINER: &str = "io.kubernetes.container.name";

pub(super) fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// One container as the runtime has it: its latest attempt, and the one
/// before when that one exited (the container's `lastState`).
pub(super) struct Seen {
    pub status: cri::ContainerStatus,
    pub previous: Option<cri::ContainerStatus>,
}

impl Seen {
    fn state(&self) -> i32 {
        self.status.state
    }
    pub fn exited(&self) -> bool {
        self.state() == cri::ContainerState::ContainerExited as i32
    }
    pub fn running(&self) -> bool {
        self.state() == cri::ContainerState::ContainerRunning as i32
    }
    pub fn attempt(&self) -> u32 {
        self.status
            .metadata
            .as_ref()
            .map(|m| m.attempt)
            .unwrap_or(0)
    }
}

/// The containers of the pod with `uid`, every attempt.
pub(super) async fn containers_of(
    rt: &Cri,
    uid: &str,
) -> Result<Vec<cri::Container>, tonic::Status> {
    let filter = cri::ContainerFilter {
        label_selector: labels(&[(LABEL_UID, uid)]),
        ..Default::default()
    };
    let req = cri::ListContainersRequest {
        filter: Some(filter),
    };
    Ok(rt.list_containers(req).await?.containers)
}

/// The sandboxes of the pod with `uid`.
pub(super) async fn sandboxes_of(
    rt: &Cri,
    uid: &str,
) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
    let filter = cri::PodSandboxFilter {
        label_selector: labels(&[(LABEL_UID, uid)]),
        ..Default::default()
    };
    let req = cri::ListPodSandboxRequest {
        filter: Some(filter),
    };
    Ok(rt.list_pod_sandbox(req).await?.items)
}

/// Every sandbox and container on the node, by pod uid, from one list
/// each (upstream's PLEG relist): a sync pass reads this instead of
/// asking the runtime about each pod.
#[derive(Default)]
pub struct Listing {
    sandboxes: HashMap<String, Vec<cri::PodSandbox>>,
    containers: HashMap<String, Vec<cri::Container>>,
}

impl Listing {
    pub async fn fetch(cri_: &Cri) -> Result<Self, tonic::Status> {
        let rt = &cri_;
        let sandboxes = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .items;
        let containers = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .containers;
        Ok(Self::from_parts(sandboxes, containers))
    }

    /// Group what the runtime listed by pod uid; anything without rk3s's
    /// pod labels is not the kubelet's and is left out.
    pub fn from_parts(sandboxes: Vec<cri::PodSandbox>, containers: Vec<cri::Container>) -> Self {
        let mut l = Listing::default();
        for s in sandboxes {
            if let Some(u) = s.labels.get(LABEL_UID).cloned() {
                l.sandboxes.entry(u).or_default().push(s);
            }
        }
        for c in containers {
            if let Some(u) = c.labels.get(LABEL_UID).cloned() {
                l.containers.entry(u).or_default().push(c);
            }
        }
        l
    }

    /// The pod's sandboxes and containers, every attempt.
    pub fn of(&self, uid: &str) -> (Vec<cri::PodSandbox>, Vec<cri::Container>) {
        (
            self.sandboxes.get(uid).cloned().unwrap_or_default(),
            self.containers.get(uid).cloned().unwrap_or_default(),
        )
    }

    /// Whether the runtime holds a sandbox or a container of the pod.
    pub fn knows(&self, uid: &str) -> bool {
        self.sandboxes.contains_key(uid) || self.containers.contains_key(uid)
    }

    /// Every container of this node's pods.
    pub fn containers(&self) -> impl Iterator<Item = &cri::Container> {
        self.containers.values().flatten()
    }

    /// The sandboxes of this node's pods, one list per pod.
    pub fn sandboxes(&self) -> impl Iterator<Item = &[cri::PodSandbox]> {
        self.sandboxes.values().map(Vec::as_slice)
    }
}
