//! The one error every HTTP surface returns (the Kubernetes API, the
//! supervisor's registration routes and the admin socket), worded as the
//! apiserver words its errors so kubectl prints its usual messages. Its
//! HTTP status, reason and `Status` body are the apiserver's business
//! (`apiserver::status`). Validation produces [`FieldError`]s, which
//! become a 422 `Invalid` whose `details.causes` name each field path, as
//! upstream's.

use crate::datastore::objects::ObjectError;
use crate::datastore::DatastoreError;

/// The group/resource an error is about (`nodes`, `configmaps`, `widgets.example.com`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    pub group: String,
    pub resource: String,
    pub name: String,
}

impl Subject {
    pub fn new(group: &str, resource: &str, name: &str) -> Self {
        Subject {
            group: group.into(),
            resource: resource.into(),
            name: name.into(),
        }
    }

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
    /// Upstream's `NewForbidden`: `<resource> "<name>" is forbidden: <reason>`.
    #[error("{}", forbidden_message(.subject, .reason))]
    Forbidden { subject: Subject, reason: String },
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
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

fn forbidden_message(s: &Subject, reason: &str) -> String {
    match (s.resource.is_empty(), s.name.is_empty()) {
        (true, _) => format!("forbidden: {reason}"),
        (false, true) => format!("{} is forbidden: {reason}", s.qualified()),
        (false, false) => format!("{} \"{}\" is forbidden: {reason}", s.qualified(), s.name),
    }
}

impl KubeError {
    /// The API's own 401, which names nothing about the credential.
    pub fn unauthorized() -> Self {
        KubeError::Unauthorized("Unauthorized".into())
    }

    pub fn forbidden(subject: Subject, reason: impl Into<String>) -> Self {
        KubeError::Forbidden {
            subject,
            reason: reason.into(),
        }
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
    pub(crate) fn reason(self) -> &'static str {
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

    pub fn not_found(field: &str, value: impl std::fmt::Debug) -> Self {
        Self::new(
            FieldErrorKind::NotFound,
            field,
            Some(format!("{value:?}")),
            "",
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
    pub(crate) fn message(&self) -> String {
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
        let s = Subject::new("", "nodes", "x");
        assert_eq!(
            KubeError::NotFound(s.clone()).to_string(),
            "nodes \"x\" not found"
        );
        assert_eq!(
            KubeError::NotFound(Subject::new("example.com", "widgets", "w")).to_string(),
            "widgets.example.com \"w\" not found"
        );
        // NewForbidden's three shapes.
        assert_eq!(
            KubeError::forbidden(s, "node \"x\" is not allowed to modify taints").to_string(),
            "nodes \"x\" is forbidden: node \"x\" is not allowed to modify taints"
        );
        assert_eq!(
            KubeError::forbidden(
                Subject::new("apps", "deployments", ""),
                "User \"u\" cannot list"
            )
            .to_string(),
            "deployments.apps is forbidden: User \"u\" cannot list"
        );
        assert_eq!(
            KubeError::forbidden(Subject::default(), "User \"u\" cannot get path \"/x\"")
                .to_string(),
            "forbidden: User \"u\" cannot get path \"/x\""
        );
    }

    #[test]
    fn storage_errors_without_an_object_keep_their_message_and_class() {
        let e: KubeError = DatastoreError::NotFound("/registry/minions/a".into()).into();
        assert!(matches!(e, KubeError::NotFoundMessage(_)));
        assert!(e.to_string().contains("/registry/minions/a"), "{e}");
        let u: KubeError = DatastoreError::Unavailable("db down".into()).into();
        assert!(matches!(u, KubeError::Unavailable(_)));
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
    }
}
