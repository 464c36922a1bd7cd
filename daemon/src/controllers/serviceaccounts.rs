//! Per-namespace service-account plumbing, as upstream's controllers:
//! - the `default` ServiceAccount in every active namespace, recreated if
//!   deleted;
//! - the `kube-root-ca.crt` ConfigMap (the CA pods use to verify the API),
//!   recreated or repaired;
//! - legacy `kubernetes.io/service-account-token` Secrets: filled with a
//!   token, `ca.crt` and `namespace` when their account exists, deleted
//!   when it does not (or was recreated with another uid).

use super::predicates::deleting;
use super::runtime::{all, Controller, Requeue};
use crate::auth::Auth;
use crate::registry::cache::Cache;
use crate::registry::kinds;
use crate::registry::resource::Builtin;
use crate::registry::{KubeError, Registry, WriteOptions};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const RESYNC: Duration = Duration::from_secs(30);
pub const ROOT_CA: &str = "kube-root-ca.crt";
const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const SA_NAME: &str = "kubernetes.io/service-account.name";
const SA_UID: &str = "kubernetes.io/service-account.uid";

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

struct Ctl {
    reg: Arc<Registry>,
    cache: Arc<Cache>,
    auth: Arc<Auth>,
    ca_pem: String,
}

/// Two controllers: the namespaces' plumbing (one key per namespace, from
/// changes of it and of its accounts and ConfigMaps), and the legacy token
/// Secrets (one key per Secret, from its changes and its account's).
pub fn controllers(
    reg: Arc<Registry>,
    cache: Arc<Cache>,
    auth: Arc<Auth>,
    ca_pem: String,
) -> (Controller, Controller) {
    let ctl = Arc::new(Ctl {
        reg,
        cache,
        auth,
        ca_pem,
    });
    let namespaces = kinds::NAMESPACES.prefix(None);
    let (accounts, maps, secrets) = (
        kinds::SERVICE_ACCOUNTS.prefix(None),
        kinds::CONFIG_MAPS.prefix(None),
        kinds::SECRETS.prefix(None),
    );
    let c = ctl.clone();
    let plumbing = Controller::new("serviceaccount", move |key: String| {
        let c = c.clone();
        async move {
            if let Some(ns) = c.cache.get(&key) {
                c.namespace(s(&ns, "/metadata/name")).await;
            }
            Ok(Requeue::Never)
        }
    })
    .watches({
        let (namespaces, accounts, maps) = (namespaces.clone(), accounts.clone(), maps.clone());
        Box::new(move |ch, _| {
            let ns = if ch.key.starts_with(&namespaces) {
                s(&ch.object, "/metadata/name")
            } else if ch.key.starts_with(&accounts) || ch.key.starts_with(&maps) {
                s(&ch.object, "/metadata/namespace")
            } else {
                return vec![];
            };
            vec![format!("{namespaces}{ns}")]
        })
    })
    .lists(all(namespaces), Some(RESYNC));
    let c = ctl.clone();
    let list_cache = ctl.cache.clone();
    let tokens = Controller::new("serviceaccount-token", move |key: String| {
        let c = c.clone();
        async move {
            if let Some(secret) = c.cache.get(&key) {
                c.token_secret(&secret).await;
            }
            Ok(Requeue::Never)
        }
    })
    .watches({
        let secrets = secrets.clone();
        Box::new(move |ch, cache| {
            if ch.key.starts_with(&secrets) {
                let deleted = matches!(ch.kind, crate::datastore::EventKind::Delete);
                return if deleted {
                    vec![]
                } else {
                    vec![ch.key.clone()]
                };
            }
            if !ch.key.starts_with(&accounts) {
                return vec![];
            }
            // Its token Secrets follow it.
            let (ns, name) = (
                s(&ch.object, "/metadata/namespace"),
                s(&ch.object, "/metadata/name"),
            );
            let annotation = format!("/metadata/annotations/{}", SA_NAME.replace('/', "~1"));
            cache
                .list(&format!("{secrets}{ns}/"))
                .into_iter()
                .filter(|(_, secret)| s(secret, &annotation) == name)
                .map(|(k, _)| k)
                .collect()
        })
    })
    .lists(
        Box::new(move |_| {
            list_cache
                .list_mentioning(&secrets, TOKEN_TYPE)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        }),
        Some(RESYNC),
    );
    (plumbing, tokens)
}

impl Ctl {
    async fn create(&self, kind: &Builtin, ns: &str, obj: Value) {
        let rt = kind.resource_type();
        let resource = kind.resource;
        match self
            .reg
            .create(&rt, Some(ns), obj, &WriteOptions::default())
            .await
        {
            Ok(_) | Err(KubeError::AlreadyExists(_)) => {}
            // The namespace went away meanwhile.
            Err(KubeError::Forbidden { .. }) | Err(KubeError::NotFound(_)) => {}
            Err(e) => tracing::warn!(namespace = ns, resource, error = %e, "could not create"),
        }
    }

    /// Make sure an active namespace has its `default` account and root CA.
    async fn namespace(&self, ns: &str) {
        if ns.is_empty() {
            return;
        }
        match self.cache.get(&kinds::NAMESPACES.key(None, ns)) {
            Some(n) if !deleting(&n) => {}
            _ => return,
        }
        if self
            .cache
            .get(&kinds::SERVICE_ACCOUNTS.key(Some(ns), "default"))
            .is_none()
        {
            self.create(
                &kinds::SERVICE_ACCOUNTS,
                ns,
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
            )
            .await;
        }
        let data = json!({ "ca.crt": self.ca_pem });
        match self
            .cache
            .get(&kinds::CONFIG_MAPS.key(Some(ns), ROOT_CA))
        {
            None => {
                self.create(
                    &kinds::CONFIG_MAPS,
                    ns,
                    json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": ROOT_CA, "annotations": {"kubernetes.io/description":
                            "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                        "data": data}),
                )
                .await
            }
            Some(cm) if cm["data"] != data && !deleting(&cm) => {
                let key = kinds::CONFIG_MAPS.key(Some(ns), ROOT_CA);
                let r = self
                    .reg
                    .modify(&key, |v| {
                        v["data"] = data.clone();
                        true
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(namespace = ns, error = %e, "could not repair {ROOT_CA}");
                }
            }
            Some(_) => {}
        }
    }

    /// Fill or delete one `kubernetes.io/service-account-token` Secret.
    async fn token_secret(&self, secret: &Value) {
        if s(secret, "/type") != TOKEN_TYPE || deleting(secret) {
            return;
        }
        let ns = s(secret, "/metadata/namespace");
        let name = s(secret, "/metadata/name");
        let ann = |k: &str| {
            s(
                secret,
                &format!("/metadata/annotations/{}", k.replace('/', "~1")),
            )
        };
        let sa_name = ann(SA_NAME);
        let key = kinds::SECRETS.key(Some(ns), name);
        let sa = self
            .cache
            .get(&kinds::SERVICE_ACCOUNTS.key(Some(ns), sa_name))
            .filter(|sa| !deleting(sa));
        let sa_uid = sa.as_ref().map(|sa| s(sa, "/metadata/uid").to_string());
        let stale = match &sa_uid {
            None => true,
            Some(u) => !ann(SA_UID).is_empty() && ann(SA_UID) != u,
        };
        if stale {
            // Confirm with a live read: the cache may lag an account just made.
            let rt = kinds::SERVICE_ACCOUNTS.resource_type();
            if let Ok(live) = self.reg.get(&rt, Some(ns), sa_name).await {
                if ann(SA_UID).is_empty() || s(&live, "/metadata/uid") == ann(SA_UID) {
                    return;
                }
            }
            let uid = s(secret, "/metadata/uid");
            if let Err(e) = self.reg.delete_key(&key, uid, "Background").await {
                tracing::warn!(namespace = ns, secret = name, error = %e, "could not delete a token Secret of a deleted service account");
            }
            return;
        }
        let sa_uid = sa_uid.unwrap_or_default();
        if secret.pointer("/data/token").is_some() && ann(SA_UID) == sa_uid {
            return;
        }
        let token = self.auth.tokens.issue_legacy(ns, sa_name, &sa_uid, name);
        let (ca, ns_b64) = (B64.encode(&self.ca_pem), B64.encode(ns));
        let r = self
            .reg
            .modify(&key, |v| {
                if v.pointer("/data/token").is_some()
                    && !v["metadata"]["annotations"][SA_UID].is_null()
                {
                    return false;
                }
                v["metadata"]["annotations"][SA_UID] = json!(sa_uid);
                if !v["data"].is_object() {
                    v["data"] = json!({});
                }
                v["data"]["token"] = json!(B64.encode(&token));
                v["data"]["ca.crt"] = json!(ca);
                v["data"]["namespace"] = json!(ns_b64);
                true
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(namespace = ns, secret = name, error = %e, "could not fill a service-account token Secret");
        }
    }
}
