//! JSON, merge and strategic merge patches (PATCH bodies) applied to a pod.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rk3sd::apiserver::patch;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let base = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "web"}, "finalizers": ["a", "b"]},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]},
            {"name": "d", "image": "j"}], "volumes": [{"name": "v", "emptyDir": {}}]},
        "status": {"phase": "Running"}});
    let mut t = base.clone();
    patch::merge_patch(&mut t, &p);
    let mut t = base.clone();
    let _ = patch::json_patch(&mut t, &p);
    let mut t = base;
    let _ = patch::strategic_merge(&mut t, &p);
});
