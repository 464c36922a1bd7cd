//! Discovery documents kubectl reads to map `kubectl get <thing>` onto a
//! URL: aggregated (apidiscovery.k8s.io/v2) and the legacy ones, built from
//! the registry's kinds.

use crate::registry::ResourceType;
use serde_json::{json, Value};

use crate::registry::resource::VERBS;

fn verbs_for(r: &ResourceType) -> Vec<&'static str> {
    if r.create_only {
        vec!["create"]
    } else if r.read_only {
        vec!["get", "list"]
    } else if r.is(&crate::registry::kinds::NAMESPACES) {
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

/// The kind a subresource answers with, and its verbs.
fn subresource_shape(t: &ResourceType, sub: &str) -> (Value, Vec<&'static str>) {
    match sub {
        "scale" => (
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            vec!["get", "patch", "update"],
        ),
        "binding" => (
            json!({"group": "", "version": "v1", "kind": "Binding"}),
            vec!["create"],
        ),
        "eviction" => (
            json!({"group": "policy", "version": "v1", "kind": "Eviction"}),
            vec!["create"],
        ),
        "token" => (
            json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}),
            vec!["create"],
        ),
        "log" => (
            json!({"group": t.group, "version": t.version, "kind": t.kind}),
            vec!["get"],
        ),
        // Upstream lists these with the options kind they take.
        "exec" => (
            json!({"group": "", "version": "v1", "kind": "PodExecOptions"}),
            vec!["create", "get"],
        ),
        "attach" => (
            json!({"group": "", "version": "v1", "kind": "PodAttachOptions"}),
            vec!["create", "get"],
        ),
        "portforward" => (
            json!({"group": "", "version": "v1", "kind": "PodPortForwardOptions"}),
            vec!["create", "get"],
        ),
        "proxy" => (
            json!({"group": "", "version": "v1", "kind": "NodeProxyOptions"}),
            vec!["create", "delete", "get", "patch", "update"],
        ),
        "finalize" => (
            json!({"group": t.group, "version": t.version, "kind": t.kind}),
            vec!["update"],
        ),
        _ => (
            json!({"group": t.group, "version": t.version, "kind": t.kind}),
            vec!["get", "patch", "update"],
        ),
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
                            if !t.categories.is_empty() {
                                r["categories"] = json!(t.categories);
                            }
                            let subs: Vec<Value> = t
                                .subresources
                                .iter()
                                .map(|s| {
                                    let (kind, verbs) = subresource_shape(t, s);
                                    json!({"subresource": s, "responseKind": kind, "verbs": verbs})
                                })
                                .collect();
                            if !subs.is_empty() {
                                r["subresources"] = json!(subs);
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
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        for s in &t.subresources {
            let (kind, verbs) = subresource_shape(t, s);
            let mut sr = json!({"name": format!("{}/{s}", t.resource), "singularName": "", "namespaced": t.namespaced, "kind": kind["kind"], "verbs": verbs});
            if kind["group"] != json!(t.group) || kind["version"] != json!(t.version) {
                sr["group"] = kind["group"].clone();
                sr["version"] = kind["version"].clone();
            }
            resources.push(sr);
        }
    }
    (!resources.is_empty()).then(|| json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::kinds::builtins;

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
        assert!(
            names.contains(&"apps") && names.contains(&"batch"),
            "{names:?}"
        );
        let rl = resource_list(&types, "", "v1").unwrap();
        let res = rl["resources"].as_array().unwrap();
        assert!(res.iter().any(|r| r["name"] == "nodes/status"));
        let pods = res.iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["categories"], json!(["all"]));
        let eviction = res.iter().find(|r| r["name"] == "pods/eviction").unwrap();
        assert_eq!(eviction["group"], "policy");
        let apps = resource_list(&types, "apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["kind"], "Scale");
        // autoscaling/v2 is preferred (listed first).
        let list = legacy_group_list(&types);
        let autoscaling = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "autoscaling")
            .unwrap();
        assert_eq!(autoscaling["preferredVersion"]["version"], "v2");
    }
}
