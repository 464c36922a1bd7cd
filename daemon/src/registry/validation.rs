//! Field checks shared by kinds, with upstream's wording
//! (`apimachinery/pkg/util/validation`, `pkg/apis/core/validation`).

use super::error::FieldError;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

/// Which name format a kind requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (Namespaces).
    Label,
    /// RFC 1035 label (Services).
    Dns1035,
    /// Anything usable as a path segment (Events).
    PathSegment,
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QNAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_label(s: &str) -> bool {
    is_label(s) && s.len() <= 63
}

pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// Errors for a DNS-1123 label field (container names, volume names...).
pub fn dns_label(field: &str, s: &str, errs: &mut Vec<FieldError>) {
    if s.len() > 63 {
        errs.push(FieldError::invalid(
            field,
            s,
            "must be no more than 63 characters",
        ));
    }
    if !is_label(s) {
        errs.push(FieldError::invalid(field, s, LABEL_MSG));
    }
}

/// `metadata.name` against the kind's rule.
pub fn object_name(rule: NameRule, name: &str, errs: &mut Vec<FieldError>) {
    let f = "metadata.name";
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                errs.push(FieldError::invalid(
                    f,
                    name,
                    "must be no more than 253 characters",
                ));
            }
            if !name.split('.').all(is_label) {
                errs.push(FieldError::invalid(f, name, SUBDOMAIN_MSG));
            }
        }
        NameRule::Label => dns_label(f, name, errs),
        NameRule::Dns1035 => {
            if name.len() > 63 {
                errs.push(FieldError::invalid(
                    f,
                    name,
                    "must be no more than 63 characters",
                ));
            }
            if !is_label(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                errs.push(FieldError::invalid(f, name, DNS1035_MSG));
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." || name.contains('/') || name.contains('%') {
                errs.push(FieldError::invalid(
                    f,
                    name,
                    "may not be '.' or '..' and may not contain '/' or '%'",
                ));
            }
        }
    }
}

fn qualified_name(field: &str, key: &str, errs: &mut Vec<FieldError>) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || !is_subdomain(p) {
            errs.push(FieldError::invalid(
                field,
                key,
                &format!("prefix part {SUBDOMAIN_MSG}"),
            ));
        }
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !ok {
        errs.push(FieldError::invalid(field, key, QNAME_MSG));
    }
}

pub fn labels(field: &str, labels: Option<&BTreeMap<String, String>>, errs: &mut Vec<FieldError>) {
    for (k, v) in labels.into_iter().flatten() {
        qualified_name(field, k, errs);
        let ok = v.is_empty()
            || (v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric());
        if !ok {
            errs.push(FieldError::invalid(field, v, VALUE_MSG));
        }
    }
}

/// Name, labels and annotation keys of any object (JSON form: every kind).
pub fn metadata(rule: NameRule, obj: &Value, errs: &mut Vec<FieldError>) {
    let meta = &obj["metadata"];
    object_name(rule, meta["name"].as_str().unwrap_or(""), errs);
    let as_map = |v: &Value| -> Option<BTreeMap<String, String>> {
        v.as_object().map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
    };
    labels("metadata.labels", as_map(&meta["labels"]).as_ref(), errs);
    if let Some(a) = as_map(&meta["annotations"]) {
        for k in a.keys() {
            qualified_name("metadata.annotations", k, errs);
        }
        let total: usize = a.iter().map(|(k, v)| k.len() + v.len()).sum();
        if total > 256 * 1024 {
            errs.push(FieldError::too_long("metadata.annotations", 256 * 1024));
        }
    }
}

pub fn immutable(field: &str, value: impl std::fmt::Debug) -> FieldError {
    FieldError::invalid(field, value, "field is immutable")
}

/// Does `sel` select `labels`?
pub fn selector_matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v))
        && sel.match_expressions.iter().flatten().all(|e| {
            let vals = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => get(&e.key).is_some_and(|v| vals.contains(v)),
                "NotIn" => !get(&e.key).is_some_and(|v| vals.contains(v)),
                "Exists" => get(&e.key).is_some(),
                "DoesNotExist" => get(&e.key).is_none(),
                _ => false,
            }
        })
}

pub fn label_selector(field: &str, sel: Option<&LabelSelector>, errs: &mut Vec<FieldError>) {
    let Some(sel) = sel else {
        errs.push(FieldError::required(field, ""));
        return;
    };
    labels(
        &format!("{field}.matchLabels"),
        sel.match_labels.as_ref(),
        errs,
    );
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let n = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if n == 0 => errs.push(FieldError::required(
                &format!("{f}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if n > 0 => errs.push(FieldError::forbidden(
                &format!("{f}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::invalid(
                &format!("{f}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
    }
    if sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
    {
        errs.push(FieldError::invalid(
            field,
            "{}",
            "empty selector is invalid for deployment",
        ));
    }
}

/// Go's `%#v` of a label map, as upstream prints it in the selector error.
fn go_map(m: Option<&BTreeMap<String, String>>) -> String {
    let inner: Vec<String> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{v:?}"))
        .collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

/// A controller's selector and template: the selector must be valid and
/// select the template's labels; `restart` lists allowed restart policies.
pub fn selector_and_template(
    selector: Option<&LabelSelector>,
    template: Option<&PodTemplateSpec>,
    restart: &[&str],
    errs: &mut Vec<FieldError>,
) {
    label_selector("spec.selector", selector, errs);
    let Some(t) = template else {
        errs.push(FieldError::required("spec.template", ""));
        return;
    };
    let labels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
    if let Some(sel) = selector {
        if !selector_matches(sel, labels) {
            errs.push(FieldError {
                kind: super::error::FieldErrorKind::Invalid,
                field: "spec.template.metadata.labels".into(),
                value: Some(go_map(labels)),
                detail: "`selector` does not match template `labels`".into(),
            });
        }
    }
    pod_template(t, restart, errs);
}

/// A pod template: its labels and pod spec, restart policy among `restart`.
pub fn pod_template(t: &PodTemplateSpec, restart: &[&str], errs: &mut Vec<FieldError>) {
    labels(
        "spec.template.metadata.labels",
        t.metadata.as_ref().and_then(|m| m.labels.as_ref()),
        errs,
    );
    match &t.spec {
        Some(spec) => {
            pod_spec("spec.template.spec", spec, errs);
            let policy = spec.restart_policy.as_deref().unwrap_or("Always");
            if !restart.contains(&policy) {
                errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    policy,
                    restart,
                ));
            }
        }
        None => errs.push(FieldError::required("spec.template.spec", "")),
    }
}

fn containers(
    path: &str,
    cs: &[Container],
    names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
    volumes: &HashSet<&str>,
) {
    for (i, c) in cs.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if c.name.is_empty() {
            errs.push(FieldError::required(&format!("{p}.name"), ""));
        } else {
            dns_label(&format!("{p}.name"), &c.name, errs);
            if !names.insert(c.name.clone()) {
                errs.push(FieldError::duplicate(&format!("{p}.name"), &c.name));
            }
        }
        if c.image.as_deref().unwrap_or("").trim().is_empty() {
            errs.push(FieldError::required(&format!("{p}.image"), ""));
        }
        if let Some(pp) = c.image_pull_policy.as_deref() {
            if !["Always", "IfNotPresent", "Never"].contains(&pp) {
                errs.push(FieldError::not_supported(
                    &format!("{p}.imagePullPolicy"),
                    pp,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
        let mut port_names = HashSet::new();
        for (j, port) in c.ports.iter().flatten().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if !(1..=65535).contains(&port.container_port) {
                errs.push(FieldError::invalid(
                    &format!("{pp}.containerPort"),
                    port.container_port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(hp) = port.host_port {
                if !(1..=65535).contains(&hp) {
                    errs.push(FieldError::invalid(
                        &format!("{pp}.hostPort"),
                        hp,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            if let Some(proto) = port.protocol.as_deref() {
                if !["TCP", "UDP", "SCTP"].contains(&proto) {
                    errs.push(FieldError::not_supported(
                        &format!("{pp}.protocol"),
                        proto,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
            }
            if let Some(n) = port.name.as_deref() {
                if !port_names.insert(n) {
                    errs.push(FieldError::duplicate(&format!("{pp}.name"), n));
                }
            }
        }
        let mut env_names = HashSet::new();
        for (j, e) in c.env.iter().flatten().enumerate() {
            if e.name.is_empty() {
                errs.push(FieldError::required(&format!("{p}.env[{j}].name"), ""));
            }
            env_names.insert(e.name.as_str());
        }
        let mut mounts = HashSet::new();
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let mp = format!("{p}.volumeMounts[{j}]");
            if !volumes.contains(m.name.as_str()) {
                errs.push(FieldError {
                    kind: super::error::FieldErrorKind::NotFound,
                    field: format!("{mp}.name"),
                    value: Some(format!("{:?}", m.name)),
                    detail: String::new(),
                });
            }
            if m.mount_path.is_empty() {
                errs.push(FieldError::required(&format!("{mp}.mountPath"), ""));
            } else if !mounts.insert(m.mount_path.as_str()) {
                errs.push(FieldError::invalid(
                    &format!("{mp}.mountPath"),
                    &m.mount_path,
                    "must be unique",
                ));
            }
        }
    }
}

/// A pod spec at `path` (`spec`, `spec.template.spec`).
/// `securityContext.sysctls`: well-formed, each once, and none that would
/// change the node's own namespace (a net sysctl with hostNetwork, an IPC
/// one with hostIPC), as upstream validates them.
fn sysctls(path: &str, spec: &PodSpec, errs: &mut Vec<FieldError>) {
    use crate::kube::sysctls::{normalize, valid_name, Namespace, NAME_FORMAT, NAME_MAX};
    let Some(list) = spec
        .security_context
        .as_ref()
        .and_then(|c| c.sysctls.as_ref())
    else {
        return;
    };
    let mut seen = HashSet::new();
    for (i, s) in list.iter().enumerate() {
        let p = format!("{path}.securityContext.sysctls[{i}].name");
        if s.name.is_empty() {
            errs.push(FieldError::required(&p, ""));
        } else if !valid_name(&s.name) {
            let why =
                format!("must have at most {NAME_MAX} characters and match regex {NAME_FORMAT}");
            errs.push(FieldError::invalid(&p, &s.name, &why));
        } else if !seen.insert(s.name.as_str()) {
            errs.push(FieldError::duplicate(&p, &s.name));
        }
        let shared = match Namespace::of(&normalize(&s.name)) {
            Some(Namespace::Net) if spec.host_network == Some(true) => "hostNetwork",
            Some(Namespace::Ipc) if spec.host_ipc == Some(true) => "hostIPC",
            _ => continue,
        };
        errs.push(FieldError::invalid(
            &p,
            &s.name,
            &format!("may not be specified when '{shared}' is true"),
        ));
    }
}

pub fn pod_spec(path: &str, spec: &PodSpec, errs: &mut Vec<FieldError>) {
    let mut volumes = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let p = format!("{path}.volumes[{i}].name");
        dns_label(&p, &v.name, errs);
        if !volumes.insert(v.name.as_str()) {
            errs.push(FieldError::duplicate(&p, &v.name));
        }
    }
    if spec.containers.is_empty() {
        errs.push(FieldError::required(&format!("{path}.containers"), ""));
    }
    let mut names = HashSet::new();
    containers(
        &format!("{path}.initContainers"),
        spec.init_containers.as_deref().unwrap_or_default(),
        &mut names,
        errs,
        &volumes,
    );
    containers(
        &format!("{path}.containers"),
        &spec.containers,
        &mut names,
        errs,
        &volumes,
    );
    sysctls(path, spec, errs);
    if let Some(rp) = spec.restart_policy.as_deref() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            errs.push(FieldError::not_supported(
                &format!("{path}.restartPolicy"),
                rp,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(dp) = spec.dns_policy.as_deref() {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&dp) {
            errs.push(FieldError::not_supported(
                &format!("{path}.dnsPolicy"),
                dp,
                &ok,
            ));
        }
    }
    if let Some(g) = spec.termination_grace_period_seconds {
        if g < 0 {
            errs.push(FieldError::invalid(
                &format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(a) = spec.active_deadline_seconds {
        if a <= 0 {
            errs.push(FieldError::invalid(
                &format!("{path}.activeDeadlineSeconds"),
                a,
                "must be greater than or equal to 1",
            ));
        }
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        if let Some(op) = t.operator.as_deref() {
            if !["Equal", "Exists"].contains(&op) {
                errs.push(FieldError::not_supported(
                    &format!("{path}.tolerations[{i}].operator"),
                    op,
                    &["Equal", "Exists"],
                ));
            }
        }
        if let Some(e) = t.effect.as_deref() {
            let ok = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
            if !ok.contains(&e) {
                errs.push(FieldError::not_supported(
                    &format!("{path}.tolerations[{i}].effect"),
                    e,
                    &ok,
                ));
            }
        }
    }
    labels(
        &format!("{path}.nodeSelector"),
        spec.node_selector.as_ref(),
        errs,
    );
}

pub fn non_negative(field: &str, v: Option<i32>, errs: &mut Vec<FieldError>) {
    if let Some(v) = v.filter(|v| *v < 0) {
        errs.push(FieldError::invalid(
            field,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_rule() {
        let mut e = vec![];
        object_name(NameRule::Subdomain, "web.example", &mut e);
        object_name(NameRule::Dns1035, "web-1", &mut e);
        assert!(e.is_empty());
        object_name(NameRule::Subdomain, "Web", &mut e);
        object_name(NameRule::Dns1035, "1web", &mut e);
        object_name(NameRule::Label, "a.b", &mut e);
        assert_eq!(e.len(), 3);
        assert!(e[0]
            .to_string()
            .starts_with("metadata.name: Invalid value: \"Web\": a lowercase RFC 1123 subdomain"));
    }

    #[test]
    fn sysctls_are_well_formed_once_and_not_the_nodes() {
        let spec = |v: serde_json::Value| -> PodSpec { serde_json::from_value(v).unwrap() };
        let check = |s: &PodSpec| {
            let mut e = vec![];
            sysctls("spec", s, &mut e);
            e.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        };
        let ok = spec(
            serde_json::json!({"containers": [], "securityContext": {"sysctls": [
            {"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "kernel/shm_rmid_forced", "value": "1"}]}}),
        );
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));
        let bad = spec(
            serde_json::json!({"containers": [], "hostNetwork": true, "securityContext": {"sysctls": [
            {"name": "", "value": "1"}, {"name": "Net.x", "value": "1"},
            {"name": "kernel.sem", "value": "1"}, {"name": "kernel.sem", "value": "1"},
            {"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}),
        );
        let e = check(&bad);
        assert_eq!(e[0], "spec.securityContext.sysctls[0].name: Required value");
        assert!(e[1].starts_with("spec.securityContext.sysctls[1].name: Invalid value: \"Net.x\": must have at most 253 characters and match regex "), "{}", e[1]);
        assert_eq!(
            e[2],
            "spec.securityContext.sysctls[3].name: Duplicate value: \"kernel.sem\""
        );
        assert_eq!(
            e[3],
            "spec.securityContext.sysctls[4].name: Invalid value: \"net.ipv4.tcp_syncookies\": may not be specified when 'hostNetwork' is true"
        );
        assert_eq!(e.len(), 4);
    }

    #[test]
    fn label_keys_and_values() {
        let mut e = vec![];
        let ok: BTreeMap<String, String> =
            [("app.kubernetes.io/name".to_string(), "web_1".to_string())].into();
        labels("metadata.labels", Some(&ok), &mut e);
        assert!(e.is_empty());
        let bad: BTreeMap<String, String> = [("a b".to_string(), "-x".to_string())].into();
        labels("metadata.labels", Some(&bad), &mut e);
        assert_eq!(e.len(), 2);
    }
}
