//! The registry: which kinds exist (built-ins with their strategies, plus
//! CRD kinds kept in memory and refreshed by watching CRDs), and the one
//! write path every writer of API objects uses — HTTP handlers, the
//! manifests controller and the controllers — so nothing is written around
//! defaults, validation, generation, finalizers or graceful deletion.
//!
//! Layering: `datastore` → `objects` → `registry` → `apiserver`,
//! `controllers`. Nothing here knows about HTTP requests or the server.

pub mod admission;
pub mod allocate;
pub mod apiregistration;
pub mod apps;
pub mod batch;
pub mod cache;
pub mod core;
pub mod crd;
pub mod error;
pub mod kinds;
pub mod managed;
pub mod metrics;
pub mod other;
pub mod printers;
pub mod ranges;
pub mod rbac;
pub mod resource;
pub mod store;
pub mod strategy;
pub mod validation;

pub use admission::UserInfo;
pub use crd::CRD_GROUP;
pub use error::{FieldError, KubeError, Subject};
pub use resource::ResourceType;
pub use store::{DeleteOptions, FieldValidation, WriteOptions, Written};

use crate::datastore::objects::Objects;
use crate::datastore::EventKind;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

pub struct Registry {
    pub objects: Objects,
    kinds: RwLock<Arc<Vec<ResourceType>>>,
    /// Namespaces known to exist and not to be terminating, followed by a
    /// watch: a create in one of them skips reading the namespace. A miss
    /// (a namespace made a moment ago on another server) reads it.
    active_namespaces: RwLock<std::collections::HashSet<String>>,
    /// Admission needing other objects or the requester (set once by the
    /// server; none in tests of the registry alone).
    admission: std::sync::OnceLock<Arc<dyn admission::Admission>>,
    /// The server's part of deletions (none in tests of the registry alone).
    deletions: std::sync::OnceLock<Arc<dyn admission::Deletions>>,
    /// Allocators by kind storage directory (`services`).
    allocators: RwLock<std::collections::HashMap<String, Arc<dyn allocate::Allocate>>>,
}

impl Registry {
    /// A registry serving the built-ins and the CRDs stored now.
    pub async fn new(objects: Objects) -> Self {
        let r = Self {
            objects,
            kinds: RwLock::new(Arc::new(kinds::builtins())),
            active_namespaces: RwLock::default(),
            admission: std::sync::OnceLock::new(),
            deletions: std::sync::OnceLock::new(),
            allocators: RwLock::default(),
        };
        r.refresh().await;
        r
    }

    /// Install the admission hooks (once; later calls are ignored).
    pub fn set_admission(&self, a: Arc<dyn admission::Admission>) {
        let _ = self.admission.set(a);
    }

    pub(crate) fn admission(&self) -> Option<&Arc<dyn admission::Admission>> {
        self.admission.get()
    }

    /// Install what happens after a deletion (once; later calls are ignored).
    pub fn set_deletions(&self, d: Arc<dyn admission::Deletions>) {
        let _ = self.deletions.set(d);
    }

    pub(crate) fn deletions(&self) -> Option<&Arc<dyn admission::Deletions>> {
        self.deletions.get()
    }

    /// Install the allocator of the kind stored under `storage`.
    pub fn set_allocator(&self, storage: &str, a: Arc<dyn allocate::Allocate>) {
        self.allocators
            .write()
            .expect("allocators lock")
            .insert(storage.to_string(), a);
    }

    pub fn allocator(&self, rt: &ResourceType) -> Option<Arc<dyn allocate::Allocate>> {
        self.allocators
            .read()
            .expect("allocators lock")
            .get(&rt.storage())
            .cloned()
    }

    /// Every kind served right now.
    pub fn kinds(&self) -> Arc<Vec<ResourceType>> {
        self.kinds.read().expect("kinds lock").clone()
    }

    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<ResourceType> {
        self.kinds()
            .iter()
            .find(|r| r.group == group && r.version == version && r.resource == resource)
            .cloned()
    }

    /// The kind of `apiVersion` + `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.kinds()
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    /// Re-read the CRDs and rebuild the kind list.
    pub async fn refresh(&self) {
        match self
            .objects
            .list(&format!("{CRD_GROUP}/customresourcedefinitions"), None)
            .await
        {
            Ok((_, crds)) => self.serve(crds.iter()),
            Err(e) => {
                tracing::warn!(error = %e, "could not read CustomResourceDefinitions; keeping the kinds served so far")
            }
        }
    }

    /// Serve the built-ins plus the kinds of `crds` (those not being deleted).
    fn serve<'a>(&self, crds: impl Iterator<Item = &'a serde_json::Value>) {
        let mut all = kinds::builtins();
        for crd in crds.filter(|c| c.pointer("/metadata/deletionTimestamp").is_none()) {
            all.extend(crd::from_crd(crd));
        }
        *self.kinds.write().expect("kinds lock") = Arc::new(all);
    }

    /// Keep the kind list in step with CRD changes made by any server.
    pub async fn follow_crds(self: Arc<Self>, stop: CancellationToken) {
        let prefix = crate::datastore::objects::prefix(
            &format!("{CRD_GROUP}/customresourcedefinitions"),
            None,
        );
        let crds = std::sync::Mutex::new(BTreeMap::new());
        crate::datastore::follow(
            &self.objects.store,
            &prefix,
            &stop,
            |_, kvs| {
                let mut c = crds.lock().expect("crds lock");
                *c = kvs
                    .into_iter()
                    .filter_map(|kv| Some((kv.key, json_of(&kv.value)?)))
                    .collect();
                self.serve(c.values());
            },
            |ev| {
                let mut c = crds.lock().expect("crds lock");
                match (ev.kind, json_of(&ev.value)) {
                    (EventKind::Delete, _) | (_, None) => c.remove(&ev.key),
                    (_, Some(v)) => c.insert(ev.key, v),
                };
                self.serve(c.values());
            },
        )
        .await
    }
}

fn json_of(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(bytes).ok()
}

impl Registry {
    /// Whether `ns` is known to exist and not to be terminating.
    pub fn namespace_active(&self, ns: &str) -> bool {
        self.active_namespaces
            .read()
            .expect("namespaces lock")
            .contains(ns)
    }

    /// Keep `active_namespaces` in step with the datastore.
    pub async fn follow_namespaces(self: Arc<Self>, stop: CancellationToken) {
        let prefix = crate::datastore::objects::prefix("namespaces", None);
        let active = |bytes: &[u8]| {
            json_of(bytes).is_some_and(|v| {
                v.pointer("/metadata/deletionTimestamp")
                    .is_none_or(|t| t.is_null())
            })
        };
        let set = || self.active_namespaces.write().expect("namespaces lock");
        crate::datastore::follow(
            &self.objects.store,
            &prefix,
            &stop,
            |_, kvs| {
                *set() = kvs
                    .iter()
                    .filter(|kv| active(&kv.value))
                    .filter_map(|kv| Some(kv.key.strip_prefix(&prefix)?.to_string()))
                    .collect();
            },
            |ev| {
                let Some(name) = ev.key.strip_prefix(&prefix) else {
                    return;
                };
                if !matches!(ev.kind, EventKind::Delete) && active(&ev.value) {
                    set().insert(name.to_string());
                } else {
                    set().remove(name);
                }
            },
        )
        .await
    }

    /// The kind (preferred version of its storage), namespace and name of a
    /// datastore key.
    pub fn locate(&self, key: &str) -> Option<(ResourceType, Option<String>, String)> {
        let rest = key.strip_prefix("/registry/")?;
        let kinds = self.kinds();
        let rt = kinds
            .iter()
            .filter(|rt| rest.starts_with(&format!("{}/", rt.storage())))
            .max_by_key(|rt| rt.storage().len())?;
        let tail = &rest[rt.storage().len() + 1..];
        let (ns, name) = match (rt.namespaced, tail.split_once('/')) {
            (true, Some((ns, name))) => (Some(ns.to_string()), name.to_string()),
            (false, None) => (None, tail.to_string()),
            _ => return None,
        };
        // The first version served for this storage is the preferred one.
        let preferred = kinds.iter().find(|k| k.storage() == rt.storage())?.clone();
        Some((preferred, ns, name))
    }

    /// Read-modify-write of the object at `key` through the write path,
    /// retried on conflict. `f` returns false to leave it alone.
    pub async fn modify(
        &self,
        key: &str,
        f: impl FnMut(&mut serde_json::Value) -> bool,
    ) -> Result<(), KubeError> {
        let Some((rt, ns, name)) = self.locate(key) else {
            return Ok(());
        };
        self.modify_in(&rt, ns.as_deref(), &name, None, f).await
    }

    /// Read-modify-write of `name` (or its `subresource`, `status`) through
    /// the write path, retried on conflict; gone is fine. `f` returns false
    /// to leave it alone.
    pub async fn modify_in(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        mut f: impl FnMut(&mut serde_json::Value) -> bool,
    ) -> Result<(), KubeError> {
        for _ in 0..8 {
            let old = match self.get(rt, ns, name).await {
                Ok(o) => o,
                Err(KubeError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut new = old.clone();
            if !f(&mut new) {
                return Ok(());
            }
            let opts = WriteOptions {
                dry_run: false,
                field_validation: FieldValidation::Ignore,
                field_manager: None,
                ..Default::default()
            };
            match self
                .update(rt, ns, name, &old, new, subresource, &opts)
                .await
            {
                Err(KubeError::Conflict(..)) => continue,
                Err(KubeError::NotFound(_)) => return Ok(()),
                other => return other.map(|_| ()),
            }
        }
        Err(KubeError::Unavailable(format!(
            "{}/{name}: too many concurrent updates",
            rt.resource
        )))
    }

    /// Delete the object at `key` if it still has `uid`.
    /// Create the object at `r` through the write path, as the server
    /// (no requester, no field manager).
    pub async fn create_at(
        &self,
        r: &crate::datastore::objects::Ref,
        obj: serde_json::Value,
    ) -> Result<serde_json::Value, KubeError> {
        let (rt, ns, _) = self.locate(&r.key()).ok_or_else(|| unserved(r))?;
        self.create(&rt, ns.as_deref(), obj, &WriteOptions::default())
            .await
            .map(|w| w.object)
    }

    /// Read-modify-write of the object at `r` through the write path:
    /// the object as it is afterwards, `None` when there is none. `f`
    /// returns false to leave it alone.
    pub async fn modify_at(
        &self,
        r: &crate::datastore::objects::Ref,
        mut f: impl FnMut(&mut serde_json::Value) -> bool,
    ) -> Result<Option<serde_json::Value>, KubeError> {
        let (rt, ns, name) = self.locate(&r.key()).ok_or_else(|| unserved(r))?;
        let mut after = None;
        let mut existed = false;
        self.modify_in(&rt, ns.as_deref(), &name, None, |v| {
            existed = true;
            let changed = f(v);
            after = Some(v.clone());
            changed
        })
        .await?;
        Ok(after.filter(|_| existed))
    }

    /// Delete the object at `r` through the write path (at once, in the
    /// background): whether there was one.
    pub async fn delete_at(&self, r: &crate::datastore::objects::Ref) -> Result<bool, KubeError> {
        let (rt, ns, name) = self.locate(&r.key()).ok_or_else(|| unserved(r))?;
        let opts = DeleteOptions {
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        match self.delete(&rt, ns.as_deref(), &name, &opts).await {
            Ok(_) => Ok(true),
            Err(KubeError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn delete_key(&self, key: &str, uid: &str, policy: &str) -> Result<(), KubeError> {
        let Some((rt, ns, name)) = self.locate(key) else {
            return Ok(());
        };
        let opts = DeleteOptions {
            propagation_policy: Some(policy.to_string()),
            preconditions: store::Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            },
            ..Default::default()
        };
        match self.delete(&rt, ns.as_deref(), &name, &opts).await {
            Ok(_) | Err(KubeError::NotFound(_)) | Err(KubeError::Conflict(..)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn unserved(r: &crate::datastore::objects::Ref) -> KubeError {
    KubeError::Internal(format!("no kind is served at {}", r.key()))
}
