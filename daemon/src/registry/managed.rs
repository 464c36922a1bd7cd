//! Field management: who set which field (`metadata.managedFields`), and
//! server-side apply on top of it.
//!
//! A field set is upstream's FieldsV1 tree: `f:<name>` for an object field,
//! `k:{"name":"c"}` for an item of a list keyed by a merge key, `v:<json>`
//! for an item of a set-like list, `.` for a keyed item itself; a leaf is
//! an empty object. Every write through the registry with a field manager
//! records the fields it changed under that manager (operation `Update`)
//! and takes them from the others; an apply (operation `Apply`) declares a
//! whole set: fields it owned and no longer declares are removed, and
//! fields another manager set to a different value are conflicts unless
//! forced.

use super::error::KubeError;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ListType {
    /// Items are identified by one key field.
    Map(&'static str),
    /// Items are scalars, each present or not.
    Set,
    /// The list is one value.
    Atomic,
}

/// Merge semantics of the built-in kinds' lists (upstream's
/// `listType`/`patchMergeKey` tags). Ports are keyed by `containerPort` in
/// containers and by `port` elsewhere; lists not listed are atomic.
pub fn list_type(field: &str, items: &[Value]) -> ListType {
    match field {
        "finalizers" => ListType::Set,
        "conditions" | "addresses" => ListType::Map("type"),
        "taints" => ListType::Map("key"),
        "ownerReferences" => ListType::Map("uid"),
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => {
            ListType::Map("containerPort")
        }
        "ports" if items.iter().all(|i| i.get("port").is_some()) => ListType::Map("port"),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => ListType::Map("name"),
        "volumeMounts" => ListType::Map("mountPath"),
        _ => ListType::Atomic,
    }
}

/// Which part of an object a write manages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Part {
    /// Everything but status (and identity/system metadata).
    Main,
    /// Only status.
    Status,
}

/// A FieldsV1 tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(BTreeMap<String, Fields>);

pub type Path = Vec<String>;

impl Fields {
    pub fn from_json(v: &Value) -> Self {
        Fields(
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), Fields::from_json(v)))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields `obj` sets, within `part`.
    pub fn of_object(obj: &Value, part: Part) -> Self {
        let mut out = Fields::default();
        let Some(m) = obj.as_object() else {
            return out;
        };
        for (k, v) in m {
            match (k.as_str(), part) {
                ("status", Part::Status) | ("metadata", Part::Main) => {}
                ("apiVersion" | "kind" | "status", Part::Main) => continue,
                (_, Part::Status) => continue,
                _ => {}
            }
            let child = if k == "metadata" {
                let mut meta = Fields::default();
                for key in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                        meta.0.insert(format!("f:{key}"), Fields::of_value(key, x));
                    }
                }
                if meta.is_empty() {
                    continue;
                }
                meta
            } else {
                Fields::of_value(k, v)
            };
            out.0.insert(format!("f:{k}"), child);
        }
        out
    }

    fn of_value(field: &str, v: &Value) -> Self {
        match v {
            Value::Object(m) => Fields(
                m.iter()
                    .filter(|(_, x)| !x.is_null())
                    .map(|(k, x)| (format!("f:{k}"), Fields::of_value(k, x)))
                    .collect(),
            ),
            Value::Array(items) => match list_type(field, items) {
                ListType::Atomic => Fields::default(),
                ListType::Set => Fields(
                    items
                        .iter()
                        .map(|i| (format!("v:{i}"), Fields::default()))
                        .collect(),
                ),
                ListType::Map(key) => Fields(
                    items
                        .iter()
                        .filter_map(|i| {
                            let kv = i.get(key)?;
                            let mut f = Fields::of_value("", i);
                            f.0.insert(".".into(), Fields::default());
                            Some((format!("k:{}", json!({ key: kv })), f))
                        })
                        .collect(),
                ),
            },
            _ => Fields::default(),
        }
    }

    /// Every leaf path (a keyed item's `.` included).
    pub fn leaves(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        for (k, v) in &self.0 {
            prefix.push(k.clone());
            if v.is_empty() {
                out.push(prefix.clone());
            } else {
                v.walk(prefix, out);
            }
            prefix.pop();
        }
    }

    pub fn from_leaves<'a>(leaves: impl IntoIterator<Item = &'a Path>) -> Self {
        let mut out = Fields::default();
        for p in leaves {
            let mut node = &mut out;
            for seg in p {
                node = node.0.entry(seg.clone()).or_default();
            }
        }
        out
    }
}

/// The value at a field path, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        cur = step(cur, seg)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, seg: &str) -> Option<&'a Value> {
    if seg == "." {
        return Some(cur);
    }
    if let Some(f) = seg.strip_prefix("f:") {
        return cur.get(f);
    }
    let items = cur.as_array()?;
    if let Some(k) = seg.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    let v: Value = serde_json::from_str(seg.strip_prefix("v:")?).ok()?;
    items.iter().find(|i| **i == v)
}

/// Remove the field at `path` (a keyed item when the path ends in `.`).
fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let (target, parent) = if last == "." {
        match parent.split_last() {
            Some((item, p)) => (item.as_str(), p),
            None => return,
        }
    } else {
        (last.as_str(), parent)
    };
    let mut cur = obj;
    for seg in parent {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            let idx = index_in(cur, seg);
            match (idx, cur.as_array_mut()) {
                (Some(i), Some(a)) => a.get_mut(i),
                _ => None,
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = target.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(i) = index_in(cur, target) {
        if let Some(a) = cur.as_array_mut() {
            a.remove(i);
        }
    }
}

fn index_in(list: &Value, seg: &str) -> Option<usize> {
    let found = step(list, seg)?;
    list.as_array()?.iter().position(|i| std::ptr::eq(i, found))
}

/// `.spec.template.spec.containers[name="c"].image`, as upstream prints paths.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = seg.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = seg.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// Merge an applied configuration into `live`: objects field by field,
/// keyed lists item by item, set lists as unions, everything else replaced.
pub fn merge(live: &mut Value, applied: &Value) {
    merge_field("", live, applied);
}

fn merge_field(field: &str, live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                match l.get_mut(k) {
                    Some(cur) => merge_field(k, cur, v),
                    None => drop(l.insert(k.clone(), v.clone())),
                }
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_type(field, a) {
            ListType::Atomic => *l = a.clone(),
            ListType::Set => {
                for i in a {
                    if !l.contains(i) {
                        l.push(i.clone());
                    }
                }
            }
            ListType::Map(key) => {
                for i in a {
                    match l.iter_mut().find(|x| x.get(key) == i.get(key)) {
                        Some(cur) => merge_field("", cur, i),
                        None => l.push(i.clone()),
                    }
                }
            }
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    subresource: Option<String>,
    api_version: String,
    time: String,
    fields: Fields,
}

impl Entry {
    fn parse(v: &Value) -> Option<Entry> {
        Some(Entry {
            manager: v["manager"].as_str()?.to_string(),
            operation: v["operation"].as_str().unwrap_or("Update").to_string(),
            subresource: v["subresource"].as_str().map(str::to_string),
            api_version: v["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: v["time"].as_str().unwrap_or_default().to_string(),
            fields: Fields::from_json(&v["fieldsV1"]),
        })
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_json(),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }

    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Entry::parse).collect())
        .unwrap_or_default()
}

fn store(obj: &mut Value, list: Vec<Entry>) {
    let list: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if !list.is_empty() && obj.is_object() && !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn managed_fields(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/managedFields")
}

/// Take `paths` away from every entry.
fn release(list: &mut [Entry], paths: &BTreeSet<Path>) {
    for e in list.iter_mut() {
        let keep: Vec<Path> = e
            .fields
            .leaves()
            .into_iter()
            .filter(|p| !paths.contains(p))
            .collect();
        e.fields = Fields::from_leaves(&keep);
    }
}

fn now() -> String {
    crate::datastore::objects::now_rfc3339()
}

/// Record a write (`old` → `new`, `None` for a create) by `manager`.
/// managedFields the client changed itself are kept as sent (that is how
/// kubectl moves client-side apply's fields to server-side apply).
pub fn track(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
) {
    let sent = managed_fields(new).cloned();
    let before = old.and_then(managed_fields).cloned();
    if sent.is_some() && sent != before {
        return;
    }
    let part = if subresource == Some("status") {
        Part::Status
    } else {
        Part::Main
    };
    let empty = json!({});
    let old_obj = old.unwrap_or(&empty);
    let old_set = Fields::of_object(old_obj, part).leaves();
    let new_set = Fields::of_object(new, part).leaves();
    let changed: BTreeSet<Path> = new_set
        .iter()
        .filter(|p| value_at(old_obj, p) != value_at(new, p))
        .cloned()
        .collect();
    let new_lookup: BTreeSet<&Path> = new_set.iter().collect();
    let removed: BTreeSet<Path> = old_set
        .into_iter()
        .filter(|p| !new_lookup.contains(p))
        .collect();
    let mut list = old.map(entries).unwrap_or_default();
    if changed.is_empty() && removed.is_empty() {
        store(new, list);
        return;
    }
    release(&mut list, &changed.union(&removed).cloned().collect());
    let mut mine = match list
        .iter()
        .position(|e| e.is(manager, "Update", subresource))
    {
        Some(i) => list.remove(i),
        None => Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            subresource: subresource.map(str::to_string),
            api_version: String::new(),
            time: String::new(),
            fields: Fields::default(),
        },
    };
    let mut leaves: BTreeSet<Path> = mine.fields.leaves().into_iter().collect();
    leaves.extend(changed);
    mine.fields = Fields::from_leaves(&leaves);
    mine.api_version = api_version.to_string();
    mine.time = now();
    list.push(mine);
    store(new, list);
}

/// A field another manager set to a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub api_version: String,
    pub path: String,
}

impl Conflict {
    /// 409 as upstream words it, one cause per field.
    pub fn into_error(conflicts: Vec<Conflict>, subject: super::Subject) -> KubeError {
        let n = conflicts.len();
        let lines: Vec<String> = conflicts
            .iter()
            .map(|c| {
                format!(
                    "conflict with \"{}\" using {}: {}",
                    c.manager, c.api_version, c.path
                )
            })
            .collect();
        let message = if n == 1 {
            format!("Apply failed with 1 conflict: {}", lines[0])
        } else {
            format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
        };
        KubeError::ApplyConflict {
            subject,
            message,
            causes: conflicts
                .into_iter()
                .map(|c| {
                    (
                        format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                        c.path,
                    )
                })
                .collect(),
        }
    }
}

/// Server-side apply of `applied` by `manager` onto `live` (`None`: the
/// object does not exist yet). Returns the object to write, managedFields
/// included.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);
    let mine_now = Fields::of_object(applied, Part::Main);
    let mine_leaves: BTreeSet<Path> = mine_now.leaves().into_iter().collect();
    let mut list = entries(live_obj);
    let mut conflicts = Vec::new();
    let mut taken = BTreeSet::new();
    for e in &list {
        if e.is(manager, "Apply", None) || e.subresource.is_some() {
            continue;
        }
        for p in e.fields.leaves() {
            if p.last().is_some_and(|s| s == ".") || !mine_leaves.contains(&p) {
                continue;
            }
            if value_at(live_obj, &p) != value_at(applied, &p) {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    api_version: e.api_version.clone(),
                    path: display(&p),
                });
                taken.insert(p);
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let previous = list
        .iter()
        .position(|e| e.is(manager, "Apply", None))
        .map(|i| list.remove(i));
    // Fields this manager applied before, no longer applies, and nobody
    // else owns are removed.
    let others: BTreeSet<Path> = list.iter().flat_map(|e| e.fields.leaves()).collect();
    let mut result = live_obj.clone();
    if let Some(prev) = &previous {
        let mut gone: Vec<Path> = prev
            .fields
            .leaves()
            .into_iter()
            .filter(|p| !mine_leaves.contains(p) && !others.contains(p))
            .collect();
        // A keyed item that goes takes its fields with it (removing those
        // first could remove its key and lose the item).
        let items: Vec<Path> = gone
            .iter()
            .filter(|p| p.last().is_some_and(|s| s == "."))
            .map(|p| p[..p.len() - 1].to_vec())
            .collect();
        gone.retain(|p| {
            p.last().is_some_and(|s| s == ".") || !items.iter().any(|i| p.starts_with(i))
        });
        gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in gone {
            remove_at(&mut result, &p);
        }
    }
    merge(&mut result, applied);
    release(&mut list, &taken);
    list.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        subresource: None,
        api_version: api_version.to_string(),
        time: now(),
        fields: mine_now,
    });
    store(&mut result, list);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn fields_follow_upstreams_format() {
        let f = Fields::of_object(&deploy(2, "busybox:1"), Part::Main).to_json();
        assert_eq!(
            f,
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"c\"}": {".": {}, "f:name": {}, "f:image": {}}}}}}})
        );
        let p: Path = [
            "f:spec",
            "f:template",
            "f:spec",
            "f:containers",
            "k:{\"name\":\"c\"}",
            "f:image",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            display(&p),
            ".spec.template.spec.containers[name=\"c\"].image"
        );
        assert_eq!(value_at(&deploy(2, "x"), &p), Some(&json!("x")));
    }

    #[test]
    fn updates_move_ownership_and_applies_conflict() {
        // kubectl-client-side-apply creates, then scale changes replicas.
        let mut obj = deploy(2, "busybox:1");
        track(None, &mut obj, "kubectl-client-side-apply", "apps/v1", None);
        let mut scaled = obj.clone();
        scaled["spec"]["replicas"] = json!(5);
        track(Some(&obj), &mut scaled, "kubectl-scale", "apps/v1", None);
        let mf = scaled["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 2);
        assert_eq!(mf[1]["manager"], "kubectl-scale");
        assert_eq!(mf[1]["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        assert!(mf[0]["fieldsV1"]["f:spec"].get("f:replicas").is_none());

        // An apply that sets replicas differently conflicts with the scaler,
        // not with the creator whose image it keeps.
        let err = apply(
            Some(&scaled),
            &deploy(3, "busybox:1"),
            "ssa",
            "apps/v1",
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "kubectl-scale".into(),
                api_version: "apps/v1".into(),
                path: ".spec.replicas".into()
            }]
        );
        // Same value: shared, no conflict. Forced: taken over.
        assert!(apply(
            Some(&scaled),
            &deploy(5, "busybox:1"),
            "ssa",
            "apps/v1",
            false
        )
        .is_ok());
        let forced = apply(
            Some(&scaled),
            &deploy(3, "busybox:2"),
            "ssa",
            "apps/v1",
            true,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert!(!managers.contains(&"kubectl-scale"), "{managers:?}");
    }

    #[test]
    fn an_apply_removes_what_it_no_longer_declares() {
        let mut first = json!({"metadata": {"name": "cm", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}});
        first = apply(None, &first, "me", "v1", false).unwrap();
        // Someone else adds a key; my next apply drops y and label b only.
        let mut edited = first.clone();
        edited["data"]["z"] = json!("3");
        track(Some(&first), &mut edited, "kubectl-edit", "v1", None);
        let second = json!({"metadata": {"name": "cm", "labels": {"a": "1"}}, "data": {"x": "1"}});
        let out = apply(Some(&edited), &second, "me", "v1", false).unwrap();
        assert_eq!(out["data"], json!({"x": "1", "z": "3"}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
    }

    #[test]
    fn keyed_items_merge_and_go_when_no_longer_applied() {
        let a = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}});
        let live = apply(None, &a, "me", "v1", false).unwrap();
        let b = json!({"spec": {"containers": [{"name": "a", "image": "3"}]}});
        let out = apply(Some(&live), &b, "me", "v1", false).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "3"}])
        );
    }

    #[test]
    fn sent_managed_fields_are_kept_and_no_ops_change_nothing() {
        let mut obj = deploy(1, "x");
        track(None, &mut obj, "a", "apps/v1", None);
        let mut same = obj.clone();
        track(Some(&obj), &mut same, "b", "apps/v1", None);
        assert_eq!(same, obj);
        let mut reset = obj.clone();
        reset["metadata"]["managedFields"] = json!([{"manager": "c", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
        let sent = reset.clone();
        track(Some(&obj), &mut reset, "b", "apps/v1", None);
        assert_eq!(reset, sent);
    }
}
