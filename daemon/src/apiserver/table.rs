//! `meta.k8s.io/v1` Table output for `kubectl get`: each built-in kind's
//! strategy gives upstream's columns; custom kinds get their printer columns.

use crate::registry::printers::{column, human_duration, name_cell};
use crate::registry::resource::PrinterColumn;
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
/// built-ins; for custom kinds Name and the printer columns, or Name and
/// Age when the CRD declares none (upstream adds no Age to declared ones).
type RowFn = Box<dyn Fn(&Value) -> Vec<Value> + Send>;

const CREATION_TIMESTAMP: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn layout(t: &ResourceType) -> (Vec<Value>, RowFn) {
    if t.is_builtin() {
        let s = t.strategy();
        return (s.columns(), Box::new(move |o| s.row(o)));
    }
    let (cols, described) = if t.columns.is_empty() {
        let age = PrinterColumn {
            name: "Age".into(),
            type_: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
            priority: 0,
        };
        (vec![age], CREATION_TIMESTAMP)
    } else {
        (t.columns.clone(), "")
    };
    let mut defs = vec![column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    )];
    defs.extend(
        cols.iter()
            .map(|c| column(&c.name, &c.type_, c.priority, described)),
    );
    (
        defs,
        Box::new(move |o| {
            let mut row = vec![name_cell(o)];
            row.extend(
                cols.iter()
                    .map(|c| cell(&c.type_, json_path(o, &c.json_path))),
            );
            row
        }),
    )
}

/// A printer column's cell as upstream's `cellForJSONValue` makes it: a
/// `date` becomes an age (`5m`), a value of the wrong type none.
fn cell(type_: &str, v: Value) -> Value {
    match (type_, &v) {
        (_, Value::Null) => Value::Null,
        ("integer", Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, Value::from),
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, Value::from),
        ("boolean", Value::Bool(_)) => v,
        ("string", Value::String(_)) => v,
        // A string column prints any value as text.
        ("string", other) => Value::String(other.to_string()),
        ("date", Value::String(s)) => match crate::datastore::objects::parse_time(s) {
            Some(t) => match (chrono::Utc::now() - t).num_seconds() {
                s if s < -1 => json!("<invalid>"),
                s => json!(human_duration(s.max(0))),
            },
            None => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
}

/// A `meta.k8s.io/v1` Table, its fields in upstream's order.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Table {
    kind: &'static str,
    api_version: &'static str,
    metadata: Value,
    column_definitions: Vec<Value>,
    rows: Vec<Value>,
}

/// A Table of `items` at list revision `rev`.
pub fn table(t: &ResourceType, items: &[Value], rev: &str) -> Table {
    let (columns, row) = layout(t);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": row(o), "object": partial(o)}))
        .collect();
    Table {
        kind: "Table",
        api_version: "meta.k8s.io/v1",
        metadata: json!({"resourceVersion": rev}),
        column_definitions: columns,
        rows,
    }
}

const TABLE_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// A Table as the response body kubectl asked for.
pub fn response(t: &Table) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut body = serde_json::to_vec(t).unwrap_or_default();
    body.push(b'\n');
    ([(axum::http::header::CONTENT_TYPE, TABLE_TYPE)], body).into_response()
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
        let n = json!({"metadata": {"name": "a", "creationTimestamp": crate::datastore::objects::now_rfc3339(),
                       "labels": {"node-role.kubernetes.io/control-plane": "true"}},
                       "spec": {"unschedulable": true},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                  "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                                  "nodeInfo": {"kubeletVersion": "v0.1.0+rk3s"}}});
        let t = serde_json::to_value(table(&nodes, &[n], "7")).unwrap();
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
    fn custom_kinds_get_their_columns_or_name_and_age() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com",
            "names": {"plural": "widgets", "kind": "Widget"}, "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Started", "type": "date", "jsonPath": ".status.started"},
                    {"name": "Label", "type": "string", "jsonPath": ".spec.label"}]}]}});
        let t = crate::registry::crd::from_crd(&crd).remove(0);
        let ago = (chrono::Utc::now() - chrono::Duration::minutes(20))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let w = json!({"metadata": {"name": "w", "creationTimestamp": ago},
            "spec": {"size": 3.0, "label": 7}, "status": {"started": ago}});
        let out = serde_json::to_value(table(&t, &[w], "1")).unwrap();
        let names: Vec<&str> = out["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        // Declared columns only: no Age of its own.
        assert_eq!(names, ["Name", "Size", "Started", "Label"]);
        assert_eq!(out["rows"][0]["cells"], json!(["w", 3, "20m", "7"]));
        let mut bare = crd.clone();
        bare["spec"]["versions"][0]
            .as_object_mut()
            .unwrap()
            .remove("additionalPrinterColumns");
        let t = crate::registry::crd::from_crd(&bare).remove(0);
        let out = serde_json::to_value(table(
            &t,
            &[json!({"metadata": {"name": "w", "creationTimestamp": ago}})],
            "1",
        ))
        .unwrap();
        assert_eq!(out["columnDefinitions"][1]["name"], "Age");
        assert_eq!(out["columnDefinitions"][1]["type"], "date");
        assert_eq!(out["rows"][0]["cells"], json!(["w", "20m"]));
        assert_eq!(cell("date", json!("yesterday")), json!("<invalid>"));
        assert_eq!(cell("boolean", json!("yes")), Value::Null);
    }

    #[test]
    fn printer_column_paths() {
        let o = json!({"spec": {"size": 3, "list": [{"x": "y"}]}});
        assert_eq!(json_path(&o, ".spec.size"), json!(3));
        assert_eq!(json_path(&o, ".spec.list[0].x"), json!("y"));
        assert_eq!(json_path(&o, ".spec.nope"), Value::Null);
    }
}
