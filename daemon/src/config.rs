//! Command line and configuration files.
//!
//! Layers, lowest first: built-in defaults < `config.toml` <
//! `config.toml.d/*.toml` (lexical order) < `RK3S_*` environment < flags.
//! File keys are the long flag names (`token`, `node-name`, `tls-san`...).
//! An unknown key or a value of the wrong type is an error naming the file
//! and the key. Each layer is turned into a JSON map, the maps are merged
//! key by key, and the result is deserialized once, so every layer goes
//! through the same parser.

use crate::token::{Token, TokenError};
use clap::{Args, CommandFactory, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {cause}")]
    Read {
        file: PathBuf,
        cause: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: unknown key '{key}'{hint}; keys are the long flag names of `rk3sd {mode}` (see `rk3sd {mode} --help`)")]
    UnknownKey {
        file: PathBuf,
        key: String,
        hint: String,
        mode: &'static str,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{origin}: {cause}")]
    Token { origin: String, cause: TokenError },
}

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
}

/// Parse `500ms`, `10s`, `2m`, `1h30m` (humantime's forms, as Go's
/// durations mostly read) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs < 1e9 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("'{s}' must be a positive duration")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("'{s}' is not a duration (examples: 500ms, 10s, 5m): {e}"))?,
    };
    if d.is_zero() {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(d)
}

/// Long flag names a mode accepts: exactly the keys its config files may use.
fn allowed_keys(mode: &'static str) -> Vec<String> {
    let cli = Cli::command();
    let sub = cli.find_subcommand(mode).expect("subcommand exists");
    sub.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|k| k != "config" && k != "help" && k != "version")
        .collect()
}

fn closest<'a>(key: &str, candidates: &'a [String]) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    candidates
        .iter()
        .map(|c| (dist(key, c), c))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, c)| c.as_str())
}

/// The config files to read, in order: the main file, then its drop-ins.
fn config_files(explicit: Option<&Path>) -> Result<Vec<PathBuf>, ConfigError> {
    let main = explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(rk3s_api::paths::default_config_file);
    let mut files = Vec::new();
    if main.exists() {
        files.push(main.clone());
    } else if explicit.is_some() {
        return Err(ConfigError::Read {
            file: main,
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    let dropin = PathBuf::from(format!("{}.d", main.display()));
    if let Ok(rd) = std::fs::read_dir(&dropin) {
        let mut extra: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        extra.sort();
        files.extend(extra);
    }
    Ok(files)
}

/// Read one file, check its keys, convert it to a JSON map.
fn file_layer<T: for<'de> Deserialize<'de>>(
    file: &Path,
    mode: &'static str,
    allowed: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|cause| ConfigError::Read {
        file: file.to_path_buf(),
        cause,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    for key in table.keys() {
        if !allowed.iter().any(|a| a == key) {
            let hint = closest(key, allowed)
                .map(|c| format!(" (did you mean '{c}'?)"))
                .unwrap_or_default();
            return Err(ConfigError::UnknownKey {
                file: file.to_path_buf(),
                key: key.clone(),
                hint,
                mode,
            });
        }
    }
    // Check the types with the real struct so the message names the key.
    for (key, value) in &table {
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        if let Err(e) = T::deserialize(toml::Value::Table(one)) {
            return Err(ConfigError::Parse {
                file: file.to_path_buf(),
                message: format!("key '{key}': {e}"),
            });
        }
    }
    match serde_json::to_value(&table) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(ConfigError::Parse {
            file: file.to_path_buf(),
            message: "cannot convert to a configuration map".into(),
        }),
    }
}

/// Merge files under command-line/env values and deserialize the result.
pub fn layered<T>(
    mode: &'static str,
    cli: &T,
    explicit_config: Option<&Path>,
) -> Result<T, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let allowed = allowed_keys(mode);
    let mut merged = serde_json::Map::new();
    for file in config_files(explicit_config)? {
        merged.extend(file_layer::<T>(&file, mode, &allowed)?);
    }
    if let Ok(serde_json::Value::Object(flags)) = serde_json::to_value(cli) {
        merged.extend(flags);
    }
    serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| ConfigError::Invalid {
        origin: "configuration".into(),
        message: e.to_string(),
    })
}

fn duration_of(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|message| ConfigError::Invalid {
            origin: format!("--{key}"),
            message,
        }),
    }
}

/// Resolve the token from `--token`/`RK3S_TOKEN`, else `--token-file`.
fn token_from(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Token>, ConfigError> {
    if let Some(v) = value {
        return Token::parse(v)
            .map(Some)
            .map_err(|cause| ConfigError::Token {
                origin: format!("--{flag}"),
                cause,
            });
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            file: path.clone(),
            cause,
        })?;
        return Token::parse(&text)
            .map(Some)
            .map_err(|cause| ConfigError::Token {
                origin: path.display().to_string(),
                cause,
            });
    }
    Ok(None)
}

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
    pub kubelet: crate::kubelet::settings::Settings,
}

/// Which container runtime the node uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Runtime {
    /// containerd started by the agent (K3s's default).
    Containerd,
    /// An existing CRI socket (`--container-runtime-endpoint`).
    Endpoint(PathBuf),
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub server_url: String,
    pub token: Token,
    pub node: NodeSettings,
    pub debug: bool,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub bind_address: IpAddr,
    pub port: u16,
    pub tls_sans: Vec<String>,
    pub token: Option<Token>,
    pub agent_token: Option<Token>,
    pub disable_agent: bool,
    pub kubeconfig: PathBuf,
    pub kubeconfig_mode: u32,
    /// `None`: embedded SQLite under the data dir.
    pub datastore_endpoint: Option<String>,
    pub datastore_tls: crate::datastore::TlsFiles,
    /// Bundled manifests turned off (`--disable`).
    pub disable: Vec<String>,
    pub cluster: crate::cluster::Timings,
    pub node: NodeSettings,
    pub grace_period: Duration,
    pub monitor_period: Duration,
    pub compaction_interval: Duration,
    pub compaction_keep: u64,
    pub max_registrations_inflight: usize,
    /// `--request-header-timeout`, `--request-timeout`, `--max-request-body-bytes`.
    pub limits: HttpLimits,
    /// `--service-account-max-token-expiration`.
    pub max_token_expiration: Option<Duration>,
    /// `--cluster-cidr`, `--node-cidr-mask-size`.
    pub ipam: crate::ipam::Ipam,
    /// `--service-cidr`, `--service-node-port-range`.
    pub services: crate::registry::ranges::ServiceRanges,
    pub debug: bool,
}

fn node_settings(c: &CommonArgs, data_dir: &Path) -> Result<NodeSettings, ConfigError> {
    let mut labels = BTreeMap::new();
    for l in &c.node_label {
        let (k, v) = l.split_once('=').ok_or_else(|| ConfigError::Invalid {
            origin: "--node-label".into(),
            message: format!("'{l}' is not key=value"),
        })?;
        if k.is_empty() {
            return Err(ConfigError::Invalid {
                origin: "--node-label".into(),
                message: format!("'{l}' has an empty key"),
            });
        }
        labels.insert(k.to_string(), v.to_string());
    }
    for ip in &c.node_ip {
        ip.parse::<IpAddr>().map_err(|_| ConfigError::Invalid {
            origin: "--node-ip".into(),
            message: format!("'{ip}' is not an IP address"),
        })?;
    }
    if let Some(n) = &c.node_name {
        crate::names::validate_node_name(&n.to_ascii_lowercase()).map_err(|e| {
            ConfigError::Invalid {
                origin: "--node-name".into(),
                message: e.to_string(),
            }
        })?;
    }
    Ok(NodeSettings {
        node_name: c.node_name.as_ref().map(|n| n.to_ascii_lowercase()),
        with_node_id: c.with_node_id,
        node_config_dir: c
            .node_config_dir
            .clone()
            .unwrap_or_else(|| rk3s_api::paths::default_node_config_dir(data_dir)),
        node_ips: c.node_ip.clone(),
        labels,
        heartbeat_interval: duration_of(
            "heartbeat-interval",
            &c.heartbeat_interval,
            Duration::from_secs(10),
        )?,
        reconnect_backoff_max: duration_of(
            "reconnect-backoff-max",
            &c.reconnect_backoff_max,
            Duration::from_secs(30),
        )?,
        runtime: match (&c.container_runtime_endpoint, c.disable_runtime) {
            (Some(_), true) => {
                return Err(ConfigError::Invalid {
                    origin: "--container-runtime-endpoint".into(),
                    message: "cannot be combined with --disable-runtime".into(),
                })
            }
            (_, true) => None,
            (Some(e), false) => {
                let path = e.strip_prefix("unix://").unwrap_or(e);
                if !path.starts_with('/') {
                    return Err(ConfigError::Invalid {
                        origin: "--container-runtime-endpoint".into(),
                        message: format!("{e:?} is not a Unix socket path (unix:///run/containerd/containerd.sock)"),
                    });
                }
                Some(Runtime::Endpoint(PathBuf::from(path)))
            }
            (None, false) => Some(Runtime::Containerd),
        },
        kubelet: crate::kubelet::settings::parse(&c.kubelet_arg).map_err(|message| {
            ConfigError::Invalid {
                origin: "--kubelet-arg".into(),
                message,
            }
        })?,
    })
}

fn dirs(c: &CommonArgs) -> (PathBuf, PathBuf) {
    let data_dir = c
        .data_dir
        .clone()
        .unwrap_or_else(rk3s_api::paths::default_data_dir);
    let socket = c
        .admin_socket
        .clone()
        .unwrap_or_else(|| rk3s_api::paths::default_admin_socket(&data_dir));
    (data_dir, socket)
}

fn cluster_timings(a: &ServerArgs) -> Result<crate::cluster::Timings, ConfigError> {
    let t = crate::cluster::Timings {
        lease_duration: duration_of(
            "leader-elect-lease-duration",
            &a.leader_elect_lease_duration,
            Duration::from_secs(15),
        )?,
        retry_period: duration_of(
            "leader-elect-retry-period",
            &a.leader_elect_retry_period,
            Duration::from_secs(2),
        )?,
    };
    if t.retry_period * 2 > t.lease_duration {
        return Err(ConfigError::Invalid {
            origin: "--leader-elect-retry-period".into(),
            message: format!(
                "{:?} must be at most half of --leader-elect-lease-duration ({:?}), or leases expire between renewals",
                t.retry_period, t.lease_duration
            ),
        });
    }
    Ok(t)
}

/// What one client may take of :6443 (served by `https`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HttpLimits {
    /// `--request-header-timeout`: to finish the TLS handshake, to send a
    /// request's headers, and to start the next request on a kept-alive
    /// connection.
    pub header_timeout: Duration,
    /// `--request-timeout`: a request that is not long-running (a watch, an
    /// upgrade, a followed log) must be read and answered within this.
    pub request_timeout: Duration,
    /// `--max-request-body-bytes`.
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    /// kube-apiserver's: 60 s per request, 3 MiB per body; Go's servers
    /// give headers 10 s in K3s's supervisor.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 3 * 1024 * 1024,
        }
    }
}

fn http_limits(a: &ServerArgs) -> Result<HttpLimits, ConfigError> {
    let d = HttpLimits::default();
    let max_body_bytes = a.max_request_body_bytes.unwrap_or(d.max_body_bytes);
    if max_body_bytes < 64 * 1024 {
        return Err(ConfigError::Invalid {
            origin: "--max-request-body-bytes".into(),
            message: format!(
                "{max_body_bytes} is too small: kubectl's own objects need at least 65536"
            ),
        });
    }
    Ok(HttpLimits {
        // parse_duration refuses zero and negatives.
        header_timeout: duration_of(
            "request-header-timeout",
            &a.request_header_timeout,
            d.header_timeout,
        )?,
        request_timeout: duration_of("request-timeout", &a.request_timeout, d.request_timeout)?,
        max_body_bytes,
    })
}

impl ServerConfig {
    pub fn resolve(cli: &ServerArgs) -> Result<Self, ConfigError> {
        let a: ServerArgs = layered("server", cli, cli.common.config.as_deref())?;
        let (data_dir, admin_socket) = dirs(&a.common);
        let bind = a.bind_address.as_deref().unwrap_or("0.0.0.0");
        let bind_address = bind.parse().map_err(|_| ConfigError::Invalid {
            origin: "--bind-address".into(),
            message: format!("'{bind}' is not an IP address"),
        })?;
        let keep = a.compaction_keep.unwrap_or(1000);
        if keep < 10 {
            return Err(ConfigError::Invalid {
                origin: "--compaction-keep".into(),
                message: "must be at least 10".into(),
            });
        }
        let inflight = a.max_registrations_inflight.unwrap_or(256);
        if inflight == 0 {
            return Err(ConfigError::Invalid {
                origin: "--max-registrations-inflight".into(),
                message: "must be at least 1".into(),
            });
        }
        let limits = http_limits(&a)?;
        Ok(Self {
            max_registrations_inflight: inflight,
            limits,
            node: node_settings(&a.common, &data_dir)?,
            token: token_from("token", &a.common.token, &a.common.token_file)?,
            agent_token: token_from("agent-token", &a.agent_token, &a.agent_token_file)?,
            bind_address,
            port: a.https_listen_port.unwrap_or(6443),
            tls_sans: a.tls_san.clone(),
            disable_agent: a.disable_agent,
            datastore_endpoint: match a.datastore_endpoint.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(e) if e.starts_with("postgres://") || e.starts_with("postgresql://") => Some(e.to_string()),
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        origin: "--datastore-endpoint".into(),
                        message: "only PostgreSQL is supported as an external datastore: postgres://user:pass@host:port/db (leave it unset for embedded SQLite)".into(),
                    })
                }
            },
            datastore_tls: crate::datastore::TlsFiles {
                ca: a.datastore_cafile.clone(),
                cert: a.datastore_certfile.clone(),
                key: a.datastore_keyfile.clone(),
            },
            cluster: cluster_timings(&a)?,
            disable: {
                let unknown = crate::addons::unknown_disables(&a.disable);
                if !unknown.is_empty() {
                    return Err(ConfigError::Invalid {
                        origin: "--disable".into(),
                        message: format!(
                            "no bundled manifest named {} (bundled: {})",
                            unknown.join(", "),
                            crate::addons::BUNDLED.iter().map(|(n, _)| n.trim_end_matches(".yaml")).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                a.disable.clone()
            },
            kubeconfig: a
                .write_kubeconfig
                .clone()
                .unwrap_or_else(|| crate::kubeconfig::default_path(&data_dir)),
            kubeconfig_mode: crate::kubeconfig::parse_mode(
                a.write_kubeconfig_mode.as_deref().unwrap_or("0600"),
            )
            .map_err(|message| ConfigError::Invalid {
                origin: "--write-kubeconfig-mode".into(),
                message,
            })?,
            grace_period: duration_of(
                "node-monitor-grace-period",
                &a.node_monitor_grace_period,
                Duration::from_secs(40),
            )?,
            monitor_period: duration_of(
                "node-monitor-period",
                &a.node_monitor_period,
                Duration::from_secs(5),
            )?,
            compaction_interval: duration_of(
                "compaction-interval",
                &a.compaction_interval,
                Duration::from_secs(300),
            )?,
            compaction_keep: keep,
            ipam: crate::ipam::Ipam::parse(
                a.cluster_cidr.as_deref().unwrap_or("10.42.0.0/16"),
                a.node_cidr_mask_size.unwrap_or(24),
            )
            .map_err(|message| ConfigError::Invalid {
                origin: "--cluster-cidr/--node-cidr-mask-size".into(),
                message,
            })?,
            services: crate::registry::ranges::ServiceRanges::parse(
                a.service_cidr.as_deref().unwrap_or("10.43.0.0/16"),
                a.service_node_port_range
                    .as_deref()
                    .unwrap_or("30000-32767"),
            )
            .map_err(|message| ConfigError::Invalid {
                origin: "--service-cidr/--service-node-port-range".into(),
                message,
            })?,
            max_token_expiration: match &a.service_account_max_token_expiration {
                None => None,
                Some(_) => Some(duration_of(
                    "service-account-max-token-expiration",
                    &a.service_account_max_token_expiration,
                    Duration::ZERO,
                )?),
            },
            debug: a.common.debug,
            data_dir,
            admin_socket,
        })
    }
}

impl AgentConfig {
    pub fn resolve(cli: &AgentArgs) -> Result<Self, ConfigError> {
        let a: AgentArgs = layered("agent", cli, cli.common.config.as_deref())?;
        let (data_dir, admin_socket) = dirs(&a.common);
        let server = a.server.clone().ok_or_else(|| ConfigError::Invalid {
            origin: "--server".into(),
            message: "an agent needs the server's registration address (--server https://host:6443, RK3S_URL, or `server` in config.toml)".into(),
        })?;
        let server_url = normalize_server_url(&server)?;
        let token = token_from("token", &a.common.token, &a.common.token_file)?.ok_or_else(|| {
            ConfigError::Invalid {
                origin: "--token".into(),
                message: "an agent needs the cluster token (--token-file, RK3S_TOKEN, or `token`/`token-file` in config.toml); \
                          the server writes it to <data-dir>/server/token"
                    .into(),
            }
        })?;
        Ok(Self {
            node: node_settings(&a.common, &data_dir)?,
            debug: a.common.debug,
            data_dir,
            admin_socket,
            server_url,
            token,
        })
    }
}

/// `host`, `host:port` or `https://host:port` → `https://host:port`.
pub fn normalize_server_url(s: &str) -> Result<String, ConfigError> {
    let bad = |m: &str| ConfigError::Invalid {
        origin: "--server".into(),
        message: format!("'{s}' {m} (expected https://host:port)"),
    };
    let rest = if let Some(r) = s.strip_prefix("https://") {
        r
    } else if s.starts_with("http://") {
        return Err(bad("uses http; the server only speaks https"));
    } else if s.contains("://") {
        return Err(bad("has an unsupported scheme"));
    } else {
        s
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad("is not a server address"));
    }
    let has_port = if rest.starts_with('[') {
        rest.contains("]:")
    } else {
        rest.contains(':')
    };
    Ok(if has_port {
        format!("https://{rest}")
    } else {
        format!("https://{rest}:6443")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_cli(args: &[&str]) -> ServerArgs {
        let mut v = vec!["rk3sd", "server"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Server(s) => *s,
            _ => unreachable!(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10x")
            .unwrap_err()
            .contains("is not a duration"));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn layering_files_dropins_and_flags() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("config.toml");
        std::fs::write(
            &main,
            "https-listen-port = 7000\nnode-name = \"from-main\"\ntls-san = [\"a.example\"]\n",
        )
        .unwrap();
        std::fs::create_dir(d.path().join("config.toml.d")).unwrap();
        std::fs::write(
            d.path().join("config.toml.d/20-b.toml"),
            "node-name = \"from-b\"\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("config.toml.d/10-a.toml"),
            "node-name = \"from-a\"\nbind-address = \"127.0.0.1\"\n",
        )
        .unwrap();
        std::fs::write(d.path().join("config.toml.d/ignored.txt"), "garbage = 1\n").unwrap();
        let cfg_flag = main.to_str().unwrap();
        let c = ServerConfig::resolve(&server_cli(&["--config", cfg_flag, "--data-dir", "/tmp/x"]))
            .unwrap();
        assert_eq!(c.port, 7000);
        assert_eq!(
            c.node.node_name.as_deref(),
            Some("from-b"),
            "later drop-in wins"
        );
        assert_eq!(c.bind_address.to_string(), "127.0.0.1");
        assert_eq!(c.tls_sans, vec!["a.example"]);
        let c = ServerConfig::resolve(&server_cli(&[
            "--config",
            cfg_flag,
            "--node-name",
            "Flag",
            "--https-listen-port",
            "7001",
        ]))
        .unwrap();
        assert_eq!(
            c.node.node_name.as_deref(),
            Some("flag"),
            "flags win, names lowercased"
        );
        assert_eq!(c.port, 7001);
        assert_eq!(c.grace_period, Duration::from_secs(40), "K3s default");
    }

    #[test]
    fn typos_and_bad_values_name_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("config.toml");
        std::fs::write(&main, "tokn = \"x\"\n").unwrap();
        let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.toml") && e.contains("'tokn'") && e.contains("did you mean 'token'"),
            "{e}"
        );

        std::fs::write(&main, "https-listen-port = \"many\"\n").unwrap();
        let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.toml") && e.contains("https-listen-port"),
            "{e}"
        );

        std::fs::write(&main, "server = \"https://x:6443\"\n").unwrap();
        let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'server'"), "agent-only key in server mode: {e}");

        std::fs::write(&main, "service-cidr = \"10.43.0.1/16\"\n").unwrap();
        let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--service-cidr") && e.contains("has host bits set"),
            "{e}"
        );

        std::fs::write(&main, "node-monitor-grace-period = \"forever\"\n").unwrap();
        let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--node-monitor-grace-period"), "{e}");

        std::fs::write(&main, "max-registrations-inflight = 0\n").unwrap();
        let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--max-registrations-inflight") && e.contains("at least 1"),
            "{e}"
        );

        for (line, flag, says) in [
            (
                "request-timeout = \"0s\"\n",
                "--request-timeout",
                "positive",
            ),
            (
                "request-header-timeout = \"soon\"\n",
                "--request-header-timeout",
                "soon",
            ),
            (
                "max-request-body-bytes = 100\n",
                "--max-request-body-bytes",
                "too small",
            ),
        ] {
            std::fs::write(&main, line).unwrap();
            let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag) && e.contains(says), "{e}");
        }
        std::fs::write(&main, "request-timeout = \"90s\"\n").unwrap();
        let c = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()])).unwrap();
        assert_eq!(c.limits.request_timeout, Duration::from_secs(90));
        assert_eq!(c.limits.max_body_bytes, 3 * 1024 * 1024);

        std::fs::write(&main, "this is not toml").unwrap();
        let e = ServerConfig::resolve(&server_cli(&["--config", main.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.toml"), "{e}");

        let missing = d.path().join("nope.toml");
        let e = ServerConfig::resolve(&server_cli(&["--config", missing.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }

    #[test]
    fn token_file_errors_name_the_file_not_the_secret() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "K10abc::server:supersecret\n").unwrap();
        let e = ServerConfig::resolve(&server_cli(&[
            "--token-file",
            f.to_str().unwrap(),
            "--config",
            "/dev/null",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("token") && e.contains("CA hash length"), "{e}");
        assert!(!e.contains("supersecret"), "{e}");
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            normalize_server_url("10.0.0.1").unwrap(),
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            normalize_server_url("https://h:7443/").unwrap(),
            "https://h:7443"
        );
        assert_eq!(normalize_server_url("[::1]").unwrap(), "https://[::1]:6443");
        assert!(normalize_server_url("http://h:6443")
            .unwrap_err()
            .to_string()
            .contains("https"));
        assert!(normalize_server_url("https://h/path").is_err());
    }
}
