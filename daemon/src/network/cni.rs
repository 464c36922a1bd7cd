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
) -> Result<bool, crate::fsutil::FsError> {
    let file = dir.join(FILE);
    let text = serde_json::to_vec_pretty(&config(pod_cidr, state_dir, bridge)).expect("json");
    if std::fs::read(&file).ok().as_deref() == Some(text.as_slice()) {
        return Ok(false);
    }
    crate::fsutil::write_atomic(&file, &text, 0o644)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
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
