//! What the controllers ask of objects, defined once: whether an object
//! is being deleted, and whether a pod has finished, is ready, or has
//! been ready long enough to count as available.

use crate::kube::placement::terminal_phase;
use serde_json::Value;

/// `metadata.deletionTimestamp` is set.
pub fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// The pod has finished (Succeeded or Failed).
pub fn terminal(pod: &Value) -> bool {
    terminal_phase(pod.pointer("/status/phase").and_then(Value::as_str))
}

/// The pod's Ready condition is True.
pub fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Ready for at least `min_ready` seconds at `now`.
pub fn available(pod: &Value, min_ready: i64, now: chrono::DateTime<chrono::Utc>) -> bool {
    if !ready(pod) {
        return false;
    }
    if min_ready <= 0 {
        return true;
    }
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds() >= min_ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_finished_ready_and_available() {
        let now = chrono::Utc::now();
        let ago = |s: i64| (now - chrono::Duration::seconds(s)).to_rfc3339();
        let pod = |phase: &str, ready: &str, since: String| {
            json!({"status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": since}]}})
        };
        assert!(terminal(&pod("Failed", "False", ago(0))));
        assert!(!terminal(&pod("Running", "True", ago(0))));
        assert!(ready(&pod("Running", "True", ago(0))));
        assert!(!ready(&pod("Running", "False", ago(0))));
        assert!(available(&pod("Running", "True", ago(30)), 10, now));
        assert!(!available(&pod("Running", "True", ago(5)), 10, now));
        assert!(available(&pod("Running", "True", ago(0)), 0, now));
        assert!(deleting(&json!({"metadata": {"deletionTimestamp": "x"}})));
        assert!(!deleting(&json!({"metadata": {"deletionTimestamp": null}})));
    }
}
