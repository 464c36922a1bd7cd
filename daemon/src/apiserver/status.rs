//! Kubernetes `Status` errors, shaped exactly as the apiserver shapes them so
//! kubectl prints its usual messages. One `match` decides code and reason.

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
    #[error("{kind} \"{name}\" is invalid: {message}")]
    Invalid {
        kind: String,
        name: String,
        message: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
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
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl KubeError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            KubeError::NotFound(_) | KubeError::NoRoute => (StatusCode::NOT_FOUND, "NotFound"),
            KubeError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            KubeError::Conflict(..) => (StatusCode::CONFLICT, "Conflict"),
            KubeError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            KubeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            KubeError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            KubeError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            KubeError::Expired(_) => (StatusCode::GONE, "Expired"),
            KubeError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            KubeError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            KubeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            KubeError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    pub fn code(&self) -> StatusCode {
        self.parts().0
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
        if let KubeError::Invalid { kind, name, .. } = self {
            s["details"] = json!({"name": name, "kind": kind});
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

impl IntoResponse for KubeError {
    fn into_response(self) -> Response {
        (self.code(), axum::Json(self.status_object())).into_response()
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
}
