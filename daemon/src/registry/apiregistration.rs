//! `apiregistration.k8s.io/v1` APIService: a group-version the API serves
//! itself (`Local`, no service) or passes to an extension API server
//! behind a Service (`apiserver::aggregator`), as upstream's aggregator
//! stores them.

use super::error::FieldError;
use super::printers::{age_cell, age_col, col, name_cell, name_col};
use super::strategy::{Kind, Typed};
use super::validation::NameRule;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::{json, Value};

pub static API_SERVICE: Typed<APIService> = Typed::new();

/// The group-version an APIService names (`v1.apps` → apps, v1; `v1.` →
/// the core group).
pub fn name_of(group: &str, version: &str) -> String {
    format!("{version}.{group}")
}

/// What `kubectl get apiservices` shows under AVAILABLE: the condition's
/// status, with its reason when not True.
pub fn availability(s: &APIService) -> String {
    let cond = s
        .status
        .as_ref()
        .and_then(|st| st.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
    match cond {
        None => "Unknown".into(),
        Some(c) if c.status == "True" => "True".into(),
        Some(c) => format!("{} ({})", c.status, c.reason.clone().unwrap_or_default()),
    }
}

impl Kind for APIService {
    // The core group's is `v1.`, which is no subdomain; the name must
    // be `<version>.<group>` (checked below).
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let name = self.metadata.name.as_deref().unwrap_or("");
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        let group = spec.group.as_deref().unwrap_or("");
        let version = spec.version.as_deref().unwrap_or("");
        if version.is_empty() {
            errs.push(FieldError::required("spec.version", ""));
        }
        let want = name_of(group, version);
        if name != want {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                &format!("must be {want}"),
            ));
        }
        if !(1..=20000).contains(&spec.group_priority_minimum) {
            errs.push(FieldError::invalid(
                "spec.groupPriorityMinimum",
                spec.group_priority_minimum,
                "must be positive and less than 20000",
            ));
        }
        if !(1..=1000).contains(&spec.version_priority) {
            errs.push(FieldError::invalid(
                "spec.versionPriority",
                spec.version_priority,
                "must be positive and less than 1000",
            ));
        }
        let insecure = spec.insecure_skip_tls_verify.unwrap_or(false);
        if insecure && spec.ca_bundle.as_ref().is_some_and(|b| !b.0.is_empty()) {
            errs.push(FieldError::invalid(
                "spec.insecureSkipTLSVerify",
                insecure,
                "may not be true if caBundle is present",
            ));
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Service", 0, "The service the API is served by, or Local."),
            col("Available", 0, "Whether the API is available."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let service =
            self.spec
                .as_ref()
                .and_then(|s| s.service.as_ref())
                .map_or("Local".to_string(), |s| {
                    format!(
                        "{}/{}",
                        s.namespace.as_deref().unwrap_or(""),
                        s.name.as_deref().unwrap_or("")
                    )
                });
        vec![
            name_cell(obj),
            json!(service),
            json!(availability(self)),
            age_cell(obj),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(v: Value) -> APIService {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_name_is_version_dot_group_and_priorities_are_bounded() {
        let ok = service(json!({"metadata": {"name": "v1."},
            "spec": {"version": "v1", "groupPriorityMinimum": 18000, "versionPriority": 15}}));
        let mut errs = vec![];
        ok.validate(None, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let bad = service(json!({"metadata": {"name": "wardle"},
            "spec": {"group": "wardle.example.com", "version": "v1alpha1",
                "groupPriorityMinimum": 0, "versionPriority": 15,
                "insecureSkipTLSVerify": true, "caBundle": "Zm9v"}}));
        let mut errs = vec![];
        bad.validate(None, &mut errs);
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("must be v1alpha1.wardle.example.com")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|e| e.contains("spec.groupPriorityMinimum")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("may not be true if caBundle is present")),
            "{text:?}"
        );
    }

    #[test]
    fn availability_shows_the_reason_when_not_true() {
        let s = service(
            json!({"metadata": {"name": "v1.x"}, "spec": {"group": "x", "version": "v1",
            "groupPriorityMinimum": 1, "versionPriority": 1},
            "status": {"conditions": [{"type": "Available", "status": "False", "reason": "MissingEndpoints"}]}}),
        );
        assert_eq!(availability(&s), "False (MissingEndpoints)");
    }
}
