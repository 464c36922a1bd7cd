//! The error every HTTP handler returns, and the one place that decides its
//! status code. Supervisor routes render it as a Kubernetes `Status`; the
//! admin socket renders it as [`rk3s_api::admin::ErrorBody`].

use crate::datastore::DatastoreError;
use crate::nodepassword::secrets::PasswordError;
use crate::objects::ObjectError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("this host runs an agent; run node commands on a server")]
    AgentMode,
    #[error("{0}")]
    Unavailable(String),
    /// Refused for load; the client may retry after this many seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u32 },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::AgentMode => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::AgentMode => "agent_mode",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::TooManyRequests { .. } => "too_many_requests",
            ApiError::Internal(_) => "internal",
        }
    }

    fn reason(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            _ => "InternalError",
        }
    }

    /// A Kubernetes `Status` object, as K3s's supervisor answers.
    pub fn to_status(&self) -> Response {
        let body = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.status().as_u16(),
        });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = self {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, (*retry_after).into());
        }
        resp
    }

    /// The admin socket's error body.
    pub fn to_admin(&self) -> Response {
        let body = rk3s_api::admin::ErrorBody {
            code: self.code().into(),
            message: self.to_string(),
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

impl From<DatastoreError> for ApiError {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::AlreadyExists(_) | DatastoreError::Conflict { .. } => {
                ApiError::Conflict(e.to_string())
            }
            DatastoreError::NotFound(_) => ApiError::NotFound(e.to_string()),
            DatastoreError::Compacted { .. } | DatastoreError::InvalidKey(_) => {
                ApiError::BadRequest(e.to_string())
            }
            DatastoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<ObjectError> for ApiError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::Store(s) => s.into(),
            ObjectError::Corrupt { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Mismatch { .. } => ApiError::Forbidden(e.to_string()),
            PasswordError::Corrupt { .. } => ApiError::Internal(e.to_string()),
            PasswordError::Objects(o) => o.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_load_is_a_429_status_with_retry_after() {
        let e = ApiError::TooManyRequests {
            message: "too many registrations in progress; try again later".into(),
            retry_after: 7,
        };
        let resp = e.to_status();
        assert_eq!(resp.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[http::header::RETRY_AFTER], "7");
    }
}
