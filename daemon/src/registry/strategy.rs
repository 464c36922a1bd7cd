//! One strategy per kind: how an object is decoded, defaulted and checked,
//! which fields a field selector may name, and how `kubectl get` prints it.
//!
//! Built-in kinds implement [`Kind`] on their k8s-openapi type, so the
//! logic reads typed fields; [`Typed`] adapts that to the object-safe
//! [`Strategy`] the registry stores. Decoding through the typed form is
//! also what drops unknown fields, as upstream's decoder does; whatever the
//! round trip lost is reported so `fieldValidation` can warn or refuse.

use super::error::FieldError;
use super::printers::{age_cell, age_col, name_cell, name_col};
use super::validation::NameRule;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::marker::PhantomData;

/// A field selector label a kind supports, where its value lives, and the
/// value when absent (booleans read as "false").
pub type FieldLabel = (&'static str, &'static str, &'static str);

pub trait Strategy: Send + Sync {
    /// Decode `obj` as the kind, apply upstream's defaults, check it (on
    /// update also against `old`, the stored object) and write the decoded
    /// form back. `Err` is a body that does not decode as the kind (400).
    fn admit(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        errs: &mut Vec<FieldError>,
        unknown: &mut Vec<String>,
    ) -> Result<(), String>;

    /// Table column definitions, Name first.
    fn columns(&self) -> Vec<Value> {
        vec![name_col(), age_col()]
    }

    /// The cells of one row, matching [`Strategy::columns`].
    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![name_cell(obj), age_cell(obj)]
    }

    /// Field selector labels beyond `metadata.name` and `metadata.namespace`.
    fn fields(&self) -> &'static [FieldLabel] {
        &[]
    }

    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Pods on a node end gracefully: their kubelet finishes the delete.
    fn graceful_delete(&self, _obj: &Value) -> Option<i64> {
        None
    }

    /// The part of the object (a JSON pointer) a write through
    /// `subresource` replaces, leaving the rest as stored: its status
    /// through `status`, and whatever a kind names (a Pod's ephemeral
    /// containers, a Namespace's finalizers). An update of the object
    /// itself keeps each of these parts as stored, as upstream's
    /// `PrepareForUpdate` does.
    fn subresource_part(&self, subresource: &str) -> Option<&'static str> {
        (subresource == "status").then_some("/status")
    }

    /// The parts other than status that only their subresource writes.
    fn guarded_parts(&self) -> Vec<&'static str> {
        vec![]
    }

    /// Whether a create may set the status (most kinds' status is for
    /// their controller to write).
    fn status_on_create(&self) -> bool {
        false
    }

    /// Whether an update of the object itself may change its status.
    fn status_on_update(&self) -> bool {
        false
    }

    /// Why a delete of `obj` is refused, if it is (a system namespace).
    fn refuse_delete(&self, _obj: &Value) -> Option<String> {
        None
    }

    /// What a deletion does first, beyond its `deletionTimestamp` (a
    /// Namespace turns `Terminating`).
    fn begin_delete(&self, _obj: &mut Value) {}

    /// Whether something of the kind's own keeps a deleted object in place
    /// besides `metadata.finalizers` (a Namespace's `spec.finalizers`).
    fn held(&self, _obj: &Value) -> bool {
        false
    }

    /// Whether writing an object of this kind changes which kinds are
    /// served (CustomResourceDefinitions): the registry refreshes its kind
    /// list after such a write.
    fn defines_kinds(&self) -> bool {
        false
    }

    /// From the stored form to this version (kinds served in two versions
    /// or groups share one stored form). A kind that overrides this also
    /// answers `converts` with true, or its lists go out unconverted.
    fn storage_to_version(&self, obj: Value) -> Value {
        obj
    }

    /// From this version to the stored form.
    fn to_storage(&self, obj: Value) -> Value {
        obj
    }

    /// Whether `storage_to_version` changes anything (lists of kinds that
    /// do not are sent as stored, without being parsed).
    fn converts(&self) -> bool {
        false
    }

    /// The kind's OpenAPI schema, registered in `gen` (which collects the
    /// schemas it refers to); `None` for kinds without a typed form.
    fn schema(&self, _gen: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        None
    }
}

/// A built-in kind's behaviour, on its typed form.
pub trait Kind:
    Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static
{
    /// What only a create sets (upstream's PrepareForCreate).
    fn prepare_for_create(&mut self) {}

    /// An update's fix-ups against the stored object, before defaults and
    /// validation (upstream's PrepareForUpdate).
    fn prepare_for_update(&mut self, _old: &Self) {}

    fn defaults(&mut self) {}

    fn validate(&self, _old: Option<&Self>, _errs: &mut Vec<FieldError>) {}

    fn columns() -> Vec<Value> {
        Generic.columns()
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        Generic.row(obj)
    }

    const FIELDS: &'static [FieldLabel] = &[];
    const NAME_RULE: NameRule = NameRule::Subdomain;
    /// Subresources beyond status that write one part of the object:
    /// (subresource, JSON pointer of the part).
    const PARTS: &'static [(&'static str, &'static str)] = &[];
    /// Whether a create may set the status (a Node's registration does).
    const STATUS_ON_CREATE: bool = false;

    /// Why a delete is refused (see [`Strategy::refuse_delete`]).
    fn refuse_delete(&self) -> Option<String> {
        None
    }

    /// See [`Strategy::begin_delete`].
    fn begin_delete(&mut self) {}

    /// See [`Strategy::held`].
    fn held(&self) -> bool {
        false
    }

    /// Top-level fields a write may carry that the kind folds into others
    /// and never stores (a Secret's `stringData`): known, though absent
    /// from what is stored.
    const WRITE_ONLY: &'static [&'static str] = &[];

    fn graceful_delete(&self) -> Option<i64> {
        None
    }
}

/// Adapts a [`Kind`] to [`Strategy`].
pub struct Typed<K>(PhantomData<fn() -> K>);

impl<K> Typed<K> {
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<K> Default for Typed<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// Decode a stored or submitted object as `K`.
pub fn decode<K: DeserializeOwned>(v: &Value) -> Result<K, String> {
    K::deserialize(v).map_err(|e| e.to_string())
}

impl<K: Kind> Strategy for Typed<K> {
    fn admit(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        errs: &mut Vec<FieldError>,
        unknown: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut typed: K = decode(obj)?;
        let old: Option<K> = old.and_then(|o| decode(o).ok());
        match &old {
            None => typed.prepare_for_create(),
            Some(o) => typed.prepare_for_update(o),
        }
        typed.defaults();
        typed.validate(old.as_ref(), errs);
        let out = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        let before = unknown.len();
        unknown_fields(obj, &out, "", unknown);
        let mut i = before;
        while i < unknown.len() {
            if K::WRITE_ONLY.contains(&unknown[i].as_str()) {
                unknown.remove(i);
            } else {
                i += 1;
            }
        }
        *obj = out;
        Ok(())
    }

    fn columns(&self) -> Vec<Value> {
        K::columns()
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        match decode::<K>(obj) {
            Ok(t) => t.row(obj),
            // A stored object that no longer decodes still gets a row.
            Err(_) => {
                let n = K::columns().len();
                let mut cells = vec![name_cell(obj)];
                cells.resize(n, json!(""));
                cells
            }
        }
    }

    fn fields(&self) -> &'static [FieldLabel] {
        K::FIELDS
    }

    fn name_rule(&self) -> NameRule {
        K::NAME_RULE
    }

    fn subresource_part(&self, subresource: &str) -> Option<&'static str> {
        K::PARTS
            .iter()
            .find(|(s, _)| *s == subresource)
            .map(|(_, p)| *p)
            .or((subresource == "status").then_some("/status"))
    }

    fn guarded_parts(&self) -> Vec<&'static str> {
        K::PARTS.iter().map(|(_, p)| *p).collect()
    }

    fn status_on_create(&self) -> bool {
        K::STATUS_ON_CREATE
    }

    fn refuse_delete(&self, obj: &Value) -> Option<String> {
        decode::<K>(obj).ok()?.refuse_delete()
    }

    fn begin_delete(&self, obj: &mut Value) {
        if let Ok(mut typed) = decode::<K>(obj) {
            typed.begin_delete();
            if let Ok(v) = serde_json::to_value(&typed) {
                *obj = v;
            }
        }
    }

    fn held(&self, obj: &Value) -> bool {
        decode::<K>(obj).is_ok_and(|t| t.held())
    }

    fn graceful_delete(&self, obj: &Value) -> Option<i64> {
        decode::<K>(obj).ok()?.graceful_delete()
    }

    fn schema(&self, gen: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(gen.subschema_for::<K>())
    }
}

/// Paths present in `input` that the typed round trip dropped: unknown
/// fields. Nulls in the input are not fields.
pub fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    const MAX: usize = 32;
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if out.len() >= MAX {
                    return;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(ov) => unknown_fields(v, ov, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Paths of members given twice in a JSON body (`spec.replicas`), which
/// `fieldValidation` reports as upstream does; the parsed value keeps the
/// last one. Invalid JSON yields nothing (parsing reports it).
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    /// Where the walk is (segments: `name` or `[i]`), and what it found.
    /// The path is joined only for a duplicate.
    #[derive(Default)]
    struct State {
        path: Vec<String>,
        found: Vec<String>,
    }

    impl State {
        fn joined(&self) -> String {
            let mut out = String::new();
            for seg in &self.path {
                if !out.is_empty() && !seg.starts_with('[') {
                    out.push('.');
                }
                out.push_str(seg);
            }
            out
        }
    }

    struct Walk<'a>(&'a RefCell<State>);

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<(), M::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                let dup = !seen.insert(k.clone());
                {
                    let mut st = self.0.borrow_mut();
                    st.path.push(k);
                    if dup {
                        let p = st.joined();
                        st.found.push(p);
                    }
                }
                m.next_value_seed(Walk(self.0))?;
                self.0.borrow_mut().path.pop();
            }
            Ok(())
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<(), S::Error> {
            let mut i = 0;
            loop {
                self.0.borrow_mut().path.push(format!("[{i}]"));
                let more = s.next_element_seed(Walk(self.0))?.is_some();
                self.0.borrow_mut().path.pop();
                if !more {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }

    let state = RefCell::new(State::default());
    let mut d = serde_json::Deserializer::from_slice(body);
    if Walk(&state).deserialize(&mut d).is_err() {
        return vec![];
    }
    state.into_inner().found
}

/// Kinds without a typed form: custom resources (no schema is enforced).
pub struct Generic;

impl Strategy for Generic {
    fn admit(
        &self,
        _obj: &mut Value,
        _old: Option<&Value>,
        _errs: &mut Vec<FieldError>,
        _unknown: &mut Vec<String>,
    ) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_fields_are_named_with_paths() {
        let body =
            br#"{"spec": {"replicas": 1, "replicas": 2, "x": [{"a": 1, "a": 1}]}, "kind": "K"}"#;
        assert_eq!(duplicate_fields(body), vec!["spec.replicas", "spec.x[0].a"]);
        assert!(duplicate_fields(br#"{"a": 1, "b": {"a": 2}}"#).is_empty());
        assert!(duplicate_fields(b"{nope").is_empty());
    }

    #[test]
    fn unknown_fields_are_named_with_paths() {
        let input = json!({"spec": {"replicas": 1, "bogus": 2, "template": {"spec": {"containers": [{"name": "a", "imagee": "x", "image": null}]}}}, "extra": null});
        let output =
            json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a"}]}}}});
        let mut out = vec![];
        unknown_fields(&input, &output, "", &mut out);
        assert_eq!(
            out,
            ["spec.bogus", "spec.template.spec.containers[0].imagee"]
        );
    }
}
