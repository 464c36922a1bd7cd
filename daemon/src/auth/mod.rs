//! Who is calling and what they may do: authentication (client
//! certificates, service-account tokens, impersonation), authorization
//! (`system:masters`, the Node authorizer, RBAC), the default policy, the
//! service-account token issuer, and the admission that needs them.
//!
//! Layering: above `registry` (it follows RBAC objects and pods from the
//! datastore and implements the registry's admission hooks), below
//! `apiserver` and `controllers`.

pub mod admission;
pub mod bearer;
pub mod node;
pub mod policy;
pub mod rbac;
pub mod tokens;

use crate::registry::{KubeError, Subject, UserInfo};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Upstream's authorizer attributes; empty strings are "not given".
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The request's field selector (the Node authorizer narrows lists).
    pub field_selector: &'a str,
    /// A non-resource request's path.
    pub path: Option<&'a str>,
}

impl<'a> Request<'a> {
    pub fn resource(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        subresource: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> Self {
        Self {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
            ..Default::default()
        }
    }

    pub fn path(verb: &'a str, path: &'a str) -> Self {
        Self {
            verb,
            path: Some(path),
            ..Default::default()
        }
    }

    pub fn with_fields(mut self, selector: &'a str) -> Self {
        self.field_selector = selector;
        self
    }

    /// Upstream's denial message.
    pub fn forbidden(&self, user: &UserInfo) -> KubeError {
        if let Some(p) = self.path {
            return KubeError::forbidden(
                Subject::default(),
                format!("User {:?} cannot {} path {p:?}", user.name, self.verb),
            );
        }
        // Upstream names the subresource with the resource, in the
        // message's head and in the details alike.
        let res = if self.subresource.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", self.namespace)
        };
        KubeError::forbidden(
            Subject::new(self.group, &res, self.name),
            format!(
                "User {:?} cannot {} resource {res:?} in API group {:?} {scope}",
                user.name, self.verb, self.group
            ),
        )
    }
}

/// An authorization decision and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(String),
    /// No authorizer allowed it (upstream's NoOpinion from all).
    Deny(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// Authorization (Node, then RBAC, as K3s runs `--authorization-mode=Node,RBAC`),
/// plus the token issuer and what tokens are checked against.
pub struct Auth {
    pub rbac: Arc<rbac::Rbac>,
    pub pods: Arc<node::PodGraph>,
    pub tokens: Arc<tokens::Issuer>,
    /// For the objects tokens name.
    objects: crate::datastore::objects::Objects,
    token_cache: bearer::TokenCache,
}

pub const MASTERS: &str = "system:masters";
/// The group of the client certificate servers present to each other to
/// relay a kubelet stream (HA: any server reaches any node).
pub const SERVERS: &str = "rk3s:servers";
/// The user of the aggregator's front-proxy client certificate, the only
/// name extension API servers accept X-Remote headers from.
pub const FRONT_PROXY: &str = "system:auth-proxy";

impl Auth {
    pub fn new(tokens: Arc<tokens::Issuer>, objects: crate::datastore::objects::Objects) -> Self {
        Self {
            rbac: Arc::default(),
            pods: Arc::default(),
            tokens,
            objects,
            token_cache: Default::default(),
        }
    }

    /// Follow RBAC objects, pods and the signing keys until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        store: crate::datastore::Datastore,
        stop: CancellationToken,
    ) {
        tokio::join!(
            self.rbac.clone().follow(store.clone(), stop.clone()),
            self.pods.clone().follow(store.clone(), stop.clone()),
            self.tokens.clone().follow(store, stop),
        );
    }

    pub fn decide(&self, user: &UserInfo, r: &Request<'_>) -> Decision {
        if user.in_group(MASTERS) {
            return Decision::Allow(format!("{MASTERS} may do anything"));
        }
        if let Some(node) = user.node_name() {
            if node::allows(&self.pods, node, r) {
                return Decision::Allow("allowed by the Node authorizer".into());
            }
        }
        match self.rbac.allows(user, r) {
            Some(reason) => Decision::Allow(reason),
            None => Decision::Deny(String::new()),
        }
    }

    /// Allow or a Forbidden with upstream's message.
    pub fn authorize(&self, user: &UserInfo, r: &Request<'_>) -> Result<(), KubeError> {
        if self.decide(user, r).allowed() {
            Ok(())
        } else {
            Err(r.forbidden(user))
        }
    }
}
