//! Cell helpers for `kubectl get` tables, computed as upstream's printers
//! (`pkg/printers/internalversion`) compute them.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub fn column(name: &str, type_: &str, priority: i64, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

/// A string column.
pub fn col(name: &str, priority: i64, description: &str) -> Value {
    column(name, "string", priority, description)
}

pub fn name_col() -> Value {
    column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    )
}

pub fn age_col() -> Value {
    column("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.")
}

/// kubectl's age format (`45s`, `12m`, `5h`, `3d`), from a timestamp.
pub fn age(created: Option<&str>) -> String {
    let Some(t) = created.and_then(crate::datastore::objects::parse_time) else {
        return "<unknown>".into();
    };
    human_duration((chrono::Utc::now() - t).num_seconds().max(0))
}

/// Upstream's `duration.HumanDuration` for whole seconds.
pub fn human_duration(s: i64) -> String {
    let with = |big: i64, bu: &str, small: i64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => with(m, "m", s % 60, "s"),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => with(h, "h", m % 60, "m"),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => with(d, "d", h % 24, "h"),
        _ if h < 24 * 365 * 2 => format!("{d}d"),
        _ if h < 24 * 365 * 8 => with(d / 365, "y", d % 365, "d"),
        _ => format!("{}y", d / 365),
    }
}

pub fn name_cell(obj: &Value) -> Value {
    json!(obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(""))
}

pub fn age_cell(obj: &Value) -> Value {
    json!(age(obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)))
}

/// Age of an optional typed timestamp, `<none>` when unset.
pub fn since(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    match t {
        Some(t) => {
            let secs = jiff_now_secs() - t.0.as_second();
            human_duration(secs.max(0))
        }
        None => "<none>".into(),
    }
}

fn jiff_now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Comma-joined container names and images of a pod spec (-o wide).
pub fn containers_images(spec: Option<&PodSpec>) -> (String, String) {
    let cs = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = cs
        .iter()
        .map(|c| c.image.as_deref().unwrap_or(""))
        .collect();
    (names.join(","), images.join(","))
}

/// `a=b,c in (d)`: a label selector as a query writes it (empty when it
/// selects everything).
pub fn selector_query(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({vals})", e.key),
        });
    }
    parts.join(",")
}

/// A label selector as kubectl prints it (`<none>` for none).
pub fn selector(sel: Option<&LabelSelector>) -> String {
    match sel.map(selector_query) {
        Some(q) if !q.is_empty() => q,
        _ => "<none>".into(),
    }
}

/// A plain map selector (Services, ReplicationControllers).
pub fn map_selector(m: Option<&BTreeMap<String, String>>) -> String {
    match m {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

pub fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_kubectl() {
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3 * 3600 + 5), "3h");
        assert_eq!(human_duration(3 * 3600 + 300), "3h5m");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 7200), "3d2h");
        assert_eq!(human_duration(40 * 86400), "40d");
    }
}
