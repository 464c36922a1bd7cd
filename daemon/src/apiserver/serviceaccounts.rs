//! `serviceaccounts/<name>/token` (TokenRequest, `kubectl create token`)
//! and service-account issuer discovery (`/.well-known/openid-configuration`,
//! `/openid/v1/jwks`).

use super::request::{parse_body, Target};
use super::response::json_response;
use crate::apiserver::state::ApiState;
use crate::auth::tokens::{API_AUDIENCES, ISSUER};
use crate::datastore::objects::str_list;
use crate::datastore::objects::Ref;
use crate::registry::{FieldError, KubeError, Subject, UserInfo};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 1 << 32;

fn invalid(name: &str, field: &str, value: impl std::fmt::Debug, detail: &str) -> KubeError {
    KubeError::Invalid {
        kind: "TokenRequest.authentication.k8s.io".into(),
        name: name.to_string(),
        errors: vec![FieldError::invalid(field, value, detail)],
    }
}

fn uid(v: &Value) -> &str {
    v.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Issue a token for service account `t.name` in `t.namespace`.
pub async fn token_request(
    sv: &ApiState,
    user: &UserInfo,
    t: &Target,
    body: &[u8],
) -> Result<Response, KubeError> {
    let ns = t.namespace.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let mut req = parse_body(&body.to_vec().into())?;
    let get = |r: Ref| async move {
        sv.objects
            .get(&r)
            .await
            .map_err(|e| KubeError::Internal(e.to_string()))
    };
    let sa = get(Ref::namespaced("serviceaccounts", &ns, &name))
        .await?
        .ok_or_else(|| KubeError::NotFound(t.subject(&name)))?;
    let spec = &mut req["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    let mut audiences: Vec<String> = str_list(&spec["audiences"]);
    if audiences.is_empty() {
        audiences = API_AUDIENCES.iter().map(|a| a.to_string()).collect();
    }
    let mut secs = spec["expirationSeconds"]
        .as_i64()
        .unwrap_or(DEFAULT_EXPIRATION);
    if secs < MIN_EXPIRATION {
        return Err(invalid(
            &name,
            "spec.expirationSeconds",
            secs,
            "may not specify a duration less than 10 minutes",
        ));
    }
    if secs > MAX_EXPIRATION {
        return Err(invalid(
            &name,
            "spec.expirationSeconds",
            secs,
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    if let Some(max) = sv.auth.tokens.max_expiration {
        secs = secs.min(max.as_secs() as i64);
    }
    // The object the token lives and dies with.
    let bound_ref = spec["boundObjectRef"].clone();
    let bound = if bound_ref.is_object() {
        let kind = bound_ref["kind"].as_str().unwrap_or("");
        let bname = bound_ref["name"].as_str().unwrap_or("");
        let resource = match kind {
            "Pod" => "pods",
            "Secret" => "secrets",
            other => {
                return Err(KubeError::Invalid {
                    kind: "TokenRequest.authentication.k8s.io".into(),
                    name,
                    errors: vec![FieldError::not_supported(
                        "spec.boundObjectRef.kind",
                        other,
                        &["Pod", "Secret"],
                    )],
                })
            }
        };
        let obj = get(Ref::namespaced(resource, &ns, bname))
            .await?
            .ok_or_else(|| {
                KubeError::NotFound(Subject {
                    group: String::new(),
                    resource: resource.into(),
                    name: bname.into(),
                })
            })?;
        if let Some(want) = bound_ref["uid"].as_str().filter(|u| !u.is_empty()) {
            if want != uid(&obj) {
                return Err(KubeError::Conflict(
                    t.subject(&name),
                    format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
        }
        Some((
            kind.to_string(),
            bname.to_string(),
            uid(&obj).to_string(),
            obj,
        ))
    } else {
        None
    };
    // A node may only ask for tokens bound to its own pods (NodeRestriction).
    if let Some(node) = user.node_name() {
        let on_node = bound.as_ref().is_some_and(|(k, _, _, o)| {
            k == "Pod" && o.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
        });
        if !on_node {
            return Err(KubeError::forbidden(
                Subject::new("", "serviceaccounts", &name),
                "node requested a token not bound to a pod scheduled on it",
            ));
        }
    }
    let node = bound.as_ref().and_then(|(k, _, _, o)| {
        (k == "Pod")
            .then(|| o.pointer("/spec/nodeName")?.as_str())
            .flatten()
    });
    let (token, exp) = sv.auth.tokens.issue(
        &ns,
        &name,
        uid(&sa),
        &audiences,
        Duration::from_secs(secs as u64),
        bound
            .as_ref()
            .map(|(k, n, u, _)| (k.as_str(), n.as_str(), u.as_str())),
        node.map(|n| (n, "")),
    );
    let exp_time = chrono::DateTime::from_timestamp(exp, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": crate::datastore::objects::now_rfc3339()});
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(secs);
    if bound.is_none() {
        req["spec"]["boundObjectRef"] = Value::Null;
    }
    req["status"] = json!({"token": token, "expirationTimestamp": exp_time});
    Ok(json_response(StatusCode::CREATED, &req))
}

/// `/.well-known/openid-configuration`.
pub async fn openid_configuration(State(sv): State<Arc<ApiState>>) -> Response {
    let doc = json!({
        "issuer": ISSUER,
        "jwks_uri": format!("https://{}/openid/v1/jwks", sv.advertise_address),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// `/openid/v1/jwks`.
pub async fn jwks(State(sv): State<Arc<ApiState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        sv.auth.tokens.jwks().to_string(),
    )
        .into_response()
}
