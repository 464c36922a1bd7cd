//! The built-in kinds the API serves, each with its strategy (a CRD's
//! kinds come from [`super::crd::from_crd`]).

use super::resource::{Builtin, ResourceType};

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
static BUILTINS: &[&Builtin] = &[
    &NAMESPACES,
    &NODES,
    &PODS,
    &POD_TEMPLATES,
    &REPLICATION_CONTROLLERS,
    &SERVICES,
    &ENDPOINTS,
    &SERVICE_ACCOUNTS,
    &SECRETS,
    &CONFIG_MAPS,
    &EVENTS,
    &PERSISTENT_VOLUMES,
    &PERSISTENT_VOLUME_CLAIMS,
    &RESOURCE_QUOTAS,
    &LIMIT_RANGES,
    &DEPLOYMENTS,
    &REPLICA_SETS,
    &STATEFUL_SETS,
    &DAEMON_SETS,
    &CONTROLLER_REVISIONS,
    &JOBS,
    &CRON_JOBS,
    &HORIZONTAL_POD_AUTOSCALERS,
    &HORIZONTAL_POD_AUTOSCALERS_V1,
    &LEASES,
    &ENDPOINT_SLICES,
    &EVENTS_API_EVENTS,
    &INGRESSES,
    &INGRESS_CLASSES,
    &NETWORK_POLICIES,
    &POD_DISRUPTION_BUDGETS,
    &SELF_SUBJECT_REVIEWS,
    &TOKEN_REVIEWS,
    &SELF_SUBJECT_REVIEWS_V1BETA1,
    &LOCAL_SUBJECT_ACCESS_REVIEWS,
    &SELF_SUBJECT_ACCESS_REVIEWS,
    &SELF_SUBJECT_RULES_REVIEWS,
    &SUBJECT_ACCESS_REVIEWS,
    &CLUSTER_ROLE_BINDINGS,
    &CLUSTER_ROLES,
    &ROLE_BINDINGS,
    &ROLES,
    &PRIORITY_CLASSES,
    &STORAGE_CLASSES,
    &CUSTOM_RESOURCE_DEFINITIONS,
    &API_SERVICES,
    &NODE_METRICS,
    &POD_METRICS,
];

pub static NAMESPACES: Builtin = builtin!(
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
);

pub static NODES: Builtin = builtin!(
    "",
    "v1",
    "nodes",
    "node",
    "Node",
    false,
    &["no"],
    &[],
    &["status", "proxy"],
    &core::NODE
);

pub static PODS: Builtin = builtin!(
    "",
    "v1",
    "pods",
    "pod",
    "Pod",
    true,
    &["po"],
    ALL,
    &[
        "status",
        "binding",
        "eviction",
        "ephemeralcontainers",
        "log",
        "exec",
        "attach",
        "portforward"
    ],
    &core::POD
);

pub static POD_TEMPLATES: Builtin = builtin!(
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
);

pub static REPLICATION_CONTROLLERS: Builtin = builtin!(
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
);

pub static SERVICES: Builtin = builtin!(
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
);

pub static ENDPOINTS: Builtin = builtin!(
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
);

pub static SERVICE_ACCOUNTS: Builtin = builtin!(
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
);

pub static SECRETS: Builtin = builtin!(
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
);

pub static CONFIG_MAPS: Builtin = builtin!(
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
);

pub static EVENTS: Builtin = builtin!(
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
);

pub static PERSISTENT_VOLUMES: Builtin = builtin!(
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
);

pub static PERSISTENT_VOLUME_CLAIMS: Builtin = builtin!(
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
);

pub static RESOURCE_QUOTAS: Builtin = builtin!(
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
);

pub static LIMIT_RANGES: Builtin = builtin!(
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
);

pub static DEPLOYMENTS: Builtin = builtin!(
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
);

pub static REPLICA_SETS: Builtin = builtin!(
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
);

pub static STATEFUL_SETS: Builtin = builtin!(
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
);

pub static DAEMON_SETS: Builtin = builtin!(
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
);

pub static CONTROLLER_REVISIONS: Builtin = builtin!(
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
);

pub static JOBS: Builtin = builtin!(
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
);

pub static CRON_JOBS: Builtin = builtin!(
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
);

pub static HORIZONTAL_POD_AUTOSCALERS: Builtin = builtin!(
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
);

pub static HORIZONTAL_POD_AUTOSCALERS_V1: Builtin = builtin!(
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
);

pub static LEASES: Builtin = builtin!(
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
);

pub static ENDPOINT_SLICES: Builtin = builtin!(
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
);

pub static EVENTS_API_EVENTS: Builtin = builtin!(
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
);

pub static INGRESSES: Builtin = builtin!(
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
);

pub static INGRESS_CLASSES: Builtin = builtin!(
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
);

pub static NETWORK_POLICIES: Builtin = builtin!(
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
);

pub static POD_DISRUPTION_BUDGETS: Builtin = builtin!(
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
);

pub static SELF_SUBJECT_REVIEWS: Builtin = builtin!(
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
);

pub static TOKEN_REVIEWS: Builtin = builtin!(
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
);

// kubectl 1.27 asks `auth whoami` of v1beta1 (same shape as v1).

pub static SELF_SUBJECT_REVIEWS_V1BETA1: Builtin = builtin!(
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
);

pub static LOCAL_SUBJECT_ACCESS_REVIEWS: Builtin = builtin!(
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
);

pub static SELF_SUBJECT_ACCESS_REVIEWS: Builtin = builtin!(
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
);

pub static SELF_SUBJECT_RULES_REVIEWS: Builtin = builtin!(
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
);

pub static SUBJECT_ACCESS_REVIEWS: Builtin = builtin!(
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
);

pub static CLUSTER_ROLE_BINDINGS: Builtin = builtin!(
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
);

pub static CLUSTER_ROLES: Builtin = builtin!(
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
);

pub static ROLE_BINDINGS: Builtin = builtin!(
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
);

pub static ROLES: Builtin = builtin!(
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
);

pub static PRIORITY_CLASSES: Builtin = builtin!(
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
);

pub static STORAGE_CLASSES: Builtin = builtin!(
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
);

pub static CUSTOM_RESOURCE_DEFINITIONS: Builtin = builtin!(
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
);

pub fn builtins() -> Vec<ResourceType> {
    BUILTINS.iter().map(|b| b.resource_type()).collect()
}

pub static API_SERVICES: Builtin = builtin!(
    "apiregistration.k8s.io",
    "v1",
    "apiservices",
    "apiservice",
    "APIService",
    false,
    &[],
    &["api-extensions"],
    STATUS,
    &super::apiregistration::API_SERVICE
);

// metrics.k8s.io: computed from the kubelets when read, never stored
// (`apiserver::resource_metrics`), as metrics-server serves them.

pub static NODE_METRICS: Builtin = builtin!(
    "metrics.k8s.io",
    "v1beta1",
    "nodes",
    "node",
    "NodeMetrics",
    false,
    &[],
    &[],
    &[],
    &super::metrics::NODE_METRICS
);

pub static POD_METRICS: Builtin = builtin!(
    "metrics.k8s.io",
    "v1beta1",
    "pods",
    "pod",
    "PodMetrics",
    true,
    &[],
    &[],
    &[],
    &super::metrics::POD_METRICS
);

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
