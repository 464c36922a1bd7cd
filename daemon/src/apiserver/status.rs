//! How an error leaves the API: the one exhaustive `match` from
//! [`KubeError`] to an HTTP status code and upstream's `reason`, and the
//! `Status` object written byte for byte as kube-apiserver writes it
//! (its Go field order, its omitempty rules, a trailing newline). Client
//! libraries compare these bodies as text, and kubectl prints the
//! message and reason.

use crate::registry::error::KubeError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `metav1.Status`, fields in upstream's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    kind: &'static str,
    api_version: &'static str,
    /// An empty `ListMeta`: always written, as `{}`.
    metadata: Empty,
    #[serde(skip_serializing_if = "str::is_empty")]
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "is_zero")]
    code: u16,
}

#[derive(Debug, Default, Serialize)]
struct Empty {}

/// `metav1.StatusDetails`: `kind` holds the resource, as upstream's does.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Details {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    group: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<Cause>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    retry_after_seconds: u32,
}

/// `metav1.StatusCause`.
#[derive(Debug, Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    field: String,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// The HTTP status and upstream's reason for every error.
pub fn classify(e: &KubeError) -> (StatusCode, &'static str) {
    match e {
        KubeError::NotFound(_) | KubeError::NotFoundMessage(_) | KubeError::NoRoute => {
            (StatusCode::NOT_FOUND, "NotFound")
        }
        KubeError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
        KubeError::Conflict(..)
        | KubeError::ConflictMessage(_)
        | KubeError::ApplyConflict { .. }
        | KubeError::AgentMode => (StatusCode::CONFLICT, "Conflict"),
        KubeError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
        KubeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
        KubeError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        KubeError::Forbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
        KubeError::Expired(_) => (StatusCode::GONE, "Expired"),
        KubeError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        KubeError::UnsupportedMediaType(_) => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
        }
        KubeError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
        KubeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        KubeError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
        KubeError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        KubeError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    }
}

impl Status {
    /// `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":N}`.
    pub fn success(code: StatusCode) -> Self {
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Success",
            message: String::new(),
            reason: "",
            details: None,
            code: code.as_u16(),
        }
    }

    /// The Status upstream sends for `e`.
    pub fn of(e: &KubeError) -> Self {
        let (code, reason) = classify(e);
        let subject = |s: &crate::registry::error::Subject| Details {
            name: s.name.clone(),
            group: s.group.clone(),
            kind: s.resource.clone(),
            ..Default::default()
        };
        let details = match e {
            KubeError::NotFound(s)
            | KubeError::AlreadyExists(s)
            | KubeError::Conflict(s, _)
            | KubeError::Forbidden { subject: s, .. } => Some(subject(s)),
            KubeError::ApplyConflict {
                subject: s, causes, ..
            } => Some(Details {
                causes: causes
                    .iter()
                    .map(|(m, f)| Cause {
                        reason: "FieldManagerConflict",
                        message: m.clone(),
                        field: f.clone(),
                    })
                    .collect(),
                ..subject(s)
            }),
            KubeError::Invalid { kind, name, errors } => {
                let (kind, group) = kind.split_once('.').unwrap_or((kind, ""));
                Some(Details {
                    name: name.clone(),
                    group: group.to_string(),
                    kind: kind.to_string(),
                    causes: errors
                        .iter()
                        .map(|e| Cause {
                            reason: e.kind.reason(),
                            message: e.message(),
                            field: e.field.clone(),
                        })
                        .collect(),
                    ..Default::default()
                })
            }
            KubeError::TooManyRequests {
                cause, retry_after, ..
            } => Some(Details {
                causes: cause
                    .iter()
                    .map(|c| Cause {
                        reason: "DisruptionBudget",
                        message: c.clone(),
                        field: String::new(),
                    })
                    .collect(),
                retry_after_seconds: retry_after.unwrap_or(0),
                ..Default::default()
            }),
            // Upstream's generic responses (an unknown path or resource, a
            // method the resource has not, a timeout) carry empty details.
            KubeError::NoRoute | KubeError::MethodNotAllowed | KubeError::Timeout => {
                Some(Details::default())
            }
            KubeError::Internal(m) => Some(Details {
                causes: vec![Cause {
                    reason: "",
                    message: m.clone(),
                    field: String::new(),
                }],
                ..Default::default()
            }),
            KubeError::NotFoundMessage(_)
            | KubeError::ConflictMessage(_)
            | KubeError::BadRequest(_)
            | KubeError::Unauthorized(_)
            | KubeError::Expired(_)
            | KubeError::UnsupportedMediaType(_)
            | KubeError::TooLarge(_)
            | KubeError::AgentMode
            | KubeError::Unavailable(_) => None,
        };
        Status {
            kind: "Status",
            api_version: "v1",
            metadata: Empty {},
            status: "Failure",
            message: e.to_string(),
            reason,
            details,
            code: code.as_u16(),
        }
    }

    /// The JSON as upstream writes it, newline included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    pub fn code(&self) -> StatusCode {
        StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Status {
    fn into_response(self) -> Response {
        (
            self.code(),
            [(header::CONTENT_TYPE, "application/json")],
            self.to_bytes(),
        )
            .into_response()
    }
}

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        let mut resp = Status::of(&self).into_response();
        if let KubeError::TooManyRequests {
            retry_after: Some(secs),
            ..
        } = self
        {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::error::{FieldError, Subject};

    fn subject(group: &str, resource: &str, name: &str) -> Subject {
        Subject {
            group: group.into(),
            resource: resource.into(),
            name: name.into(),
        }
    }

    fn body(e: KubeError) -> String {
        String::from_utf8(Status::of(&e).to_bytes()).unwrap()
    }

    /// Each body as kube-apiserver 1.32 sends it.
    #[test]
    fn error_bodies_match_upstream_byte_for_byte() {
        let cases = [
            (
                KubeError::AlreadyExists(subject("", "services", "mock-2")),
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"services \"mock-2\" already exists","reason":"AlreadyExists","details":{"name":"mock-2","kind":"services"},"code":409}"#,
            ),
            (
                KubeError::NotFound(subject("apps", "deployments", "web")),
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"deployments.apps \"web\" not found","reason":"NotFound","details":{"name":"web","group":"apps","kind":"deployments"},"code":404}"#,
            ),
            (
                KubeError::NoRoute,
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#,
            ),
            (
                KubeError::stale(subject("", "configmaps", "c")),
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","details":{"name":"c","kind":"configmaps"},"code":409}"#,
            ),
            (
                KubeError::Invalid {
                    kind: "Deployment.apps".into(),
                    name: "web".into(),
                    errors: vec![
                        FieldError::required("spec.template.spec.containers[0].image", ""),
                        FieldError::invalid("metadata.name", "Web", "must be lowercase"),
                    ],
                },
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Deployment.apps \"web\" is invalid: [spec.template.spec.containers[0].image: Required value, metadata.name: Invalid value: \"Web\": must be lowercase]","reason":"Invalid","details":{"name":"web","group":"apps","kind":"Deployment","causes":[{"reason":"FieldValueRequired","message":"Required value","field":"spec.template.spec.containers[0].image"},{"reason":"FieldValueInvalid","message":"Invalid value: \"Web\": must be lowercase","field":"metadata.name"}]},"code":422}"#,
            ),
            (
                KubeError::forbidden(
                    subject("", "pods", ""),
                    r#"User "alice" cannot list resource "pods" in API group "" in the namespace "default""#,
                ),
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"","reason":"Forbidden","details":{"kind":"pods"},"code":403}"#,
            ),
            (
                KubeError::unauthorized(),
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#,
            ),
            (
                KubeError::MethodNotAllowed,
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server does not allow this method on the requested resource","reason":"MethodNotAllowed","details":{},"code":405}"#,
            ),
            (
                KubeError::Expired("too old resource version: 1 (5)".into()),
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}"#,
            ),
            (
                KubeError::TooManyRequests {
                    message: "Cannot evict pod as it would violate the pod's disruption budget."
                        .into(),
                    cause: Some(
                        "The disruption budget web needs 2 healthy pods and has 2 currently".into(),
                    ),
                    retry_after: None,
                },
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Cannot evict pod as it would violate the pod's disruption budget.","reason":"TooManyRequests","details":{"causes":[{"reason":"DisruptionBudget","message":"The disruption budget web needs 2 healthy pods and has 2 currently"}]},"code":429}"#,
            ),
            (
                KubeError::TooManyRequests {
                    message: "too many requests".into(),
                    cause: None,
                    retry_after: Some(7),
                },
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too many requests","reason":"TooManyRequests","details":{"retryAfterSeconds":7},"code":429}"#,
            ),
            (
                KubeError::Timeout,
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Timeout: request did not complete within requested timeout - context deadline exceeded","reason":"Timeout","details":{},"code":504}"#,
            ),
            (
                KubeError::Internal("db closed".into()),
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Internal error occurred: db closed","reason":"InternalError","details":{"causes":[{"message":"db closed"}]},"code":500}"#,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(body(e), format!("{want}\n"));
        }
        let ok = String::from_utf8(Status::success(StatusCode::CREATED).to_bytes()).unwrap();
        assert_eq!(
            ok,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Success\",\"code\":201}\n"
        );
    }

    #[test]
    fn a_refusal_for_load_is_a_429_status_with_retry_after() {
        let e = KubeError::TooManyRequests {
            message: "too many registrations in progress; try again later".into(),
            cause: None,
            retry_after: Some(7),
        };
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }
}
