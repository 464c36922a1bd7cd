//! The create-only review kinds, answered from the authorizer and the
//! token authenticator and never stored: SelfSubjectAccessReview,
//! SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectRulesReview
//! (`kubectl auth can-i [--list]`), SelfSubjectReview (`kubectl auth
//! whoami`) and TokenReview.

use super::request::{parse_body, Target};
use super::response::json_response;
use crate::apiserver::state::ApiState;
use crate::auth::{Decision, Request};
use crate::datastore::objects::str_list;
use crate::registry::kinds;
use crate::registry::{FieldError, KubeError, UserInfo};
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, NonResourceRule, ResourceAttributes, ResourceRule,
};
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{json, Value};

fn invalid(t: &Target, field: &str, value: &str, detail: &str) -> KubeError {
    KubeError::Invalid {
        kind: t.rt.qualified_kind(),
        name: String::new(),
        errors: vec![FieldError::invalid(field, value, detail)],
    }
}

fn decode<T: serde::de::DeserializeOwned + Default>(v: &Value) -> Result<Option<T>, KubeError> {
    if v.is_null() {
        return Ok(None);
    }
    serde_json::from_value(v.clone())
        .map(Some)
        .map_err(|e| KubeError::BadRequest(format!("the review's spec does not decode: {e}")))
}

/// Answer a review of kind `t.rt` for `user`.
pub async fn create(
    sv: &ApiState,
    user: &UserInfo,
    t: &Target,
    body: &[u8],
) -> Result<Response, KubeError> {
    let mut obj = parse_body(&body.to_vec().into())?;
    obj["apiVersion"] = json!(t.rt.api_version());
    obj["kind"] = json!(t.rt.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let spec = obj["spec"].clone();
    let rt = &t.rt;
    let local = rt.is(&kinds::LOCAL_SUBJECT_ACCESS_REVIEWS);
    let status = if rt.is(&kinds::SELF_SUBJECT_ACCESS_REVIEWS) {
        access(sv, user, t, &spec, None)?
    } else if local {
        let subject = subject_of(t, &spec)?;
        access(sv, &subject, t, &spec, t.namespace.as_deref())?
    } else if rt.is(&kinds::SUBJECT_ACCESS_REVIEWS) {
        let subject = subject_of(t, &spec)?;
        access(sv, &subject, t, &spec, None)?
    } else if rt.is(&kinds::SELF_SUBJECT_RULES_REVIEWS) {
        rules(sv, user, &spec)
    } else if rt.is(&kinds::SELF_SUBJECT_REVIEWS) {
        json!({"userInfo": user_info(user)})
    } else if rt.is(&kinds::TOKEN_REVIEWS) {
        token_review(sv, &spec).await
    } else {
        return Err(KubeError::NoRoute);
    };
    if local {
        obj["metadata"]["namespace"] = json!(t.namespace);
    }
    obj["status"] = status;
    Ok(json_response(StatusCode::CREATED, &obj))
}

fn user_info(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

/// The user a SubjectAccessReview asks about.
fn subject_of(t: &Target, spec: &Value) -> Result<UserInfo, KubeError> {
    let s = |k: &str| spec[k].as_str().unwrap_or("").to_string();
    let groups: Vec<String> = str_list(&spec["groups"]);
    if s("user").is_empty() && groups.is_empty() {
        return Err(invalid(
            t,
            "spec.user",
            "",
            "at least one of user or group must be specified",
        ));
    }
    let extra = serde_json::from_value(spec["extra"].clone()).unwrap_or_default();
    Ok(UserInfo {
        name: s("user"),
        uid: s("uid"),
        groups,
        extra,
    })
}

fn access(
    sv: &ApiState,
    user: &UserInfo,
    t: &Target,
    spec: &Value,
    local_ns: Option<&str>,
) -> Result<Value, KubeError> {
    let res: Option<ResourceAttributes> = decode(&spec["resourceAttributes"])?;
    let non: Option<NonResourceAttributes> = decode(&spec["nonResourceAttributes"])?;
    let decision = match (res, non) {
        (Some(r), None) => {
            let ns = r.namespace.clone().unwrap_or_default();
            if let Some(local) = local_ns {
                if !ns.is_empty() && ns != local {
                    return Err(invalid(
                        t,
                        "spec.resourceAttributes.namespace",
                        &ns,
                        "must match metadata.namespace",
                    ));
                }
            }
            let ns = local_ns.map(str::to_string).unwrap_or(ns);
            let g = |v: &Option<String>| v.clone().unwrap_or_default();
            let (verb, group, resource, sub, name) = (
                g(&r.verb),
                g(&r.group),
                g(&r.resource),
                g(&r.subresource),
                g(&r.name),
            );
            let fields = r
                .field_selector
                .as_ref()
                .and_then(|f| f.raw_selector.clone())
                .unwrap_or_default();
            sv.auth.decide(
                user,
                &Request::resource(&verb, &group, &resource, &sub, &ns, &name).with_fields(&fields),
            )
        }
        (None, Some(n)) => {
            let (path, verb) = (n.path.unwrap_or_default(), n.verb.unwrap_or_default());
            sv.auth.decide(user, &Request::path(&verb, &path))
        }
        _ => {
            return Err(invalid(
                t,
                "spec.resourceAttributes",
                "null",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            ))
        }
    };
    Ok(match decision {
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    })
}

/// What `user` may do in `spec.namespace`, from RBAC (the Node authorizer
/// and `system:masters` are not rule-based; their answers are marked
/// incomplete, as upstream marks what an authorizer cannot list).
fn rules(sv: &ApiState, user: &UserInfo, spec: &Value) -> Value {
    let ns = spec["namespace"].as_str().unwrap_or("");
    let mut resource_rules = vec![];
    let mut non_resource_rules = vec![];
    for r in sv.auth.rbac.rules_for(user, ns) {
        let PolicyRule {
            verbs,
            api_groups,
            resources,
            resource_names,
            non_resource_urls,
        } = r;
        if let Some(urls) = non_resource_urls.filter(|u| !u.is_empty()) {
            non_resource_rules.push(NonResourceRule {
                verbs,
                non_resource_urls: Some(urls),
            });
        } else {
            resource_rules.push(ResourceRule {
                verbs,
                api_groups,
                resources,
                resource_names,
            });
        }
    }
    let incomplete = user.node_name().is_some() || user.in_group(crate::auth::MASTERS);
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": incomplete,
    })
}

async fn token_review(sv: &ApiState, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or("");
    let wanted: Vec<String> = str_list(&spec["audiences"]);
    let audiences: Vec<&str> = if wanted.is_empty() {
        crate::auth::tokens::API_AUDIENCES.to_vec()
    } else {
        wanted.iter().map(String::as_str).collect()
    };
    match sv.auth.authenticate_token(token, &audiences).await {
        Some((user, aud)) => {
            json!({"authenticated": true, "user": user_info(&user), "audiences": aud})
        }
        None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
    }
}
