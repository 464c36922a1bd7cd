//! `meta.k8s.io/v1` Table output for `kubectl get`: each built-in kind's
//! strategy gives upstream's columns; custom kinds get their printer columns.

use crate::registry::printers::{age_cell, column, name_cell};
use crate::registry::ResourceType;
use serde_json::{json, Value};

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

/// Column definitions and a row builder for `t`: the kind's strategy for
/// built-ins, NAME + printer columns + AGE for custom kinds.
type RowFn = Box<dyn Fn(&Value) -> Vec<Value> + Send>;

fn layout(t: &ResourceType) -> (Vec<Value>, RowFn) {
    if t.is_builtin() {
        let s = t.strategy();
        return (s.columns(), Box::new(move |o| s.row(o)));
    }
    let cols = t.columns.clone();
    let mut defs = vec![column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    )];
    defs.extend(
        cols.iter()
            .map(|c| column(&c.name, &c.type_, c.priority, "")),
    );
    defs.push(column("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."));
    (
        defs,
        Box::new(move |o| {
            let mut row = vec![name_cell(o)];
            row.extend(cols.iter().map(|c| json_path(o, &c.json_path)));
            row.push(age_cell(o));
            row
        }),
    )
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
    use crate::registry::kinds::builtins;

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
