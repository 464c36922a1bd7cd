//! `metrics.k8s.io` kinds as the registry knows them: never stored
//! (`apiserver::resource_metrics` computes them), but typed, so their
//! schema is published and `kubectl get nodes.metrics.k8s.io` prints
//! metrics-server's columns.

use super::printers::{col, name_cell, name_col};
use super::strategy::{Kind, Typed};
use crate::kube::metrics_api::{self, NodeMetrics, PodMetrics};
use crate::kube::quantity::milli;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub static NODE_METRICS: Typed<NodeMetrics> = Typed::new();
pub static POD_METRICS: Typed<PodMetrics> = Typed::new();

/// A CPU quantity in nanocores (`1500n`, or anything `milli` reads).
fn nanocores(q: &str) -> u64 {
    match q.strip_suffix('n').and_then(|n| n.parse().ok()) {
        Some(n) => n,
        None => milli(q).map_or(0, |m| (m.max(0) as u64).saturating_mul(1_000_000)),
    }
}

fn columns() -> Vec<Value> {
    vec![
        name_col(),
        col("CPU", 0, "CPU usage, in nanocores."),
        col("Memory", 0, "Memory working set."),
        col("Window", 0, "The window the CPU usage was measured over."),
    ]
}

fn cells(
    obj: &Value,
    usage: &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    window: &str,
) -> Vec<Value> {
    let q = |k: &str| usage.get(k).map(|q| q.0.clone()).unwrap_or_default();
    vec![
        name_cell(obj),
        json!(q("cpu")),
        json!(q("memory")),
        json!(window),
    ]
}

impl Kind for NodeMetrics {
    fn columns() -> Vec<Value> {
        columns()
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        cells(obj, &self.usage, &self.window)
    }
}

impl Kind for PodMetrics {
    fn columns() -> Vec<Value> {
        columns()
    }

    /// The pod's containers summed.
    fn row(&self, obj: &Value) -> Vec<Value> {
        let (mut nano, mut bytes) = (0u64, 0u64);
        for c in &self.containers {
            if let Some(q) = c.usage.get("cpu") {
                nano += nanocores(&q.0);
            }
            if let Some(q) = c.usage.get("memory") {
                bytes += milli(&q.0).map_or(0, |m| (m / 1000).max(0) as u64);
            }
        }
        cells(obj, &metrics_api::usage(nano, bytes), &self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_row_sums_its_containers() {
        let obj = json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
            "metadata": {"name": "web", "namespace": "d"}, "timestamp": "2026-01-01T00:00:00Z",
            "window": "10s", "containers": [
                {"name": "a", "usage": {"cpu": "1500000n", "memory": "2048Ki"}},
                {"name": "b", "usage": {"cpu": "2m", "memory": "1Mi"}}]});
        let m: PodMetrics = serde_json::from_value(obj.clone()).unwrap();
        let row = m.row(&obj);
        assert_eq!(row[1], json!("3500000n"));
        assert_eq!(row[2], json!("3072Ki"));
        assert_eq!(row[3], json!("10s"));
    }
}
