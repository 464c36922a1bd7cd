//! Who writes, and the admission hooks that need more than the kind itself
//! (other objects, the requester's permissions). The registry calls them on
//! every create and update; their implementation lives above it (`auth`),
//! registered with [`super::Registry::set_admission`], so this layer does
//! not depend on the authorizer.

use super::error::KubeError;
use super::resource::ResourceType;
use serde_json::Value;
use std::collections::BTreeMap;

/// An authenticated requester, as upstream's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

pub const SA_PREFIX: &str = "system:serviceaccount:";

impl UserInfo {
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> Self {
        Self {
            name: name.into(),
            groups,
            ..Default::default()
        }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// `system:node:<name>` in `system:nodes`.
    pub fn node_name(&self) -> Option<&str> {
        if self.in_group("system:nodes") {
            self.name.strip_prefix("system:node:")
        } else {
            None
        }
    }

    /// (namespace, name) of a service account user.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name.strip_prefix(SA_PREFIX)?.split_once(':')
    }

    /// The user of service account `ns/name`, with upstream's groups.
    pub fn of_service_account(ns: &str, name: &str, uid: &str) -> Self {
        Self {
            name: format!("{SA_PREFIX}{ns}:{name}"),
            uid: uid.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
        }
    }
}

/// One write as admission sees it.
pub struct Write<'a> {
    pub rt: &'a ResourceType,
    pub namespace: Option<&'a str>,
    pub subresource: Option<&'a str>,
    pub old: Option<&'a Value>,
    /// `None` for the server's own writers (controllers, manifests).
    pub user: Option<&'a UserInfo>,
}

/// What the server does once an object is gone for good, for kinds that
/// stand for server state (a Node: its tunnel, Lease, password and pod
/// CIDR). Registered with [`super::Registry::set_deletions`].
#[async_trait::async_trait]
pub trait Deletions: Send + Sync {
    async fn deleted(&self, rt: &ResourceType, obj: &Value);
}

#[async_trait::async_trait]
pub trait Admission: Send + Sync {
    /// Change `obj` before defaults and validation (upstream's mutating
    /// admission).
    async fn mutate(&self, w: &Write<'_>, obj: &mut Value) -> Result<(), KubeError>;

    /// Refuse `obj` after validation (upstream's validating admission).
    async fn validate(&self, w: &Write<'_>, obj: &Value) -> Result<(), KubeError>;
}
