//! `meta.k8s.io/v1` Table output for `kubectl get`, with the columns
//! upstream prints for the kinds rk3s serves.

use super::resources::ResourceType;
use crate::objects::parse_time;
use serde_json::{json, Value};

/// kubectl's age format (`45s`, `12m`, `5h`, `3d`), from a creation timestamp.
pub fn age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(parse_time) else {
        return "<unknown>".into();
    };
    let s = (chrono::Utc::now() - t).num_seconds().max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn col(name: &str, type_: &str, priority: i64, description: &str) -> Value {
    let mut c = json!({"name": name, "type": type_, "format": "", "description": description, "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
    }
    c
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Evaluate a simple CRD printer-column JSONPath like `.spec.size` or `.status.conditions[0].type`.
fn json_path(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = match cur.get(name) {
            Some(v) => v,
            None => return Value::Null,
        };
        if let Some(i) = index {
            cur = match cur.get(i) {
                Some(v) => v,
                None => return Value::Null,
            };
        }
    }
    cur.clone()
}

fn node_status(n: &Value) -> String {
    let ready = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    let mut st = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        st.push_str(",SchedulingDisabled");
    }
    st
}

fn node_roles(n: &Value) -> String {
    let roles = crate::lifecycle::roles(n);
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn address(n: &Value, kind: &str) -> String {
    n.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == kind))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("<none>")
        .to_string()
}

/// Column definitions and a row builder for `t`.
/// Builds the cells of one row.
type RowFn = Box<dyn Fn(&Value) -> Vec<Value> + Send>;

fn layout(t: &ResourceType) -> (Vec<Value>, RowFn) {
    let name_col = col(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age_col = col("Age", "string", 0, "CreationTimestamp.");
    let created = |o: &Value| {
        age(o
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))
    };
    match (t.group.as_str(), t.resource.as_str()) {
        ("", "nodes") => (
            vec![
                name_col,
                col("Status", "string", 0, "The status of the node"),
                col("Roles", "string", 0, "The roles of the node"),
                age_col,
                col(
                    "Version",
                    "string",
                    0,
                    "Kubelet Version reported by the node.",
                ),
                col("Internal-IP", "string", 1, "List of internal IPs."),
                col("External-IP", "string", 1, "List of external IPs."),
                col("OS-Image", "string", 1, "OS Image reported by the node."),
                col(
                    "Kernel-Version",
                    "string",
                    1,
                    "Kernel Version reported by the node.",
                ),
                col(
                    "Container-Runtime",
                    "string",
                    1,
                    "Container Runtime Version reported by the node.",
                ),
            ],
            Box::new(move |n| {
                vec![
                    json!(s(n, "/metadata/name")),
                    json!(node_status(n)),
                    json!(node_roles(n)),
                    json!(created(n)),
                    json!(s(n, "/status/nodeInfo/kubeletVersion")),
                    json!(address(n, "InternalIP")),
                    json!(address(n, "ExternalIP")),
                    json!(s(n, "/status/nodeInfo/osImage")),
                    json!(s(n, "/status/nodeInfo/kernelVersion")),
                    json!(s(n, "/status/nodeInfo/containerRuntimeVersion")),
                ]
            }),
        ),
        ("", "secrets") => (
            vec![
                name_col,
                col("Type", "string", 0, "The type of the secret"),
                col("Data", "string", 0, "The number of entries in the data"),
                age_col,
            ],
            Box::new(move |o| {
                let data = o["data"].as_object().map(|m| m.len()).unwrap_or(0);
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/type")),
                    json!(data),
                    json!(created(o)),
                ]
            }),
        ),
        ("", "configmaps") => (
            vec![
                name_col,
                col("Data", "string", 0, "The number of entries in the data"),
                age_col,
            ],
            Box::new(move |o| {
                let data = o["data"].as_object().map(|m| m.len()).unwrap_or(0)
                    + o["binaryData"].as_object().map(|m| m.len()).unwrap_or(0);
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(data),
                    json!(created(o)),
                ]
            }),
        ),
        ("", "namespaces") => (
            vec![
                name_col,
                col("Status", "string", 0, "The status of the namespace"),
                age_col,
            ],
            Box::new(move |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/status/phase")),
                    json!(created(o)),
                ]
            }),
        ),
        ("coordination.k8s.io", "leases") => (
            vec![
                name_col,
                col("Holder", "string", 0, "The holder of the lease"),
                age_col,
            ],
            Box::new(move |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/holderIdentity")),
                    json!(created(o)),
                ]
            }),
        ),
        _ if !t.columns.is_empty() => {
            let cols = t.columns.clone();
            let mut defs = vec![name_col];
            defs.extend(cols.iter().map(|c| col(&c.name, &c.type_, c.priority, "")));
            defs.push(age_col);
            (
                defs,
                Box::new(move |o| {
                    let mut row = vec![json!(s(o, "/metadata/name"))];
                    row.extend(cols.iter().map(|c| json_path(o, &c.json_path)));
                    row.push(json!(created(o)));
                    row
                }),
            )
        }
        _ => (
            vec![name_col, age_col],
            Box::new(move |o| vec![json!(s(o, "/metadata/name")), json!(created(o))]),
        ),
    }
}

fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// A Table of `items` at list revision `rev`.
pub fn table(t: &ResourceType, items: &[Value], rev: &str) -> Value {
    let (columns, row) = layout(t);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": row(o), "object": partial(o)}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rev},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::builtins;

    #[test]
    fn node_rows_like_kubectl() {
        let nodes = builtins()
            .into_iter()
            .find(|r| r.resource == "nodes")
            .unwrap();
        let n = json!({"metadata": {"name": "a", "creationTimestamp": crate::objects::now_rfc3339(),
                       "labels": {"node-role.kubernetes.io/control-plane": "true"}},
                       "spec": {"unschedulable": true},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                  "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                                  "nodeInfo": {"kubeletVersion": "v0.1.0+rk3s"}}});
        let t = table(&nodes, &[n], "7");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "a");
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane");
        assert_eq!(cells[5], "10.0.0.1");
        assert_eq!(cells[6], "<none>");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn printer_column_paths() {
        let o = json!({"spec": {"size": 3, "list": [{"x": "y"}]}});
        assert_eq!(json_path(&o, ".spec.size"), json!(3));
        assert_eq!(json_path(&o, ".spec.list[0].x"), json!("y"));
        assert_eq!(json_path(&o, ".spec.nope"), Value::Null);
    }
}
