//! The built-in kinds the API serves, each with its strategy (a CRD's
//! kinds come from [`super::crd::from_crd`]).

use super::resource::{ResourceType, StrategyRef};
use super::strategy::Strategy;

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

use super::crd::{self, CRD_GROUP};
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
        &crd::CRD
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
            strategy: StrategyRef((b.strategy)()),
            builtin: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
