//! The three patch types kubectl sends: JSON merge patch (RFC 7386), JSON
//! patch (RFC 6902), and strategic merge patch with the merge keys of the
//! built-in kinds rk3s serves.

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Split a JSON pointer into its parent pointer and last token.
fn split_pointer(path: &str) -> Result<(String, String), String> {
    if path.is_empty() {
        return Err("the root cannot be the target of this operation".into());
    }
    let i = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((path[..i].to_string(), unescape(&path[i + 1..])))
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let idx = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid array index {last:?}"))?
            };
            if idx > a.len() {
                return Err(format!("array index {idx} out of bounds at {parent:?}"));
            }
            a.insert(idx, value);
            Ok(())
        }
        _ => Err(format!("path {parent:?} does not exist")),
    }
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Some(Value::Array(a)) => {
            let idx: usize = last
                .parse()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if idx >= a.len() {
                return Err(format!("array index {idx} out of bounds at {parent:?}"));
            }
            Ok(a.remove(idx))
        }
        _ => Err(format!("path {parent:?} does not exist")),
    }
}

/// RFC 6902. All operations apply or none do (the caller keeps the original).
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch must be an array of operations")?;
    for (i, op) in ops.iter().enumerate() {
        let kind = op["op"]
            .as_str()
            .ok_or_else(|| format!("operation {i} has no \"op\""))?;
        let path = op["path"]
            .as_str()
            .ok_or_else(|| format!("operation {i} has no \"path\""))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("operation {i} ({kind}) has no \"value\""))
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| format!("operation {i} ({kind}) has no \"from\""))
        };
        match kind {
            "add" => add_at(doc, path, value()?)?,
            "remove" => {
                remove_at(doc, path)?;
            }
            "replace" => {
                if doc.pointer(path).is_none() {
                    return Err(format!("operation {i}: path {path:?} does not exist"));
                }
                *doc.pointer_mut(path).expect("checked") = value()?;
            }
            "move" => {
                let v = remove_at(doc, from()?)?;
                add_at(doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| format!("operation {i}: from path does not exist"))?;
                add_at(doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("operation {i}: test failed at {path:?}"));
                }
            }
            other => return Err(format!("operation {i}: unknown op {other:?}")),
        }
    }
    Ok(())
}

/// Merge key of a list field in the built-in kinds (upstream's
/// `patchMergeKey` tags). Lists without one are replaced whole.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" | "addresses" => "type",
        "taints" => "key",
        "ownerReferences" => "uid",
        "ports" => "port",
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => "name",
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
