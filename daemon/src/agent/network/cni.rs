//! The CNI configuration containerd loads: K3s's flannel conflist minus
//! flannel. A bridge with host-local addresses from the node's pod CIDR and
//! host ports through portmap. The bridge does not masquerade: the
//! [`super::masquerade`] rules do, for traffic leaving the cluster CIDR only,
//! so pods on different nodes see each other's addresses.

use serde_json::{json, Value};
use std::path::Path;

/// The file containerd reads (it loads the first in lexical order).
pub const FILE: &str = "10-rk3s.conflist";

pub fn config(pod_cidr: &str, state_dir: &Path, bridge: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "rk3s",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": state_dir}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// Write the config for `pod_cidr` into `dir` unless it is already there.
/// `true` when the file changed.
pub fn write(
    dir: &Path,
    pod_cidr: &str,
    state_dir: &Path,
    bridge: &str,
) -> Result<bool, crate::host::fsutil::FsError> {
    let file = dir.join(FILE);
    let text = serde_json::to_vec_pretty(&config(pod_cidr, state_dir, bridge)).expect("json");
    if std::fs::read(&file).ok().as_deref() == Some(text.as_slice()) {
        return Ok(false);
    }
    crate::host::fsutil::write_atomic(&file, &text, 0o644)?;
    Ok(true)
}

/// Remove the bridge's IPv4 addresses outside `pod_cidr` (a gateway of
/// a CIDR the node had before), so the bridge plugin gives it the new
/// gateway. Nothing to do for a bridge not made yet.
pub async fn readdress_bridge(bridge: &str, pod_cidr: &str) {
    let Ok(o) = tokio::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", bridge])
        .output()
        .await
    else {
        return;
    };
    for addr in stale_addresses(&String::from_utf8_lossy(&o.stdout), pod_cidr) {
        let r = tokio::process::Command::new("ip")
            .args(["addr", "del", &addr, "dev", bridge])
            .output()
            .await;
        match r {
            Ok(o) if o.status.success() => {
                tracing::info!(bridge, address = %addr, pod_cidr, "removed the bridge's address from an earlier pod CIDR")
            }
            _ => {
                tracing::warn!(bridge, address = %addr, "could not remove the bridge's old address; new pods may fail to start")
            }
        }
    }
}

/// The `a.b.c.d/n` addresses in `ip -o addr` output not inside `cidr`.
fn stale_addresses(listing: &str, cidr: &str) -> Vec<String> {
    let Some((net, bits)) = cidr.split_once('/') else {
        return vec![];
    };
    let (Ok(net), Ok(bits)) = (net.parse::<std::net::Ipv4Addr>(), bits.parse::<u32>()) else {
        return vec![];
    };
    let mask = u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0);
    listing
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "inet")
        .map(|w| w[1].to_string())
        .filter(|a| {
            a.split('/')
                .next()
                .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
                .is_some_and(|ip| u32::from(ip) & mask != u32::from(net) & mask)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_of_an_earlier_cidr_are_stale() {
        let listing = "5: rk3s-ab    inet 10.42.0.1/24 brd 10.42.0.255 scope global rk3s-ab\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(stale_addresses(listing, "10.42.1.0/24"), ["10.42.0.1/24"]);
        assert!(stale_addresses(listing, "10.42.0.0/24").is_empty());
        assert!(stale_addresses("", "10.42.0.0/24").is_empty());
    }

    use super::*;

    #[test]
    fn bridge_on_the_pod_cidr_without_its_own_masquerade() {
        let c = config("10.42.3.0/24", Path::new("/d"), "cni0");
        let bridge = &c["plugins"][0];
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.42.3.0/24");
        assert_eq!(c["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn written_once() {
        let d = tempfile::tempdir().unwrap();
        assert!(write(d.path(), "10.42.0.0/24", Path::new("/s"), "b").unwrap());
        assert!(!write(d.path(), "10.42.0.0/24", Path::new("/s"), "b").unwrap());
        assert!(write(d.path(), "10.42.1.0/24", Path::new("/s"), "b").unwrap());
    }
}
