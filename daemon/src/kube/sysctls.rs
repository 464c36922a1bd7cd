//! Pod sysctls (`spec.securityContext.sysctls`): which names are valid
//! and which kernel namespace each belongs to (the API's validation), and
//! which ones a node lets pods set (the kubelet's admission, which also
//! hands the allowed ones to the sandbox).
//!
//! A sysctl is allowed when it is on upstream's safe list (namespaced, so
//! it touches only the pod, and isolated from other pods), or matches
//! `--kubelet-arg=allowed-unsafe-sysctls=<name or prefix*>,...`, which may
//! only name sysctls the kernel namespaces (`kernel.shm*`, `kernel.msg*`,
//! `kernel.sem`, `fs.mqueue.*`, `net.*`). A net sysctl in a hostNetwork
//! pod, or an IPC one in a hostIPC pod, would change the node's own value,
//! so it is refused there. A pod with a sysctl not allowed is refused at
//! admission (reason `SysctlForbidden`). Upstream drops some safe names on
//! kernels older than 4.15; rk3s's kernels are newer.

use k8s_openapi::api::core::v1::Pod;
use std::collections::HashMap;

/// Upstream's safe sysctls (`pkg/kubelet/sysctl/safe_sysctls.go`).
pub const SAFE: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// The kernel namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Ipc,
    Net,
}

impl Namespace {
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
        }
    }

    /// The namespace of `sysctl`, or `None` when it is not known to be
    /// namespaced (then it is the whole node's).
    pub fn of(sysctl: &str) -> Option<Self> {
        if sysctl == "kernel.sem" {
            return Some(Namespace::Ipc);
        }
        [
            ("kernel.shm", Namespace::Ipc),
            ("kernel.msg", Namespace::Ipc),
            ("fs.mqueue.", Namespace::Ipc),
            ("net.", Namespace::Net),
        ]
        .into_iter()
        .find(|(prefix, _)| sysctl.starts_with(prefix))
        .map(|(_, ns)| ns)
    }
}

/// Upstream's `NormalizeName`: `net/ipv4/ip_forward` is
/// `net.ipv4.ip_forward` (the separators swap when the first one is `/`).
pub fn normalize(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// The shape of a sysctl name, as upstream's validation prints it: dotted
/// (or slashed) segments of lower-case letters, digits, `-` and `_`.
pub const NAME_FORMAT: &str =
    r"([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?";

/// Upstream's longest sysctl name.
pub const NAME_MAX: usize = 253;

/// Whether `name` is a well-formed sysctl name (`NAME_FORMAT`).
pub fn valid_name(name: &str) -> bool {
    let segment_ok = |seg: &str| {
        let b = seg.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'_')
    };
    name.len() <= NAME_MAX && name.split(['.', '/']).all(segment_ok)
}

/// The sysctls pods may set on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowlist {
    names: HashMap<String, Namespace>,
    prefixes: Vec<(String, Namespace)>,
}

impl Default for Allowlist {
    fn default() -> Self {
        Allowlist::new(&[]).expect("the safe sysctls are namespaced")
    }
}

impl Allowlist {
    /// The safe sysctls plus `unsafe_` (names, or prefixes ending in `*`);
    /// an entry the kernel does not namespace is an error.
    pub fn new(unsafe_: &[String]) -> Result<Self, String> {
        let mut list = Allowlist {
            names: HashMap::new(),
            prefixes: Vec::new(),
        };
        for entry in SAFE
            .iter()
            .map(|s| s.to_string())
            .chain(unsafe_.iter().cloned())
        {
            let entry = normalize(entry.trim());
            match entry.strip_suffix('*') {
                Some(prefix) => {
                    let ns = Namespace::of(prefix).ok_or_else(|| {
                        format!("the sysctls {entry:?} are not known to be namespaced")
                    })?;
                    list.prefixes.push((prefix.to_string(), ns));
                }
                None => {
                    let ns = Namespace::of(&entry).ok_or_else(|| {
                        format!("the sysctl {entry:?} is not known to be namespaced")
                    })?;
                    list.names.insert(entry, ns);
                }
            }
        }
        Ok(list)
    }

    /// Why `pod` may not have its sysctls here (upstream's message), if it
    /// may not.
    pub fn refuse(&self, pod: &Pod) -> Option<String> {
        let spec = pod.spec.as_ref()?;
        let sysctls = spec.security_context.as_ref()?.sysctls.as_ref()?;
        let (host_net, host_ipc) = (
            spec.host_network.unwrap_or(false),
            spec.host_ipc.unwrap_or(false),
        );
        for s in sysctls {
            let name = normalize(&s.name);
            let ns = self.names.get(&name).copied().or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| name.starts_with(p.as_str()))
                    .map(|(_, ns)| *ns)
            });
            let why = match ns {
                None => format!("{name:?} not allowlisted"),
                Some(ns)
                    if (ns == Namespace::Net && host_net) || (ns == Namespace::Ipc && host_ipc) =>
                {
                    format!("{name:?} not allowed with host {} enabled", ns.name())
                }
                Some(_) => continue,
            };
            return Some(format!("forbidden sysctl: {why}"));
        }
        None
    }
}

/// The pod's sysctls as the sandbox config carries them.
pub fn of(pod: &Pod) -> HashMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(host_network: bool, sysctls: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {
            "hostNetwork": host_network, "containers": [],
            "securityContext": {"sysctls": sysctls}}}))
        .unwrap()
    }

    #[test]
    fn safe_sysctls_pass_and_others_are_refused_with_upstreams_message() {
        let list = Allowlist::default();
        let ok = pod(
            false,
            json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
            {"name": "kernel.shm_rmid_forced", "value": "1"}]),
        );
        assert_eq!(list.refuse(&ok), None);
        assert_eq!(of(&ok)["net.ipv4.ip_unprivileged_port_start"], "0");
        for (host_network, name, refused) in [
            (false, "kernel.msgmax", Some("forbidden sysctl: \"kernel.msgmax\" not allowlisted")),
            // The node's own network would change.
            (
                true,
                "net.ipv4.tcp_syncookies",
                Some("forbidden sysctl: \"net.ipv4.tcp_syncookies\" not allowed with host net enabled"),
            ),
            // Slashes are the same names.
            (false, "net/ipv4/tcp_syncookies", None),
        ] {
            let p = pod(host_network, json!([{"name": name, "value": "1"}]));
            assert_eq!(list.refuse(&p).as_deref(), refused, "{name}");
        }
        assert_eq!(
            normalize("net/ipv4/conf/eno2.100/rp_filter"),
            "net.ipv4.conf.eno2/100.rp_filter"
        );
        assert_eq!(
            normalize("net.ipv4.conf.eno2/100.rp_filter"),
            "net.ipv4.conf.eno2/100.rp_filter"
        );
    }

    #[test]
    fn names_are_checked_as_upstream_checks_them() {
        assert!(valid_name("net.ipv4.ip_local_port_range"));
        assert!(valid_name("net/ipv4/conf/eno2.100/rp_filter"));
        assert!(valid_name("kernel.shm_rmid_forced"));
        for bad in [
            "",
            "Net.ipv4",
            "net..ipv4",
            "net.ipv4.",
            "-net",
            "net.ipv4_",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name(&"a".repeat(NAME_MAX)));
        assert!(!valid_name(&"a".repeat(NAME_MAX + 1)));
    }

    #[test]
    fn unsafe_sysctls_must_be_namespaced_and_then_pass() {
        let list = Allowlist::new(&["kernel.msg*".into(), "net.core.somaxconn".into()]).unwrap();
        let p = pod(
            false,
            json!([{"name": "kernel.msgmax", "value": "1"},
            {"name": "net.core.somaxconn", "value": "1024"}]),
        );
        assert_eq!(list.refuse(&p), None);
        assert_eq!(
            Allowlist::new(&["vm.swappiness".into()]).unwrap_err(),
            "the sysctl \"vm.swappiness\" is not known to be namespaced"
        );
        assert!(Allowlist::new(&["kernel.*".into()]).is_err());
    }
}
