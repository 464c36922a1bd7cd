//! The node a kubelet runs pods on: its name and address, where its
//! pods' logs and volumes live, and the Events it records as itself.

use super::events::Events;
use std::path::PathBuf;

/// The node facts a pod needs.
pub struct NodeCtx {
    pub name: String,
    pub ip: String,
    pub events: Events,
    /// What the node can give its pods (unset limits in the downward API).
    pub allocatable: Allocatable,
    pub log_root: PathBuf,
    /// `<data-dir>/agent/pods`: each pod's volumes under its uid.
    pub pods_root: PathBuf,
}

impl NodeCtx {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_root.join(uid)
    }

    /// `/var/log/pods/<ns>_<name>_<uid>`, as upstream names a pod's logs.
    pub fn log_dir(&self, ns: &str, name: &str, uid: &str) -> PathBuf {
        self.log_root.join(format!("{ns}_{name}_{uid}"))
    }

    /// Remove a finished pod's logs and volumes.
    pub fn remove_pod_files(&self, ns: &str, name: &str, uid: &str) {
        let _ = std::fs::remove_dir_all(self.log_dir(ns, name, uid));
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
    }
}

/// What the node can give its pods. A container without a limit sees
/// this as its limit, as upstream's kubelet fills it in.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Allocatable {
    pub cpu_milli: i128,
    pub memory: i128,
    pub ephemeral_storage: i128,
}
