//! The downward API: a pod's own fields and its containers' resources,
//! as environment variables (`valueFrom.fieldRef`, `resourceFieldRef`)
//! and as the files of a `downwardAPI` volume, with upstream's values.

use super::node::{Allocatable, NodeCtx};
use crate::kube::quantity::milli;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector};
use std::collections::BTreeMap;

/// The value of a pod field an environment variable names.
pub fn env_field(pod: &Pod, node: &NodeCtx, pod_ip: &str, path: &str) -> Option<String> {
    Some(match path {
        "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
        "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
        "spec.nodeName" => node.name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => node.ip.clone(),
        "status.podIP" => pod_ip.to_string(),
        _ => {
            // `metadata.labels['k']` and `metadata.annotations['k']`; a
            // missing key is an empty value, as upstream's.
            let (map, key) = if let Some(k) = path.strip_prefix("metadata.labels[") {
                (pod.metadata.labels.as_ref(), k)
            } else {
                let k = path.strip_prefix("metadata.annotations[")?;
                (pod.metadata.annotations.as_ref(), k)
            };
            let key = key
                .strip_suffix(']')?
                .trim_matches(|c| c == '\'' || c == '"');
            map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
        }
    })
}

/// The value of a pod field a downwardAPI volume file names (labels and
/// annotations whole, one `key="value"` per line).
pub fn file_field(pod: &Pod, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let map = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(match path {
        "metadata.name" => m.name.clone()?,
        "metadata.namespace" => m.namespace.clone()?,
        "metadata.uid" => m.uid.clone()?,
        "metadata.labels" => map(&m.labels),
        "metadata.annotations" => map(&m.annotations),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone()?,
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone()?,
        _ => return None,
    })
}

/// The container of `pod` named `name` (init containers included).
fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// The value a `resourceFieldRef` selects, of the container named in it
/// or else `own`: upstream's `ExtractContainerResourceValue` after its
/// kubelet filled unset limits with the node's allocatable. CPU in units
/// of the divisor (default 1) and memory or storage in bytes divided by
/// it, both rounded up.
pub fn resource(
    pod: &Pod,
    own: &str,
    sel: &ResourceFieldSelector,
    node: &Allocatable,
) -> Result<String, String> {
    let name = sel
        .container_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(own);
    let c = container(pod, name).ok_or_else(|| {
        format!(
            "resourceFieldRef: container {name:?} not found in pod {:?}",
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    })?;
    let divisor = sel
        .divisor
        .as_ref()
        .and_then(|d| milli(&d.0))
        .filter(|d| *d != 0)
        .unwrap_or(1000);
    let r = c.resources.clone().unwrap_or_default();
    let get = |map: &Option<BTreeMap<String, _>>, key: &str| {
        super::resources::quantity(map, key).filter(|v| *v != 0)
    };
    let (which, key) = sel
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource : {}", sel.resource))?;
    let value = match (which, key) {
        // (CPU in millicores: thousandths of a core.)
        ("limits", "cpu") => get(&r.limits, key).unwrap_or(node.cpu_milli),
        ("limits", "memory") => get(&r.limits, key).unwrap_or(node.memory * 1000),
        ("limits", "ephemeral-storage") => {
            get(&r.limits, key).unwrap_or(node.ephemeral_storage * 1000)
        }
        ("requests", "cpu" | "memory" | "ephemeral-storage") => get(&r.requests, key).unwrap_or(0),
        ("limits", k) if k.starts_with("hugepages-") => get(&r.limits, k).unwrap_or(0),
        ("requests", k) if k.starts_with("hugepages-") => get(&r.requests, k).unwrap_or(0),
        _ => return Err(format!("unsupported container resource : {}", sel.resource)),
    };
    // In thousandths: CPU is compared in millicores, the rest in whole
    // units (a quantity's `Value()` rounds up).
    let (value, divisor) = if key == "cpu" {
        (value, divisor)
    } else {
        (ceil_div(value, 1000), ceil_div(divisor, 1000).max(1))
    };
    Ok(ceil_div(value, divisor).to_string())
}

fn ceil_div(a: i128, b: i128) -> i128 {
    if a <= 0 {
        a / b
    } else {
        (a + b - 1) / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "app", "resources": {
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                    "requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "bare"}]}
        }))
        .unwrap()
    }

    fn sel(
        resource: &str,
        divisor: Option<&str>,
        container: Option<&str>,
    ) -> ResourceFieldSelector {
        ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| Quantity(d.into())),
            container_name: container.map(str::to_string),
        }
    }

    #[test]
    fn resources_in_units_of_the_divisor_rounded_up() {
        let node = Allocatable {
            cpu_milli: 2000,
            memory: 4 << 30,
            ephemeral_storage: 100 << 30,
        };
        let v = |r, d, c| resource(&pod(), "app", &sel(r, d, c), &node).unwrap();
        // 500m in whole cores rounds up to 1; in millicores it is 500.
        assert_eq!(v("limits.cpu", None, None), "1");
        assert_eq!(v("limits.cpu", Some("1m"), None), "500");
        assert_eq!(v("requests.cpu", Some("1m"), None), "250");
        assert_eq!(v("limits.memory", None, None), "134217728");
        assert_eq!(v("limits.memory", Some("1Mi"), None), "128");
        assert_eq!(v("requests.memory", Some("1Mi"), None), "64");
        // A zero divisor (what a GET shows for none) is 1.
        assert_eq!(v("limits.memory", Some("0"), None), "134217728");
        // No limit: the node's allocatable; no request: 0.
        assert_eq!(v("limits.cpu", None, Some("bare")), "2");
        assert_eq!(v("limits.memory", Some("1Gi"), Some("bare")), "4");
        assert_eq!(v("requests.cpu", None, Some("bare")), "0");
        assert_eq!(
            v("limits.ephemeral-storage", Some("1Gi"), Some("bare")),
            "100"
        );
        let e = resource(&pod(), "app", &sel("limits.gpu", None, None), &node).unwrap_err();
        assert_eq!(e, "unsupported container resource : limits.gpu");
        assert!(resource(&pod(), "app", &sel("limits.cpu", None, Some("nope")), &node).is_err());
    }
}
