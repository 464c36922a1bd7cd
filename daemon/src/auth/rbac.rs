//! RBAC: Roles, ClusterRoles and their bindings, followed from the
//! datastore into an index by subject, so a request's decision costs a few
//! hash lookups whatever the number of bindings. The index is rebuilt
//! lazily: a burst of RBAC writes costs one rebuild, at the next request.

use super::Request;
use crate::datastore::EventKind;
use crate::registry::UserInfo;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// A binding that grants a role to a subject.
#[derive(Debug, Clone)]
struct Grant {
    /// `ClusterRoleBinding "x"` or `RoleBinding "x/ns"`.
    binding: String,
    role_kind: String,
    role_name: String,
    /// The binding's namespace (where a Role is looked up).
    namespace: Option<String>,
    /// `User "bob"`, `ServiceAccount "sa/ns"`, as upstream describes it.
    subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Group(String),
}

#[derive(Default)]
struct Index {
    cluster: HashMap<Key, Vec<Grant>>,
    /// namespace → subject → grants of its RoleBindings.
    namespaced: HashMap<String, HashMap<Key, Vec<Grant>>>,
    roles: HashMap<(String, String), Arc<Vec<PolicyRule>>>,
    cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>>,
}

fn subject_key(
    kind: &str,
    name: &str,
    ns: Option<&str>,
    binding_ns: Option<&str>,
) -> Option<(Key, String)> {
    match kind {
        "User" => Some((Key::User(name.into()), format!("User {name:?}"))),
        "Group" => Some((Key::Group(name.into()), format!("Group {name:?}"))),
        "ServiceAccount" => {
            let ns = ns.filter(|n| !n.is_empty()).or(binding_ns)?;
            Some((
                Key::User(format!("system:serviceaccount:{ns}:{name}")),
                format!("ServiceAccount \"{name}/{ns}\""),
            ))
        }
        _ => None,
    }
}

impl Index {
    fn build(objects: &BTreeMap<String, Value>) -> Self {
        let mut ix = Index::default();
        for (key, v) in objects {
            let Some(rest) = key.strip_prefix(PREFIX.as_str()) else {
                continue;
            };
            let kind = rest.split('/').next().unwrap_or("");
            match kind {
                "roles" => {
                    if let Ok(r) = serde_json::from_value::<Role>(v.clone()) {
                        let ns = r.metadata.namespace.clone().unwrap_or_default();
                        let name = r.metadata.name.clone().unwrap_or_default();
                        ix.roles
                            .insert((ns, name), Arc::new(r.rules.unwrap_or_default()));
                    }
                }
                "clusterroles" => {
                    if let Ok(r) = serde_json::from_value::<ClusterRole>(v.clone()) {
                        let name = r.metadata.name.clone().unwrap_or_default();
                        ix.cluster_roles
                            .insert(name, Arc::new(r.rules.unwrap_or_default()));
                    }
                }
                "rolebindings" => {
                    if let Ok(b) = serde_json::from_value::<RoleBinding>(v.clone()) {
                        let ns = b.metadata.namespace.clone().unwrap_or_default();
                        let name = b.metadata.name.clone().unwrap_or_default();
                        for s in b.subjects.iter().flatten() {
                            let Some((k, subject)) =
                                subject_key(&s.kind, &s.name, s.namespace.as_deref(), Some(&ns))
                            else {
                                continue;
                            };
                            ix.namespaced
                                .entry(ns.clone())
                                .or_default()
                                .entry(k)
                                .or_default()
                                .push(Grant {
                                    binding: format!("RoleBinding \"{name}/{ns}\""),
                                    role_kind: b.role_ref.kind.clone(),
                                    role_name: b.role_ref.name.clone(),
                                    namespace: Some(ns.clone()),
                                    subject,
                                });
                        }
                    }
                }
                "clusterrolebindings" => {
                    if let Ok(b) = serde_json::from_value::<ClusterRoleBinding>(v.clone()) {
                        let name = b.metadata.name.clone().unwrap_or_default();
                        for s in b.subjects.iter().flatten() {
                            let Some((k, subject)) =
                                subject_key(&s.kind, &s.name, s.namespace.as_deref(), None)
                            else {
                                continue;
                            };
                            ix.cluster.entry(k).or_default().push(Grant {
                                binding: format!("ClusterRoleBinding {name:?}"),
                                role_kind: b.role_ref.kind.clone(),
                                role_name: b.role_ref.name.clone(),
                                namespace: None,
                                subject,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        ix
    }

    fn rules(&self, g: &Grant) -> Option<&Arc<Vec<PolicyRule>>> {
        match (g.role_kind.as_str(), &g.namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(&g.role_name),
            ("Role", Some(ns)) => self.roles.get(&(ns.clone(), g.role_name.clone())),
            _ => None,
        }
    }

    /// Every grant that applies to `user` in `namespace` (cluster-wide ones
    /// first; `namespace` empty = cluster-wide only).
    fn grants<'a>(&'a self, user: &UserInfo, namespace: &str) -> Vec<&'a Grant> {
        let keys: Vec<Key> = std::iter::once(Key::User(user.name.clone()))
            .chain(user.groups.iter().map(|g| Key::Group(g.clone())))
            .collect();
        let mut out = vec![];
        for k in &keys {
            out.extend(self.cluster.get(k).into_iter().flatten());
        }
        if !namespace.is_empty() {
            if let Some(ns) = self.namespaced.get(namespace) {
                for k in &keys {
                    out.extend(ns.get(k).into_iter().flatten());
                }
            }
        }
        out
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Upstream's `ResourceMatches` (with `*/subresource`).
fn resource_matches(rule: &[String], resource: &str, subresource: &str) -> bool {
    let combined = if subresource.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{subresource}")
    };
    rule.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

fn url_matches(rule: &[String], path: &str) -> bool {
    rule.iter()
        .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p)))
}

/// Whether `rule` allows the request.
pub fn rule_allows(rule: &PolicyRule, r: &Request<'_>) -> bool {
    if !has(&rule.verbs, r.verb) {
        return false;
    }
    match r.path {
        Some(path) => url_matches(rule.non_resource_urls.as_deref().unwrap_or_default(), path),
        None => {
            has(rule.api_groups.as_deref().unwrap_or_default(), r.group)
                && resource_matches(
                    rule.resources.as_deref().unwrap_or_default(),
                    r.resource,
                    r.subresource,
                )
                && rule
                    .resource_names
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .is_none_or(|names| names.iter().any(|n| n == r.name))
        }
    }
}

/// The RBAC authorizer over followed Roles and bindings.
#[derive(Default)]
pub struct Rbac {
    objects: Mutex<BTreeMap<String, Value>>,
    dirty: std::sync::atomic::AtomicBool,
    index: RwLock<Arc<Index>>,
    synced: tokio::sync::watch::Sender<bool>,
}

/// Where every RBAC object is stored.
pub static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    crate::datastore::objects::prefix(crate::registry::rbac::GROUP, None)
});

impl Rbac {
    /// Follow the RBAC objects until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        store: crate::datastore::Datastore,
        stop: CancellationToken,
    ) {
        crate::datastore::follow(
            &store,
            &PREFIX,
            &stop,
            |_, kvs| {
                let mut o = self.objects.lock().expect("rbac lock");
                *o = kvs
                    .into_iter()
                    .filter_map(|kv| Some((kv.key, serde_json::from_slice(&kv.value).ok()?)))
                    .collect();
                self.dirty.store(true, std::sync::atomic::Ordering::Release);
                self.synced.send_replace(true);
            },
            |ev| {
                let mut o = self.objects.lock().expect("rbac lock");
                match (ev.kind, serde_json::from_slice(&ev.value)) {
                    (EventKind::Delete, _) | (_, Err(_)) => o.remove(&ev.key),
                    (_, Ok(v)) => o.insert(ev.key, v),
                };
                self.dirty.store(true, std::sync::atomic::Ordering::Release);
            },
        )
        .await
    }

    /// Wait until the first list is in.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    fn index(&self) -> Arc<Index> {
        if self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel) {
            let ix = Index::build(&self.objects.lock().expect("rbac lock"));
            *self.index.write().expect("rbac index") = Arc::new(ix);
        }
        self.index.read().expect("rbac index").clone()
    }

    /// `Some(reason)` when a binding allows the request.
    pub fn allows(&self, user: &UserInfo, r: &Request<'_>) -> Option<String> {
        let ix = self.index();
        for g in ix.grants(user, r.namespace) {
            let Some(rules) = ix.rules(g) else { continue };
            if rules.iter().any(|rule| rule_allows(rule, r)) {
                return Some(format!(
                    "RBAC: allowed by {} of {} {:?} to {}",
                    g.binding, g.role_kind, g.role_name, g.subject
                ));
            }
        }
        None
    }

    /// Every rule granted to `user` in `namespace` (for rules reviews and
    /// escalation checks).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<PolicyRule> {
        let ix = self.index();
        ix.grants(user, namespace)
            .into_iter()
            .filter_map(|g| ix.rules(g))
            .flat_map(|r| r.iter().cloned())
            .collect()
    }

    /// The rules of the role a binding names (`None`: it does not exist).
    pub fn role_rules(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Vec<PolicyRule>> {
        let ix = self.index();
        match kind {
            "ClusterRole" => ix.cluster_roles.get(name).map(|r| r.to_vec()),
            "Role" => ix
                .roles
                .get(&(namespace.unwrap_or("").to_string(), name.to_string()))
                .map(|r| r.to_vec()),
            _ => None,
        }
    }
}

/// Whether `owner` covers every permission in `servant` (upstream's
/// `validation.Covers`): each servant rule is broken into single
/// verb/group/resource/name (or URL) rules, each of which some owner rule
/// must allow. Returns the uncovered pieces.
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = vec![];
    for s in servant {
        for piece in breakdown(s) {
            if !owner.iter().any(|o| rule_covers(o, &piece)) {
                missing.push(piece);
            }
        }
    }
    missing
}

fn breakdown(r: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = vec![];
    let one = |v: &str| vec![v.to_string()];
    for verb in &r.verbs {
        for url in r.non_resource_urls.iter().flatten() {
            out.push(PolicyRule {
                verbs: one(verb),
                non_resource_urls: Some(one(url)),
                ..Default::default()
            });
        }
        for group in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                let names = r.resource_names.clone().unwrap_or_default();
                if names.is_empty() {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: Some(one(group)),
                        resources: Some(one(res)),
                        ..Default::default()
                    });
                }
                for n in names {
                    out.push(PolicyRule {
                        verbs: one(verb),
                        api_groups: Some(one(group)),
                        resources: Some(one(res)),
                        resource_names: Some(vec![n]),
                        ..Default::default()
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` allows everything the single-valued `piece` does.
fn rule_covers(owner: &PolicyRule, piece: &PolicyRule) -> bool {
    let first = |v: &Option<Vec<String>>| v.as_ref().and_then(|v| v.first().cloned());
    if !has(&owner.verbs, &piece.verbs[0]) {
        return false;
    }
    if let Some(url) = first(&piece.non_resource_urls) {
        let urls = owner.non_resource_urls.as_deref().unwrap_or_default();
        return urls.iter().any(|u| {
            u == "*"
                || *u == url
                || u.strip_suffix('*')
                    .is_some_and(|p| url.strip_suffix('*').unwrap_or(&url).starts_with(p))
        });
    }
    let (Some(group), Some(res)) = (first(&piece.api_groups), first(&piece.resources)) else {
        return false;
    };
    if !has(owner.api_groups.as_deref().unwrap_or_default(), &group) {
        return false;
    }
    let owned = owner.resources.as_deref().unwrap_or_default();
    let res_ok = owned.iter().any(|o| {
        o == "*"
            || *o == res
            || (o.starts_with("*/") && res.split_once('/').map(|(_, s)| s) == o.strip_prefix("*/"))
    });
    if !res_ok {
        return false;
    }
    let owner_names = owner.resource_names.as_deref().unwrap_or_default();
    owner_names.is_empty() || first(&piece.resource_names).is_some_and(|n| owner_names.contains(&n))
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub fn go_quoted(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// A rule as upstream prints it in escalation errors (`CompactString`).
pub fn describe(r: &PolicyRule) -> String {
    let mut parts = vec![];
    for (name, v) in [
        ("APIGroups", &r.api_groups),
        ("Resources", &r.resources),
        ("ResourceNames", &r.resource_names),
        ("NonResourceURLs", &r.non_resource_urls),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{name}:{}", go_quoted(v)));
        }
    }
    parts.push(format!("Verbs:{}", go_quoted(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], res: &[&str], names: &[&str]) -> PolicyRule {
        let v = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        PolicyRule {
            verbs: x(verbs),
            api_groups: v(groups),
            resources: v(res),
            resource_names: if names.is_empty() { None } else { v(names) },
            non_resource_urls: None,
        }
    }
    fn x(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn matching() {
        let r = Request::resource("get", "", "pods", "", "default", "p");
        assert!(rule_allows(&rule(&["get"], &[""], &["pods"], &[]), &r));
        assert!(rule_allows(&rule(&["*"], &["*"], &["*"], &[]), &r));
        assert!(!rule_allows(&rule(&["list"], &[""], &["pods"], &[]), &r));
        assert!(!rule_allows(&rule(&["get"], &["apps"], &["pods"], &[]), &r));
        assert!(rule_allows(&rule(&["get"], &[""], &["pods"], &["p"]), &r));
        assert!(!rule_allows(&rule(&["get"], &[""], &["pods"], &["q"]), &r));
        let log = Request::resource("get", "", "pods", "log", "default", "p");
        assert!(!rule_allows(&rule(&["get"], &[""], &["pods"], &[]), &log));
        assert!(rule_allows(
            &rule(&["get"], &[""], &["pods/log"], &[]),
            &log
        ));
        assert!(rule_allows(&rule(&["get"], &[""], &["*/log"], &[]), &log));
        let path = Request::path("get", "/apis/apps");
        let urls = PolicyRule {
            verbs: x(&["get"]),
            non_resource_urls: Some(x(&["/apis/*"])),
            ..Default::default()
        };
        assert!(rule_allows(&urls, &path));
        assert!(!rule_allows(&urls, &Request::path("get", "/healthz")));
    }

    #[test]
    fn covers() {
        let owner = vec![rule(&["get", "list"], &[""], &["pods", "secrets"], &[])];
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["pods"], &["a"])]).is_empty());
        let missing = uncovered(&owner, &[rule(&["get", "delete"], &[""], &["pods"], &[])]);
        assert_eq!(missing.len(), 1);
        assert_eq!(
            describe(&missing[0]),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#
        );
        let star = vec![rule(&["*"], &["*"], &["*"], &[])];
        assert!(uncovered(&star, &[rule(&["escalate"], &["x"], &["y/z"], &[])]).is_empty());
        let named = vec![rule(&["get"], &[""], &["pods"], &["a"])];
        assert_eq!(
            uncovered(&named, &[rule(&["get"], &[""], &["pods"], &[])]).len(),
            1
        );
    }

    #[test]
    fn index_by_subject() {
        let mut objects = BTreeMap::new();
        objects.insert(
            "/registry/rbac.authorization.k8s.io/roles/ns1/reader".into(),
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "reader", "namespace": "ns1"},
                "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        objects.insert(
            "/registry/rbac.authorization.k8s.io/rolebindings/ns1/rb".into(),
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "rb", "namespace": "ns1"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa"}]}),
        );
        let rbac = Rbac::default();
        *rbac.objects.lock().unwrap() = objects;
        rbac.dirty.store(true, std::sync::atomic::Ordering::Release);
        let sa = UserInfo::of_service_account("ns1", "sa", "u");
        let get = Request::resource("get", "", "pods", "", "ns1", "p");
        assert_eq!(
            rbac.allows(&sa, &get).as_deref(),
            Some("RBAC: allowed by RoleBinding \"rb/ns1\" of Role \"reader\" to ServiceAccount \"sa/ns1\"")
        );
        let other_ns = Request::resource("get", "", "pods", "", "ns2", "p");
        assert!(rbac.allows(&sa, &other_ns).is_none());
        let other_sa = UserInfo::of_service_account("ns1", "sb", "u");
        assert!(rbac.allows(&other_sa, &get).is_none());
    }
}
