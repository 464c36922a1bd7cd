//! `/openapi/v2` as the protobuf kubectl 1.27 downloads (gnostic's
//! `openapi.v2.Document`). kubectl only looks for each kind's PATCH
//! operation, its `x-kubernetes-group-version-kind` extension and a
//! `fieldValidation` query parameter; finding them, it leaves validation to
//! the server. So the document carries exactly that, written field by field
//! with prost's wire encoders (gnostic's schema is not in the descriptor
//! set `protobuf` uses, and a dozen fields do not need generated types).

use crate::registry::ResourceType;
use prost::encoding::{bool as pb_bool, bytes as pb_bytes};

/// Protobuf writer for the few wire shapes needed (strings, bools, messages).
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn bytes(mut self, field: u32, data: &[u8]) -> Self {
        pb_bytes::encode(field, &data.to_vec(), &mut self.0);
        self
    }

    fn string(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }

    fn msg(self, field: u32, m: Msg) -> Self {
        self.bytes(field, &m.0)
    }

    fn boolean(mut self, field: u32, b: bool) -> Self {
        pb_bool::encode(field, &b, &mut self.0);
        self
    }
}

// Field numbers from gnostic's OpenAPIv2.proto.
const DOC_SWAGGER: u32 = 1;
const DOC_INFO: u32 = 2;
const DOC_PATHS: u32 = 8;
const INFO_TITLE: u32 = 1;
const INFO_VERSION: u32 = 2;
const PATHS_PATH: u32 = 2;
const NAMED_NAME: u32 = 1;
const NAMED_VALUE: u32 = 2;
const PATHITEM_PATCH: u32 = 8;
const OP_PARAMETERS: u32 = 8;
const OP_RESPONSES: u32 = 9;
const OP_VENDOR_EXTENSION: u32 = 13;
const PARAMS_ITEM_PARAMETER: u32 = 1;
const PARAMETER_NON_BODY: u32 = 2;
const NON_BODY_QUERY: u32 = 3;
const QUERY_IN: u32 = 2;
const QUERY_NAME: u32 = 4;
const QUERY_TYPE: u32 = 6;
const QUERY_UNIQUE_ITEMS: u32 = 20;
const ANY_YAML: u32 = 2;
const RESPONSES_CODE: u32 = 1;
const RESPONSE_VALUE_RESPONSE: u32 = 1;
const RESPONSE_DESCRIPTION: u32 = 1;

fn query_param(name: &str) -> Msg {
    let q = Msg::default()
        .string(QUERY_IN, "query")
        .string(QUERY_NAME, name)
        .string(QUERY_TYPE, "string")
        .boolean(QUERY_UNIQUE_ITEMS, true);
    let non_body = Msg::default().msg(NON_BODY_QUERY, q);
    let param = Msg::default().msg(PARAMETER_NON_BODY, non_body);
    Msg::default().msg(PARAMS_ITEM_PARAMETER, param)
}

fn patch_operation(t: &ResourceType) -> Msg {
    let gvk = format!(
        "group: \"{}\"\nkind: \"{}\"\nversion: \"{}\"\n",
        t.group, t.kind, t.version
    );
    let ext = Msg::default()
        .string(NAMED_NAME, "x-kubernetes-group-version-kind")
        .msg(NAMED_VALUE, Msg::default().string(ANY_YAML, &gvk));
    let ok = Msg::default().string(NAMED_NAME, "200").msg(
        NAMED_VALUE,
        Msg::default().msg(
            RESPONSE_VALUE_RESPONSE,
            Msg::default().string(RESPONSE_DESCRIPTION, "OK"),
        ),
    );
    let mut op = Msg::default();
    for p in ["dryRun", "fieldManager", "fieldValidation", "force"] {
        op = op.msg(OP_PARAMETERS, query_param(p));
    }
    op.msg(OP_RESPONSES, Msg::default().msg(RESPONSES_CODE, ok))
        .msg(OP_VENDOR_EXTENSION, ext)
}

/// The protobuf document for every kind served.
pub fn document(types: &[ResourceType]) -> Vec<u8> {
    let mut paths = Msg::default();
    for t in types {
        let base = if t.group.is_empty() {
            format!("/api/{}", t.version)
        } else {
            format!("/apis/{}/{}", t.group, t.version)
        };
        let path = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.resource)
        } else {
            format!("{base}/{}/{{name}}", t.resource)
        };
        let item = Msg::default().msg(PATHITEM_PATCH, patch_operation(t));
        paths = paths.msg(
            PATHS_PATH,
            Msg::default()
                .string(NAMED_NAME, &path)
                .msg(NAMED_VALUE, item),
        );
    }
    let info = Msg::default().string(INFO_TITLE, "rk3s").string(
        INFO_VERSION,
        &format!("v{}.{}.0", super::KUBE_MAJOR, super::KUBE_MINOR),
    );
    Msg::default()
        .string(DOC_SWAGGER, "2.0")
        .msg(DOC_INFO, info)
        .msg(DOC_PATHS, paths)
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields() {
        let mut v = Vec::new();
        prost::encoding::encode_varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
        assert_eq!(
            Msg::default().string(1, "2.0").0,
            [0x0a, 3, b'2', b'.', b'0']
        );
        assert_eq!(Msg::default().boolean(20, true).0, [0xa0, 0x01, 1]);
    }

    #[test]
    fn document_names_every_kind() {
        let doc = document(&crate::registry::kinds::builtins());
        let text = String::from_utf8_lossy(&doc);
        assert!(text.contains("/api/v1/namespaces/{namespace}/configmaps/{name}"));
        assert!(text.contains("kind: \"Node\""));
        assert!(text.contains("fieldValidation"));
    }
}
