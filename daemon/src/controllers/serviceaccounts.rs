//! Per-namespace service-account plumbing, as upstream's controllers:
//! - the `default` ServiceAccount in every active namespace, recreated if
//!   deleted;
//! - the `kube-root-ca.crt` ConfigMap (the CA pods use to verify the API),
//!   recreated or repaired;
//! - legacy `kubernetes.io/service-account-token` Secrets: filled with a
//!   token, `ca.crt` and `namespace` when their account exists, deleted
//!   when it does not (or was recreated with another uid).

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
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

const RESYNC: Duration = Duration::from_secs(30);
pub const ROOT_CA: &str = "kube-root-ca.crt";
const TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const SA_NAME: &str = "kubernetes.io/service-account.name";
const SA_UID: &str = "kubernetes.io/service-account.uid";

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

struct Ctl {
    reg: Arc<Registry>,
    cache: Arc<Cache>,
    auth: Arc<Auth>,
    ca_pem: String,
}

pub async fn run(
    reg: Arc<Registry>,
    cache: Arc<Cache>,
    auth: Arc<Auth>,
    ca_pem: String,
    stop: CancellationToken,
) {
    let ctl = Ctl {
        reg,
        cache,
        auth,
        ca_pem,
    };
    let mut rx = ctl.cache.subscribe();
    tokio::select! { _ = stop.cancelled() => return, _ = ctl.cache.synced() => {} }
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                for (_, ns) in ctl.cache.list("/registry/namespaces/") {
                    ctl.namespace(s(&ns, "/metadata/name")).await;
                }
                for (_, secret) in ctl.cache.list_mentioning("/registry/secrets/", TOKEN_TYPE) {
                    ctl.token_secret(&secret).await;
                }
            }
            ch = rx.recv() => match ch {
                Ok(ch) => {
                    let ns = if ch.key.starts_with("/registry/namespaces/") {
                        s(&ch.object, "/metadata/name")
                    } else {
                        s(&ch.object, "/metadata/namespace")
                    };
                    let watched = ["/registry/namespaces/", "/registry/serviceaccounts/", "/registry/configmaps/"];
                    if watched.iter().any(|p| ch.key.starts_with(p)) {
                        ctl.namespace(ns).await;
                    }
                    if ch.key.starts_with("/registry/serviceaccounts/") {
                        // Its token Secrets follow it.
                        let name = s(&ch.object, "/metadata/name");
                        for (_, secret) in ctl.cache.list(&format!("/registry/secrets/{ns}/")) {
                            if s(&secret, &format!("/metadata/annotations/{}", SA_NAME.replace('/', "~1"))) == name {
                                ctl.token_secret(&secret).await;
                            }
                        }
                    }
                    if ch.key.starts_with("/registry/secrets/") && !matches!(ch.kind, crate::datastore::EventKind::Delete) {
                        ctl.token_secret(&ch.object).await;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    }
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
        match self.cache.get(&format!("/registry/namespaces/{ns}")) {
            Some(n) if !deleting(&n) => {}
            _ => return,
        }
        if self
            .cache
            .get(&format!("/registry/serviceaccounts/{ns}/default"))
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
            .get(&format!("/registry/configmaps/{ns}/{ROOT_CA}"))
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
                let key = format!("/registry/configmaps/{ns}/{ROOT_CA}");
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
        let key = format!("/registry/secrets/{ns}/{name}");
        let sa = self
            .cache
            .get(&format!("/registry/serviceaccounts/{ns}/{sa_name}"))
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
