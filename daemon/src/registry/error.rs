//! The one error every HTTP surface returns (the Kubernetes API, the
//! supervisor's registration routes and the admin socket), shaped exactly as
//! the apiserver shapes its `Status` so kubectl prints its usual messages.
//! One `match` ([`KubeError::parts`]) decides code and reason for all three.
//! Validation produces [`FieldError`]s, which become a 422 `Invalid` whose
//! `details.causes` name each field path, as upstream's.

use crate::datastore::DatastoreError;
use crate::objects::ObjectError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The group/resource an error is about (`nodes`, `configmaps`, `widgets.example.com`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    pub group: String,
    pub resource: String,
    pub name: String,
}

impl Subject {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{} \"{}\" not found", .0.qualified(), .0.name)]
    NotFound(Subject),
    #[error("{} \"{}\" already exists", .0.qualified(), .0.name)]
    AlreadyExists(Subject),
    #[error("Operation cannot be fulfilled on {} \"{}\": {}", .0.qualified(), .0.name, .1)]
    Conflict(Subject, String),
    /// Server-side apply found fields other managers set differently.
    #[error("{message}")]
    ApplyConflict {
        subject: Subject,
        message: String,
        /// (message, field path) per conflicting field.
        causes: Vec<(String, String)>,
    },
    #[error("{kind} \"{name}\" is invalid: {}", FieldError::join(.errors))]
    Invalid {
        /// `Kind` or `Kind.group`, as upstream qualifies it.
        kind: String,
        name: String,
        errors: Vec<FieldError>,
    },
    /// A not-found whose message the caller wrote (the admin socket adds
    /// what to run next, which upstream's fixed wording has no room for).
    #[error("{0}")]
    NotFoundMessage(String),
    /// A conflict whose message the caller wrote.
    #[error("{0}")]
    ConflictMessage(String),
    #[error("{0}")]
    BadRequest(String),
    /// The API says just "Unauthorized"; the supervisor says which token.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Expired(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Refused for load or by a disruption budget. `retry_after` becomes
    /// the Retry-After header and `details.retryAfterSeconds`, as upstream's.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        cause: Option<String>,
        retry_after: Option<u32>,
    },
    /// A body over `--max-request-body-bytes`.
    #[error("Request entity too large: limit is {0}")]
    TooLarge(usize),
    /// A request past `--request-timeout`.
    #[error(
        "Timeout: request did not complete within requested timeout - context deadline exceeded"
    )]
    Timeout,
    /// An admin command for servers sent to an agent's socket.
    #[error("this host runs an agent; run node commands on a server")]
    AgentMode,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl KubeError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
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
            KubeError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
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

    pub fn code(&self) -> StatusCode {
        self.parts().0
    }

    /// The API's own 401, which names nothing about the credential.
    pub fn unauthorized() -> Self {
        KubeError::Unauthorized("Unauthorized".into())
    }

    /// The admin socket's machine-readable code (`rk3s_api::admin::ErrorBody`);
    /// its status code still comes from [`KubeError::parts`].
    pub fn admin_code(&self) -> &'static str {
        match self {
            KubeError::AgentMode => "agent_mode",
            _ => match self.parts().1 {
                "NotFound" => "not_found",
                "AlreadyExists" | "Conflict" => "conflict",
                "Invalid" | "BadRequest" => "bad_request",
                "Unauthorized" => "unauthorized",
                "Forbidden" => "forbidden",
                "TooManyRequests" => "too_many_requests",
                "ServiceUnavailable" | "Timeout" => "unavailable",
                "RequestEntityTooLarge" => "too_large",
                _ => "internal",
            },
        }
    }

    /// The admin socket's error body.
    pub fn to_admin(&self) -> Response {
        let body = rk3s_api::admin::ErrorBody {
            code: self.admin_code().into(),
            message: self.to_string(),
        };
        (self.code(), axum::Json(body)).into_response()
    }

    /// The Status object (also used inside watch ERROR events).
    pub fn status_object(&self) -> serde_json::Value {
        let (code, reason) = self.parts();
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        let subject = match self {
            KubeError::NotFound(s) | KubeError::AlreadyExists(s) | KubeError::Conflict(s, _) => {
                Some(s)
            }
            _ => None,
        };
        if let Some(sub) = subject {
            s["details"] = json!({"name": sub.name, "group": sub.group, "kind": sub.resource});
        }
        if let KubeError::ApplyConflict {
            subject: sub,
            causes,
            ..
        } = self
        {
            let causes: Vec<_> = causes
                .iter()
                .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": m, "field": f}))
                .collect();
            s["details"] = json!({"name": sub.name, "group": sub.group, "kind": sub.resource, "causes": causes});
        }
        if let KubeError::TooManyRequests {
            cause, retry_after, ..
        } = self
        {
            let mut details = json!({});
            if let Some(cause) = cause {
                details["causes"] = json!([{"reason": "DisruptionBudget", "message": cause}]);
            }
            if let Some(secs) = retry_after {
                details["retryAfterSeconds"] = json!(secs);
            }
            s["details"] = details;
        }
        if let KubeError::Invalid { kind, name, errors } = self {
            let (kind, group) = kind.split_once('.').unwrap_or((kind, ""));
            let causes: Vec<_> = errors
                .iter()
                .map(|e| json!({"reason": e.kind.reason(), "message": e.message(), "field": e.field}))
                .collect();
            s["details"] = json!({"name": name, "group": group, "kind": kind, "causes": causes});
        }
        s
    }

    /// The Conflict for a write based on an outdated resourceVersion.
    pub fn stale(subject: Subject) -> Self {
        KubeError::Conflict(
            subject,
            "the object has been modified; please apply your changes to the latest version and try again".into(),
        )
    }

    /// Map a storage error onto the object it concerns.
    pub fn from_store(e: ObjectError, subject: Subject) -> Self {
        match e {
            ObjectError::Store(DatastoreError::NotFound(_)) => KubeError::NotFound(subject),
            ObjectError::Store(DatastoreError::AlreadyExists(_)) => {
                KubeError::AlreadyExists(subject)
            }
            ObjectError::Store(DatastoreError::Conflict { .. }) => KubeError::stale(subject),
            ObjectError::Store(DatastoreError::Compacted {
                requested,
                compacted,
            }) => KubeError::Expired(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            ObjectError::Store(DatastoreError::InvalidKey(k)) => {
                KubeError::BadRequest(format!("invalid object key {k}"))
            }
            ObjectError::Store(DatastoreError::Unavailable(m)) => KubeError::Unavailable(m),
            ObjectError::Corrupt { .. } => KubeError::Internal(e.to_string()),
        }
    }
}

/// What is wrong with one field, in upstream's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    Forbidden,
    Duplicate,
    NotSupported,
    NotFound,
    TooLong,
}

impl FieldErrorKind {
    fn reason(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::NotFound => "FieldValueNotFound",
            FieldErrorKind::TooLong => "FieldValueTooLong",
        }
    }
}

/// A value already rendered as upstream renders it (Go's `%#v` of a struct).
pub struct Raw(pub String);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One validation failure: `spec.containers[0].image: Required value`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    /// The field path, `spec.template.spec.containers[1].name`.
    pub field: String,
    /// The offending value, rendered as upstream renders it (quoted strings).
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    fn new(kind: FieldErrorKind, field: &str, value: Option<String>, detail: &str) -> Self {
        Self {
            kind,
            field: field.to_string(),
            value,
            detail: detail.to_string(),
        }
    }

    pub fn required(field: &str, detail: &str) -> Self {
        Self::new(FieldErrorKind::Required, field, None, detail)
    }

    /// `value` is shown quoted when it is a string, as Go's `%#v` does.
    pub fn invalid(field: &str, value: impl std::fmt::Debug, detail: &str) -> Self {
        Self::new(
            FieldErrorKind::Invalid,
            field,
            Some(format!("{value:?}")),
            detail,
        )
    }

    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::new(FieldErrorKind::Forbidden, field, None, detail)
    }

    pub fn duplicate(field: &str, value: impl std::fmt::Debug) -> Self {
        Self::new(
            FieldErrorKind::Duplicate,
            field,
            Some(format!("{value:?}")),
            "",
        )
    }

    pub fn not_supported(field: &str, value: impl std::fmt::Debug, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self::new(
            FieldErrorKind::NotSupported,
            field,
            Some(format!("{value:?}")),
            &format!("supported values: {}", list.join(", ")),
        )
    }

    pub fn too_long(field: &str, max: usize) -> Self {
        Self::new(
            FieldErrorKind::TooLong,
            field,
            None,
            &format!("must have at most {max} bytes"),
        )
    }

    /// The text after the field path.
    fn message(&self) -> String {
        let with_detail = |head: String| {
            if self.detail.is_empty() {
                head
            } else {
                format!("{head}: {}", self.detail)
            }
        };
        match self.kind {
            FieldErrorKind::Required => with_detail("Required value".into()),
            FieldErrorKind::Forbidden => with_detail("Forbidden".into()),
            FieldErrorKind::TooLong => with_detail("Too long".into()),
            FieldErrorKind::Invalid => with_detail(format!(
                "Invalid value: {}",
                self.value.as_deref().unwrap_or("")
            )),
            FieldErrorKind::NotFound => {
                format!("Not found: {}", self.value.as_deref().unwrap_or(""))
            }
            FieldErrorKind::Duplicate => {
                format!("Duplicate value: {}", self.value.as_deref().unwrap_or(""))
            }
            FieldErrorKind::NotSupported => with_detail(format!(
                "Unsupported value: {}",
                self.value.as_deref().unwrap_or("")
            )),
        }
    }

    /// Upstream's aggregate: one error bare, several in brackets.
    fn join(errors: &[FieldError]) -> String {
        let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        match parts.len() {
            1 => parts[0].clone(),
            _ => format!("[{}]", parts.join(", ")),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        let mut resp = (self.code(), axum::Json(self.status_object())).into_response();
        if let KubeError::TooManyRequests {
            retry_after: Some(secs),
            ..
        } = self
        {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// Storage errors that concern no one object (the supervisor's and admin
/// socket's reads): the same classes as [`KubeError::from_store`].
impl From<ObjectError> for KubeError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Store(ref s @ DatastoreError::NotFound(_)) => {
                KubeError::NotFoundMessage(s.to_string())
            }
            ObjectError::Store(
                ref s @ (DatastoreError::AlreadyExists(_) | DatastoreError::Conflict { .. }),
            ) => KubeError::ConflictMessage(s.to_string()),
            e => KubeError::from_store(e, Subject::default()),
        }
    }
}

impl From<DatastoreError> for KubeError {
    fn from(e: DatastoreError) -> Self {
        ObjectError::Store(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_kubernetes() {
        let s = Subject {
            group: "".into(),
            resource: "nodes".into(),
            name: "x".into(),
        };
        assert_eq!(
            KubeError::NotFound(s.clone()).to_string(),
            "nodes \"x\" not found"
        );
        let o = KubeError::AlreadyExists(s).status_object();
        assert_eq!(o["reason"], "AlreadyExists");
        assert_eq!(o["code"], 409);
        assert_eq!(o["details"]["kind"], "nodes");
        let g = Subject {
            group: "example.com".into(),
            resource: "widgets".into(),
            name: "w".into(),
        };
        assert_eq!(
            KubeError::NotFound(g).to_string(),
            "widgets.example.com \"w\" not found"
        );
        assert_eq!(
            KubeError::Expired("too old".into()).status_object()["code"],
            410
        );
    }

    #[test]
    fn a_refusal_for_load_is_a_429_status_with_retry_after() {
        let e = KubeError::TooManyRequests {
            message: "too many registrations in progress; try again later".into(),
            cause: None,
            retry_after: Some(7),
        };
        let s = e.status_object();
        assert_eq!(s["reason"], "TooManyRequests");
        assert_eq!(s["details"]["retryAfterSeconds"], 7);
        let resp = e.into_response();
        assert_eq!(resp.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "7");
    }

    #[test]
    fn storage_errors_without_an_object_keep_their_message_and_class() {
        let e: KubeError = DatastoreError::NotFound("/registry/minions/a".into()).into();
        assert_eq!(e.code(), StatusCode::NOT_FOUND);
        assert!(e.to_string().contains("/registry/minions/a"), "{e}");
        assert_eq!(e.admin_code(), "not_found");
        assert_eq!(KubeError::AgentMode.admin_code(), "agent_mode");
        assert_eq!(KubeError::AgentMode.code(), StatusCode::CONFLICT);
        let u: KubeError = DatastoreError::Unavailable("db down".into()).into();
        assert_eq!(u.admin_code(), "unavailable");
        assert_eq!(u.code(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn invalid_names_fields_like_upstream() {
        let e = KubeError::Invalid {
            kind: "Deployment.apps".into(),
            name: "web".into(),
            errors: vec![
                FieldError::required("spec.template.spec.containers[0].image", ""),
                FieldError::invalid("metadata.name", "Web", "must be lowercase"),
            ],
        };
        assert_eq!(
            e.to_string(),
            "Deployment.apps \"web\" is invalid: [spec.template.spec.containers[0].image: Required value, metadata.name: Invalid value: \"Web\": must be lowercase]"
        );
        let s = e.status_object();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["kind"], "Deployment");
        assert_eq!(s["details"]["group"], "apps");
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(s["details"]["causes"][1]["field"], "metadata.name");
    }
}
