//! Request bodies in Kubernetes protobuf, for the kinds kubectl's typed
//! generators send that way (`kubectl create namespace|configmap|secret`
//! in kubectl 1.30+). Only decoding, only those kinds; everything is
//! answered in JSON, which kubectl accepts.
//!
//! Envelope: the magic `k8s\0`, then `runtime.Unknown` {1: TypeMeta
//! {1: apiVersion, 2: kind}, 2: raw object bytes}.

use base64::Engine;
use serde_json::{json, Map, Value};

const MAGIC: &[u8] = b"k8s\0";

/// One protobuf field: number and (for length-delimited) bytes / (varint) value.
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn fields(buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let (num, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => out.push(Field::Varint(num, read_varint(buf, &mut pos)?)),
            1 => pos += 8,
            2 => {
                let len = read_varint(buf, &mut pos)? as usize;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                out.push(Field::Bytes(num, &buf[pos..end]));
                pos = end;
            }
            5 => pos += 4,
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    if pos > buf.len() {
        return Err("truncated message".into());
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

/// A map<string, string|bytes> entry {1: key, 2: value}.
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), String> {
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    for f in fields(b)? {
        if let Field::Bytes(n, d) = f {
            match n {
                1 => k = utf8(d)?,
                2 if bytes_value => v = json!(base64::engine::general_purpose::STANDARD.encode(d)),
                2 => v = json!(utf8(d)?),
                _ => {}
            }
        }
    }
    Ok((k, v))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    let (mut labels, mut annotations, mut finalizers) = (Map::new(), Map::new(), Vec::new());
    for f in fields(b)? {
        if let Field::Bytes(n, d) = f {
            match n {
                1 => drop(m.insert("name".into(), json!(utf8(d)?))),
                2 => drop(m.insert("generateName".into(), json!(utf8(d)?))),
                3 => drop(m.insert("namespace".into(), json!(utf8(d)?))),
                6 => drop(m.insert("resourceVersion".into(), json!(utf8(d)?))),
                11 => {
                    let (k, v) = map_entry(d, false)?;
                    labels.insert(k, v);
                }
                12 => {
                    let (k, v) = map_entry(d, false)?;
                    annotations.insert(k, v);
                }
                14 => finalizers.push(json!(utf8(d)?)),
                _ => {}
            }
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(m))
}

/// Decode a protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("missing the k8s protobuf magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for f in fields(rest)? {
        match f {
            Field::Bytes(1, tm) => {
                for t in fields(tm)? {
                    match t {
                        Field::Bytes(1, d) => api_version = utf8(d)?,
                        Field::Bytes(2, d) => kind = utf8(d)?,
                        _ => {}
                    }
                }
            }
            Field::Bytes(2, d) => raw = d,
            _ => {}
        }
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind});
    let (mut data, mut string_data) = (Map::new(), Map::new());
    for f in fields(raw)? {
        match (kind.as_str(), f) {
            (_, Field::Bytes(1, d)) => obj["metadata"] = object_meta(d)?,
            ("ConfigMap", Field::Bytes(2, d)) => {
                let (k, v) = map_entry(d, false)?;
                data.insert(k, v);
            }
            ("ConfigMap", Field::Bytes(3, d)) => {
                let (k, v) = map_entry(d, true)?;
                obj["binaryData"][k] = v;
            }
            ("ConfigMap", Field::Varint(4, v)) | ("Secret", Field::Varint(5, v)) => obj["immutable"] = json!(v != 0),
            ("Secret", Field::Bytes(2, d)) => {
                let (k, v) = map_entry(d, true)?;
                data.insert(k, v);
            }
            ("Secret", Field::Bytes(3, d)) => obj["type"] = json!(utf8(d)?),
            ("Secret", Field::Bytes(4, d)) => {
                let (k, v) = map_entry(d, false)?;
                string_data.insert(k, v);
            }
            ("Namespace", Field::Bytes(2, spec)) => {
                let fins: Vec<Value> = fields(spec)?
                    .into_iter()
                    .filter_map(|f| match f {
                        Field::Bytes(1, d) => utf8(d).ok().map(Value::String),
                        _ => None,
                    })
                    .collect();
                obj["spec"] = json!({"finalizers": fins});
            }
            ("ConfigMap" | "Secret" | "Namespace", _) => {}
            (other, _) => return Err(format!("protobuf bodies are accepted for ConfigMap, Secret and Namespace, not {other}; send JSON")),
        }
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !string_data.is_empty() {
        obj["stringData"] = Value::Object(string_data);
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u32, d: &[u8]) -> Vec<u8> {
        let mut v = vec![((n << 3) | 2) as u8, d.len() as u8];
        v.extend_from_slice(d);
        v
    }

    #[test]
    fn decodes_a_configmap() {
        let meta = [
            field(1, b"demo"),
            field(3, b"default"),
            field(11, &[field(1, b"app"), field(2, b"web")].concat()),
        ]
        .concat();
        let cm = [
            field(1, &meta),
            field(2, &[field(1, b"k"), field(2, b"v")].concat()),
            vec![4 << 3, 1],
        ]
        .concat();
        let tm = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &cm)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "immutable": true,
                   "metadata": {"name": "demo", "namespace": "default", "labels": {"app": "web"}},
                   "data": {"k": "v"}})
        );
    }

    #[test]
    fn rejects_garbage_and_other_kinds() {
        assert!(decode(b"{}").is_err());
        assert!(decode(&[MAGIC, &[0x0a, 0x50]].concat()).is_err());
        let tm = [field(1, b"v1"), field(2, b"Pod")].concat();
        let body = [MAGIC.to_vec(), field(1, &tm), field(2, &field(2, b"x"))].concat();
        assert!(decode(&body).unwrap_err().contains("not Pod"));
    }
}
