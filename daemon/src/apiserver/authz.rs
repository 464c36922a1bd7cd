//! Who is calling (from the TLS client certificate) and what they may do.
//!
//! - `system:masters`: everything.
//! - nodes (`system:node:<name>` in `system:nodes`): their own Node (and
//!   status) and Lease, read namespaces and configmaps, create events;
//!   never Secrets, never another node.
//! - anonymous: nothing under /api or /apis (the health and version
//!   endpoints are routed before this check).

use crate::registry::error::KubeError;
use crate::registry::ResourceType;

#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

/// The identity of one TLS connection, inserted as a request extension.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Identity>);

impl Identity {
    /// CN = user, O = groups, as Kubernetes reads client certificates.
    pub fn from_cert(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let user = subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        Some(Self { user, groups })
    }

    pub fn node_name(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.user.strip_prefix("system:node:")
        } else {
            None
        }
    }
}

pub struct Attributes<'a> {
    pub verb: &'a str,
    pub resource: &'a ResourceType,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

fn forbidden(id: &Identity, a: &Attributes<'_>) -> KubeError {
    let res = match a.subresource {
        Some(s) => format!("{}/{s}", a.resource.resource),
        None => a.resource.resource.clone(),
    };
    let what = match a.name {
        Some(n) => format!("{res} \"{n}\""),
        None => res.clone(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    KubeError::Forbidden(format!(
        "{what} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
        id.user, a.verb, a.resource.group
    ))
}

pub fn authorize(caller: &Caller, a: &Attributes<'_>) -> Result<(), KubeError> {
    let Some(id) = &caller.0 else {
        return Err(KubeError::Unauthorized);
    };
    if id.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    if let Some(node) = id.node_name() {
        let r = &a.resource;
        let own = a.name == Some(node);
        let allowed = match (r.group.as_str(), r.resource.as_str()) {
            ("", "nodes") => own && matches!(a.verb, "get" | "update" | "patch"),
            ("coordination.k8s.io", "leases") => {
                a.namespace == Some(crate::lifecycle::LEASE_NAMESPACE)
                    && (own && matches!(a.verb, "get" | "update" | "patch")
                        || (a.verb == "create" && a.name.is_none()))
            }
            ("", "namespaces") | ("", "configmaps") => matches!(a.verb, "get" | "list" | "watch"),
            ("", "events") => matches!(a.verb, "create" | "patch" | "update"),
            _ => false,
        };
        if allowed {
            return Ok(());
        }
    }
    Err(forbidden(id, a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::kinds::builtins;

    fn rt(name: &str) -> ResourceType {
        builtins().into_iter().find(|r| r.resource == name).unwrap()
    }

    fn node(n: &str) -> Caller {
        Caller(Some(Identity {
            user: format!("system:node:{n}"),
            groups: vec!["system:nodes".into()],
        }))
    }

    fn check(
        c: &Caller,
        verb: &str,
        res: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Result<(), KubeError> {
        let r = rt(res);
        authorize(
            c,
            &Attributes {
                verb,
                resource: &r,
                subresource: None,
                namespace: ns,
                name,
            },
        )
    }

    #[test]
    fn node_restriction() {
        let a = node("a");
        assert!(check(&a, "get", "nodes", None, Some("a")).is_ok());
        assert!(check(&a, "patch", "nodes", None, Some("a")).is_ok());
        assert!(check(&a, "get", "nodes", None, Some("b")).is_err());
        assert!(check(&a, "list", "nodes", None, None).is_err());
        assert!(check(&a, "delete", "nodes", None, Some("a")).is_err());
        assert!(check(&a, "update", "leases", Some("kube-node-lease"), Some("a")).is_ok());
        assert!(check(&a, "update", "leases", Some("kube-node-lease"), Some("b")).is_err());
        assert!(check(
            &a,
            "get",
            "secrets",
            Some("kube-system"),
            Some("a.node-password.rk3s")
        )
        .is_err());
        assert!(check(&a, "list", "configmaps", Some("default"), None).is_ok());
        assert!(check(&a, "create", "events", Some("default"), None).is_ok());
        let e = check(&a, "get", "secrets", Some("kube-system"), Some("s")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "secrets \"s\" is forbidden: User \"system:node:a\" cannot get resource \"secrets\" in API group \"\" in the namespace \"kube-system\""
        );
    }

    #[test]
    fn masters_and_anonymous() {
        let admin = Caller(Some(Identity {
            user: "system:admin".into(),
            groups: vec!["system:masters".into()],
        }));
        assert!(check(&admin, "delete", "secrets", Some("x"), Some("y")).is_ok());
        assert!(matches!(
            check(&Caller(None), "get", "nodes", None, None),
            Err(KubeError::Unauthorized)
        ));
        let other = Caller(Some(Identity {
            user: "bob".into(),
            groups: vec![],
        }));
        assert!(matches!(
            check(&other, "list", "nodes", None, None),
            Err(KubeError::Forbidden(_))
        ));
    }
}
