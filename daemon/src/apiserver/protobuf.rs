//! Request bodies in Kubernetes protobuf (`application/vnd.kubernetes.protobuf`),
//! which kubectl's typed generators send (`kubectl create deployment|job|
//! configmap|…` in 1.30+). Bodies are decoded into the JSON object they
//! stand for, against upstream's schema (`daemon/proto/kubernetes.fds`, made
//! by `tools/kube-proto-descriptors` from a kubectl binary), and then take
//! the same path as JSON. Answers are always JSON, which kubectl accepts.
//!
//! Envelope: the magic `k8s\0`, then `runtime.Unknown` {1: TypeMeta
//! {1: apiVersion, 2: kind}, 2: raw object bytes}.

use base64::Engine;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value as Pb,
};
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::OnceLock;

const MAGIC: &[u8] = b"k8s\0";
const DESCRIPTORS: &[u8] = include_bytes!("../../proto/kubernetes.fds");
/// gogoproto's `nullable` option: present (always `false` in Kubernetes)
/// on fields that are values, not pointers, in Go.
const GOGO_NULLABLE: u32 = 65001;
/// gogoproto's `customname`: the Go field's name.
const GOGO_CUSTOMNAME: u32 = 65004;

struct Schema {
    pool: DescriptorPool,
    /// Full names of fields that are Go values: their zero value means unset.
    values: HashSet<String>,
    /// Full names of Go embedded structs, whose fields JSON inlines
    /// (`Probe.handler`, `Volume.volumeSource`, …).
    inline: HashSet<String>,
}

/// A string option kept as an unknown field (the gogo extensions).
fn string_option(f: &FieldDescriptor, number: u32) -> Option<String> {
    let opts = f.options();
    let u = opts.unknown_fields().find(|u| u.number() == number)?;
    let mut buf = Vec::new();
    u.encode(&mut buf);
    // key varint, length varint, bytes: both varints are short here.
    let mut pos = 0;
    while buf.get(pos)? & 0x80 != 0 {
        pos += 1;
    }
    let len = *buf.get(pos + 1)? as usize;
    String::from_utf8(buf.get(pos + 2..pos + 2 + len)?.to_vec()).ok()
}

/// Value fields whose Go name is their type's name but which JSON names
/// (`RoleRef RoleRef `json:"roleRef"``): the descriptors cannot tell them
/// from embedded structs.
const NAMED: [&str; 7] = [
    "k8s.io.api.rbac.v1.RoleBinding.roleRef",
    "k8s.io.api.rbac.v1.ClusterRoleBinding.roleRef",
    "k8s.io.api.authentication.v1.SelfSubjectReviewStatus.userInfo",
    "k8s.io.api.core.v1.WeightedPodAffinityTerm.podAffinityTerm",
    "k8s.io.api.core.v1.PreferAvoidPodsEntry.podSignature",
    "k8s.io.api.storage.v1.VolumeError.time",
    "k8s.io.api.flowcontrol.v1.LimitedPriorityLevelConfiguration.limitResponse",
];

/// A Go embedded struct: a value field named after its type. ObjectMeta and
/// ListMeta are embedded too, but under the `metadata` key.
fn embedded(f: &FieldDescriptor) -> bool {
    let Kind::Message(m) = f.kind() else {
        return false;
    };
    !matches!(m.name(), "ObjectMeta" | "ListMeta")
        && !NAMED.contains(&f.full_name())
        && string_option(f, GOGO_CUSTOMNAME).as_deref() == Some(m.name())
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let pool = DescriptorPool::decode(DESCRIPTORS).expect("the built-in Kubernetes schema");
        let fields: Vec<FieldDescriptor> = pool
            .all_messages()
            .flat_map(|m| m.fields().collect::<Vec<_>>())
            .collect();
        let values: HashSet<String> = fields
            .iter()
            .filter(|f| {
                f.options()
                    .unknown_fields()
                    .any(|u| u.number() == GOGO_NULLABLE)
            })
            .map(|f| f.full_name().to_string())
            .collect();
        let inline = fields
            .iter()
            .filter(|f| values.contains(f.full_name()) && embedded(f))
            .map(|f| f.full_name().to_string())
            .collect();
        Schema {
            pool,
            values,
            inline,
        }
    })
}

/// The protobuf package of an API group's version: `apps/v1` →
/// `k8s.io.api.apps.v1`, `networking.k8s.io/v1` → `k8s.io.api.networking.v1`.
fn package(api_version: &str) -> String {
    let (group, version) = api_version
        .rsplit_once('/')
        .unwrap_or(("core", api_version));
    let short = group.split('.').next().unwrap_or(group);
    format!("k8s.io.api.{short}.{version}")
}

/// Decode a protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("missing the k8s protobuf magic")?;
    let s = schema();
    let unknown = s
        .pool
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .expect("runtime.Unknown in the schema");
    let envelope =
        DynamicMessage::decode(unknown, rest).map_err(|e| format!("bad protobuf envelope: {e}"))?;
    let type_meta = |f: &str| {
        envelope
            .get_field_by_name("typeMeta")
            .and_then(|t| {
                t.as_message()?
                    .get_field_by_name(f)?
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let (api_version, kind) = (type_meta("apiVersion"), type_meta("kind"));
    let raw = envelope
        .get_field_by_name("raw")
        .and_then(|r| r.as_bytes().cloned())
        .unwrap_or_default();
    let name = format!("{}.{kind}", package(&api_version));
    let desc = s
        .pool
        .get_message_by_name(&name)
        .ok_or_else(|| format!("no protobuf schema for {api_version} {kind}; send it as JSON"))?;
    let msg = DynamicMessage::decode(desc, raw.as_ref())
        .map_err(|e| format!("bad protobuf {api_version} {kind}: {e}"))?;
    let mut obj = match message(s, &msg)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!(kind));
    out.append(&mut obj);
    Ok(Value::Object(out))
}

/// A message as Kubernetes' JSON encoding writes it: the apimachinery
/// types with custom JSON forms are special, the rest maps field by field.
fn message(s: &Schema, m: &DynamicMessage) -> Result<Value, String> {
    let field = |n: &str| m.get_field_by_name(n);
    let str_field = |n: &str| {
        field(n)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let int_field = |n: &str| field(n).and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)));
    match m.descriptor().full_name() {
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => return Ok(json!(str_field("string"))),
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return Ok(if int_field("type") == Some(1) {
                json!(str_field("strVal"))
            } else {
                json!(int_field("intVal").unwrap_or(0))
            })
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            return Ok(time(int_field("seconds"), int_field("nanos"), false))
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            return Ok(time(int_field("seconds"), int_field("nanos"), true))
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            let d =
                std::time::Duration::from_nanos(int_field("duration").unwrap_or(0).max(0) as u64);
            return Ok(json!(go_duration(d)));
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let raw = field("raw")
                .and_then(|r| r.as_bytes().cloned())
                .unwrap_or_default();
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&raw)
                .map_err(|_| "an embedded object must be JSON, not protobuf".to_string());
        }
        _ => {}
    }
    let mut out = Map::new();
    for (f, v) in m.fields() {
        let is_value = s.values.contains(f.full_name());
        let j = if f.is_map() {
            map(s, &f, v)?
        } else if f.is_list() {
            let items = v.as_list().unwrap_or_default();
            Value::Array(
                items
                    .iter()
                    .map(|i| scalar(s, &f, i))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            let j = scalar(s, &f, v)?;
            // A Go value field at its zero value was not set by the client.
            if is_value && is_zero(&j) && !matches!(f.kind(), Kind::Message(_)) {
                continue;
            }
            j
        };
        match j {
            Value::Null => {}
            Value::Object(mut inner) if s.inline.contains(f.full_name()) => out.append(&mut inner),
            j => drop(out.insert(f.name().to_string(), j)),
        }
    }
    Ok(Value::Object(out))
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn map(s: &Schema, f: &FieldDescriptor, v: &Pb) -> Result<Value, String> {
    let value_field = match f.kind() {
        Kind::Message(entry) => entry.map_entry_value_field(),
        _ => return Err(format!("{}: not a map", f.full_name())),
    };
    let mut out = Map::new();
    for (k, v) in v.as_map().into_iter().flatten() {
        let key = match k {
            MapKey::String(s) => s.clone(),
            MapKey::Bool(b) => b.to_string(),
            MapKey::I32(n) => n.to_string(),
            MapKey::I64(n) => n.to_string(),
            MapKey::U32(n) => n.to_string(),
            MapKey::U64(n) => n.to_string(),
        };
        out.insert(key, scalar(s, &value_field, v)?);
    }
    Ok(Value::Object(out))
}

fn scalar(s: &Schema, f: &FieldDescriptor, v: &Pb) -> Result<Value, String> {
    Ok(match v {
        Pb::Bool(b) => json!(b),
        Pb::I32(n) => json!(n),
        Pb::I64(n) => json!(n),
        Pb::U32(n) => json!(n),
        Pb::U64(n) => json!(n),
        Pb::F32(n) => json!(n),
        Pb::F64(n) => json!(n),
        Pb::String(x) => json!(x),
        Pb::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Pb::EnumNumber(n) => json!(n),
        Pb::Message(m) => message(s, m)?,
        Pb::List(_) | Pb::Map(_) => {
            return Err(format!(
                "{}: nested collections are not Kubernetes",
                f.full_name()
            ))
        }
    })
}

/// `metav1.Time` (seconds) and `MicroTime` (microseconds) in RFC 3339; the
/// zero time is null, as Go writes it.
fn time(seconds: Option<i64>, nanos: Option<i64>, micro: bool) -> Value {
    let (secs, nanos) = (seconds.unwrap_or(0), nanos.unwrap_or(0));
    if secs == 0 && nanos == 0 {
        return Value::Null;
    }
    let Some(t) = chrono::DateTime::from_timestamp(secs, nanos as u32) else {
        return Value::Null;
    };
    let format = if micro {
        chrono::SecondsFormat::Micros
    } else {
        chrono::SecondsFormat::Secs
    };
    json!(t.to_rfc3339_opts(format, true))
}

/// Go's `time.Duration.String()` for whole seconds and above (`1h2m3s`,
/// `0s`), which is what `metav1.Duration` fields hold in practice.
fn go_duration(d: std::time::Duration) -> String {
    let total = d.as_secs();
    let (h, m, sec) = (total / 3600, (total / 60) % 60, total % 60);
    let frac = d.subsec_nanos();
    let secs = if frac == 0 {
        format!("{sec}s")
    } else {
        format!("{}s", format!("{sec}.{frac:09}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn encode(api_version: &str, kind: &str, obj: DynamicMessage) -> Vec<u8> {
        let s = schema();
        let mut env = DynamicMessage::new(
            s.pool
                .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
                .unwrap(),
        );
        let mut tm = DynamicMessage::new(
            s.pool
                .get_message_by_name("k8s.io.apimachinery.pkg.runtime.TypeMeta")
                .unwrap(),
        );
        tm.set_field_by_name("apiVersion", Pb::String(api_version.into()));
        tm.set_field_by_name("kind", Pb::String(kind.into()));
        env.set_field_by_name("typeMeta", Pb::Message(tm));
        env.set_field_by_name("raw", Pb::Bytes(obj.encode_to_vec().into()));
        [MAGIC.to_vec(), env.encode_to_vec()].concat()
    }

    fn msg(name: &str, fields: Value) -> DynamicMessage {
        let desc = schema().pool.get_message_by_name(name).unwrap();
        let mut m = DynamicMessage::new(desc.clone());
        for (k, v) in fields.as_object().unwrap() {
            let f = desc.get_field_by_name(k).unwrap();
            let pb = match (v, f.kind()) {
                (Value::String(x), Kind::String) => Pb::String(x.clone()),
                (Value::Number(n), Kind::Int32) => Pb::I32(n.as_i64().unwrap() as i32),
                (Value::Number(n), Kind::Int64) => Pb::I64(n.as_i64().unwrap()),
                (Value::Bool(b), Kind::Bool) => Pb::Bool(*b),
                (Value::Array(items), Kind::Message(d)) => Pb::List(
                    items
                        .iter()
                        .map(|i| Pb::Message(msg(d.full_name(), i.clone())))
                        .collect(),
                ),
                (Value::Object(map), Kind::Message(d)) if f.is_map() => Pb::Map(
                    map.iter()
                        .map(|(k, v)| {
                            let _ = &d;
                            (
                                MapKey::String(k.clone()),
                                Pb::String(v.as_str().unwrap().into()),
                            )
                        })
                        .collect(),
                ),
                (o @ Value::Object(_), Kind::Message(d)) => {
                    Pb::Message(msg(d.full_name(), o.clone()))
                }
                other => panic!("test helper: {other:?}"),
            };
            m.set_field(&f, pb);
        }
        m
    }

    #[test]
    fn decodes_a_deployment_as_kubectl_sends_it() {
        // kubectl's generator sets value fields to their zero values; they
        // must not come out as explicit empty strings or zeros.
        let d = msg(
            "k8s.io.api.apps.v1.Deployment",
            json!({
                "metadata": {"name": "web", "namespace": "", "generateName": "",
                             "labels": {"app": "web"}, "generation": 0},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "busybox", "image": "busybox:1",
                                                 "stdin": false,
                                                 "ports": [{"containerPort": 80, "hostPort": 0}]}]}
                    },
                    "strategy": {},
                    "paused": false
                }
            }),
        );
        let obj = decode(&encode("apps/v1", "Deployment", d)).unwrap();
        assert_eq!(
            obj,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    // replicas is a pointer in Go: an explicit 0 stays.
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "busybox", "image": "busybox:1",
                                                 "ports": [{"containerPort": 80}]}]}
                    },
                    "strategy": {}
                }
            })
        );
    }

    #[test]
    fn special_types_take_their_json_forms() {
        let pod = msg(
            "k8s.io.api.core.v1.Pod",
            json!({
                "metadata": {"name": "p", "creationTimestamp": {"seconds": 1_700_000_000}},
                "spec": {"containers": [{"name": "c", "image": "i",
                    "resources": {},
                    "livenessProbe": {"handler": {"httpGet": {"port": {"type": 1, "strVal": "http"}}},
                                      "periodSeconds": 5},
                    "readinessProbe": {"handler": {"httpGet": {"port": {"type": 0, "intVal": 8080}}}}}],
                    "volumes": [{"name": "v", "volumeSource": {"emptyDir": {}}}]}
            }),
        );
        let obj = decode(&encode("v1", "Pod", pod)).unwrap();
        assert_eq!(obj["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        let c = &obj["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8080);
        // Go embedded structs are inlined, as in JSON.
        assert_eq!(c["livenessProbe"]["periodSeconds"], 5);
        assert_eq!(
            obj["spec"]["volumes"],
            json!([{"name": "v", "emptyDir": {}}])
        );
        assert_eq!(go_duration(std::time::Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration(std::time::Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn secrets_keep_bytes_as_base64_and_configmaps_decode() {
        let desc = schema()
            .pool
            .get_message_by_name("k8s.io.api.core.v1.Secret")
            .unwrap();
        let mut s = DynamicMessage::new(desc.clone());
        s.set_field_by_name(
            "metadata",
            Pb::Message(msg(
                "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                json!({"name": "s"}),
            )),
        );
        s.set_field_by_name(
            "data",
            Pb::Map(
                [(
                    MapKey::String("k".into()),
                    Pb::Bytes(b"\x00hi".to_vec().into()),
                )]
                .into(),
            ),
        );
        s.set_field_by_name("type", Pb::String("Opaque".into()));
        let obj = decode(&encode("v1", "Secret", s)).unwrap();
        assert_eq!(obj["data"]["k"], "AGhp");
        assert_eq!(obj["type"], "Opaque");
    }

    #[test]
    fn rejects_garbage_and_unknown_kinds() {
        assert!(decode(b"{}").unwrap_err().contains("magic"));
        assert!(decode(&[MAGIC, &[0x0a, 0x50]].concat()).is_err());
        let cm = msg("k8s.io.api.core.v1.ConfigMap", json!({}));
        let err = decode(&encode("example.com/v1", "Widget", cm)).unwrap_err();
        assert!(
            err.contains("no protobuf schema for example.com/v1 Widget"),
            "{err}"
        );
    }

    #[test]
    fn named_value_fields_are_not_inlined() {
        let inline = &super::schema().inline;
        for f in super::NAMED {
            assert!(!inline.contains(f), "{f}");
        }
        assert!(inline.contains("k8s.io.api.core.v1.Volume.volumeSource"));
        assert!(inline.contains("k8s.io.api.core.v1.SecretKeySelector.localObjectReference"));
    }
}
