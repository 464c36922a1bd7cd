//! The kinds the API serves: built-in ones (each with its strategy), plus
//! one per served version of every CustomResourceDefinition.

use super::strategy::{self, Strategy};
use serde_json::Value;

/// An extra Table column (CRD `additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    /// Plural, lowercase: the URL segment.
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Served subresources: `status`, `scale`, `binding`, `eviction`.
    pub subresources: Vec<String>,
    pub columns: Vec<PrinterColumn>,
    /// Where a CRD's `scale` subresource reads and writes, if it has one.
    pub scale_paths: Option<ScalePaths>,
    /// A CRD version's `openAPIV3Schema` (built-ins have typed schemas).
    pub schema: Option<std::sync::Arc<Value>>,
    /// A review kind (access, rules, token, self-subject): only `create`,
    /// answered by the API server and never stored.
    pub create_only: bool,
}

/// JSON paths of a scalable kind (fixed for built-ins, from the CRD otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

pub const CRD_GROUP: &str = "apiextensions.k8s.io";

/// The verbs of a stored kind, as discovery lists them.
pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `Kind` or `Kind.group`, as upstream names a kind in messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// Datastore directory of this kind. Core kinds keep upstream's short
    /// names (`/registry/nodes/...`); others are qualified by group. Kinds
    /// served by two groups or versions share one directory.
    pub fn storage(&self) -> String {
        match (self.group.as_str(), self.resource.as_str()) {
            ("", r) | ("coordination.k8s.io", r) | ("events.k8s.io", r @ "events") => r.to_string(),
            (g, r) => format!("{g}/{r}"),
        }
    }

    pub fn has(&self, subresource: &str) -> bool {
        self.subresources.iter().any(|s| s == subresource)
    }

    pub fn has_status(&self) -> bool {
        self.has("status")
    }

    pub fn is_builtin(&self) -> bool {
        BUILTINS
            .iter()
            .any(|b| b.group == self.group && b.resource == self.resource)
    }

    /// The kind's behaviour: defaults, validation, table, field selectors.
    pub fn strategy(&self) -> &'static dyn Strategy {
        BUILTINS
            .iter()
            .find(|b| {
                b.group == self.group && b.version == self.version && b.resource == self.resource
            })
            .map(|b| (b.strategy)())
            .unwrap_or(&strategy::Generic)
    }

    /// Where `/scale` reads and writes.
    pub fn scale(&self) -> Option<ScalePaths> {
        if !self.has("scale") {
            return None;
        }
        self.scale_paths.clone().or_else(|| {
            Some(ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: Some(".spec.selector".into()),
            })
        })
    }
}

/// One built-in kind.
struct Builtin {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
    strategy: fn() -> &'static dyn Strategy,
}

const ALL: &[&str] = &["all"];
const STATUS: &[&str] = &["status"];
const SCALED: &[&str] = &["status", "scale"];

macro_rules! builtin {
    ($g:expr, $v:expr, $res:expr, $sing:expr, $kind:expr, $ns:expr, $short:expr, $cat:expr, $sub:expr, $strategy:expr) => {
        Builtin {
            group: $g,
            version: $v,
            resource: $res,
            singular: $sing,
            kind: $kind,
            namespaced: $ns,
            short: $short,
            categories: $cat,
            subresources: $sub,
            strategy: || $strategy,
        }
    };
}

use super::{apps, batch, core, other, rbac};

/// Upstream's built-in kinds rk3s serves, in discovery order within each
/// group (the first version of a group is the preferred one).
static BUILTINS: &[Builtin] = &[
    builtin!(
        "",
        "v1",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &[],
        &["status", "finalize"],
        &core::NAMESPACE
    ),
    builtin!(
        "",
        "v1",
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        &[],
        STATUS,
        &core::NODE
    ),
    builtin!(
        "",
        "v1",
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        ALL,
        &["status", "binding", "eviction", "ephemeralcontainers"],
        &core::POD
    ),
    builtin!(
        "",
        "v1",
        "podtemplates",
        "podtemplate",
        "PodTemplate",
        true,
        &[],
        &[],
        &[],
        &core::POD_TEMPLATE
    ),
    builtin!(
        "",
        "v1",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
        &["rc"],
        ALL,
        SCALED,
        &core::REPLICATION_CONTROLLER
    ),
    builtin!(
        "",
        "v1",
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        ALL,
        STATUS,
        &core::SERVICE
    ),
    builtin!(
        "",
        "v1",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        &[],
        &[],
        &core::ENDPOINTS
    ),
    builtin!(
        "",
        "v1",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        &[],
        &["token"],
        &core::SERVICE_ACCOUNT
    ),
    builtin!(
        "",
        "v1",
        "secrets",
        "secret",
        "Secret",
        true,
        &[],
        &[],
        &[],
        &core::SECRET
    ),
    builtin!(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        &[],
        &[],
        &core::CONFIG_MAP
    ),
    builtin!(
        "",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        &[],
        &core::EVENT
    ),
    builtin!(
        "",
        "v1",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        &["pv"],
        &[],
        STATUS,
        &core::PERSISTENT_VOLUME
    ),
    builtin!(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        &[],
        STATUS,
        &core::PERSISTENT_VOLUME_CLAIM
    ),
    builtin!(
        "",
        "v1",
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        true,
        &["quota"],
        &[],
        STATUS,
        &core::RESOURCE_QUOTA
    ),
    builtin!(
        "",
        "v1",
        "limitranges",
        "limitrange",
        "LimitRange",
        true,
        &["limits"],
        &[],
        &[],
        &core::LIMIT_RANGE
    ),
    builtin!(
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        ALL,
        SCALED,
        &apps::DEPLOYMENT
    ),
    builtin!(
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        ALL,
        SCALED,
        &apps::REPLICA_SET
    ),
    builtin!(
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        &["sts"],
        ALL,
        SCALED,
        &apps::STATEFUL_SET
    ),
    builtin!(
        "apps",
        "v1",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        ALL,
        STATUS,
        &apps::DAEMON_SET
    ),
    builtin!(
        "apps",
        "v1",
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        true,
        &[],
        &[],
        &[],
        &apps::CONTROLLER_REVISION
    ),
    builtin!(
        "batch",
        "v1",
        "jobs",
        "job",
        "Job",
        true,
        &[],
        ALL,
        STATUS,
        &batch::JOB
    ),
    builtin!(
        "batch",
        "v1",
        "cronjobs",
        "cronjob",
        "CronJob",
        true,
        &["cj"],
        ALL,
        STATUS,
        &batch::CRON_JOB
    ),
    builtin!(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        ALL,
        STATUS,
        &other::HPA_V2
    ),
    builtin!(
        "autoscaling",
        "v1",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        ALL,
        STATUS,
        &other::HPA_V1
    ),
    builtin!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        &[],
        &[],
        &other::LEASE
    ),
    builtin!(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        &[],
        &[],
        &other::ENDPOINT_SLICE
    ),
    builtin!(
        "events.k8s.io",
        "v1",
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        &[],
        &other::EVENTS_V1
    ),
    builtin!(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "ingress",
        "Ingress",
        true,
        &["ing"],
        &[],
        STATUS,
        &other::INGRESS
    ),
    builtin!(
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        "ingressclass",
        "IngressClass",
        false,
        &[],
        &[],
        &[],
        &other::INGRESS_CLASS
    ),
    builtin!(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        &["netpol"],
        &[],
        &[],
        &other::NETWORK_POLICY
    ),
    builtin!(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        &[],
        STATUS,
        &other::PDB
    ),
    builtin!(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false,
        &[],
        &[],
        &[],
        &rbac::SELF_SUBJECT_REVIEW
    ),
    builtin!(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        false,
        &[],
        &[],
        &[],
        &rbac::TOKEN_REVIEW
    ),
    // kubectl 1.27 asks `auth whoami` of v1beta1 (same shape as v1).
    builtin!(
        "authentication.k8s.io",
        "v1beta1",
        "selfsubjectreviews",
        "selfsubjectreview",
        "SelfSubjectReview",
        false,
        &[],
        &[],
        &[],
        &rbac::SELF_SUBJECT_REVIEW
    ),
    builtin!(
        "authorization.k8s.io",
        "v1",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true,
        &[],
        &[],
        &[],
        &rbac::LSAR
    ),
    builtin!(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false,
        &[],
        &[],
        &[],
        &rbac::SSAR
    ),
    builtin!(
        "authorization.k8s.io",
        "v1",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false,
        &[],
        &[],
        &[],
        &rbac::SSRR
    ),
    builtin!(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false,
        &[],
        &[],
        &[],
        &rbac::SAR
    ),
    builtin!(
        rbac::GROUP,
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        &[],
        &[],
        &rbac::CLUSTER_ROLE_BINDING
    ),
    builtin!(
        rbac::GROUP,
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        &[],
        &[],
        &rbac::CLUSTER_ROLE
    ),
    builtin!(
        rbac::GROUP,
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        &[],
        &[],
        &rbac::ROLE_BINDING
    ),
    builtin!(
        rbac::GROUP,
        "v1",
        "roles",
        "role",
        "Role",
        true,
        &[],
        &[],
        &[],
        &rbac::ROLE
    ),
    builtin!(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "priorityclass",
        "PriorityClass",
        false,
        &["pc"],
        &[],
        &[],
        &other::PRIORITY_CLASS
    ),
    builtin!(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
        &["sc"],
        &[],
        &[],
        &other::STORAGE_CLASS
    ),
    builtin!(
        CRD_GROUP,
        "v1",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        &["api-extensions"],
        STATUS,
        &strategy::CRD
    ),
];

/// Groups whose kinds are all reviews (create-only, never stored).
const REVIEW_GROUPS: [&str; 2] = ["authentication.k8s.io", "authorization.k8s.io"];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

pub fn builtins() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|b| ResourceType {
            group: b.group.into(),
            version: b.version.into(),
            resource: b.resource.into(),
            singular: b.singular.into(),
            kind: b.kind.into(),
            namespaced: b.namespaced,
            short_names: strings(b.short),
            categories: strings(b.categories),
            subresources: strings(b.subresources),
            columns: vec![],
            scale_paths: None,
            schema: None,
            create_only: REVIEW_GROUPS.contains(&b.group),
        })
        .collect()
}

/// The strings of a JSON array (others, and non-arrays, give nothing).
pub fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Kinds defined by one CRD object (one per served version).
pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let (Some(plural), Some(kind)) = (names["plural"].as_str(), names["kind"].as_str()) else {
        return vec![];
    };
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_ascii_lowercase());
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| {
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .map(|cols| {
                    cols.iter()
                        .filter_map(|c| {
                            Some(PrinterColumn {
                                name: c["name"].as_str()?.to_string(),
                                type_: c["type"].as_str().unwrap_or("string").to_string(),
                                json_path: c["jsonPath"].as_str()?.to_string(),
                                priority: c["priority"].as_i64().unwrap_or(0),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut subresources = vec![];
            if v.pointer("/subresources/status").is_some() {
                subresources.push("status".to_string());
            }
            let scale = v.pointer("/subresources/scale").map(|s| ScalePaths {
                spec_replicas: s["specReplicasPath"]
                    .as_str()
                    .unwrap_or(".spec.replicas")
                    .into(),
                status_replicas: s["statusReplicasPath"]
                    .as_str()
                    .unwrap_or(".status.replicas")
                    .into(),
                label_selector: s["labelSelectorPath"].as_str().map(str::to_string),
            });
            if scale.is_some() {
                subresources.push("scale".to_string());
            }
            Some(ResourceType {
                group: group.to_string(),
                version: v["name"].as_str()?.to_string(),
                resource: plural.to_string(),
                singular: singular.clone(),
                kind: kind.to_string(),
                namespaced,
                short_names: str_list(&names["shortNames"]),
                categories: str_list(&names["categories"]),
                subresources,
                columns,
                scale_paths: scale,
                schema: v
                    .pointer("/schema/openAPIV3Schema")
                    .map(|s| std::sync::Arc::new(s.clone())),
                create_only: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_kinds_follow_served_versions_and_scope() {
        let crd = json!({"spec": {
        "group": "example.com", "scope": "Cluster",
        "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
        "versions": [
            {"name": "v1", "served": true, "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
             "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]},
            {"name": "v0", "served": false},
        ]}});
        let kinds = from_crd(&crd);
        assert_eq!(kinds.len(), 1);
        let k = &kinds[0];
        assert_eq!(
            (
                k.resource.as_str(),
                k.singular.as_str(),
                k.namespaced,
                k.has_status()
            ),
            ("widgets", "widget", false, true)
        );
        assert_eq!(k.columns[0].json_path, ".spec.size");
        assert_eq!(k.storage(), "example.com/widgets");
        assert_eq!(k.categories, ["all"]);
        assert_eq!(k.scale().unwrap().spec_replicas, ".spec.size");
    }

    #[test]
    fn shared_storage_and_qualified_names() {
        let b = builtins();
        let find = |g: &str, v: &str, r: &str| {
            b.iter()
                .find(|t| t.group == g && t.version == v && t.resource == r)
                .unwrap()
        };
        assert_eq!(find("events.k8s.io", "v1", "events").storage(), "events");
        assert_eq!(
            find("autoscaling", "v1", "horizontalpodautoscalers").storage(),
            find("autoscaling", "v2", "horizontalpodautoscalers").storage()
        );
        assert_eq!(
            find("apps", "v1", "deployments").qualified_kind(),
            "Deployment.apps"
        );
        assert!(find("apps", "v1", "deployments").scale().is_some());
        assert!(find("apps", "v1", "daemonsets").scale().is_none());
    }
}
