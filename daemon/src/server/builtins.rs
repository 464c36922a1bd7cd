//! Objects every cluster has from its first start, created through the
//! registry like any other: the system namespaces and PriorityClasses.

use crate::datastore::objects::Ref;
use crate::registry::{KubeError, Registry};
use anyhow::Context;
use serde_json::json;

use crate::registry::core::SYSTEM_NAMESPACES;

/// Create what is missing; an object that exists is left as it is.
pub async fn ensure(registry: &Registry) -> anyhow::Result<()> {
    ensure_namespaces(registry).await?;
    ensure_priority_classes(registry).await
}

async fn ensure_namespaces(registry: &Registry) -> anyhow::Result<()> {
    for ns in SYSTEM_NAMESPACES {
        let r = Ref::cluster("namespaces", ns);
        if registry.objects.get(&r).await?.is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            match registry.create_at(&r, obj).await {
                Ok(_) | Err(KubeError::AlreadyExists(_)) => {}
                Err(e) => return Err(e).context("creating system namespaces"),
            }
        }
    }
    Ok(())
}

/// The two PriorityClasses every cluster has, as upstream bootstraps them.
async fn ensure_priority_classes(registry: &Registry) -> anyhow::Result<()> {
    for (name, value, what) in [
        ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
        ("system-cluster-critical", 2_000_000_000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
    ] {
        let r = Ref::cluster("scheduling.k8s.io/priorityclasses", name);
        let obj = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                         "value": value, "description": what, "preemptionPolicy": "PreemptLowerPriority"});
        match registry.create_at(&r, obj).await {
            Ok(_) | Err(KubeError::AlreadyExists(_)) => {}
            Err(e) => return Err(e).context("creating the system PriorityClasses"),
        }
    }
    Ok(())
}
