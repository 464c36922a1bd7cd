//! The write path: create, update (whole object or `/status`), delete, and
//! reads that convert stored objects to the requested version.
//!
//! Every kind follows upstream's object semantics here: uid and
//! creationTimestamp are the server's, `generateName` gets a random suffix
//! (retried on collision), `metadata.generation` counts spec changes, the
//! main resource never changes status and `/status` never changes anything
//! else, finalizers hold a deleted object until they are gone, and a
//! graceful kind (a Pod on a node) only gets a deletionTimestamp.

use super::admission::Write;
use super::error::{FieldError, KubeError, Subject};
use super::resource::ResourceType;
use super::validation;
use super::Registry;
use crate::datastore::objects::{now_rfc3339, revision_of, ObjectError, Ref};
use crate::datastore::DatastoreError;
use serde_json::{json, Value};

/// What to do with fields the kind does not have (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    /// Upstream's default for requests that name none.
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, KubeError> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(KubeError::BadRequest(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// Who writes, for `managedFields`; `None` leaves them as they are
    /// (server-side apply computes its own; internal writers keep the
    /// clients' records).
    pub field_manager: Option<String>,
    /// Members the request body gave twice (reported like unknown fields).
    pub duplicate_fields: Vec<String>,
    /// The requester; `None` for the server's own writers.
    pub user: Option<std::sync::Arc<super::UserInfo>>,
}

/// A written object and the warnings for the client (`Warning` headers).
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub orphan_dependents: Option<bool>,
    #[serde(default)]
    pub preconditions: Preconditions,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

fn subject(rt: &ResourceType, name: &str) -> Subject {
    Subject {
        group: rt.group.clone(),
        resource: rt.resource.clone(),
        name: name.to_string(),
    }
}

pub fn store_err(rt: &ResourceType, name: &str) -> impl FnOnce(ObjectError) -> KubeError {
    let s = subject(rt, name);
    move |e| KubeError::from_store(e, s)
}

pub fn obj_ref(rt: &ResourceType, namespace: Option<&str>, name: &str) -> Ref {
    match namespace {
        Some(ns) if rt.namespaced => Ref::namespaced(rt.storage(), ns, name),
        _ => Ref::cluster(rt.storage(), name),
    }
}

pub fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::thread_rng();
    (0..5)
        .map(|_| CHARS[r.gen_range(0..CHARS.len())] as char)
        .collect()
}

fn invalid(rt: &ResourceType, name: &str, errors: Vec<FieldError>) -> KubeError {
    KubeError::Invalid {
        kind: rt.qualified_kind(),
        name: name.to_string(),
        errors,
    }
}

/// apiVersion/kind must be the request's (or absent); the namespace must be
/// the request's (or empty); cluster-scoped objects have none.
pub fn normalize(
    rt: &ResourceType,
    namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), KubeError> {
    if !obj.is_object() {
        return Err(KubeError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    let api_version = rt.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != api_version => {
            return Err(KubeError::BadRequest(format!("the API version in the data ({v}) does not match the expected API version ({api_version})")))
        }
        _ => obj["apiVersion"] = json!(api_version),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != rt.kind => {
            return Err(KubeError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )))
        }
        _ => obj["kind"] = json!(rt.kind),
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match (rt.namespaced, namespace) {
        (true, Some(ns)) => match obj["metadata"].get("namespace").and_then(Value::as_str) {
            Some(b) if !b.is_empty() && b != ns => {
                return Err(KubeError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        },
        _ => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
        }
    }
    Ok(())
}

/// Put `value` at the JSON pointer `part` of `obj` (its parents made as
/// needed), or remove what is there when `None`.
fn set_part(obj: &mut Value, part: &str, value: Option<Value>) {
    let Some((parent, key)) = part.rsplit_once('/') else {
        return;
    };
    if value.is_none() && obj.pointer(parent).is_none() {
        return;
    }
    let mut at = &mut *obj;
    for seg in parent.split('/').filter(|s| !s.is_empty()) {
        if !at.is_object() {
            *at = json!({});
        }
        at = at
            .as_object_mut()
            .expect("object")
            .entry(seg.to_string())
            .or_insert_with(|| json!({}));
    }
    let Some(m) = at.as_object_mut() else {
        return;
    };
    match value {
        Some(v) => {
            m.insert(key.to_string(), v);
        }
        None => {
            m.remove(key);
        }
    }
}

/// Does this kind count spec changes in `metadata.generation`?
fn has_generation(rt: &ResourceType) -> bool {
    rt.has_status() || !rt.is_builtin()
}

/// Everything but metadata and status: what `generation` counts.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// Whatever keeps a deleted object in place: its finalizers, or what its
/// kind holds it by (a Namespace's `spec.finalizers`).
fn held(rt: &ResourceType, v: &Value) -> bool {
    !finalizers(v).is_empty() || rt.strategy().held(v)
}

impl Registry {
    /// Read one object, in `rt`'s version.
    pub async fn get(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, KubeError> {
        let obj = self
            .objects
            .get(&obj_ref(rt, namespace, name))
            .await
            .map_err(store_err(rt, name))?
            .ok_or_else(|| KubeError::NotFound(subject(rt, name)))?;
        Ok(rt.strategy().storage_to_version(obj))
    }

    /// Every object of `rt` (in `namespace`), in `rt`'s version.
    pub async fn list(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
    ) -> Result<(i64, Vec<Value>), KubeError> {
        let (rev, items) = self
            .objects
            .list(&rt.storage(), namespace)
            .await
            .map_err(store_err(rt, ""))?;
        let s = rt.strategy();
        Ok((
            rev,
            items.into_iter().map(|o| s.storage_to_version(o)).collect(),
        ))
    }

    /// A whole `<Kind>List` of `rt` (in `namespace`) as JSON bytes, for
    /// kinds stored in the version served (`None` for the others).
    pub async fn list_encoded(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
    ) -> Option<Result<Vec<u8>, KubeError>> {
        if rt.strategy().converts() {
            return None;
        }
        let kind = serde_json::to_string(&format!("{}List", rt.kind)).ok()?;
        let api_version = serde_json::to_string(&rt.api_version()).ok()?;
        let head = move |rev: i64| {
            format!(
                r#"{{"kind":{kind},"apiVersion":{api_version},"metadata":{{"resourceVersion":"{rev}"}},"items":["#
            )
        };
        Some(
            self.objects
                .list_encoded(&rt.storage(), namespace, head)
                .await
                .map_err(store_err(rt, "")),
        )
    }

    /// Whether `ns` takes new objects; `content` is the one being created.
    async fn namespace_accepts(&self, ns: &str, content: Subject) -> Result<(), KubeError> {
        if self.namespace_active(ns) {
            return Ok(());
        }
        let r = Ref::cluster("namespaces", ns);
        let subject = Subject {
            group: String::new(),
            resource: "namespaces".into(),
            name: ns.into(),
        };
        match self.objects.get(&r).await {
            Ok(Some(n)) if is_deleting(&n) => Err(KubeError::forbidden(
                content,
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(KubeError::NotFound(subject)),
            Err(e) => Err(KubeError::from_store(e, subject)),
        }
    }

    /// Run the kind's strategy plus metadata checks; apply fieldValidation.
    fn admit(
        &self,
        rt: &ResourceType,
        name: &str,
        obj: &mut Value,
        old: Option<&Value>,
        opts: &WriteOptions,
    ) -> Result<Vec<String>, KubeError> {
        let s = rt.strategy();
        let mut errs = vec![];
        let mut unknown = vec![];
        s.admit(obj, old, &mut errs, &mut unknown).map_err(|e| {
            KubeError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        validation::metadata(s.name_rule(), obj, &mut errs);
        if let Some(old) = old {
            if is_deleting(old) {
                let before = finalizers(old);
                if let Some(f) = finalizers(obj).into_iter().find(|f| !before.contains(f)) {
                    errs.push(FieldError::forbidden(
                        "metadata.finalizers",
                        &format!("no new finalizers can be added if the object is being deleted, found new finalizers []string{{{f:?}}}"),
                    ));
                }
            }
        }
        if !errs.is_empty() {
            return Err(invalid(rt, name, errs));
        }
        let unknown: Vec<String> = unknown
            .into_iter()
            .map(|f| format!("unknown field \"{f}\""))
            .chain(
                opts.duplicate_fields
                    .iter()
                    .map(|f| format!("duplicate field \"{f}\"")),
            )
            .collect();
        match opts.field_validation {
            FieldValidation::Strict if !unknown.is_empty() => Err(KubeError::BadRequest(format!(
                "strict decoding error: {}",
                unknown.join(", ")
            ))),
            FieldValidation::Ignore => Ok(vec![]),
            _ => Ok(unknown),
        }
    }

    /// Create `obj` of kind `rt` in `namespace`.
    pub async fn create(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Written, KubeError> {
        let w = self.create_object(rt, namespace, obj, opts).await?;
        self.after_write(rt, opts.dry_run).await;
        Ok(w)
    }

    /// A write that changed which kinds are served takes effect at once
    /// (the watch of CRDs follows changes made on other servers).
    async fn after_write(&self, rt: &ResourceType, dry_run: bool) {
        if rt.strategy().defines_kinds() && !dry_run {
            self.refresh().await;
        }
    }

    async fn create_object(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> Result<Written, KubeError> {
        normalize(rt, namespace, &mut obj)?;
        let given = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let generate = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .filter(|g| !g.is_empty())
            .map(str::to_string);
        if generate.is_none() {
            obj["metadata"]
                .as_object_mut()
                .map(|m| m.remove("generateName"));
        }
        if given.is_empty() && generate.is_none() {
            return Err(invalid(
                rt,
                "",
                vec![FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                )],
            ));
        }
        if let Some(ns) = namespace.filter(|_| rt.namespaced) {
            self.namespace_accepts(ns, subject(rt, &given)).await?;
        }
        let write = Write {
            rt,
            namespace,
            subresource: None,
            old: None,
            user: opts.user.as_deref(),
        };
        if let Some(a) = self.admission() {
            a.mutate(&write, &mut obj).await?;
        }
        {
            let m = obj["metadata"].as_object_mut().expect("normalized");
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
            ] {
                m.remove(k);
            }
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            if has_generation(rt) {
                m.insert("generation".into(), json!(1));
            }
        }
        // Status is the controllers' (Nodes and CRDs come with their own).
        if rt.has_status() && rt.is_builtin() && !rt.strategy().status_on_create() {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        for attempt in 0..8 {
            let name = match (&generate, given.is_empty()) {
                (Some(g), true) => format!("{g}{}", random_suffix()),
                _ => given.clone(),
            };
            obj["metadata"]["name"] = json!(name);
            let mut candidate = obj.clone();
            let warnings = self.admit(rt, &name, &mut candidate, None, opts)?;
            if let Some(a) = self.admission() {
                a.validate(&write, &candidate).await?;
            }
            if let Some(m) = &opts.field_manager {
                super::managed::track(None, &mut candidate, m, &rt.api_version(), None);
            }
            let r = obj_ref(rt, namespace, &name);
            if opts.dry_run {
                if self
                    .objects
                    .get(&r)
                    .await
                    .map_err(store_err(rt, &name))?
                    .is_some()
                {
                    return Err(KubeError::AlreadyExists(subject(rt, &name)));
                }
                return Ok(Written {
                    object: candidate,
                    warnings,
                });
            }
            let alloc = self.allocator(rt);
            let claims = match &alloc {
                Some(a) => Some(a.claim(&mut candidate, None).await?),
                None => None,
            };
            let stored = rt.strategy().to_storage(candidate);
            let result = self.objects.create(&r, stored).await;
            if result.is_err() {
                if let (Some(a), Some(c)) = (&alloc, claims) {
                    a.undo(c).await;
                }
            }
            match result {
                Ok(o) => {
                    return Ok(Written {
                        object: rt.strategy().storage_to_version(o),
                        warnings,
                    })
                }
                Err(ObjectError::Store(DatastoreError::AlreadyExists(_)))
                    if given.is_empty() && attempt < 7 =>
                {
                    continue
                }
                Err(e) => return Err(store_err(rt, &name)(e)),
            }
        }
        unreachable!("the loop returns")
    }

    /// Replace an object: `new` is the whole desired object (PUT, or a
    /// patch applied to `old`, the current object read in `rt`'s version).
    /// With `subresource` = `status`, only status changes.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        old: &Value,
        new: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written, KubeError> {
        let w = self
            .update_object(rt, namespace, name, old, new, subresource, opts)
            .await?;
        self.after_write(rt, opts.dry_run).await;
        Ok(w)
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_object(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        old: &Value,
        mut new: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written, KubeError> {
        normalize(rt, namespace, &mut new)?;
        match new.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != name => {
                return Err(KubeError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => new["metadata"]["name"] = json!(name),
        }
        let old_rv = old["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string();
        match new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) if !rv.is_empty() && rv != old_rv => {
                return Err(KubeError::stale(subject(rt, name)))
            }
            _ => {}
        }
        let s = rt.strategy();
        match subresource.and_then(|sub| s.subresource_part(sub)) {
            // Through a subresource: its part from the request, the rest as stored.
            Some(part) => {
                let written = new.pointer(part).cloned();
                new = old.clone();
                set_part(&mut new, part, written);
            }
            // The object itself: the subresources' parts as stored.
            None => {
                if rt.has_status() && !s.status_on_update() {
                    set_part(&mut new, "/status", old.get("status").cloned());
                }
                for part in s.guarded_parts() {
                    set_part(&mut new, part, old.pointer(part).cloned());
                }
            }
        }
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    new["metadata"].as_object_mut().map(|m| m.remove(k));
                }
            }
        }
        let warnings = self.admit(rt, name, &mut new, Some(old), opts)?;
        if let Some(a) = self.admission() {
            let write = Write {
                rt,
                namespace,
                subresource,
                old: Some(old),
                user: opts.user.as_deref(),
            };
            a.validate(&write, &new).await?;
        }
        match &opts.field_manager {
            Some(m) => {
                super::managed::track(Some(old), &mut new, m, &rt.api_version(), subresource)
            }
            None if new.pointer("/metadata/managedFields").is_none() => {
                if let Some(mf) = old.pointer("/metadata/managedFields") {
                    new["metadata"]["managedFields"] = mf.clone();
                }
            }
            None => {}
        }
        let alloc = self.allocator(rt).filter(|_| !opts.dry_run);
        let claims = match &alloc {
            Some(a) => Some(a.claim(&mut new, Some(old)).await?),
            None => None,
        };
        if has_generation(rt) && spec_part(&new) != spec_part(old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        new["metadata"]["resourceVersion"] = json!(old_rv);
        if new == *old || opts.dry_run {
            return Ok(Written {
                object: new,
                warnings,
            });
        }
        let r = obj_ref(rt, namespace, name);
        // The last finalizer of a deleted object is gone: it goes now.
        if is_deleting(&new) && !held(rt, &new) && rt.strategy().graceful_delete(&new).is_none() {
            let gone = self
                .objects
                .store
                .delete(&r.key(), Some(revision_of(old)))
                .await;
            if let Some(a) = &alloc {
                if let Some(c) = claims {
                    a.undo(c).await;
                }
                if gone.is_ok() {
                    a.release(old, None).await;
                }
            }
            gone.map_err(|e| store_err(rt, name)(e.into()))?;
            return Ok(Written {
                object: new,
                warnings,
            });
        }
        let stored = rt.strategy().to_storage(new);
        let written = self.objects.update(&r, stored).await;
        if let Some(a) = &alloc {
            match &written {
                Ok(w) => a.release(old, Some(w)).await,
                Err(_) => {
                    if let Some(c) = claims {
                        a.undo(c).await;
                    }
                }
            }
        }
        let written = written.map_err(store_err(rt, name))?;
        Ok(Written {
            object: rt.strategy().storage_to_version(written),
            warnings,
        })
    }

    /// Delete as upstream does: preconditions, propagation policy as
    /// finalizers, graceful deletion. Returns the object as it is now
    /// (still present with a deletionTimestamp, or as it was when removed).
    pub async fn delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), KubeError> {
        let (obj, gone) = self.delete_object(rt, namespace, name, opts).await?;
        let dry = !opts.dry_run.is_empty();
        self.after_write(rt, dry).await;
        if gone && !dry {
            if let Some(hooks) = self.deletions() {
                hooks.deleted(rt, &obj).await;
            }
        }
        Ok((obj, gone))
    }

    async fn delete_object(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), KubeError> {
        let r = obj_ref(rt, namespace, name);
        for _ in 0..16 {
            let cur = self
                .objects
                .get(&r)
                .await
                .map_err(store_err(rt, name))?
                .ok_or_else(|| KubeError::NotFound(subject(rt, name)))?;
            let uid = cur
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(want) = opts.preconditions.uid.as_deref().filter(|u| *u != uid) {
                return Err(KubeError::Conflict(
                    subject(rt, name),
                    format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
                ));
            }
            let rv = cur
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(want) = opts
                .preconditions
                .resource_version
                .as_deref()
                .filter(|v| *v != rv)
            {
                return Err(KubeError::Conflict(
                    subject(rt, name),
                    format!("Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"),
                ));
            }
            if let Some(why) = rt.strategy().refuse_delete(&cur) {
                return Err(KubeError::forbidden(subject(rt, name), why));
            }
            let dry = !opts.dry_run.is_empty();
            let mut next = cur.clone();
            let policy = opts
                .propagation_policy
                .as_deref()
                .or(match opts.orphan_dependents {
                    Some(true) => Some("Orphan"),
                    _ => None,
                });
            let policy_finalizer = match policy {
                Some("Foreground") => Some(FOREGROUND),
                Some("Orphan") => Some(ORPHAN),
                Some("Background") | None => None,
                Some(other) => {
                    return Err(invalid(
                        rt,
                        name,
                        vec![FieldError::not_supported(
                            "propagationPolicy",
                            other,
                            &["Foreground", "Background", "Orphan"],
                        )],
                    ))
                }
            };
            let mut fins = finalizers(&cur);
            if let Some(f) = policy_finalizer {
                if !fins.iter().any(|x| x == f) && !is_deleting(&cur) {
                    fins.push(f.to_string());
                    next["metadata"]["finalizers"] = json!(fins);
                }
            }
            let grace = rt
                .strategy()
                .graceful_delete(&cur)
                .map(|d| opts.grace_period_seconds.unwrap_or(d).max(0));
            let already = is_deleting(&cur);
            let now = chrono::Utc::now();
            let remove_now = match grace {
                // A graceful kind goes when its grace is zero and nothing holds it.
                Some(g) => g == 0 && !held(rt, &next),
                None => !held(rt, &next),
            };
            if remove_now {
                if dry {
                    return Ok((cur, true));
                }
                match self
                    .objects
                    .store
                    .delete(&r.key(), Some(revision_of(&cur)))
                    .await
                {
                    Ok(_) => {
                        if let Some(a) = self.allocator(rt) {
                            a.release(&cur, None).await;
                        }
                        return Ok((cur, true));
                    }
                    Err(DatastoreError::Conflict { .. }) => continue,
                    Err(DatastoreError::NotFound(_)) => {
                        return Err(KubeError::NotFound(subject(rt, name)))
                    }
                    Err(e) => return Err(store_err(rt, name)(e.into())),
                }
            }
            if already {
                // Shortening a pending graceful deletion is allowed; nothing else changes.
                let current = cur
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                match grace {
                    Some(g) if g < current => {
                        next["metadata"]["deletionGracePeriodSeconds"] = json!(g);
                        next["metadata"]["deletionTimestamp"] = json!((now
                            + chrono::Duration::seconds(g))
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                    }
                    _ if next == cur => return Ok((cur, false)),
                    _ => {}
                }
            } else {
                let g = grace.unwrap_or(0);
                next["metadata"]["deletionTimestamp"] = json!((now + chrono::Duration::seconds(g))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                next["metadata"]["deletionGracePeriodSeconds"] = json!(g);
                rt.strategy().begin_delete(&mut next);
            }
            if dry {
                return Ok((next, false));
            }
            match self.objects.update(&r, next).await {
                Ok(o) => return Ok((rt.strategy().storage_to_version(o), false)),
                Err(ObjectError::Store(DatastoreError::Conflict { .. })) => continue,
                Err(e) => return Err(store_err(rt, name)(e)),
            }
        }
        Err(KubeError::Conflict(
            subject(rt, name),
            "too many concurrent changes; try again".into(),
        ))
    }
}
