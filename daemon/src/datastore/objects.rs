//! Kubernetes-style objects (JSON) on top of the datastore.
//!
//! Keys are `/registry/<resource>/<namespace>/<name>` (cluster-scoped:
//! `/registry/<resource>/<name>`). `metadata.resourceVersion` is never
//! stored: it is the datastore revision, filled in on every read, so it can
//! never disagree with the store.

use crate::datastore::{Datastore, DatastoreError, Revision};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Store(#[from] DatastoreError),
    #[error("stored object at {key} is not valid JSON: {message}")]
    Corrupt { key: String, message: String },
}

pub type Result<T, E = ObjectError> = std::result::Result<T, E>;

/// Which object: resource (plural), optional namespace, name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub resource: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Ref {
    pub fn cluster(resource: impl Into<String>, name: &str) -> Self {
        Self {
            resource: resource.into(),
            namespace: None,
            name: name.to_string(),
        }
    }

    pub fn namespaced(resource: impl Into<String>, namespace: &str, name: &str) -> Self {
        Self {
            resource: resource.into(),
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        }
    }

    /// The reference of a stored object of `resource`, from its metadata.
    pub fn of(resource: impl Into<String>, obj: &Value) -> Self {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(ns) => Self::namespaced(resource, ns, name),
            None => Self::cluster(resource, name),
        }
    }

    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("/registry/{}/{}/{}", self.resource, ns, self.name),
            None => format!("/registry/{}/{}", self.resource, self.name),
        }
    }
}

/// Prefix of every object of `resource` (in `namespace` if given).
pub fn prefix(resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("/registry/{resource}/{ns}/"),
        None => format!("/registry/{resource}/"),
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Lease times are MicroTime: RFC 3339 with microseconds.
pub fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

fn decode(key: &str, bytes: &[u8], rev: Revision) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(bytes).map_err(|e| ObjectError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })?;
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Ok(v)
}

/// A stored object's top-level members, values left unparsed.
struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> std::result::Result<Members<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry()? {
                    out.push(e);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// Append the stored object `bytes` to `out` as `decode` would return it,
/// without building it: only `metadata` is parsed (to add the
/// resourceVersion), every other member is copied as stored. Lists of
/// thousands of objects are mostly this.
fn encode_stored(out: &mut Vec<u8>, key: &str, bytes: &[u8], rev: Revision) -> Result<()> {
    let corrupt = |e: serde_json::Error| ObjectError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    };
    let Members(members) = serde_json::from_slice(bytes).map_err(corrupt)?;
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k).map_err(corrupt)?;
        out.push(b':');
        if k == "metadata" {
            let mut meta: Value = serde_json::from_str(v.get()).map_err(corrupt)?;
            if let Some(m) = meta.as_object_mut() {
                m.insert("resourceVersion".into(), Value::String(rev.to_string()));
            }
            serde_json::to_writer(&mut *out, &meta).map_err(corrupt)?;
        } else {
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    out.push(b'}');
    Ok(())
}

fn encode(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).expect("JSON values serialize")
}

/// The revision an object was read at (its resourceVersion).
pub fn revision_of(v: &Value) -> Revision {
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct Objects {
    pub store: Datastore,
}

impl Objects {
    pub fn new(store: Datastore) -> Self {
        Self { store }
    }

    pub async fn get(&self, r: &Ref) -> Result<Option<Value>> {
        let key = r.key();
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value, kv.mod_revision)?)),
            None => Ok(None),
        }
    }

    /// Every object under `prefix`, with the revision of the snapshot.
    pub async fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<(Revision, Vec<Value>)> {
        let (rev, kvs) = self.store.list(&prefix(resource, namespace)).await?;
        let items = kvs
            .iter()
            .map(|kv| decode(&kv.key, &kv.value, kv.mod_revision))
            .collect::<Result<Vec<_>>>()?;
        Ok((rev, items))
    }

    /// Every object under `prefix` read as `T`: only the fields `T` names
    /// are built, the rest is skipped while parsing. A pass over ten
    /// thousand Nodes for their Ready condition is then a scan, not ten
    /// thousand trees of `Value`s.
    pub async fn list_as<T: serde::de::DeserializeOwned>(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<T>> {
        let (_, kvs) = self.store.list(&prefix(resource, namespace)).await?;
        kvs.iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| ObjectError::Corrupt {
                    key: kv.key.clone(),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Every object under `prefix` as one JSON document: `head` (the list
    /// envelope up to and including `"items":[`, given the snapshot's
    /// revision), the objects as `list` returns them, then `]}`.
    pub async fn list_encoded(
        &self,
        resource: &str,
        namespace: Option<&str>,
        head: impl FnOnce(Revision) -> String,
    ) -> Result<Vec<u8>> {
        let (rev, kvs) = self.store.list(&prefix(resource, namespace)).await?;
        let mut out =
            Vec::with_capacity(kvs.iter().map(|kv| kv.value.len() + 32).sum::<usize>() + 256);
        out.extend_from_slice(head(rev).as_bytes());
        for (i, kv) in kvs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            encode_stored(&mut out, &kv.key, &kv.value, kv.mod_revision)?;
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// Create `obj`, filling name, namespace, and uid and creationTimestamp
    /// unless given.
    /// The writes that skip the registry's write path, for the two kinds
    /// of objects only the server itself writes:
    /// - liveness: Lease renewals and the Node status agents report, tens
    ///   of thousands a minute at scale, where admission, validation and
    ///   managed fields would be most of a server's work;
    /// - node password Secrets, immutable to every API client (as K3s makes
    ///   them), which the server alone rotates in place.
    ///
    /// Every other write of an API object goes through the registry (an
    /// architecture test holds both, and the list of callers).
    pub fn raw(&self) -> Raw<'_> {
        Raw(self)
    }

    pub async fn create(&self, r: &Ref, mut obj: Value) -> Result<Value> {
        {
            let meta = obj
                .as_object_mut()
                .expect("objects are JSON objects")
                .entry("metadata")
                .or_insert_with(|| json!({}));
            meta["name"] = json!(r.name);
            if let Some(ns) = &r.namespace {
                meta["namespace"] = json!(ns);
            }
            // The registry assigns them before admission (a Job's selector
            // is made from its uid); other writers get them here.
            let meta = meta.as_object_mut().expect("metadata is an object");
            meta.entry("uid")
                .or_insert_with(|| json!(uuid::Uuid::new_v4().to_string()));
            meta.entry("creationTimestamp")
                .or_insert_with(|| json!(now_rfc3339()));
        }
        let rev = self.store.create(&r.key(), encode(&obj)).await?;
        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
        Ok(obj)
    }

    /// Create `obj` unless `r` already exists (whoever created it first
    /// wins). True if this call created it.
    pub async fn create_if_absent(&self, r: &Ref, obj: Value) -> Result<bool> {
        match self.create(r, obj).await {
            Ok(_) => Ok(true),
            Err(ObjectError::Store(DatastoreError::AlreadyExists(_))) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replace an object read at `revision_of(obj)`; a newer write is a Conflict.
    pub async fn update(&self, r: &Ref, mut obj: Value) -> Result<Value> {
        let rev = self
            .store
            .update(&r.key(), encode(&obj), revision_of(&obj))
            .await?;
        obj["metadata"]["resourceVersion"] = json!(rev.to_string());
        Ok(obj)
    }

    /// Read-modify-write with retry on conflict. `f` returns false to leave
    /// the object alone. `Ok(None)`: the object does not exist.
    pub async fn modify(
        &self,
        r: &Ref,
        mut f: impl FnMut(&mut Value) -> bool,
    ) -> Result<Option<Value>> {
        for _ in 0..16 {
            let Some(mut obj) = self.get(r).await? else {
                return Ok(None);
            };
            if !f(&mut obj) {
                return Ok(Some(obj));
            }
            match self.update(r, obj).await {
                Ok(o) => return Ok(Some(o)),
                Err(ObjectError::Store(DatastoreError::Conflict { .. })) => continue,
                Err(ObjectError::Store(DatastoreError::NotFound(_))) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Err(ObjectError::Store(DatastoreError::Unavailable(format!(
            "too many concurrent updates to {}",
            r.key()
        ))))
    }

    /// Delete; `Ok(None)` if it was already gone.
    pub async fn delete(&self, r: &Ref) -> Result<Option<Value>> {
        match self.store.delete(&r.key(), None).await {
            Ok((rev, kv)) => Ok(Some(decode(&kv.key, &kv.value, rev)?)),
            Err(DatastoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The strings of a JSON array (others, and non-arrays, give nothing).
pub fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// See [`Objects::raw`].
pub struct Raw<'a>(&'a Objects);

impl Raw<'_> {
    pub async fn create(&self, r: &Ref, obj: Value) -> Result<Value> {
        self.0.create(r, obj).await
    }

    pub async fn create_if_absent(&self, r: &Ref, obj: Value) -> Result<bool> {
        self.0.create_if_absent(r, obj).await
    }

    pub async fn update(&self, r: &Ref, obj: Value) -> Result<Value> {
        self.0.update(r, obj).await
    }

    pub async fn modify(
        &self,
        r: &Ref,
        f: impl FnMut(&mut Value) -> bool,
    ) -> Result<Option<Value>> {
        self.0.modify(r, f).await
    }

    pub async fn delete(&self, r: &Ref) -> Result<Option<Value>> {
        self.0.delete(r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_objects_read_as_decoded_ones() {
        for v in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a\"metadata\":{": "x"},
                   "metadata": {"name": "n", "labels": {"k": "v"}}, "zz": [1, {"b": null}]}),
            json!({"kind": "X", "metadata": {}}),
            json!({"kind": "NoMeta"}),
        ] {
            let bytes = encode(&v);
            let mut out = Vec::new();
            encode_stored(&mut out, "/k", &bytes, 42).unwrap();
            let back: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, decode("/k", &bytes, 42).unwrap());
        }
        assert!(encode_stored(&mut Vec::new(), "/k", b"[1]", 1).is_err());
    }
}
