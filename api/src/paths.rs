//! Default paths. Root gets the system locations K3s operators know;
//! anybody else gets a tree under `~/.rancher/rk3s`, as K3s rootless does, so
//! a server starts without root and without flags.

use std::path::PathBuf;

pub const SYSTEM_DATA_DIR: &str = "/var/lib/rancher/rk3s";
pub const SYSTEM_CONFIG_FILE: &str = "/etc/rancher/rk3s/config.toml";
pub const SYSTEM_NODE_CONFIG_DIR: &str = "/etc/rancher/node";
pub const SYSTEM_ADMIN_SOCKET: &str = "/run/rk3s/rk3s.sock";
pub const SYSTEM_KUBECONFIG: &str = "/etc/rancher/rk3s/rk3s.yaml";

/// Environment variable rk3sctl reads for the socket path.
pub const SOCKET_ENV: &str = "RK3S_SOCKET";

pub fn is_root() -> bool {
    // SAFETY-free: geteuid has no preconditions; read through /proc to avoid a
    // libc dependency in this wire crate.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn user_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// `~/.rancher/rk3s` for non-root users.
pub fn user_base_dir() -> PathBuf {
    user_home().join(".rancher").join("rk3s")
}

pub fn default_data_dir() -> PathBuf {
    if is_root() {
        PathBuf::from(SYSTEM_DATA_DIR)
    } else {
        user_base_dir()
    }
}

pub fn default_config_file() -> PathBuf {
    if is_root() {
        PathBuf::from(SYSTEM_CONFIG_FILE)
    } else {
        user_base_dir().join("config.toml")
    }
}

/// Admin socket for a daemon using `data_dir`.
pub fn default_admin_socket(data_dir: &std::path::Path) -> PathBuf {
    if is_root() {
        PathBuf::from(SYSTEM_ADMIN_SOCKET)
    } else {
        data_dir.join("rk3s.sock")
    }
}

/// Where rk3sctl looks when neither `--socket` nor `RK3S_SOCKET` is given.
pub fn default_ctl_socket() -> PathBuf {
    default_admin_socket(&default_data_dir())
}

pub fn default_node_config_dir(data_dir: &std::path::Path) -> PathBuf {
    if is_root() {
        PathBuf::from(SYSTEM_NODE_CONFIG_DIR)
    } else {
        data_dir
            .join("agent")
            .join("etc")
            .join("rancher")
            .join("node")
    }
}
