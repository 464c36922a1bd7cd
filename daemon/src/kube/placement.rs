//! Whether a pod fits a node: its requests against the node's allocatable
//! resources, its host ports against the ports taken, its tolerations
//! against the node's taints, its nodeSelector and required node affinity
//! against the node's labels.
//!
//! Two places ask: the scheduler, to pick a node, and the kubelet, which
//! checks a pod again before it starts it (upstream's kubelet runs the
//! scheduler's general predicates at admission), because a pod whose
//! `nodeName` was set by hand, or a DaemonSet's pod, never met the
//! scheduler. One definition keeps the two from disagreeing.

use crate::kube::quantity::milli;
use k8s_openapi::api::core::v1::{
    Container, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

/// A host port a pod takes: (host IP, port, protocol).
pub type HostPort = (String, i32, String);

/// What a node offers pods, from its `status.allocatable` (or capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_milli: i128,
    /// Bytes.
    pub memory: i128,
    pub pods: i64,
}

impl Allocatable {
    /// Read from the node's resource list; a node that states no pod
    /// count gets upstream's default of 110.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let q = |k: &str| list.get(k).and_then(|q| milli(&q.0));
        Allocatable {
            cpu_milli: q("cpu").unwrap_or(0),
            memory: q("memory").unwrap_or(0) / 1000,
            pods: (q("pods").unwrap_or(110_000) / 1000) as i64,
        }
    }
}

/// Whether the pod has finished (Succeeded or Failed): it no longer holds
/// what it asked for, so neither the scheduler nor the kubelet counts it.
pub fn finished(p: &Pod) -> bool {
    terminal_phase(p.status.as_ref().and_then(|s| s.phase.as_deref()))
}

/// A pod phase that is final (Succeeded or Failed).
pub fn terminal_phase(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// cpu (milli) and memory (bytes) a pod asks for: the larger of its
/// containers' sum and its largest init container, as upstream counts.
pub fn requests(p: &Pod) -> (i128, i128) {
    pod_requests(p, false)
}

/// What scoring counts instead (upstream's non-zero requests): 100m cpu
/// and 200Mi memory for each container that leaves the request out, so
/// pods that ask for nothing still spread over the nodes.
pub fn nonzero_requests(p: &Pod) -> (i128, i128) {
    pod_requests(p, true)
}

fn pod_requests(p: &Pod, nonzero: bool) -> (i128, i128) {
    let get = |c: &Container, k: &str| -> i128 {
        let asked = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(k));
        // Only a request left out gets the default; an explicit zero stays.
        match (asked, nonzero, k) {
            (Some(q), _, _) => milli(&q.0).unwrap_or(0),
            (None, true, "cpu") => 100,
            (None, true, _) => (200 << 20) * 1000,
            (None, false, _) => 0,
        }
    };
    let Some(spec) = p.spec.as_ref() else {
        return (0, 0);
    };
    let sum = |k: &str| spec.containers.iter().map(|c| get(c, k)).sum::<i128>();
    let init = |k: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| get(c, k))
            .max()
            .unwrap_or(0)
    };
    (
        sum("cpu").max(init("cpu")),
        (sum("memory").max(init("memory"))) / 1000,
    )
}

/// The host ports the pod's containers ask for.
pub fn host_ports(p: &Pod) -> Vec<HostPort> {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let hp = port.host_port.filter(|h| *h > 0)?;
            Some((
                port.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                hp,
                port.protocol.clone().unwrap_or_else(|| "TCP".into()),
            ))
        })
        .collect()
}

/// Two host ports clash on the same port and protocol when their
/// addresses are the same or either is the wildcard.
pub fn ports_clash(a: &HostPort, b: &HostPort) -> bool {
    a.1 == b.1 && a.2 == b.2 && (a.0 == b.0 || a.0 == "0.0.0.0" || b.0 == "0.0.0.0")
}

/// Whether one of `tolerations` tolerates `t`.
pub fn tolerates(tolerations: &[Toleration], t: &Taint) -> bool {
    tolerations.iter().any(|tol| {
        let effect_ok = tol
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == t.effect);
        let key_ok = match tol.key.as_deref() {
            None | Some("") => tol.operator.as_deref() == Some("Exists"),
            Some(k) => k == t.key,
        };
        let value_ok = match tol.operator.as_deref() {
            Some("Exists") => true,
            _ => tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

fn requirement_holds(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    let vals = r.values.clone().unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| vals.contains(v)),
        "NotIn" => !v.is_some_and(|v| vals.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" => v
            .and_then(|v| num(v))
            .zip(vals.first().and_then(|x| num(x)))
            .is_some_and(|(a, b)| a > b),
        "Lt" => v
            .and_then(|v| num(v))
            .zip(vals.first().and_then(|x| num(x)))
            .is_some_and(|(a, b)| a < b),
        _ => false,
    }
}

/// Whether the node called `name` with `labels` matches the term (its
/// expressions on labels, its fields on `metadata.name`).
pub fn term_holds(t: &NodeSelectorTerm, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let fields: BTreeMap<String, String> = [("metadata.name".to_string(), name.to_string())].into();
    t.match_expressions
        .iter()
        .flatten()
        .all(|r| requirement_holds(r, labels))
        && t.match_fields
            .iter()
            .flatten()
            .all(|r| requirement_holds(r, &fields))
}

/// The pod's nodeSelector and required node affinity (any one term) both
/// hold on the node called `name` with `labels`.
pub fn node_affinity_holds(spec: &PodSpec, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector_ok
        && required.is_none_or(|r| {
            r.node_selector_terms
                .iter()
                .any(|t| term_holds(t, name, labels))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerations_match_taints() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tol = |k: Option<&str>, op: &str, v: Option<&str>, e: Option<&str>| Toleration {
            key: k.map(Into::into),
            operator: Some(op.into()),
            value: v.map(Into::into),
            effect: e.map(Into::into),
            ..Default::default()
        };
        assert!(tolerates(
            &[tol(Some("dedicated"), "Equal", Some("gpu"), None)],
            &taint
        ));
        assert!(tolerates(
            &[tol(Some("dedicated"), "Exists", None, Some("NoSchedule"))],
            &taint
        ));
        assert!(tolerates(&[tol(None, "Exists", None, None)], &taint));
        assert!(!tolerates(
            &[tol(Some("dedicated"), "Equal", Some("cpu"), None)],
            &taint
        ));
        assert!(!tolerates(
            &[tol(Some("dedicated"), "Exists", None, Some("NoExecute"))],
            &taint
        ));
        assert!(!tolerates(&[], &taint));
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn requests_take_the_larger_of_containers_and_init_containers() {
        let p = pod(json!({"spec": {
            "initContainers": [{"name": "i", "image": "i",
                "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
            "containers": [
                {"name": "a", "image": "i", "resources": {"requests": {"cpu": "500m", "memory": "1Mi"}}},
                {"name": "b", "image": "i", "resources": {"requests": {"memory": "2Mi"}}}]}}));
        assert_eq!(requests(&p), (2000, 3 << 20));
        // Left-out requests count as upstream's defaults only for scoring;
        // an explicit zero is not left out.
        assert_eq!(nonzero_requests(&p), (2000, (3 << 20)));
        let zero = pod(json!({"spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": "0", "memory": "0"}}}]}}));
        assert_eq!(nonzero_requests(&zero), (0, 0));
        let bare = pod(json!({"spec": {"containers": [{"name": "c", "image": "i"}]}}));
        assert_eq!(requests(&bare), (0, 0));
        assert_eq!(nonzero_requests(&bare), (100, 200 << 20));
    }

    #[test]
    fn node_affinity_reads_labels_and_the_node_name() {
        let labels: BTreeMap<String, String> = [("disk".to_string(), "ssd".to_string())].into();
        let spec = |v: serde_json::Value| -> PodSpec { serde_json::from_value(v).unwrap() };
        let by_name = spec(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}}));
        assert!(node_affinity_holds(&by_name, "a", &labels));
        assert!(!node_affinity_holds(&by_name, "b", &labels));
        let selector = spec(json!({"containers": [], "nodeSelector": {"disk": "ssd"}}));
        assert!(node_affinity_holds(&selector, "a", &labels));
        assert!(!node_affinity_holds(&selector, "a", &BTreeMap::new()));
    }

    #[test]
    fn a_wildcard_host_port_clashes_with_any_address() {
        let p = |ip: &str, port: i32, proto: &str| (ip.to_string(), port, proto.to_string());
        assert!(ports_clash(
            &p("0.0.0.0", 80, "TCP"),
            &p("10.0.0.1", 80, "TCP")
        ));
        assert!(!ports_clash(
            &p("10.0.0.2", 80, "TCP"),
            &p("10.0.0.1", 80, "TCP")
        ));
        assert!(!ports_clash(
            &p("0.0.0.0", 80, "UDP"),
            &p("0.0.0.0", 80, "TCP")
        ));
    }

    #[test]
    fn allocatable_defaults_to_110_pods() {
        let list: BTreeMap<String, Quantity> = [
            ("cpu".to_string(), Quantity("2".into())),
            ("memory".to_string(), Quantity("1Gi".into())),
        ]
        .into();
        assert_eq!(
            Allocatable::from_list(&list),
            Allocatable {
                cpu_milli: 2000,
                memory: 1 << 30,
                pods: 110
            }
        );
    }
}
