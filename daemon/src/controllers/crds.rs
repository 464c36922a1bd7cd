//! The CustomResourceDefinition finalizer, as apiextensions' own: a CRD
//! gets the `customresourcecleanup.apiextensions.k8s.io` finalizer when it
//! is created; once it is deleted (and its kinds no longer served), its
//! custom resources are deleted through the registry like any delete,
//! their own finalizers honoured, and only when none is left does the
//! finalizer go and the CRD with it.

use super::predicates::deleting;
use super::runtime::{all, own, Controller, Requeue, Result};
use crate::registry::cache::Cache;
use crate::registry::crd::{from_crd, CLEANUP};
use crate::registry::{kinds, DeleteOptions, KubeError, Registry};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// A deleted CRD whose resources are still going is looked at this often.
const RECHECK: Duration = Duration::from_secs(1);

pub fn controller(reg: Arc<Registry>, cache: Arc<Cache>) -> Controller {
    let crds = kinds::CUSTOM_RESOURCE_DEFINITIONS.prefix(None);
    Controller::new("crd-finalizer", move |key: String| {
        let (reg, cache) = (reg.clone(), cache.clone());
        async move { reconcile(&reg, &cache, &key).await }
    })
    .watches(own(crds.clone()))
    .lists(all(crds), Some(Duration::from_secs(60)))
}

fn has_cleanup(crd: &Value) -> bool {
    crd.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == CLEANUP))
}

async fn reconcile(reg: &Registry, cache: &Cache, key: &str) -> Result {
    let Some(crd) = cache.get(key) else {
        return Ok(Requeue::Never);
    };
    if !deleting(&crd) || !has_cleanup(&crd) {
        return Ok(Requeue::Never);
    }
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // Every served version shares one storage: the first names it.
    if let Some(kind) = from_crd(&crd).into_iter().next() {
        let items = cache.list(&crate::datastore::objects::prefix(&kind.storage(), None));
        if !items.is_empty() {
            for (_, o) in items.iter().filter(|(_, o)| !deleting(o)) {
                let ns = o.pointer("/metadata/namespace").and_then(Value::as_str);
                let n = o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let opts = DeleteOptions {
                    propagation_policy: Some("Background".into()),
                    ..Default::default()
                };
                match reg.delete(&kind, ns, n, &opts).await {
                    Ok(_) | Err(KubeError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(Requeue::After(RECHECK));
        }
    }
    let rt = kinds::CUSTOM_RESOURCE_DEFINITIONS.resource_type();
    reg.modify_in(&rt, None, &name, None, |v| {
        let Some(f) = v
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        else {
            return false;
        };
        let before = f.len();
        f.retain(|x| x != CLEANUP);
        before != f.len()
    })
    .await?;
    Ok(Requeue::Never)
}
