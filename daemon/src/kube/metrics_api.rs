//! `metrics.k8s.io/v1beta1` objects (NodeMetrics, PodMetrics), as
//! metrics-server serves them and `kubectl top` and the HPA read them.
//! k8s-openapi has no types for this group, so they are here.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const API_VERSION: &str = "metrics.k8s.io/v1beta1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub timestamp: Time,
    /// The window the CPU rate was measured over (`10s`).
    pub window: String,
    pub usage: BTreeMap<String, Quantity>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub timestamp: Time,
    pub window: String,
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerMetrics {
    pub name: String,
    pub usage: BTreeMap<String, Quantity>,
}

// Written by hand: schemars is built without its derive macros.
impl schemars::JsonSchema for ContainerMetrics {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ContainerMetrics".into()
    }

    fn json_schema(gen: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "required": ["name", "usage"],
            "properties": {
                "name": {"type": "string"},
                "usage": {"type": "object", "additionalProperties": gen.subschema_for::<Quantity>()},
            },
        })
    }
}

/// The schema NodeMetrics and PodMetrics share, with their own `field`
/// (`usage` or `containers`).
fn metrics_schema(
    gen: &mut schemars::SchemaGenerator,
    field: &str,
    field_schema: serde_json::Value,
) -> schemars::Schema {
    let mut properties = serde_json::json!({
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": gen.subschema_for::<ObjectMeta>(),
        "timestamp": gen.subschema_for::<Time>(),
        "window": {"type": "string"},
    });
    properties[field] = field_schema;
    schemars::json_schema!({
        "type": "object",
        "required": ["timestamp", "window", field],
        "properties": properties,
    })
}

impl schemars::JsonSchema for NodeMetrics {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NodeMetrics".into()
    }

    fn json_schema(gen: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let usage = serde_json::json!({"type": "object",
            "additionalProperties": gen.subschema_for::<Quantity>()});
        metrics_schema(gen, "usage", usage)
    }
}

impl schemars::JsonSchema for PodMetrics {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PodMetrics".into()
    }

    fn json_schema(gen: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let containers = serde_json::json!({"type": "array",
            "items": gen.subschema_for::<ContainerMetrics>()});
        metrics_schema(gen, "containers", containers)
    }
}

/// `cpu` and `memory` as metrics-server writes them: nanocores (`1234n`)
/// and bytes in Ki when whole (`5120Ki`).
pub fn usage(nano_cores: u64, memory_bytes: u64) -> BTreeMap<String, Quantity> {
    let memory = if memory_bytes.is_multiple_of(1024) {
        format!("{}Ki", memory_bytes / 1024)
    } else {
        memory_bytes.to_string()
    };
    BTreeMap::from([
        ("cpu".to_string(), Quantity(format!("{nano_cores}n"))),
        ("memory".to_string(), Quantity(memory)),
    ])
}

/// A window as a Go duration string, as metrics-server writes it (`10.5s`).
pub fn window(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let fraction = format!("{:03}", ms % 1000);
        format!("{}.{}s", ms / 1000, fraction.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_windows_as_metrics_server_writes_them() {
        let u = usage(1_500_000, 5 * 1024 * 1024);
        assert_eq!(u["cpu"].0, "1500000n");
        assert_eq!(u["memory"].0, "5120Ki");
        assert_eq!(usage(0, 1000)["memory"].0, "1000");
        assert_eq!(window(std::time::Duration::from_secs(10)), "10s");
        assert_eq!(window(std::time::Duration::from_millis(10_500)), "10.5s");
        assert_eq!(window(std::time::Duration::from_millis(2_025)), "2.025s");
    }
}
