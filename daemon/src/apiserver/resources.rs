//! The kinds the API serves: built-in ones, plus one per served version of
//! every CustomResourceDefinition in the datastore. Also the discovery
//! documents kubectl reads to map `kubectl get <thing>` onto a URL.

use crate::objects::Objects;
use serde_json::{json, Value};

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
    pub has_status: bool,
    pub columns: Vec<PrinterColumn>,
}

impl ResourceType {
    fn builtin(
        group: &str,
        resource: &str,
        singular: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
        status: bool,
    ) -> Self {
        Self {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            singular: singular.into(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            has_status: status,
            columns: vec![],
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Datastore directory of this kind. Core kinds keep upstream's short
    /// names (`/registry/nodes/...`); others are qualified by group.
    pub fn storage(&self) -> String {
        if self.group.is_empty() || self.group == "coordination.k8s.io" {
            self.resource.clone()
        } else {
            format!("{}/{}", self.group, self.resource)
        }
    }

    pub fn is_builtin(&self) -> bool {
        builtins()
            .iter()
            .any(|b| b.group == self.group && b.resource == self.resource)
    }
}

pub const CRD_GROUP: &str = "apiextensions.k8s.io";

pub fn builtins() -> Vec<ResourceType> {
    vec![
        ResourceType::builtin(
            "",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            true,
        ),
        ResourceType::builtin("", "nodes", "node", "Node", false, &["no"], true),
        ResourceType::builtin("", "secrets", "secret", "Secret", true, &[], false),
        ResourceType::builtin(
            "",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            false,
        ),
        ResourceType::builtin("", "events", "event", "Event", true, &["ev"], false),
        ResourceType::builtin("", "services", "service", "Service", true, &["svc"], true),
        ResourceType::builtin(
            "",
            "endpoints",
            "endpoints",
            "Endpoints",
            true,
            &["ep"],
            false,
        ),
        ResourceType::builtin(
            "coordination.k8s.io",
            "leases",
            "lease",
            "Lease",
            true,
            &[],
            false,
        ),
        ResourceType::builtin(
            CRD_GROUP,
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ),
    ]
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
    let short: Vec<String> = names["shortNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
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
            Some(ResourceType {
                group: group.to_string(),
                version: v["name"].as_str()?.to_string(),
                resource: plural.to_string(),
                singular: singular.clone(),
                kind: kind.to_string(),
                namespaced,
                short_names: short.clone(),
                has_status: v.pointer("/subresources/status").is_some(),
                columns,
            })
        })
        .collect()
}

/// Everything served right now: built-ins and the kinds of every CRD.
pub async fn all(objects: &Objects) -> Vec<ResourceType> {
    let mut out = builtins();
    if let Ok((_, crds)) = objects
        .list(&format!("{CRD_GROUP}/customresourcedefinitions"), None)
        .await
    {
        for crd in &crds {
            out.extend(from_crd(crd));
        }
    }
    out
}

pub async fn find(
    objects: &Objects,
    group: &str,
    version: &str,
    resource: &str,
) -> Option<ResourceType> {
    all(objects)
        .await
        .into_iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn verbs_for(r: &ResourceType) -> Vec<&'static str> {
    if r.resource == "nodes" || r.resource == "namespaces" {
        // No deletecollection on cluster objects kubectl treats carefully.
        VERBS
            .iter()
            .copied()
            .filter(|v| *v != "deletecollection")
            .collect()
    } else {
        VERBS.to_vec()
    }
}

/// Group versions in discovery order: core first, then groups by name.
fn group_versions(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in types {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone());
                }
            }
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    groups.sort_by(|a, b| (!a.0.is_empty(), &a.0).cmp(&(!b.0.is_empty(), &b.0)));
    groups
}

/// Aggregated discovery (apidiscovery.k8s.io/v2) for `/api` (`core` = true) or `/apis`.
pub fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let items: Vec<Value> = group_versions(types)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == g && t.version == *v)
                        .map(|t| {
                            let mut r = json!({
                                "resource": t.resource,
                                "singularResource": t.singular,
                                "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                                "verbs": verbs_for(t),
                            });
                            if !t.short_names.is_empty() {
                                r["shortNames"] = json!(t.short_names);
                            }
                            if t.has_status {
                                r["subresources"] = json!([{
                                    "subresource": "status",
                                    "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                                    "verbs": ["get", "patch", "update"],
                                }]);
                            }
                            r
                        })
                        .collect();
                    json!({"version": v, "freshness": "Current", "resources": resources})
                })
                .collect();
            let mut item = json!({"metadata": {}, "versions": versions});
            if !core {
                item["metadata"]["name"] = json!(g);
            }
            item
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub fn legacy_api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub fn legacy_group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = group_versions(types)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn legacy_group(types: &[ResourceType], group: &str) -> Option<Value> {
    let (_, vs) = group_versions(types)
        .into_iter()
        .find(|(g, _)| g == group)?;
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": versions[0]}),
    )
}

pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut r = json!({
            "name": t.resource,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": verbs_for(t),
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        resources.push(r);
        if t.has_status {
            resources.push(json!({"name": format!("{}/status", t.resource), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    (!resources.is_empty()).then(|| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_kinds_follow_served_versions_and_scope() {
        let crd = json!({"spec": {
        "group": "example.com", "scope": "Cluster",
        "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {"name": "v1", "served": true, "subresources": {"status": {}},
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
                k.has_status
            ),
            ("widgets", "widget", false, true)
        );
        assert_eq!(k.columns[0].json_path, ".spec.size");
        assert_eq!(k.storage(), "example.com/widgets");
    }

    #[test]
    fn discovery_lists_core_and_groups() {
        let types = builtins();
        let core = aggregated(&types, true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert!(core["items"][0]["metadata"].get("name").is_none());
        let groups = aggregated(&types, false);
        let names: Vec<&str> = groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["apiextensions.k8s.io", "coordination.k8s.io"]);
        let rl = resource_list(&types, "", "v1").unwrap();
        assert!(rl["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "nodes/status"));
    }
}
