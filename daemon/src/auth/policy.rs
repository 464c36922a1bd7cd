//! The default ClusterRoles and ClusterRoleBindings, named and shaped as
//! upstream's bootstrap policy, reconciled by every server at start: a
//! missing one is created; one whose `rbac.authorization.kubernetes.io/autoupdate`
//! is not "false" gets back any default rule or subject it lost (what an
//! operator added stays).

use crate::registry::rbac::GROUP;
use crate::registry::{KubeError, Registry, WriteOptions};
use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;
use std::collections::BTreeMap;

/// The agents' controller identity (K3s's `system:k3s-controller`): its
/// pod network reads every Node's pod CIDR and address to route to them.
pub const RK3S_CONTROLLER: &str = "system:rk3s-controller";

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL_VERBS: &[&str] = &crate::registry::resource::VERBS;

fn strs(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strs(verbs),
        api_groups: Some(vec![group.to_string()]),
        resources: Some(strs(resources)),
        ..Default::default()
    }
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: strs(verbs),
        non_resource_urls: Some(strs(urls)),
        ..Default::default()
    }
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut l: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(l),
        annotations: Some(BTreeMap::from([(
            AUTOUPDATE.to_string(),
            "true".to_string(),
        )])),
        ..Default::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(rules),
        aggregation_rule: None,
    }
}

/// A role whose rules are those of the ClusterRoles labelled `aggregate-to-<to>`.
fn aggregated(name: &str, to: &str, labels: &[(&str, &str)]) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(vec![]),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some(BTreeMap::from([(format!("{AGG}{to}"), "true".into())])),
                ..Default::default()
            }]),
        }),
    }
}

/// Upstream's default ClusterRoles (those a K3s user meets).
pub fn cluster_roles() -> Vec<ClusterRole> {
    let agg_admin = format!("{AGG}admin");
    let agg_edit = format!("{AGG}edit");
    let agg_view = format!("{AGG}view");
    vec![
        role(
            "cluster-admin",
            &[],
            vec![rule(&["*"], "*", &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", "admin", &[]),
        aggregated("edit", "edit", &[(agg_admin.as_str(), "true")]),
        aggregated("view", "view", &[(agg_edit.as_str(), "true")]),
        role(
            "system:aggregate-to-admin",
            &[(agg_admin.as_str(), "true")],
            vec![
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["localsubjectaccessreviews"],
                ),
                rule(ALL_VERBS, GROUP, &["rolebindings", "roles"]),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[(agg_edit.as_str(), "true")],
            vec![
                rule(
                    READ,
                    "",
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], "", &["serviceaccounts"]),
                rule(
                    WRITE,
                    "",
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                rule(&["create"], "", &["pods/eviction"]),
                rule(
                    WRITE,
                    "",
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], "", &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    "apps",
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, "autoscaling", &["horizontalpodautoscalers"]),
                rule(WRITE, "batch", &["cronjobs", "jobs"]),
                rule(WRITE, "policy", &["poddisruptionbudgets"]),
                rule(
                    WRITE,
                    "networking.k8s.io",
                    &["ingresses", "networkpolicies"],
                ),
                rule(ALL_VERBS, "coordination.k8s.io", &["leases"]),
            ],
        ),
        // What K3s's metrics-server manifest adds, so the default roles
        // can read the metrics API rk3s serves itself.
        role(
            "system:aggregated-metrics-reader",
            &[
                (agg_view.as_str(), "true"),
                (agg_edit.as_str(), "true"),
                (agg_admin.as_str(), "true"),
            ],
            vec![rule(READ, "metrics.k8s.io", &["pods", "nodes"])],
        ),
        role(
            "system:aggregate-to-view",
            &[(agg_view.as_str(), "true")],
            vec![
                rule(
                    READ,
                    "",
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    READ,
                    "",
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(READ, "", &["namespaces"]),
                rule(READ, "discovery.k8s.io", &["endpointslices"]),
                rule(
                    READ,
                    "apps",
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(
                    READ,
                    "autoscaling",
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    "batch",
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(
                    READ,
                    "policy",
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(
                    READ,
                    "networking.k8s.io",
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    "authentication.k8s.io",
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        // Servers relay kubelet streams for each other (HA).
        role(
            "rk3s:kubelet-relay",
            &[],
            vec![urls(&["get"], &["/v1-rk3s/kubelet/*"])],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        role(RK3S_CONTROLLER, &[], vec![rule(READ, "", &["nodes"])]),
        role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], "authentication.k8s.io", &["tokenreviews"]),
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["subjectaccessreviews"],
                ),
            ],
        ),
    ]
}

fn group(name: &str) -> Subject {
    Subject {
        kind: "Group".into(),
        name: name.into(),
        api_group: Some(GROUP.into()),
        namespace: None,
    }
}

fn binding(name: &str, role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, &[]),
        role_ref: RoleRef {
            api_group: GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(subjects),
    }
}

pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let authenticated = || group("system:authenticated");
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            vec![group(super::MASTERS)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            vec![authenticated()],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            vec![authenticated()],
        ),
        binding(
            "rk3s:kubelet-relay",
            "rk3s:kubelet-relay",
            vec![group(super::SERVERS)],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![authenticated(), group("system:unauthenticated")],
        ),
        binding(
            RK3S_CONTROLLER,
            RK3S_CONTROLLER,
            vec![Subject {
                kind: "User".into(),
                name: RK3S_CONTROLLER.into(),
                api_group: Some(GROUP.into()),
                namespace: None,
            }],
        ),
        // Issuer discovery is for anyone authenticated.
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            vec![authenticated()],
        ),
    ]
}

/// Add what `want` has and `have` lacks: its rules (or subjects), labels,
/// annotations. `false` when nothing changes.
fn merge(have: &mut Value, want: &Value, list: &str) -> bool {
    if have
        .pointer(&format!(
            "/metadata/annotations/{}",
            AUTOUPDATE.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        == Some("false")
    {
        return false;
    }
    let before = have.clone();
    for m in ["labels", "annotations"] {
        if let Some(w) = want["metadata"][m].as_object() {
            for (k, v) in w {
                if have["metadata"][m].get(k).is_none() {
                    have["metadata"][m][k] = v.clone();
                }
            }
        }
    }
    if want.get("aggregationRule").is_some() {
        have["aggregationRule"] = want["aggregationRule"].clone();
    } else if let Some(items) = want[list].as_array() {
        for item in items {
            let present = have[list].as_array().is_some_and(|a| a.contains(item));
            if !present {
                if !have[list].is_array() {
                    have[list] = Value::Array(vec![]);
                }
                have[list].as_array_mut().expect("array").push(item.clone());
            }
        }
    }
    *have != before
}

async fn reconcile_one(
    reg: &Registry,
    resource: &str,
    want: Value,
    list: &str,
) -> Result<(), KubeError> {
    let rt = reg
        .find(GROUP, "v1", resource)
        .expect("RBAC kinds are built in");
    let name = want["metadata"]["name"].as_str().unwrap_or("").to_string();
    let opts = WriteOptions {
        field_manager: Some("rk3s-bootstrap".into()),
        ..Default::default()
    };
    for _ in 0..5 {
        match reg.get(&rt, None, &name).await {
            Err(KubeError::NotFound(_)) => match reg.create(&rt, None, want.clone(), &opts).await {
                Err(KubeError::AlreadyExists(_)) => continue,
                r => return r.map(|_| ()),
            },
            Err(e) => return Err(e),
            Ok(old) => {
                let mut new = old.clone();
                if !merge(&mut new, &want, list) {
                    return Ok(());
                }
                match reg.update(&rt, None, &name, &old, new, None, &opts).await {
                    Err(KubeError::Conflict(..)) => continue,
                    r => return r.map(|_| ()),
                }
            }
        }
    }
    Ok(())
}

/// Create or repair the default policy.
pub async fn reconcile(reg: &Registry) -> Result<(), KubeError> {
    for r in cluster_roles() {
        let mut v = serde_json::to_value(&r).expect("ClusterRole serializes");
        v["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
        v["kind"] = "ClusterRole".into();
        reconcile_one(reg, "clusterroles", v, "rules").await?;
    }
    for b in cluster_role_bindings() {
        let mut v = serde_json::to_value(&b).expect("ClusterRoleBinding serializes");
        v["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
        v["kind"] = "ClusterRoleBinding".into();
        reconcile_one(reg, "clusterrolebindings", v, "subjects").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::strategy::Strategy;

    #[test]
    fn defaults_are_valid_and_merge_keeps_additions() {
        for r in cluster_roles() {
            let mut v = serde_json::to_value(&r).unwrap();
            v["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
            v["kind"] = "ClusterRole".into();
            let (mut errs, mut unknown) = (vec![], vec![]);
            crate::registry::rbac::CLUSTER_ROLE
                .admit(&mut v, None, &mut errs, &mut unknown)
                .unwrap();
            assert!(errs.is_empty(), "{:?}: {errs:?}", r.metadata.name);
        }
        let want = serde_json::to_value(&cluster_role_bindings()[1]).unwrap();
        let mut have = want.clone();
        have["subjects"] =
            serde_json::json!([{"kind": "User", "name": "extra", "apiGroup": GROUP}]);
        assert!(merge(&mut have, &want, "subjects"));
        assert_eq!(have["subjects"].as_array().unwrap().len(), 2);
        assert!(!merge(&mut have, &want, "subjects"));
        have["metadata"]["annotations"][AUTOUPDATE] = "false".into();
        have["subjects"] = serde_json::json!([]);
        assert!(!merge(&mut have, &want, "subjects"));
    }
}
