//! Request bodies (JSON, YAML, Kubernetes protobuf) and manifest files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rk3sd::apiserver::request::parse_body(&axum::body::Bytes::copy_from_slice(data));
    let _ = rk3sd::apiserver::protobuf::decode(data);
    let _ = rk3sd::server::deploy::manifest::parse(data);
});
