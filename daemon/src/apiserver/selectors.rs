//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and
//! field selectors: `metadata.name` and `metadata.namespace` on every kind,
//! plus the fields each kind's strategy supports (pods' `spec.nodeName`...).

use crate::registry::ResourceType;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected (values) in {s:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(format!("empty requirement in label selector {s:?}"));
            }
            let words: Vec<&str> = p.splitn(2, char::is_whitespace).collect();
            if words.len() == 2 {
                let rest = words[1].trim_start();
                if let Some(v) = rest.strip_prefix("notin") {
                    reqs.push(Req::NotIn(words[0].into(), set_values(v)?));
                    continue;
                }
                if let Some(v) = rest.strip_prefix("in") {
                    reqs.push(Req::In(words[0].into(), set_values(v)?));
                    continue;
                }
            }
            if let Some((k, v)) = p.split_once("!=") {
                reqs.push(Req::Ne(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = p.split_once("==") {
                reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = p.split_once('=') {
                reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
            } else if let Some(k) = p.strip_prefix('!') {
                reqs.push(Req::NotExists(k.trim().into()));
            } else if p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                reqs.push(Req::Exists(p.into()));
            } else {
                return Err(format!(
                    "unable to parse requirement {p:?} in label selector"
                ));
            }
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// One requirement: JSON pointer, default when absent, `=` or `!=`, value.
#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    label: String,
    pointer: &'static str,
    default: &'static str,
    eq: bool,
    value: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<FieldReq>);

const META_FIELDS: &[crate::registry::strategy::FieldLabel] = &[
    ("metadata.name", "/metadata/name", ""),
    ("metadata.namespace", "/metadata/namespace", ""),
];

impl FieldSelector {
    pub fn parse(rt: &ResourceType, s: &str) -> Result<Self, String> {
        let kind_fields = if rt.is_builtin() {
            rt.strategy().fields()
        } else {
            &[]
        };
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let k = k.trim();
            let Some((_, pointer, default)) = META_FIELDS
                .iter()
                .chain(kind_fields.iter())
                .find(|(label, _, _)| *label == k)
            else {
                return Err(format!("field label not supported: {k}"));
            };
            out.push(FieldReq {
                label: k.to_string(),
                pointer,
                default,
                eq,
                value: v.trim().to_string(),
            });
        }
        Ok(Self(out))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let actual = match obj.pointer(r.pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => r.default.to_string(),
            };
            (actual == r.value) == r.eq
        })
    }

    /// The name this selector pins, if any (lets a watch skip others early).
    pub fn exact_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.label == "metadata.name" && r.eq)
            .map(|r| r.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "n1", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("missing", false),
            ("!missing", true),
            ("app=web,tier in (front,back)", true),
            ("app=web,tier=back", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("a,,b").is_err());
    }

    fn kind(resource: &str) -> ResourceType {
        crate::registry::kinds::builtins()
            .into_iter()
            .find(|r| r.resource == resource)
            .unwrap()
    }

    #[test]
    fn field_selectors() {
        let cm = kind("configmaps");
        let o = obj(json!({}));
        assert!(FieldSelector::parse(&cm, "metadata.name=n1")
            .unwrap()
            .matches(&o));
        assert!(!FieldSelector::parse(&cm, "metadata.name!=n1")
            .unwrap()
            .matches(&o));
        assert!(
            FieldSelector::parse(&cm, "metadata.namespace==ns,metadata.name=n1")
                .unwrap()
                .matches(&o)
        );
        assert_eq!(
            FieldSelector::parse(&cm, "metadata.name=n1")
                .unwrap()
                .exact_name(),
            Some("n1")
        );
        assert_eq!(
            FieldSelector::parse(&cm, "spec.nodeName=x").unwrap_err(),
            "field label not supported: spec.nodeName"
        );
    }

    #[test]
    fn kind_field_selectors() {
        let pods = kind("pods");
        let p = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let sel = FieldSelector::parse(
            &pods,
            "spec.nodeName=n1,status.phase!=Failed,status.phase!=Succeeded",
        )
        .unwrap();
        assert!(sel.matches(&p));
        assert!(!FieldSelector::parse(&pods, "spec.nodeName=n2")
            .unwrap()
            .matches(&p));
        let nodes = kind("nodes");
        let n = json!({"metadata": {"name": "n"}});
        assert!(FieldSelector::parse(&nodes, "spec.unschedulable=false")
            .unwrap()
            .matches(&n));
        let ev = kind("events");
        let e = json!({"involvedObject": {"kind": "Node", "name": "n", "namespace": ""}});
        assert!(FieldSelector::parse(
            &ev,
            "involvedObject.kind=Node,involvedObject.name=n,involvedObject.namespace="
        )
        .unwrap()
        .matches(&e));
    }
}
