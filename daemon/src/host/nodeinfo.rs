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
        kubelet_version: rk3s_api::kube_version(),
        cpu: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_kib: memory_kib(),
        labels,
        control_plane: false,
        runtime: None,
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

/// Every non-loopback, non-link-local address of this host's interfaces.
pub fn host_ips() -> Vec<String> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; every
    // pointer is checked before it is read.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let addr = (*cur).ifa_addr;
            // The pod network's own interfaces are not the host's address.
            let name = if (*cur).ifa_name.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr((*cur).ifa_name)
                    .to_string_lossy()
                    .into_owned()
            };
            let pod_network = ["cni", "veth", "flannel", "rk3s"]
                .iter()
                .any(|p| name.starts_with(p));
            if !addr.is_null() && !pod_network {
                let ip: Option<std::net::IpAddr> = match (*addr).sa_family as i32 {
                    libc::AF_INET => {
                        let a = &*(addr as *const libc::sockaddr_in);
                        Some(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into())
                    }
                    libc::AF_INET6 => {
                        let a = &*(addr as *const libc::sockaddr_in6);
                        Some(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into())
                    }
                    _ => None,
                };
                if let Some(ip) = ip {
                    let link_local = match ip {
                        std::net::IpAddr::V4(v4) => v4.is_link_local(),
                        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
                    };
                    if !ip.is_loopback() && !link_local && !out.contains(&ip.to_string()) {
                        out.push(ip.to_string());
                    }
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_ips_are_parseable_and_not_loopback() {
        for ip in super::host_ips() {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            assert!(!parsed.is_loopback(), "{ip}");
        }
    }
}
