//! Facts about this host that the agent reports for its Node.

use rk3s_api::tunnel::NodeInfo;
use std::collections::BTreeMap;

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn hostname() -> String {
    read_trim("/proc/sys/kernel/hostname")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
        .to_ascii_lowercase()
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// Kubernetes (Go) architecture names.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

pub fn collect(internal_ips: Vec<String>, labels: BTreeMap<String, String>) -> NodeInfo {
    NodeInfo {
        hostname: hostname(),
        internal_ips,
        os: "linux".into(),
        os_image: os_image(),
        kernel_version: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
        architecture: go_arch().into(),
        rk3s_version: rk3s_api::node_version(),
        cpu: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_kib: memory_kib(),
        labels,
        control_plane: false,
    }
}

/// The local address the kernel would use to reach `server` (no packet is sent).
pub async fn local_ip_towards(server_hostport: &str) -> Option<String> {
    let addr = tokio::net::lookup_host(server_hostport)
        .await
        .ok()?
        .next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}
