//! What the registry knows of one kind it serves: its names, scope,
//! subresources, printer columns, where it is stored, and its strategy.

use super::strategy::Strategy;
use serde_json::Value;

/// An extra Table column (CRD `additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    /// Plural, lowercase: the URL segment.
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Served subresources: `status`, `scale`, `binding`, `eviction`.
    pub subresources: Vec<String>,
    pub columns: Vec<PrinterColumn>,
    /// Where a CRD's `scale` subresource reads and writes, if it has one.
    pub scale_paths: Option<ScalePaths>,
    /// A CRD version's `openAPIV3Schema` (built-ins have typed schemas).
    pub schema: Option<std::sync::Arc<Value>>,
    /// A review kind (access, rules, token, self-subject): only `create`,
    /// answered by the API server and never stored.
    pub create_only: bool,
    /// A metrics kind: only `get` and `list`, computed by the API server
    /// from the kubelets when read and never stored.
    pub read_only: bool,
    /// The kind's behaviour (a CRD's kinds: [`super::strategy::Generic`]).
    pub strategy: StrategyRef,
    /// One of the kinds the API serves on its own (not from a CRD).
    pub builtin: bool,
}

/// A kind's strategy as a field: compared by identity.
#[derive(Clone, Copy)]
pub struct StrategyRef(pub &'static dyn Strategy);

impl std::fmt::Debug for StrategyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Strategy")
    }
}

impl PartialEq for StrategyRef {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(self.0, other.0)
    }
}

/// JSON paths of a scalable kind (fixed for built-ins, from the CRD otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// The verbs of a stored kind, as discovery lists them.
pub const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `Kind` or `Kind.group`, as upstream names a kind in messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// Datastore directory of this kind. Core kinds keep upstream's short
    /// names (`/registry/nodes/...`); others are qualified by group. Kinds
    /// served by two groups or versions share one directory.
    pub fn storage(&self) -> String {
        match (self.group.as_str(), self.resource.as_str()) {
            ("", r) | ("coordination.k8s.io", r) | ("events.k8s.io", r @ "events") => r.to_string(),
            (g, r) => format!("{g}/{r}"),
        }
    }

    pub fn has(&self, subresource: &str) -> bool {
        self.subresources.iter().any(|s| s == subresource)
    }

    pub fn has_status(&self) -> bool {
        self.has("status")
    }

    /// Whether this is the built-in kind `b` (in any of its versions).
    pub fn is(&self, b: &Builtin) -> bool {
        self.builtin && self.group == b.group() && self.resource == b.resource()
    }

    pub fn is_builtin(&self) -> bool {
        self.builtin
    }

    /// The kind's behaviour: defaults, validation, table, field selectors.
    pub fn strategy(&self) -> &'static dyn Strategy {
        self.strategy.0
    }

    /// Where `/scale` reads and writes.
    pub fn scale(&self) -> Option<ScalePaths> {
        if !self.has("scale") {
            return None;
        }
        self.scale_paths.clone().or_else(|| {
            Some(ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: Some(".spec.selector".into()),
            })
        })
    }
}

/// One built-in kind. Its static (`kinds::PODS`) is how code that must
/// treat a kind specially names it: it always exists, so there is
/// nothing to look up and nothing that can fail.
pub struct Builtin {
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [&'static str],
    pub strategy: fn() -> &'static dyn Strategy,
}

/// Groups whose kinds are all reviews (create-only, never stored).
const REVIEW_GROUPS: [&str; 2] = ["authentication.k8s.io", "authorization.k8s.io"];
/// Groups whose kinds are computed when read (read-only, never stored).
const COMPUTED_GROUPS: [&str; 1] = ["metrics.k8s.io"];

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

impl Builtin {
    /// The kind as the registry serves it.
    pub fn resource_type(&self) -> ResourceType {
        ResourceType {
            group: self.group.into(),
            version: self.version.into(),
            resource: self.resource.into(),
            singular: self.singular.into(),
            kind: self.kind.into(),
            namespaced: self.namespaced,
            short_names: strings(self.short),
            categories: strings(self.categories),
            subresources: strings(self.subresources),
            columns: vec![],
            scale_paths: None,
            schema: None,
            create_only: REVIEW_GROUPS.contains(&self.group),
            read_only: COMPUTED_GROUPS.contains(&self.group),
            strategy: StrategyRef((self.strategy)()),
            builtin: true,
        }
    }

    /// The datastore directory of its objects (`pods`, `apps/deployments`).
    pub fn storage(&self) -> String {
        self.resource_type().storage()
    }

    /// The key prefix of its objects (`/registry/pods/`), in `namespace`
    /// or all of them.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        crate::datastore::objects::prefix(&self.storage(), namespace)
    }

    /// The key of one of its objects.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }

    pub fn group(&self) -> &'static str {
        self.group
    }

    pub fn resource(&self) -> &'static str {
        self.resource
    }
}
