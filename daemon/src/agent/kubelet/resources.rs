//! A container's resources and security context as CRI Linux settings:
//! CPU limit → CFS quota over a 100 ms period, CPU request → shares,
//! memory limit → bytes; runAsUser/Group (container, else pod),
//! privileged, capabilities, readOnlyRootFilesystem. Host ports become
//! the sandbox's port mappings.

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, PodSpec};

const CPU_PERIOD: i64 = 100_000;

pub use crate::kube::quantity::milli;

/// A quantity from a requests or limits map, in thousandths.
pub fn quantity(
    map: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
    key: &str,
) -> Option<i128> {
    milli(&map.as_ref()?.get(key)?.0)
}

/// CRI resources of `c`.
pub fn linux_resources(c: &Container) -> cri::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let mut out = cri::LinuxContainerResources {
        cpu_period: CPU_PERIOD,
        ..Default::default()
    };
    if let Some(m) = quantity(&r.limits, "cpu") {
        // Upstream's minimum quota is 1 ms.
        out.cpu_quota = ((m as i64) * CPU_PERIOD / 1000).max(1000);
    }
    // Shares from the request (or the limit when no request), at least 2.
    if let Some(m) = quantity(&r.requests, "cpu").or(quantity(&r.limits, "cpu")) {
        out.cpu_shares = ((m as i64) * 1024 / 1000).max(2);
    }
    if let Some(m) = quantity(&r.limits, "memory") {
        out.memory_limit_in_bytes = (m / 1000) as i64;
    }
    out
}

/// CRI security context of `c` in a pod with `spec`.
pub fn security_context(c: &Container, spec: &PodSpec) -> cri::LinuxContainerSecurityContext {
    let sc = c.security_context.clone().unwrap_or_default();
    let pod = spec.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    cri::LinuxContainerSecurityContext {
        privileged: sc.privileged.unwrap_or(false),
        run_as_user: sc
            .run_as_user
            .or(pod.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: sc
            .run_as_group
            .or(pod.run_as_group)
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: pod.supplemental_groups.unwrap_or_default(),
        capabilities: Some(cri::Capability {
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            ..Default::default()
        }),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        ..Default::default()
    }
}

/// Whether any container of the pod is privileged (the sandbox must be too).
pub fn privileged(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true))
}

/// The sandbox's host port mappings from the containers' ports.
pub fn port_mappings(spec: &PodSpec) -> Vec<cri::PortMapping> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| cri::PortMapping {
            protocol: match p.protocol.as_deref() {
                Some("UDP") => cri::Protocol::Udp as i32,
                Some("SCTP") => cri::Protocol::Sctp as i32,
                _ => cri::Protocol::Tcp as i32,
            },
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(milli("500m"), Some(500));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("1.25"), Some(1250));
        assert_eq!(milli("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(milli("1G"), Some(1_000_000_000_000));
        assert_eq!(milli("12x"), None);
    }

    #[test]
    fn resources_and_ports() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}, "requests": {"cpu": "100m"}},
            "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 53, "protocol": "UDP"}],
            "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_ADMIN"]}}
        }))
        .unwrap();
        let r = linux_resources(&c);
        assert_eq!(
            (r.cpu_quota, r.cpu_period, r.cpu_shares),
            (25_000, 100_000, 102)
        );
        assert_eq!(r.memory_limit_in_bytes, 64 * 1024 * 1024);
        let spec = PodSpec {
            containers: vec![c.clone()],
            ..Default::default()
        };
        let pm = port_mappings(&spec);
        assert_eq!(pm.len(), 1);
        assert_eq!((pm[0].container_port, pm[0].host_port), (80, 8080));
        let sc = security_context(&c, &spec);
        assert_eq!(sc.run_as_user.map(|u| u.value), Some(1000));
        assert_eq!(sc.capabilities.unwrap().add_capabilities, vec!["NET_ADMIN"]);
        assert!(!privileged(&spec));
    }
}
