//! The command line of `rk3sd server` and `rk3sd agent` (clap), whose
//! long flag names are also the keys of the config files.

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Parser, Debug)]
#[command(
    args_override_self = true,
    name = "rk3sd",
    version,
    about = "rk3s daemon: a small Kubernetes-style control plane (server) and node agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the control plane (and, unless --disable-agent, this host's node agent).
    Server(Box<ServerArgs>),
    /// Run a node agent that joins a cluster through --server.
    Agent(Box<AgentArgs>),
}

/// Flags both modes take (the server runs an embedded agent).
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommonArgs {
    /// Configuration file [default: /etc/rancher/rk3s/config.toml as root, ~/.rancher/rk3s/config.toml otherwise]; drop-ins are read from <file>.d/*.toml.
    #[arg(long, short = 'c', env = "RK3S_CONFIG_FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory [default: /var/lib/rancher/rk3s as root, ~/.rancher/rk3s otherwise].
    #[arg(long, short = 'd', env = "RK3S_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Admin socket for rk3sctl [default: /run/rk3s/rk3s.sock as root, <data-dir>/rk3s.sock otherwise].
    #[arg(long, env = "RK3S_ADMIN_SOCKET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_socket: Option<PathBuf>,
    /// Cluster token (prefer --token-file or RK3S_TOKEN: a flag is briefly visible in ps).
    #[arg(long, short = 't', env = "RK3S_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding the cluster token.
    #[arg(long, env = "RK3S_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Node name [default: the hostname, lowercased].
    #[arg(long, env = "RK3S_NODE_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Append a persistent unique id (<node-config-dir>/id) to the node name.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub with_node_id: bool,
    /// IP address(es) to advertise for the node (repeatable, comma lists allowed).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_ip: Vec<String>,
    /// Label to add to the node, key=value (repeatable).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_label: Vec<String>,
    /// Directory of the node password and id [default: /etc/rancher/node as root, <data-dir>/agent/etc/rancher/node otherwise].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_config_dir: Option<PathBuf>,
    /// How often the agent renews its node lease [default: 10s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    /// Longest wait between reconnection attempts [default: 30s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_backoff_max: Option<String>,
    /// Use this CRI runtime socket (unix:///path or a path) instead of starting containerd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_runtime_endpoint: Option<String>,
    /// Run no container runtime: the node registers but cannot run pods (tests, benchmarks).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_runtime: bool,
    /// Kubelet setting name=value, as K3s passes them (repeatable): container-log-max-size, container-log-max-files, max-pods, kube-reserved, system-reserved, eviction-hard, node-status-update-frequency, container-log-monitor-interval.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubelet_arg: Vec<String>,
    /// Log at debug level.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub debug: bool,
}

#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonArgs,
    /// The fixed registration address, e.g. https://rk3s.example.com:6443.
    #[arg(long, short = 's', env = "RK3S_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonArgs,
    /// Address the HTTPS API listens on [default: 0.0.0.0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
    /// HTTPS API port [default: 6443].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_listen_port: Option<u16>,
    /// Extra name or IP for the serving certificate (repeatable, comma lists allowed).
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_san: Vec<String>,
    /// Separate secret for agents joining (agents use it as their --token).
    #[arg(long, env = "RK3S_AGENT_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
    /// File holding the agent token.
    #[arg(long, env = "RK3S_AGENT_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_token_file: Option<PathBuf>,
    /// External datastore, postgres://user:pass@host:port/db (default: embedded SQLite). Prefer RK3S_DATASTORE_ENDPOINT or config.toml: a flag is briefly visible in ps.
    #[arg(long, env = "RK3S_DATASTORE_ENDPOINT", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_endpoint: Option<String>,
    /// CA bundle that signed the PostgreSQL server certificate; turns on TLS to the datastore.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate for the datastore (with --datastore-keyfile).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key for the datastore (with --datastore-certfile).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datastore_keyfile: Option<PathBuf>,
    /// A server (or the leader) not renewing its lease for this long is considered gone [default: 15s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect_lease_duration: Option<String>,
    /// How often servers renew their leases and retry the election [default: 2s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_elect_retry_period: Option<String>,
    /// Where to write the admin kubeconfig [default: /etc/rancher/rk3s/rk3s.yaml as root, <data-dir>/rk3s.yaml otherwise].
    #[arg(long, short = 'o')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_kubeconfig: Option<PathBuf>,
    /// File mode of the admin kubeconfig, octal [default: 0600].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_kubeconfig_mode: Option<String>,
    /// Bundled manifest not to deploy, and to remove if it was (repeatable, comma lists): rk3s-crds, cluster-info.
    #[arg(long, value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<String>,
    /// Do not register this server as a node.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "is_false")]
    pub disable_agent: bool,
    /// Time without a heartbeat before a node becomes Ready=Unknown [default: 40s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_monitor_grace_period: Option<String>,
    /// How often node health is checked [default: 5s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_monitor_period: Option<String>,
    /// How often datastore history is compacted [default: 5m].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_interval: Option<String>,
    /// Revisions of history kept by compaction [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_keep: Option<u64>,
    /// Agent registrations checked at once; more are answered 429 and come back with the agents' backoff, so a fleet reconnecting after a restart queues at its agents rather than in this server [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_registrations_inflight: Option<usize>,
    /// Time a client has on :6443 to finish its TLS handshake and send a request's headers, and that a kept-alive connection may sit idle between requests [default: 10s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_header_timeout: Option<String>,
    /// Deadline for a request that is not long-running (watches, upgrades and followed logs are), body included; past it the answer is 504 Timeout [default: 60s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    /// Largest request body accepted; larger ones get 413 without being read [default: 3145728, kube-apiserver's limit].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<usize>,
    /// Pod network: each node gets a block of it as its pod CIDR [default: 10.42.0.0/16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    /// Addresses of Services (ClusterIPs): the first is the kubernetes Service's, the tenth the cluster DNS's [default: 10.43.0.0/16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<String>,
    /// Port range for NodePort Services [default: 30000-32767].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_node_port_range: Option<String>,
    /// Size of each node's pod CIDR block [default: 24].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_cidr_mask_size: Option<u8>,
    /// The longest lifetime a requested service-account token may have [default: no limit].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_max_token_expiration: Option<String>,
    /// Controller manager setting name=value, as K3s passes them (repeatable): horizontal-pod-autoscaler-sync-period, -downscale-stabilization, -tolerance, -cpu-initialization-period, -initial-readiness-delay.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kube_controller_manager_arg: Vec<String>,
}
