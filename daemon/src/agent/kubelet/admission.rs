//! Pod admission: the checks a pod must pass on this node before the
//! kubelet starts it for the first time, in the order of upstream's admit
//! handlers:
//!
//! 1. **Node pressure** (the eviction manager's handler). While the node
//!    has DiskPressure or PIDPressure, only critical pods are admitted.
//!    Under MemoryPressure alone, BestEffort pods are refused unless they
//!    tolerate the memory-pressure taint. "Under pressure" is what the
//!    node's conditions say: a signal seen under its threshold within the
//!    transition period.
//! 2. **Sysctls**: the pod's `securityContext.sysctls` must be allowed
//!    (`sysctls`).
//! 3. **General predicates** (the scheduler's own filters, run again): the
//!    pod's OS, its requests against allocatable cpu, memory and pod count
//!    minus the pods already admitted, nodeSelector and required node
//!    affinity, free host ports, and the node's NoExecute taints.
//!
//! The scheduler already checks the same things, so these refuse only what
//! never met it or met a different view of the node: a pod whose
//! `nodeName` was set by hand, a DaemonSet's pod, a pod bound while the
//! pressure began. A refused pod never starts; it ends `Failed` with the
//! handler's reason (`Evicted`, `OutOfcpu`, `NodeAffinity`, ...) and the
//! message "Pod was rejected: ...", and a Warning event with that reason.
//! Its controller makes another, as upstream's do.

use crate::kube::placement::{self, Allocatable};
use crate::kube::sysctls::Allowlist;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use serde_json::{json, Value};
use std::sync::Arc;

/// Why a pod was not admitted: upstream's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

impl Rejection {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Rejection {
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// The status that ends the pod: merged over what it has, so its
    /// qosClass stays.
    pub fn status(&self) -> Value {
        json!({
            "phase": "Failed",
            "reason": self.reason,
            "message": format!("Pod was rejected: {}", self.message),
        })
    }
}

/// The node's pressure conditions, in the order the message lists them.
pub const PRESSURES: [&str; 3] = ["MemoryPressure", "DiskPressure", "PIDPressure"];

/// Upstream's `scheduling.SystemCriticalPriority`: pods at or above it are
/// the node's own plumbing, admitted under pressure (and evicted last).
pub const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// Whether `pod` is critical (priority of `system-cluster-critical` and
/// above).
pub fn critical(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0) >= CRITICAL_PRIORITY
}

/// Upstream's `GetPodQOS`: the class the API server recorded, else worked
/// out from the requests and limits as the API server works it out.
fn best_effort(pod: &Pod) -> bool {
    let class = match pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        Some(class) if !class.is_empty() => class,
        _ => crate::registry::core::qos_class(&pod.spec.clone().unwrap_or_default()),
    };
    class == "BestEffort"
}

/// The eviction manager's check: `conditions` are the node's pressure
/// conditions now in force.
pub fn under_pressure(pod: &Pod, conditions: &[&str]) -> Option<Rejection> {
    if conditions.is_empty() || critical(pod) {
        return None;
    }
    if conditions == ["MemoryPressure"] {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        let taint = Taint {
            key: "node.kubernetes.io/memory-pressure".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !best_effort(pod) || placement::tolerates(&tolerations, &taint) {
            return None;
        }
    }
    Some(Rejection::new(
        "Evicted",
        format!("The node had condition: [{}]. ", conditions.join(" ")),
    ))
}

/// Upstream's general predicates for `pod` on `node`, which already runs
/// `others` (the pods admitted before it that have not ended). The first
/// failure is the one reported, in upstream's order.
pub fn predicates(pod: &Pod, node: &Node, others: &[Arc<Pod>]) -> Option<Rejection> {
    let spec = pod.spec.clone().unwrap_or_default();
    // rk3s runs on Linux only, whatever the node's label says.
    let os_label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/os"));
    if os_label.is_some_and(|os| os != "linux") {
        return Some(Rejection::new(
            "PodOSSelectorNodeLabelDoesNotMatch",
            "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label",
        ));
    }
    if spec.os.as_ref().is_some_and(|os| os.name != "linux") {
        return Some(Rejection::new(
            "PodOSNotSupported",
            "Failed to admit pod as the OS field doesn't match node OS",
        ));
    }
    let status = node.status.clone().unwrap_or_default();
    let alloc = Allocatable::from_list(&status.allocatable.or(status.capacity).unwrap_or_default());
    let short = |resource: &str, requested: i128, used: i128, capacity: i128| {
        Rejection::new(
            &format!("OutOf{resource}"),
            format!(
                "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
            ),
        )
    };
    let used_pods = others.len() as i128;
    if used_pods + 1 > alloc.pods as i128 {
        return Some(short("pods", 1, used_pods, alloc.pods as i128));
    }
    let (cpu, memory) = placement::requests(pod);
    let (used_cpu, used_memory) = others
        .iter()
        .map(|p| placement::requests(p))
        .fold((0, 0), |(c, m), (pc, pm)| (c + pc, m + pm));
    if cpu > 0 && cpu > alloc.cpu_milli - used_cpu {
        return Some(short("cpu", cpu, used_cpu, alloc.cpu_milli));
    }
    if memory > 0 && memory > alloc.memory - used_memory {
        return Some(short("memory", memory, used_memory, alloc.memory));
    }
    let predicate = |name: &str, why: &str| {
        Some(Rejection::new(
            name,
            format!("Predicate {name} failed: {why}"),
        ))
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if !placement::node_affinity_holds(&spec, &name, &labels) {
        return predicate(
            "NodeAffinity",
            "node(s) didn't match Pod's node affinity/selector",
        );
    }
    let taken: Vec<placement::HostPort> = others
        .iter()
        .flat_map(|p| placement::host_ports(p))
        .collect();
    if placement::host_ports(pod)
        .iter()
        .any(|want| taken.iter().any(|have| placement::ports_clash(want, have)))
    {
        return predicate(
            "NodePorts",
            "node(s) didn't have free ports for the requested pod ports",
        );
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let untolerated = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoExecute")
        .any(|t| !placement::tolerates(&tolerations, t));
    if untolerated {
        return predicate(
            "TaintToleration",
            "node(s) had taints that the pod didn't tolerate",
        );
    }
    None
}

/// What the node's checks depend on besides the pod and the Node.
pub struct Judge<'a> {
    /// The node's pressure conditions now in force.
    pub conditions: &'a [&'a str],
    pub sysctls: &'a Allowlist,
}

impl Judge<'_> {
    /// Every check, in the order of upstream's handlers: pressure, sysctls,
    /// then the general predicates.
    pub fn admit(&self, pod: &Pod, node: &Node, others: &[Arc<Pod>]) -> Option<Rejection> {
        under_pressure(pod, self.conditions)
            .or_else(|| {
                self.sysctls
                    .refuse(pod)
                    .map(|why| Rejection::new("SysctlForbidden", why))
            })
            .or_else(|| predicates(pod, node, others))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn node() -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"disk": "ssd", "kubernetes.io/os": "linux"}},
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "3"}},
        }))
        .unwrap()
    }

    fn asking(cpu: &str, memory: &str) -> Pod {
        pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}),
        )
    }

    #[test]
    fn pressure_refuses_all_but_critical_pods_and_memory_refuses_only_best_effort() {
        let best = pod(
            json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"qosClass": "BestEffort"}}),
        );
        let burstable = asking("100m", "1Mi");
        let critical = pod(
            json!({"metadata": {"name": "k"}, "spec": {"priority": 2_000_001_000,
            "containers": [{"name": "c", "image": "i"}]}}),
        );
        assert_eq!(under_pressure(&best, &[]), None);
        let r = under_pressure(&burstable, &["DiskPressure", "PIDPressure"]).unwrap();
        assert_eq!(r.reason, "Evicted");
        assert_eq!(
            r.status()["message"],
            "Pod was rejected: The node had condition: [DiskPressure PIDPressure]. "
        );
        assert_eq!(r.status()["phase"], "Failed");
        assert_eq!(under_pressure(&critical, &["DiskPressure"]), None);
        assert_eq!(under_pressure(&burstable, &["MemoryPressure"]), None);
        assert!(under_pressure(&best, &["MemoryPressure"]).is_some());
        // A memory-pressure toleration lets a BestEffort pod in, but only
        // when memory is the only pressure.
        let tolerant = pod(
            json!({"metadata": {"name": "t"}, "spec": {"containers": [{"name": "c", "image": "i"}],
            "tolerations": [{"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(under_pressure(&tolerant, &["MemoryPressure"]), None);
        assert!(under_pressure(&tolerant, &["MemoryPressure", "DiskPressure"]).is_some());
    }

    #[test]
    fn resources_are_counted_against_the_admitted_pods() {
        let n = node();
        let half = asking("1", "256Mi");
        assert_eq!(predicates(&half, &n, &[]), None);
        let big = asking("1500m", "1Mi");
        let r = predicates(&big, &n, &[Arc::new(half.clone())]).unwrap();
        assert_eq!(r.reason, "OutOfcpu");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000"
        );
        let r = predicates(&asking("100m", "800Mi"), &n, &[Arc::new(half)]).unwrap();
        assert_eq!(r.reason, "OutOfmemory");
        assert_eq!(
            r.message,
            format!(
                "Node didn't have enough resource: memory, requested: {}, used: {}, capacity: {}",
                800u64 << 20,
                256u64 << 20,
                1u64 << 30
            )
        );
        // The pod count comes first, and counts pods that ask for nothing.
        let bare = pod(
            json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        );
        let r = predicates(
            &big,
            &n,
            &[
                Arc::new(bare.clone()),
                Arc::new(bare.clone()),
                Arc::new(bare),
            ],
        )
        .unwrap();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            (
                "OutOfpods",
                "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
            )
        );
    }

    #[test]
    fn placement_rules_say_which_predicate_failed() {
        let n = node();
        let elsewhere = pod(
            json!({"metadata": {"name": "p"}, "spec": {"nodeSelector": {"disk": "hdd"},
            "containers": [{"name": "c", "image": "i"}]}}),
        );
        let r = predicates(&elsewhere, &n, &[]).unwrap();
        assert_eq!(r.reason, "NodeAffinity");
        assert_eq!(
            r.message,
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
        );
        let port = |name: &str| {
            pod(
                json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}),
            )
        };
        let first = port("a");
        assert_eq!(predicates(&first, &n, &[]), None);
        assert_eq!(
            predicates(&port("b"), &n, &[Arc::new(first)])
                .unwrap()
                .reason,
            "NodePorts"
        );
        // NoSchedule taints are the scheduler's business; NoExecute ones
        // are checked here too.
        let mut tainted = n.clone();
        tainted
            .spec
            .as_mut()
            .unwrap()
            .taints
            .as_mut()
            .unwrap()
            .push(Taint {
                key: "maintenance".into(),
                effect: "NoExecute".into(),
                ..Default::default()
            });
        let plain = asking("100m", "1Mi");
        assert_eq!(predicates(&plain, &n, &[]), None);
        let r = predicates(&plain, &tainted, &[]).unwrap();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            (
                "TaintToleration",
                "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate"
            )
        );
        let windows = pod(
            json!({"metadata": {"name": "w"}, "spec": {"os": {"name": "windows"},
            "containers": [{"name": "c", "image": "i"}]}}),
        );
        assert_eq!(
            predicates(&windows, &n, &[]).unwrap().reason,
            "PodOSNotSupported"
        );
    }

    #[test]
    fn pressure_then_sysctls_then_resources() {
        let sysctls = Allowlist::default();
        let judge = |conditions| Judge {
            conditions,
            sysctls: &sysctls,
        };
        let mut p = asking("100", "1Mi");
        let r = judge(&["PIDPressure"]).admit(&p, &node(), &[]).unwrap();
        assert_eq!(r.reason, "Evicted");
        assert_eq!(
            judge(&[]).admit(&p, &node(), &[]).unwrap().reason,
            "OutOfcpu"
        );
        p.spec.as_mut().unwrap().security_context = Some(
            serde_json::from_value(json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}))
                .unwrap(),
        );
        let r = judge(&[]).admit(&p, &node(), &[]).unwrap();
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            (
                "SysctlForbidden",
                "forbidden sysctl: \"kernel.msgmax\" not allowlisted"
            )
        );
    }
}
