//! CustomResourceDefinitions: the CRD kind's strategy (kept as JSON, its
//! schemas passed through, its status computed on every write), and the
//! kinds each CRD defines.

use super::error::FieldError;
use super::printers::{column, name_cell, name_col};
use super::resource::{PrinterColumn, ResourceType, ScalePaths, StrategyRef};
use super::strategy::{Generic, Strategy};
use super::validation;
use crate::datastore::objects::str_list;
use serde_json::{json, Value};

pub const CRD_GROUP: &str = "apiextensions.k8s.io";

/// The finalizer that holds a deleted CRD until its resources are gone.
pub const CLEANUP: &str = "customresourcecleanup.apiextensions.k8s.io";

/// CustomResourceDefinitions: kept as JSON (schemas are passed through
/// untouched), checked for what serving the kind needs.
pub struct CrdStrategy;
pub static CRD: CrdStrategy = CrdStrategy;

impl Strategy for CrdStrategy {
    fn defines_kinds(&self) -> bool {
        true
    }

    /// A CRD's status is computed on every write (below).
    fn status_on_create(&self) -> bool {
        true
    }

    fn status_on_update(&self) -> bool {
        true
    }

    fn admit(
        &self,
        crd: &mut Value,
        old: Option<&Value>,
        errs: &mut Vec<FieldError>,
        _unknown: &mut Vec<String>,
    ) -> Result<(), String> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or("").to_string();
        let plural = spec["names"]["plural"].as_str().unwrap_or("").to_string();
        if group.is_empty() {
            errs.push(FieldError::required("spec.group", ""));
        }
        if plural.is_empty() {
            errs.push(FieldError::required("spec.names.plural", ""));
        }
        if spec["names"]["kind"].as_str().unwrap_or("").is_empty() {
            errs.push(FieldError::required("spec.names.kind", ""));
        }
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        if from_crd(crd).is_empty() && errs.is_empty() {
            errs.push(FieldError::invalid(
                "spec.versions",
                "",
                "must have exactly one storage version and at least one served version",
            ));
        }
        if let Some(old) = old {
            if old["spec"]["group"] != crd["spec"]["group"] {
                errs.push(validation::immutable("spec.group", &crd["spec"]["group"]));
            }
        }
        if old.is_none() {
            let meta = &mut crd["metadata"];
            let fins = meta["finalizers"].as_array().cloned().unwrap_or_default();
            if !fins.iter().any(|f| f == CLEANUP) {
                let mut fins = fins;
                fins.push(json!(CLEANUP));
                meta["finalizers"] = json!(fins);
            }
        }
        let names = crd["spec"]["names"].clone();
        let now = crate::datastore::objects::now_rfc3339();
        crd["status"] = json!({
            "acceptedNames": names,
            "storedVersions": crd["spec"]["versions"].as_array().map(|v| v.iter().filter(|v| v["storage"].as_bool().unwrap_or(false)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
        });
        Ok(())
    }

    fn columns(&self) -> Vec<Value> {
        vec![
            name_col(),
            column("Created At", "date", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![name_cell(obj), obj["metadata"]["creationTimestamp"].clone()]
    }

    fn schema(&self, gen: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(gen.subschema_for::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >())
    }
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
                read_only: false,
                strategy: StrategyRef(&Generic),
                builtin: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
