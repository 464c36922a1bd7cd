//! Admission that needs other objects or the requester's permissions,
//! registered with the registry so every writer goes through it:
//! - ServiceAccount (pods): `serviceAccountName` defaults to `default`, the
//!   account must exist, and unless automounting is off the pod gets the
//!   projected `kube-api-access-<suffix>` volume (token, `ca.crt` from
//!   `kube-root-ca.crt`, namespace) mounted in every container.
//! - Priority (pods): `priority` and `preemptionPolicy` come from the
//!   pod's `priorityClassName`, or from the global default class when it
//!   names none (priority 0 without one); a class that does not exist, or
//!   a priority given that differs from the class's, is refused.
//! - NodeRestriction: a node may not change its own taints or the
//!   `node-restriction.kubernetes.io/` labels.
//! - RBAC escalation: a Role or ClusterRole may only grant what its writer
//!   holds, and a binding only a role its writer holds, unless the writer
//!   has `escalate` / `bind` on that role (upstream's rule).

use super::rbac::{describe, go_quoted, uncovered};
use super::{Auth, Request, MASTERS};
use crate::datastore::objects::{Objects, Ref};
use crate::registry::admission::{Admission, Write};
use crate::registry::error::Subject;
use crate::registry::rbac::GROUP;
use crate::registry::{kinds, KubeError, UserInfo};
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Upstream's projected token lifetime (an hour plus seven seconds, so a
/// kubelet can tell it was defaulted).
const PROJECTED_EXPIRATION: i64 = 3607;

pub struct Admit {
    pub auth: Arc<Auth>,
    pub objects: Objects,
}

fn name_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    m["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or(m["generateName"].as_str())
        .unwrap_or("")
        .to_string()
}

impl Admit {
    /// The service account a new pod runs as, read from the datastore; a
    /// namespace made a moment ago may not have its `default` yet, so that
    /// one is waited for briefly.
    async fn service_account(&self, ns: &str, sa: &str) -> Result<Option<Value>, KubeError> {
        let r = Ref::namespaced("serviceaccounts", ns, sa);
        for attempt in 0..20 {
            match self.objects.get(&r).await {
                Ok(Some(v)) => return Ok(Some(v)),
                Ok(None) if sa == "default" && attempt < 19 => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(KubeError::Internal(e.to_string())),
            }
        }
        Ok(None)
    }

    async fn admit_pod(&self, ns: &str, pod: &mut Value) -> Result<(), KubeError> {
        let mirror = pod
            .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
            .is_some();
        if mirror || !pod["spec"].is_object() {
            return Ok(());
        }
        let spec = &mut pod["spec"];
        let sa = match spec["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            Some(s) => s.to_string(),
            None => spec["serviceAccount"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string(),
        };
        spec["serviceAccountName"] = json!(sa);
        let Some(account) = self.service_account(ns, &sa).await? else {
            return Err(KubeError::forbidden(
                Subject::new("", "pods", &name_of(pod)),
                format!(
                    "error looking up service account {ns}/{sa}: serviceaccount {sa:?} not found"
                ),
            ));
        };
        let spec = &mut pod["spec"];
        let automount = spec["automountServiceAccountToken"]
            .as_bool()
            .or(account["automountServiceAccountToken"].as_bool())
            .unwrap_or(true);
        if !automount {
            return Ok(());
        }
        let containers = ["initContainers", "containers", "ephemeralContainers"];
        let mounted = containers.iter().any(|c| {
            spec[c].as_array().into_iter().flatten().any(|c| {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["mountPath"] == SA_MOUNT_PATH)
            })
        });
        if mounted {
            return Ok(());
        }
        let volume = format!(
            "kube-api-access-{}",
            crate::registry::store::random_suffix()
        );
        let projected = json!({
            "name": volume,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": PROJECTED_EXPIRATION, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        });
        match spec["volumes"].as_array_mut() {
            Some(v) => v.push(projected),
            None => spec["volumes"] = json!([projected]),
        }
        let mount = json!({"name": volume, "readOnly": true, "mountPath": SA_MOUNT_PATH});
        for c in ["initContainers", "containers"] {
            for container in spec[c].as_array_mut().into_iter().flatten() {
                match container["volumeMounts"].as_array_mut() {
                    Some(m) => m.push(mount.clone()),
                    None => container["volumeMounts"] = json!([mount.clone()]),
                }
            }
        }
        Ok(())
    }

    fn allowed(&self, user: &UserInfo, r: &Request<'_>) -> bool {
        self.auth.decide(user, r).allowed()
    }

    fn escalation(&self, user: &UserInfo, what: Subject, missing: &[PolicyRule]) -> KubeError {
        let rules: Vec<String> = missing.iter().map(describe).collect();
        KubeError::forbidden(
            what,
            format!(
            "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            go_quoted(&user.groups),
            rules.join("\n")
        ),
        )
    }

    fn check_role(&self, w: &Write<'_>, user: &UserInfo, obj: &Value) -> Result<(), KubeError> {
        let ns = w.namespace.unwrap_or("");
        let name = name_of(obj);
        let what = Subject::new(GROUP, &w.rt.resource, &name);
        let escalate = Request::resource("escalate", GROUP, &w.rt.resource, "", ns, &name);
        if self.allowed(user, &escalate) {
            return Ok(());
        }
        if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
            return Err(KubeError::forbidden(
                what,
                "must have cluster-admin privileges to use the aggregationRule",
            ));
        }
        let rules: Vec<PolicyRule> =
            serde_json::from_value(obj["rules"].clone()).unwrap_or_default();
        if let Some(old) = w.old {
            let before: Vec<PolicyRule> =
                serde_json::from_value(old["rules"].clone()).unwrap_or_default();
            if before == rules {
                return Ok(());
            }
        }
        let missing = uncovered(&self.auth.rbac.rules_for(user, ns), &rules);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(self.escalation(user, what, &missing))
        }
    }

    fn check_binding(&self, w: &Write<'_>, user: &UserInfo, obj: &Value) -> Result<(), KubeError> {
        if w.old.is_some() {
            // roleRef cannot change; subjects may without a check, as upstream.
            return Ok(());
        }
        let ns = w.namespace.unwrap_or("");
        let name = name_of(obj);
        let what = Subject::new(GROUP, &w.rt.resource, &name);
        let Ok(role_ref) = serde_json::from_value::<RoleRef>(obj["roleRef"].clone()) else {
            return Ok(());
        };
        let role_resource = if role_ref.kind == "Role" {
            "roles"
        } else {
            "clusterroles"
        };
        let bind = Request::resource("bind", GROUP, role_resource, "", ns, &role_ref.name);
        if self.allowed(user, &bind) {
            return Ok(());
        }
        let role_ns = (role_ref.kind == "Role").then_some(ns);
        let Some(rules) = self
            .auth
            .rbac
            .role_rules(&role_ref.kind, role_ns, &role_ref.name)
        else {
            return Err(KubeError::forbidden(
                what,
                format!(
                    "{}.{GROUP} {:?} not found",
                    role_ref.kind.to_ascii_lowercase(),
                    role_ref.name
                ),
            ));
        };
        let missing = uncovered(&self.auth.rbac.rules_for(user, ns), &rules);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(self.escalation(user, what, &missing))
        }
    }
}

/// Labels only the cluster's administrators may set on nodes.
const RESTRICTED_LABELS: &str = "node-restriction.kubernetes.io/";

/// NodeRestriction on a node's update of its own Node (the authorizer has
/// already limited it to its own): it may not change its taints or the
/// labels kept for administrators.
fn node_restriction(node: &str, old: &Value, new: &Value) -> Result<(), KubeError> {
    if old.pointer("/spec/taints") != new.pointer("/spec/taints") {
        return Err(KubeError::forbidden(
            Subject::new("", "nodes", node),
            format!("node {node:?} is not allowed to modify taints"),
        ));
    }
    let labels = |v: &Value| -> Vec<(String, Value)> {
        v.pointer("/metadata/labels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(RESTRICTED_LABELS))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (before, after) = (labels(old), labels(new));
    if before != after {
        let changed: std::collections::BTreeSet<String> = before
            .iter()
            .chain(after.iter())
            .filter(|kv| !(before.contains(kv) && after.contains(kv)))
            .map(|(k, _)| k.clone())
            .collect();
        let changed: Vec<String> = changed.into_iter().collect();
        return Err(KubeError::forbidden(
            Subject::new("", "nodes", node),
            format!("is not allowed to modify labels: {}", changed.join(", ")),
        ));
    }
    Ok(())
}

const PRIORITY_CLASSES: &str = "scheduling.k8s.io/priorityclasses";

impl Admit {
    /// The PriorityClass a pod without a class name gets: the global
    /// default with the lowest value, as upstream picks among several.
    async fn default_priority_class(&self) -> Result<Option<Value>, KubeError> {
        let (_, classes) = self
            .objects
            .list(PRIORITY_CLASSES, None)
            .await
            .map_err(|e| KubeError::Internal(e.to_string()))?;
        Ok(classes
            .into_iter()
            .filter(|c| c["globalDefault"] == true)
            .min_by_key(|c| c["value"].as_i64().unwrap_or(0)))
    }

    /// Upstream's Priority plugin on a new pod (see the module's comment).
    async fn admit_priority(&self, pod: &mut Value) -> Result<(), KubeError> {
        if !pod["spec"].is_object() {
            return Ok(());
        }
        let forbidden = |pod: &Value, why: String| {
            KubeError::forbidden(Subject::new("", "pods", &name_of(pod)), why)
        };
        let named = pod["spec"]["priorityClassName"]
            .as_str()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let class = match &named {
            Some(name) => {
                let r = Ref::cluster(PRIORITY_CLASSES, name);
                match self.objects.get(&r).await {
                    Ok(Some(c)) => Some(c),
                    Ok(None) => {
                        return Err(forbidden(
                            pod,
                            format!("no PriorityClass with name {name} was found"),
                        ))
                    }
                    Err(e) => return Err(KubeError::Internal(e.to_string())),
                }
            }
            None => self.default_priority_class().await?,
        };
        let value = class
            .as_ref()
            .and_then(|c| c["value"].as_i64())
            .unwrap_or(0);
        let spec = &mut pod["spec"];
        if let Some(given) = spec["priority"].as_i64().filter(|g| *g != value) {
            return Err(forbidden(pod, format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name")));
        }
        spec["priority"] = json!(value);
        if let Some(c) = &class {
            spec["priorityClassName"] = c["metadata"]["name"].clone();
        }
        let policy = class
            .as_ref()
            .and_then(|c| c["preemptionPolicy"].as_str())
            .map(str::to_string);
        if let Some(policy) = policy {
            if let Some(given) = spec["preemptionPolicy"].as_str().filter(|g| *g != policy) {
                let why = format!("the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name");
                return Err(forbidden(pod, why));
            }
            pod["spec"]["preemptionPolicy"] = json!(policy);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Admission for Admit {
    async fn mutate(&self, w: &Write<'_>, obj: &mut Value) -> Result<(), KubeError> {
        if w.rt.is(&kinds::PODS) && w.old.is_none() {
            self.admit_pod(w.namespace.unwrap_or(""), obj).await?;
            return self.admit_priority(obj).await;
        }
        Ok(())
    }

    async fn validate(&self, w: &Write<'_>, obj: &Value) -> Result<(), KubeError> {
        let Some(user) = w.user.filter(|u| !u.in_group(MASTERS)) else {
            return Ok(());
        };
        let rt = w.rt;
        if rt.is(&kinds::ROLES) || rt.is(&kinds::CLUSTER_ROLES) {
            self.check_role(w, user, obj)
        } else if rt.is(&kinds::ROLE_BINDINGS) || rt.is(&kinds::CLUSTER_ROLE_BINDINGS) {
            self.check_binding(w, user, obj)
        } else if rt.is(&kinds::NODES) {
            match (user.node_name(), w.old) {
                (Some(node), Some(old)) => node_restriction(node, old, obj),
                _ => Ok(()),
            }
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_their_hands_off_taints_and_restricted_labels() {
        let old = json!({"metadata": {"labels": {"a": "1", "node-restriction.kubernetes.io/zone": "x"}}, "spec": {}});
        let mut ok = old.clone();
        ok["metadata"]["labels"]["a"] = json!("2");
        assert!(node_restriction("n", &old, &ok).is_ok());
        let mut label = old.clone();
        label["metadata"]["labels"]["node-restriction.kubernetes.io/zone"] = json!("y");
        let e = node_restriction("n", &old, &label).unwrap_err().to_string();
        assert!(
            e.contains("is not allowed to modify labels: node-restriction.kubernetes.io/zone"),
            "{e}"
        );
        let mut taint = old.clone();
        taint["spec"]["taints"] = json!([{"key": "k", "effect": "NoSchedule"}]);
        assert!(node_restriction("n", &old, &taint)
            .unwrap_err()
            .to_string()
            .contains("taints"));
    }
}
