//! What a server is configured with (flags and config files, as resolved
//! by `config`).

use crate::credentials::token::Token;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub port: u16,
    pub tls_sans: Vec<String>,
    pub token: Option<Token>,
    pub agent_token: Option<Token>,
    pub kubeconfig: PathBuf,
    pub kubeconfig_mode: u32,
    /// `None`: embedded SQLite under the data dir.
    pub datastore_endpoint: Option<String>,
    pub datastore_tls: crate::datastore::TlsFiles,
    /// Bundled manifests turned off (`--disable`).
    pub disable: Vec<String>,
    pub cluster: super::cluster::Timings,
    /// This server's node name (`--node-name`, else the hostname).
    pub node_name: String,
    /// `--node-ip`: the addresses this server is reached at and named in
    /// its certificate; empty: the host's first address.
    pub node_ips: Vec<String>,
    /// How often agents send heartbeats (`--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    pub grace_period: Duration,
    pub monitor_period: Duration,
    pub compaction_interval: Duration,
    pub compaction_keep: u64,
    pub max_registrations_inflight: usize,
    /// `--request-header-timeout`, `--request-timeout`, `--max-request-body-bytes`.
    pub limits: super::https::Limits,
    /// `--service-account-max-token-expiration`.
    pub max_token_expiration: Option<Duration>,
    /// `--cluster-cidr`, `--node-cidr-mask-size`.
    pub ipam: super::ipam::Ipam,
    /// `--service-cidr`, `--service-node-port-range`.
    pub services: crate::registry::ranges::ServiceRanges,
    /// `--kube-controller-manager-arg`.
    pub controllers: crate::controllers::Settings,
}
