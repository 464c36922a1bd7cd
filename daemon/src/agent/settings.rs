//! What the node agent is configured with (flags and config files, as
//! resolved by `config`), for a standalone agent and a server's own.

use crate::credentials::nodepassword;
use crate::host::fsutil::FsError;
use crate::host::nodeinfo;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the node agent (standalone or embedded in a server).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub node_name: Option<String>,
    pub with_node_id: bool,
    pub node_config_dir: PathBuf,
    pub node_ips: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_interval: Duration,
    pub reconnect_backoff_max: Duration,
    /// `None`: no runtime (`--disable-runtime`).
    pub runtime: Option<Runtime>,
    /// `--kubelet-arg` values.
    pub kubelet: crate::agent::kubelet::settings::Settings,
}

/// Which container runtime the node uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Runtime {
    /// containerd started by the agent (K3s's default).
    Containerd,
    /// An existing CRI socket (`--container-runtime-endpoint`).
    Endpoint(PathBuf),
}

impl NodeSettings {
    /// The node name: --node-name or the hostname, plus `-<id>` with
    /// --with-node-id (the id is created on first use and kept).
    pub fn resolve_name(&self) -> Result<String, FsError> {
        let base = self.node_name.clone().unwrap_or_else(nodeinfo::hostname);
        if self.with_node_id {
            let id = nodepassword::load_or_create_node_id(&self.node_config_dir)?;
            Ok(format!("{base}-{id}"))
        } else {
            Ok(base)
        }
    }
}
