//! Events the kubelet records about this node's pods and the node itself,
//! as upstream's do (source and reporting component `kubelet`, on this
//! host). Best effort: an event that cannot be written is logged and
//! dropped, as upstream's recorder drops them.

use crate::apiclient::Api;
use serde_json::{json, Value};

/// A Warning event about `involved` (an object reference: kind, name and,
/// for a namespaced object, its namespace), recorded in that object's
/// namespace, or `default` for a Node.
pub async fn warning(api: &Api, host: &str, involved: Value, reason: &str, message: &str) {
    let ns = involved["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = involved["name"].as_str().unwrap_or_default().to_string();
    let now = crate::objects::now_rfc3339();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": ns},
        "involvedObject": involved,
        "reason": reason, "message": message, "type": "Warning",
        "source": {"component": "kubelet", "host": host},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": "kubelet", "reportingInstance": host,
    });
    if let Err(e) = api
        .post(&format!("/api/v1/namespaces/{ns}/events"), &event)
        .await
    {
        tracing::debug!(object = %name, reason, error = %e, "event not recorded");
    }
}
