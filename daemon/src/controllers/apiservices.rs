//! APIServices, as upstream's aggregator keeps them:
//! - every group-version rk3s serves itself (built-in kinds, CRDs,
//!   metrics.k8s.io) has a `Local` APIService (`v1.apps`, `v1.`),
//!   labelled `kube-aggregator.kubernetes.io/automanaged` (`onstart` for
//!   built-ins, `true` for CRDs) and removed when its group-version goes;
//! - each APIService's `Available` condition: `Local`, or for one backed
//!   by a Service: the Service, a ready endpoint, then a discovery request
//!   through the aggregator (`ExtensionProbe`), with upstream's reasons
//!   (`ServiceNotFound`, `MissingEndpoints`, `FailedDiscoveryCheck`,
//!   `Passed`);
//! - `kube-system/extension-apiserver-authentication`: the CAs and
//!   header names extension servers trust the aggregator by.

use super::client::time;
use super::runtime::{single, Controller, Requeue};
use crate::registry::apiregistration::name_of;
use crate::registry::cache::Cache;
use crate::registry::{kinds, KubeError, Registry, WriteOptions};
use chrono::Utc;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceCondition,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "apiservices";
/// How often availability is checked without a change (upstream's 30 s
/// would make a test wait; an extension going away is seen this fast).
const RESYNC: Duration = Duration::from_secs(10);
pub const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";

/// Does the extension behind an APIService answer its discovery?
pub trait ExtensionProbe: Send + Sync {
    fn probe<'a>(
        &'a self,
        api: &'a APIService,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Upstream's group priorities for its own groups; others 1000.
fn group_priority(group: &str) -> i32 {
    match group {
        "" => 18000,
        "apps" => 17800,
        "events.k8s.io" => 17750,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "admissionregistration.k8s.io" => 16700,
        "apiextensions.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "apiregistration.k8s.io" => 16400,
        "node.k8s.io" => 16300,
        "discovery.k8s.io" => 16200,
        "flowcontrol.apiserver.k8s.io" => 16100,
        "metrics.k8s.io" => 100,
        _ => 1000,
    }
}

fn condition(status: bool, reason: &str, message: String) -> APIServiceCondition {
    APIServiceCondition {
        type_: "Available".into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(time(Utc::now())),
    }
}

struct Ctl {
    reg: Arc<Registry>,
    cache: Arc<Cache>,
    probe: Arc<dyn ExtensionProbe>,
    /// The client CA, which also signs the front-proxy certificate.
    client_ca_pem: String,
}

impl Ctl {
    async fn reconcile(&self) -> Result<(), KubeError> {
        let rt = kinds::API_SERVICES.resource_type();
        let served: BTreeSet<(String, String, bool)> = self
            .reg
            .kinds()
            .iter()
            .map(|t| (t.group.clone(), t.version.clone(), t.builtin))
            .collect();
        let have: Vec<APIService> = self
            .cache
            .list(&kinds::API_SERVICES.prefix(None))
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value((*v).clone()).ok())
            .collect();
        let names: BTreeSet<String> = have
            .iter()
            .filter_map(|a| a.metadata.name.clone())
            .collect();
        for (group, version, builtin) in &served {
            let name = name_of(group, version);
            if names.contains(&name) {
                continue;
            }
            let managed = if *builtin { "onstart" } else { "true" };
            let obj = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": name, "labels": {AUTOMANAGED: managed}},
                "spec": {"group": group, "version": version,
                    "groupPriorityMinimum": group_priority(group),
                    "versionPriority": if version.contains("alpha") || version.contains("beta") { 9 } else { 15 }}});
            match self
                .reg
                .create(&rt, None, obj, &WriteOptions::default())
                .await
            {
                Ok(_) | Err(KubeError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let wanted: BTreeSet<String> = served.iter().map(|(g, v, _)| name_of(g, v)).collect();
        for a in &have {
            let name = a.metadata.name.clone().unwrap_or_default();
            let managed = a
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(AUTOMANAGED));
            let local = a.spec.as_ref().is_none_or(|s| s.service.is_none());
            if managed && local && !wanted.contains(&name) {
                let opts = crate::registry::DeleteOptions::default();
                match self.reg.delete(&rt, None, &name, &opts).await {
                    Ok(_) | Err(KubeError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            self.availability(a).await?;
        }
        self.auth_configmap().await
    }

    async fn availability(&self, a: &APIService) -> Result<(), KubeError> {
        let name = a.metadata.name.clone().unwrap_or_default();
        let spec = a.spec.clone().unwrap_or_default();
        let want = match &spec.service {
            None => condition(
                true,
                "Local",
                "Local APIServices are always available".into(),
            ),
            Some(svc) => {
                let (ns, sname) = (
                    svc.namespace.clone().unwrap_or_default(),
                    svc.name.clone().unwrap_or_default(),
                );
                let exists = self
                    .cache
                    .get(&kinds::SERVICES.key(Some(&ns), &sname))
                    .is_some();
                let ready = self
                    .cache
                    .get(&kinds::ENDPOINTS.key(Some(&ns), &sname))
                    .is_some_and(|e| {
                        e["subsets"].as_array().is_some_and(|ss| {
                            ss.iter()
                                .any(|s| s["addresses"].as_array().is_some_and(|a| !a.is_empty()))
                        })
                    });
                if !exists {
                    condition(
                        false,
                        "ServiceNotFound",
                        format!("service/{sname} in {ns:?} is not present"),
                    )
                } else if !ready {
                    condition(
                        false,
                        "MissingEndpoints",
                        format!("endpoints for service/{sname} in {ns:?} have no addresses"),
                    )
                } else {
                    match self.probe.probe(a).await {
                        Ok(()) => condition(true, "Passed", "all checks passed".into()),
                        Err(e) => condition(
                            false,
                            "FailedDiscoveryCheck",
                            format!("failing or missing response from {name}: {e}"),
                        ),
                    }
                }
            }
        };
        let old = a
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"));
        if old.is_some_and(|o| {
            o.status == want.status && o.reason == want.reason && o.message == want.message
        }) {
            return Ok(());
        }
        let cond = serde_json::to_value(&want).unwrap_or(Value::Null);
        let rt = kinds::API_SERVICES.resource_type();
        match self
            .reg
            .modify_in(&rt, None, &name, Some("status"), |o| {
                o["status"] = json!({"conditions": [cond.clone()]});
                true
            })
            .await
        {
            Ok(()) | Err(KubeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Upstream's ConfigMap for extension servers (their
    /// `--requestheader-*` settings, read at start).
    async fn auth_configmap(&self) -> Result<(), KubeError> {
        let rt = kinds::CONFIG_MAPS.resource_type();
        let data = json!({
            "client-ca-file": self.client_ca_pem,
            "requestheader-client-ca-file": self.client_ca_pem,
            "requestheader-allowed-names": json!([crate::auth::FRONT_PROXY]).to_string(),
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        });
        let key = kinds::CONFIG_MAPS.key(Some("kube-system"), AUTH_CONFIGMAP);
        match self.cache.get(&key) {
            Some(cm) if cm["data"] == data => Ok(()),
            Some(_) => {
                self.reg
                    .modify_in(&rt, Some("kube-system"), AUTH_CONFIGMAP, None, |o| {
                        o["data"] = data.clone();
                        true
                    })
                    .await
            }
            None => {
                let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": AUTH_CONFIGMAP, "namespace": "kube-system"}, "data": data});
                match self
                    .reg
                    .create(&rt, Some("kube-system"), obj, &WriteOptions::default())
                    .await
                {
                    Ok(_) | Err(KubeError::AlreadyExists(_)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// Does an APIService name the Service `<namespace>/<name>`? (Endpoints
/// change with every pod; only an extension's own wake the controller.)
fn backs_an_apiservice(ns_name: &str, cache: &Cache) -> bool {
    let Some((ns, name)) = ns_name.split_once('/') else {
        return false;
    };
    cache
        .list(&kinds::API_SERVICES.prefix(None))
        .iter()
        .any(|(_, a)| {
            let svc = &a["spec"]["service"];
            svc["namespace"] == ns && svc["name"] == name
        })
}

pub fn controller(
    reg: Arc<Registry>,
    cache: Arc<Cache>,
    probe: Arc<dyn ExtensionProbe>,
    client_ca_pem: String,
) -> Controller {
    let own = [
        kinds::API_SERVICES.prefix(None),
        kinds::CUSTOM_RESOURCE_DEFINITIONS.prefix(None),
    ];
    let backends = [kinds::SERVICES.prefix(None), kinds::ENDPOINTS.prefix(None)];
    let ctl = Arc::new(Ctl {
        reg,
        cache,
        probe,
        client_ca_pem,
    });
    Controller::new("apiservice-registration", move |_key: String| {
        let ctl = ctl.clone();
        async move {
            ctl.reconcile().await?;
            Ok(Requeue::Never)
        }
    })
    .watches(Box::new(move |ch, cache| {
        let wakes = own.iter().any(|p| ch.key.starts_with(p.as_str()))
            || backends.iter().any(|p| {
                ch.key.starts_with(p.as_str()) && backs_an_apiservice(&ch.key[p.len()..], cache)
            });
        if wakes {
            vec![KEY.to_string()]
        } else {
            vec![]
        }
    }))
    .lists(single(KEY), Some(RESYNC))
}
