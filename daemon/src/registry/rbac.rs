//! rbac.authorization.k8s.io/v1 (Role, ClusterRole, RoleBinding,
//! ClusterRoleBinding) and the create-only review kinds of
//! authorization.k8s.io and authentication.k8s.io, whose answers the API
//! server computes (`apiserver::reviews`); they are here for their schemas.

use super::error::FieldError;
use super::printers::{age_cell, age_col, col, column, name_cell, name_col};
use super::strategy::{Kind, Typed};
use super::validation::NameRule;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenReview};
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde_json::{json, Value};

pub const GROUP: &str = "rbac.authorization.k8s.io";

pub static ROLE: Typed<Role> = Typed::new();
pub static CLUSTER_ROLE: Typed<ClusterRole> = Typed::new();
pub static ROLE_BINDING: Typed<RoleBinding> = Typed::new();
pub static CLUSTER_ROLE_BINDING: Typed<ClusterRoleBinding> = Typed::new();
pub static TOKEN_REVIEW: Typed<TokenReview> = Typed::new();
pub static TOKEN_REQUEST: Typed<TokenRequest> = Typed::new();
pub static SELF_SUBJECT_REVIEW: Typed<SelfSubjectReview> = Typed::new();
pub static SSAR: Typed<SelfSubjectAccessReview> = Typed::new();
pub static SAR: Typed<SubjectAccessReview> = Typed::new();
pub static LSAR: Typed<LocalSubjectAccessReview> = Typed::new();
pub static SSRR: Typed<SelfSubjectRulesReview> = Typed::new();

impl Kind for TokenReview {}
impl Kind for TokenRequest {}
impl Kind for SelfSubjectReview {}
impl Kind for SelfSubjectAccessReview {}
impl Kind for SubjectAccessReview {}
impl Kind for LocalSubjectAccessReview {}
impl Kind for SelfSubjectRulesReview {}

/// Upstream's `ValidatePolicyRule`.
pub fn validate_rules(rules: &[PolicyRule], namespaced: bool, errs: &mut Vec<FieldError>) {
    for (i, r) in rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        if r.verbs.is_empty() {
            errs.push(FieldError::required(
                &format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        let groups = r.api_groups.as_deref().unwrap_or_default();
        let resources = r.resources.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    &format!("{path}.nonResourceURLs"),
                    urls,
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !groups.is_empty() || !resources.is_empty() {
                errs.push(FieldError::invalid(
                    &format!("{path}.nonResourceURLs"),
                    urls,
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if groups.is_empty() {
            errs.push(FieldError::required(
                &format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if resources.is_empty() {
            errs.push(FieldError::required(
                &format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

fn default_subjects(subjects: &mut Option<Vec<Subject>>) {
    for s in subjects.iter_mut().flatten() {
        if s.api_group.is_none() {
            s.api_group = Some(match s.kind.as_str() {
                "ServiceAccount" => String::new(),
                _ => GROUP.to_string(),
            });
        }
    }
}

fn validate_binding(
    role_ref: &RoleRef,
    old: Option<&RoleRef>,
    subjects: Option<&Vec<Subject>>,
    namespaced: bool,
    errs: &mut Vec<FieldError>,
) {
    if role_ref.api_group != GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            &role_ref.api_group,
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported(
            "roleRef.kind",
            &role_ref.kind,
            kinds,
        ));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    if let Some(old) = old {
        if old != role_ref {
            errs.push(FieldError::invalid(
                "roleRef",
                role_ref_text(role_ref),
                "cannot change roleRef",
            ));
        }
    }
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let path = format!("subjects[{i}]");
        if s.name.is_empty() {
            errs.push(FieldError::required(&format!("{path}.name"), ""));
        }
        let group = s.api_group.as_deref().unwrap_or("");
        match s.kind.as_str() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    errs.push(FieldError::not_supported(
                        &format!("{path}.apiGroup"),
                        group,
                        &[""],
                    ));
                }
                if !namespaced && s.namespace.as_deref().unwrap_or("").is_empty() {
                    errs.push(FieldError::required(&format!("{path}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    errs.push(FieldError::not_supported(
                        &format!("{path}.apiGroup"),
                        group,
                        &[GROUP],
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                &format!("{path}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// `{APIGroup:"rbac.authorization.k8s.io", Kind:"Role", Name:"x"}` as Go prints it.
fn role_ref_text(r: &RoleRef) -> String {
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        r.api_group, r.kind, r.name
    )
}

fn created_at_col() -> Value {
    column(
        "Created At",
        "date",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    )
}

fn binding_columns() -> Vec<Value> {
    vec![
        name_col(),
        col(
            "Role",
            0,
            "RoleRef is the Role or ClusterRole this binding refers to.",
        ),
        age_col(),
        col("Users", 1, "Users in the binding."),
        col("Groups", 1, "Groups in the binding."),
        col("ServiceAccounts", 1, "ServiceAccounts in the binding."),
    ]
}

fn binding_row(role_ref: &RoleRef, subjects: Option<&Vec<Subject>>, obj: &Value) -> Vec<Value> {
    let of = |kind: &str| -> String {
        subjects
            .into_iter()
            .flatten()
            .filter(|s| s.kind == kind)
            .map(|s| match (kind, s.namespace.as_deref()) {
                ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s.name),
                _ => s.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        name_cell(obj),
        json!(format!("{}/{}", role_ref.kind, role_ref.name)),
        age_cell(obj),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}

impl Kind for Role {
    // RBAC names are path segments (`system:basic-user`).
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        validate_rules(self.rules.as_deref().unwrap_or_default(), true, errs);
    }

    fn columns() -> Vec<Value> {
        vec![name_col(), created_at_col()]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![name_cell(obj), obj["metadata"]["creationTimestamp"].clone()]
    }
}

impl Kind for ClusterRole {
    // RBAC names are path segments (`system:basic-user`).
    const NAME_RULE: NameRule = NameRule::PathSegment;

    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        if let Some(agg) = &self.aggregation_rule {
            if agg
                .cluster_role_selectors
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            {
                errs.push(FieldError::required(
                    "aggregationRule.clusterRoleSelectors",
                    "at least one clusterRoleSelector required if aggregationRule is non-nil",
                ));
            }
            for (i, s) in agg.cluster_role_selectors.iter().flatten().enumerate() {
                super::validation::label_selector(
                    &format!("aggregationRule.clusterRoleSelectors[{i}]"),
                    Some(s),
                    errs,
                );
            }
        }
        validate_rules(self.rules.as_deref().unwrap_or_default(), false, errs);
    }

    fn columns() -> Vec<Value> {
        vec![name_col(), created_at_col()]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![name_cell(obj), obj["metadata"]["creationTimestamp"].clone()]
    }
}

/// RoleBinding and ClusterRoleBinding behave alike but for scope.
macro_rules! binding_kind {
    ($kind:ty, $namespaced:expr) => {
        impl Kind for $kind {
            // RBAC names are path segments (`system:basic-user`).
            const NAME_RULE: NameRule = NameRule::PathSegment;

            fn defaults(&mut self) {
                default_subjects(&mut self.subjects);
            }

            fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
                validate_binding(
                    &self.role_ref,
                    old.map(|o| &o.role_ref),
                    self.subjects.as_ref(),
                    $namespaced,
                    errs,
                );
            }

            fn columns() -> Vec<Value> {
                binding_columns()
            }

            fn row(&self, obj: &Value) -> Vec<Value> {
                binding_row(&self.role_ref, self.subjects.as_ref(), obj)
            }
        }
    };
}

binding_kind!(RoleBinding, true);
binding_kind!(ClusterRoleBinding, false);

#[cfg(test)]
mod tests {
    use crate::registry::strategy::Strategy;
    use serde_json::json;

    #[test]
    fn rules_need_verbs_groups_and_resources() {
        let mut r = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "r", "namespace": "d"},
            "rules": [{"verbs": [], "resources": ["pods"]}, {"verbs": ["get"], "nonResourceURLs": ["/x"]}]});
        let (mut errs, mut unknown) = (vec![], vec![]);
        super::ROLE
            .admit(&mut r, None, &mut errs, &mut unknown)
            .unwrap();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rules[0].verbs",
                "rules[0].apiGroups",
                "rules[1].nonResourceURLs"
            ]
        );
    }

    #[test]
    fn binding_defaults_and_immutable_role_ref() {
        let mut b = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": "d"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "bob"}, {"kind": "ServiceAccount", "name": "sa"}]});
        let (mut errs, mut unknown) = (vec![], vec![]);
        super::ROLE_BINDING
            .admit(&mut b, None, &mut errs, &mut unknown)
            .unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(b["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        assert_eq!(b["subjects"][1]["apiGroup"], "");
        let old = b.clone();
        b["roleRef"]["name"] = json!("other");
        super::ROLE_BINDING
            .admit(&mut b, Some(&old), &mut errs, &mut unknown)
            .unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "roleRef");
        assert!(errs[0].detail.contains("cannot change roleRef"));
        let row = super::ROLE_BINDING.row(&old);
        assert_eq!(row[1], "Role/r");
        assert_eq!(row[3], "bob");
    }
}
