//! The Node authorizer: what a kubelet (`system:node:<name>` in
//! `system:nodes`) may do, as upstream's with `AuthorizeNodeWithSelectors`:
//! its own Node and Lease; the pods bound to it (read, status, delete,
//! evict; lists only with `fieldSelector=spec.nodeName=<node>`); the
//! Secrets, ConfigMaps, PersistentVolumeClaims and service-account tokens
//! those pods reference; events; reading Services (for the environment
//! of containers). Everything else is left to RBAC.
//!
//! The pod graph is followed from the datastore: node → its pods and what
//! each references, plus pod uid → pod, which bound tokens are checked
//! against.

use super::Request;
use crate::datastore::EventKind;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// What one pod references.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodRefs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub service_account: String,
    secrets: BTreeSet<String>,
    configmaps: BTreeSet<String>,
    claims: BTreeSet<String>,
}

impl PodRefs {
    fn of(p: &Pod) -> Self {
        let mut r = PodRefs {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        };
        let Some(spec) = &p.spec else { return r };
        r.node = spec.node_name.clone().unwrap_or_default();
        r.service_account = spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        for s in spec.image_pull_secrets.iter().flatten() {
            r.secrets.insert(s.name.clone());
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
                r.secrets.insert(s);
            }
            if let Some(c) = &v.config_map {
                r.configmaps.insert(c.name.clone());
            }
            if let Some(c) = &v.persistent_volume_claim {
                r.claims.insert(c.claim_name.clone());
            }
            for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(s) = &src.secret {
                    r.secrets.insert(s.name.clone());
                }
                if let Some(c) = &src.config_map {
                    r.configmaps.insert(c.name.clone());
                }
            }
        }
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in containers {
            for e in c.env.iter().flatten() {
                let Some(from) = &e.value_from else { continue };
                if let Some(s) = &from.secret_key_ref {
                    r.secrets.insert(s.name.clone());
                }
                if let Some(c) = &from.config_map_key_ref {
                    r.configmaps.insert(c.name.clone());
                }
            }
            for e in c.env_from.iter().flatten() {
                if let Some(s) = &e.secret_ref {
                    r.secrets.insert(s.name.clone());
                }
                if let Some(c) = &e.config_map_ref {
                    r.configmaps.insert(c.name.clone());
                }
            }
        }
        r
    }
}

#[derive(Default)]
struct Graph {
    /// pod key → its references.
    pods: HashMap<String, Arc<PodRefs>>,
    /// node → pod keys bound to it.
    by_node: HashMap<String, BTreeSet<String>>,
    /// pod uid → pod key.
    by_uid: HashMap<String, String>,
}

impl Graph {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            if let Some(s) = self.by_node.get_mut(&old.node) {
                s.remove(key);
                if s.is_empty() {
                    self.by_node.remove(&old.node);
                }
            }
            self.by_uid.remove(&old.uid);
        }
    }

    fn insert(&mut self, key: String, refs: PodRefs) {
        self.remove(&key);
        if !refs.node.is_empty() {
            self.by_node
                .entry(refs.node.clone())
                .or_default()
                .insert(key.clone());
        }
        self.by_uid.insert(refs.uid.clone(), key.clone());
        self.pods.insert(key, Arc::new(refs));
    }
}

/// Pods and what they reference, followed from the datastore.
#[derive(Default)]
pub struct PodGraph {
    graph: RwLock<Graph>,
}

fn refs_of(bytes: &[u8]) -> Option<PodRefs> {
    serde_json::from_slice::<Pod>(bytes)
        .ok()
        .map(|p| PodRefs::of(&p))
}

impl PodGraph {
    pub async fn follow(
        self: Arc<Self>,
        store: crate::datastore::Datastore,
        stop: CancellationToken,
    ) {
        let prefix = crate::datastore::objects::prefix("pods", None);
        crate::datastore::follow(
            &store,
            &prefix,
            &stop,
            |_, kvs| {
                let mut g = Graph::default();
                for kv in kvs {
                    if let Some(r) = refs_of(&kv.value) {
                        g.insert(kv.key, r);
                    }
                }
                *self.graph.write().expect("pod graph") = g;
            },
            |ev| {
                let mut g = self.graph.write().expect("pod graph");
                match (ev.kind, refs_of(&ev.value)) {
                    (EventKind::Delete, _) | (_, None) => g.remove(&ev.key),
                    (_, Some(r)) => g.insert(ev.key, r),
                }
            },
        )
        .await
    }

    /// The pod with `uid`, if it exists (as far as this server has seen).
    pub fn pod_by_uid(&self, uid: &str) -> Option<Arc<PodRefs>> {
        let g = self.graph.read().expect("pod graph");
        g.pods.get(g.by_uid.get(uid)?).cloned()
    }

    /// Whether some pod on `node` in `ns` satisfies `f`.
    fn any_on(&self, node: &str, ns: &str, f: impl Fn(&PodRefs) -> bool) -> bool {
        let g = self.graph.read().expect("pod graph");
        g.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| g.pods.get(k))
            .any(|p| p.namespace == ns && f(p))
    }

    pub fn pod_on(&self, node: &str, ns: &str, name: &str) -> bool {
        self.any_on(node, ns, |p| p.name == name)
    }

    /// Whether a pod on `node` runs as service account `ns/sa`.
    pub fn uses_service_account(&self, node: &str, ns: &str, sa: &str) -> bool {
        self.any_on(node, ns, |p| p.service_account == sa)
    }
}

/// The value `field` must equal in a selector like `a=b,c==d`.
fn selected(selector: &str, field: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
        (k.trim() == field && !k.ends_with('!')).then(|| v.trim().to_string())
    })
}

/// The Node authorizer's verdict: `true` allows; `false` leaves the
/// request to RBAC.
pub fn allows(graph: &PodGraph, node: &str, r: &Request<'_>) -> bool {
    if r.path.is_some() {
        return false;
    }
    let own = r.name == node;
    let read = matches!(r.verb, "get" | "list" | "watch");
    // Lists and watches must name what they may see.
    let selects = |field: &str, want: &str| {
        matches!(r.verb, "list" | "watch")
            && selected(r.field_selector, field).as_deref() == Some(want)
    };
    match (r.group, r.resource, r.subresource) {
        ("", "nodes", "") => match r.verb {
            "get" | "create" | "update" | "patch" => own,
            "list" | "watch" => selects("metadata.name", node),
            _ => false,
        },
        ("", "nodes", "status") => own && matches!(r.verb, "get" | "update" | "patch"),
        ("coordination.k8s.io", "leases", "") => {
            r.namespace == "kube-node-lease"
                && match r.verb {
                    "get" | "update" | "patch" | "delete" => own,
                    "create" => r.name.is_empty() || own,
                    "list" | "watch" => selects("metadata.name", node),
                    _ => false,
                }
        }
        ("", "pods", "") => match r.verb {
            "get" | "delete" => graph.pod_on(node, r.namespace, r.name),
            "list" | "watch" => selects("spec.nodeName", node),
            _ => false,
        },
        ("", "pods", "status") => {
            matches!(r.verb, "get" | "update" | "patch") && graph.pod_on(node, r.namespace, r.name)
        }
        ("", "pods", "eviction") => r.verb == "create" && graph.pod_on(node, r.namespace, r.name),
        ("", res @ ("secrets" | "configmaps" | "persistentvolumeclaims"), "") => {
            // A single object by name, or a list/watch narrowed to it.
            let name = if r.verb == "get" {
                r.name.to_string()
            } else if read {
                match selected(r.field_selector, "metadata.name") {
                    Some(n) => n,
                    None => return false,
                }
            } else {
                return false;
            };
            graph.any_on(node, r.namespace, |p| match res {
                "secrets" => p.secrets.contains(&name),
                "configmaps" => p.configmaps.contains(&name),
                _ => p.claims.contains(&name),
            })
        }
        ("", "serviceaccounts", "token") => {
            r.verb == "create" && graph.uses_service_account(node, r.namespace, r.name)
        }
        ("", "events", "") | ("events.k8s.io", "events", "") => {
            matches!(r.verb, "create" | "update" | "patch")
        }
        ("", "services", "") | ("", "endpoints", "") => read,
        ("authentication.k8s.io", "tokenreviews", "")
        | ("authorization.k8s.io", "subjectaccessreviews", "") => r.verb == "create",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> PodGraph {
        let g = PodGraph::default();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u1"},
            "spec": {"nodeName": "a", "serviceAccountName": "sa",
                "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}]}],
                "volumes": [{"name": "v", "configMap": {"name": "cm"}}]}
        }))
        .unwrap();
        g.graph
            .write()
            .unwrap()
            .insert("/registry/pods/d/p".into(), PodRefs::of(&pod));
        g
    }

    #[test]
    fn node_matrix() {
        let g = graph();
        let r = |verb, res, sub, ns, name| Request::resource(verb, "", res, sub, ns, name);
        assert!(allows(&g, "a", &r("get", "secrets", "", "d", "s1")));
        assert!(!allows(&g, "b", &r("get", "secrets", "", "d", "s1")));
        assert!(!allows(&g, "a", &r("get", "secrets", "", "d", "s2")));
        assert!(!allows(&g, "a", &r("list", "secrets", "", "d", "")));
        assert!(allows(
            &g,
            "a",
            &r("watch", "configmaps", "", "d", "").with_fields("metadata.name=cm")
        ));
        assert!(allows(&g, "a", &r("get", "pods", "", "d", "p")));
        assert!(allows(&g, "a", &r("update", "pods", "status", "d", "p")));
        assert!(!allows(&g, "b", &r("update", "pods", "status", "d", "p")));
        assert!(!allows(&g, "a", &r("list", "pods", "", "", "")));
        assert!(allows(
            &g,
            "a",
            &r("list", "pods", "", "", "").with_fields("spec.nodeName=a")
        ));
        assert!(!allows(
            &g,
            "a",
            &r("list", "pods", "", "", "").with_fields("spec.nodeName=b")
        ));
        assert!(allows(
            &g,
            "a",
            &r("create", "serviceaccounts", "token", "d", "sa")
        ));
        assert!(!allows(
            &g,
            "a",
            &r("create", "serviceaccounts", "token", "d", "other")
        ));
        assert!(allows(&g, "a", &r("patch", "nodes", "status", "", "a")));
        assert!(!allows(&g, "a", &r("patch", "nodes", "status", "", "b")));
        assert!(!allows(&g, "a", &r("get", "nodes", "", "", "b")));
        assert!(!allows(&g, "a", &r("delete", "nodes", "", "", "a")));
        assert_eq!(g.pod_by_uid("u1").unwrap().name, "p");
    }
}
