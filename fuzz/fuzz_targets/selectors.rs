//! Label selectors (query strings of every list and watch), matched
//! against a pod.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rk3sd::apiserver::selectors::LabelSelector;

fuzz_target!(|data: &[u8]| {
    let pod = serde_json::json!({"metadata": {"name": "p", "labels": {"app": "web", "tier": "a"}}});
    if let Ok(s) = LabelSelector::parse(&String::from_utf8_lossy(data)) {
        s.matches(&pod);
    }
});
