//! Command line and configuration files.
//!
//! Layers, lowest first: built-in defaults < `config.toml` <
//! `config.toml.d/*.toml` (lexical order) < `RK3S_*` environment < flags.
//! File keys are the long flag names (`token`, `node-name`, `tls-san`...).
//! An unknown key or a value of the wrong type is an error naming the file
//! and the key. Each layer is turned into a JSON map, the maps are merged
//! key by key, and the result is deserialized once, so every layer goes
//! through the same parser.

mod files;
mod flags;

pub use files::{layered, parse_duration};
pub use flags::{AgentArgs, Cli, Command, CommonArgs, ServerArgs};

use crate::credentials::token::{Token, TokenError};
use files::{duration_of, token_from};
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

pub use crate::agent::settings::{NodeSettings, Runtime};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub server_url: String,
    pub token: Token,
    pub node: NodeSettings,
    pub debug: bool,
}

/// What `rk3sd server` runs: the server, its own node agent, the admin
/// socket.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub server: crate::server::settings::Settings,
    /// The server's own node agent; `None` with `--disable-agent`.
    pub agent: Option<NodeSettings>,
    pub admin_socket: PathBuf,
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
        crate::kube::names::validate_node_name(&n.to_ascii_lowercase()).map_err(|e| {
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
        kubelet: crate::agent::kubelet::settings::parse(&c.kubelet_arg).map_err(|message| {
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

fn cluster_timings(a: &ServerArgs) -> Result<crate::server::cluster::Timings, ConfigError> {
    let t = crate::server::cluster::Timings {
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

fn http_limits(a: &ServerArgs) -> Result<crate::server::https::Limits, ConfigError> {
    let d = crate::server::https::Limits::default();
    let max_body_bytes = a.max_request_body_bytes.unwrap_or(d.max_body_bytes);
    if max_body_bytes < 64 * 1024 {
        return Err(ConfigError::Invalid {
            origin: "--max-request-body-bytes".into(),
            message: format!(
                "{max_body_bytes} is too small: kubectl's own objects need at least 65536"
            ),
        });
    }
    Ok(crate::server::https::Limits {
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
        let node = node_settings(&a.common, &data_dir)?;
        let node_name = node.resolve_name().map_err(|e| ConfigError::Invalid {
            origin: "--with-node-id".into(),
            message: e.to_string(),
        })?;
        let server = crate::server::settings::Settings {
            max_registrations_inflight: inflight,
            limits,
            node_name,
            node_ips: node.node_ips.clone(),
            heartbeat_interval: node.heartbeat_interval,
            token: token_from("token", &a.common.token, &a.common.token_file)?,
            agent_token: token_from("agent-token", &a.agent_token, &a.agent_token_file)?,
            bind_address,
            port: a.https_listen_port.unwrap_or(6443),
            tls_sans: a.tls_san.clone(),
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
                let unknown = crate::server::deploy::addons::unknown_disables(&a.disable);
                if !unknown.is_empty() {
                    return Err(ConfigError::Invalid {
                        origin: "--disable".into(),
                        message: format!(
                            "no bundled manifest named {} (bundled: {})",
                            unknown.join(", "),
                            crate::server::deploy::addons::BUNDLED.iter().map(|(n, _)| n.trim_end_matches(".yaml")).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
                a.disable.clone()
            },
            kubeconfig: a
                .write_kubeconfig
                .clone()
                .unwrap_or_else(|| crate::credentials::kubeconfig::default_path(&data_dir)),
            kubeconfig_mode: crate::credentials::kubeconfig::parse_mode(
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
            ipam: crate::server::ipam::Ipam::parse(
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
            controllers: crate::controllers::Settings {
                autoscaler: crate::controllers::autoscaler::parse(&a.kube_controller_manager_arg)
                    .map_err(|message| ConfigError::Invalid {
                        origin: "--kube-controller-manager-arg".into(),
                        message,
                    })?,
            },
            data_dir,
        };
        Ok(Self {
            server,
            agent: (!a.disable_agent).then_some(node),
            admin_socket,
            debug: a.common.debug,
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
    use clap::Parser;

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
        assert_eq!(c.server.port, 7000);
        assert_eq!(c.server.node_name.as_str(), "from-b", "later drop-in wins");
        assert_eq!(c.server.bind_address.to_string(), "127.0.0.1");
        assert_eq!(c.server.tls_sans, vec!["a.example"]);
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
            c.server.node_name.as_str(),
            "flag",
            "flags win, names lowercased"
        );
        assert_eq!(c.server.port, 7001);
        assert_eq!(
            c.server.grace_period,
            Duration::from_secs(40),
            "K3s default"
        );
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
        assert_eq!(c.server.limits.request_timeout, Duration::from_secs(90));
        assert_eq!(c.server.limits.max_body_bytes, 3 * 1024 * 1024);

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
