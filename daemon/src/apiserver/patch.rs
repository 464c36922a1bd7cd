//! The three patch types kubectl sends: JSON merge patch (RFC 7386) and
//! JSON patch (RFC 6902) by the json-patch crate, and strategic merge patch
//! with the merge keys of the built-in kinds rk3s serves. Strategic merge
//! is written here: no maintained Rust crate implements it, and its merge
//! keys are upstream's struct tags, which only the kinds themselves know.

use crate::registry::{KubeError, ResourceType};
use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// RFC 6902, by the json-patch crate. The caller patches a copy and keeps
/// the original on error, so the crate's undo log would be wasted work
/// (and its undo path is the one place it panics).
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    if !patch.is_array() {
        return Err("a JSON patch must be an array of operations".into());
    }
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("not a JSON patch: {e}"))?;
    json_patch::patch_unsafe(doc, &ops).map_err(|e| e.to_string())
}

/// Merge key of a list field in the built-in kinds (upstream's
/// `patchMergeKey` tags). Lists without one are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" | "addresses" => "type",
        "taints" => "key",
        "ownerReferences" => "uid",
        "ports" => "port",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        _ => return None,
    })
}

/// Lists of scalars that strategic merge unions instead of replacing.
fn is_merged_primitive_list(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch, as kubectl apply sends for built-in kinds.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut v = patch.clone();
            v.as_object_mut().expect("object").remove("$patch");
            *target = v;
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let mut retain: Option<Vec<String>> = None;
    for (k, v) in p {
        let t = target.as_object_mut().expect("object");
        if k == "$retainKeys" {
            retain = Some(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
            );
            continue;
        }
        if k.starts_with("$setElementOrder/") {
            continue; // order is not meaningful for the kinds served
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (t.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match v {
            Value::Object(_) => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v)?,
            Value::Array(items) => {
                if let Some(key) = merge_key(k) {
                    let cur = t.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                    if !cur.is_array() {
                        *cur = Value::Array(vec![]);
                    }
                    merge_list(cur.as_array_mut().expect("array"), items, key)?;
                } else if is_merged_primitive_list(k) {
                    let cur = t.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                    if let Value::Array(c) = cur {
                        for it in items {
                            if !c.contains(it) {
                                c.push(it.clone());
                            }
                        }
                    }
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(keep) = retain {
        if let Some(t) = target.as_object_mut() {
            t.retain(|k, _| keep.iter().any(|x| x == k));
        }
    }
    Ok(())
}

fn merge_list(cur: &mut Vec<Value>, items: &[Value], key: &str) -> Result<(), String> {
    for it in items {
        let Some(kv) = it.get(key) else {
            return Err(format!("list item lacks its merge key {key:?}"));
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(kv));
        if it.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                cur.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => strategic_merge(&mut cur[i], it)?,
            None => {
                let mut v = Value::Null;
                strategic_merge(&mut v, it)?;
                cur.push(v);
            }
        }
    }
    Ok(())
}

/// Apply a patch of content type `ctype` to `target`.
pub fn apply_patch(
    rt: &ResourceType,
    ctype: &str,
    target: &mut Value,
    patch: &Value,
    name: &str,
) -> Result<(), KubeError> {
    let invalid = |m: String| KubeError::Invalid {
        kind: rt.qualified_kind(),
        name: name.to_string(),
        errors: vec![crate::registry::FieldError::invalid("patch", "", &m)],
    };
    if ctype.starts_with("application/merge-patch+json") {
        merge_patch(target, patch);
    } else if ctype.starts_with("application/json-patch+json") {
        json_patch(target, patch).map_err(invalid)?;
    } else if ctype.starts_with("application/strategic-merge-patch+json") {
        if !rt.is_builtin() {
            return Err(KubeError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json ({} is a custom resource)",
                rt.resource
            )));
        }
        strategic_merge(target, patch).map_err(invalid)?;
    } else {
        return Err(KubeError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ctype:?})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut d = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut d, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(d, json!({"a": "z", "c": {"d": "e"}}));
        merge_patch(&mut d, &json!({"list": [1, 2]}));
        merge_patch(&mut d, &json!({"list": [3]}));
        assert_eq!(d["list"], json!([3]));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
                {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "remove", "path": "/list/0"},
                {"op": "test", "path": "/list/0", "value": 2},
                {"op": "copy", "from": "/list", "path": "/copy"},
                {"op": "move", "from": "/copy", "path": "/moved"},
            ]),
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"a": "x", "b/c": "2"}));
        assert_eq!(d["list"], json!([2, 3]));
        assert_eq!(d["moved"], json!([2, 3]));
        assert!(d.get("copy").is_none());
        assert!(json_patch(
            &mut d,
            &json!([{"op": "test", "path": "/list/0", "value": 9}])
        )
        .is_err());
        assert!(json_patch(
            &mut d,
            &json!([{"op": "replace", "path": "/nope", "value": 1}])
        )
        .is_err());
        assert!(json_patch(&mut d, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn strategic_merge_by_key_and_directives() {
        let mut node = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"taints": [{"key": "k1", "effect": "NoSchedule"}, {"key": "k2", "effect": "NoExecute"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        });
        strategic_merge(
            &mut node,
            &json!({
                "metadata": {"labels": {"b": null, "c": "3"}, "finalizers": ["y"]},
                "spec": {"taints": [{"key": "k1", "effect": "NoExecute"}, {"key": "k2", "$patch": "delete"}],
                         "$setElementOrder/taints": [{"key": "k1"}]},
                "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]},
            }),
        )
        .unwrap();
        assert_eq!(node["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(node["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            node["spec"]["taints"],
            json!([{"key": "k1", "effect": "NoExecute"}])
        );
        assert_eq!(node["status"]["conditions"].as_array().unwrap().len(), 2);
        // Lists without a merge key are replaced.
        let mut cm = json!({"data": {"x": "1"}, "items": [1, 2]});
        strategic_merge(&mut cm, &json!({"items": [3], "$retainKeys": ["items"]})).unwrap();
        assert_eq!(cm, json!({"items": [3]}));
        let mut f = json!({"metadata": {"finalizers": ["a", "b"]}});
        strategic_merge(
            &mut f,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(f["metadata"]["finalizers"], json!(["b"]));
    }
}
