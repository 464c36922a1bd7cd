//! The kubelet's resource usage summary (`/stats/summary`,
//! stats/v1alpha1 as upstream's kubelet serves it, the fields metrics
//! consumers read): written by the kubelet, read by the server's metrics
//! API and by anyone with `nodes/proxy`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    #[serde(default)]
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub containers: Vec<ContainerStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// CPU use at `time`: the rate over the last sampling window (absent
/// until there are two samples) and the cumulative time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
    /// rk3s's addition (other readers ignore it): the span the rate was
    /// measured over, which the metrics API reports as its `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_nano_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
}

impl CpuStats {
    /// The sum of several (a pod's containers): the rate only when each
    /// has one, the cumulative time likewise.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a CpuStats>) -> Option<CpuStats> {
        let mut out: Option<CpuStats> = None;
        for p in parts {
            out = Some(match out {
                None => p.clone(),
                Some(o) => CpuStats {
                    time: o.time.max(p.time),
                    usage_nano_cores: o
                        .usage_nano_cores
                        .zip(p.usage_nano_cores)
                        .map(|(a, b)| a + b),
                    usage_core_nano_seconds: o
                        .usage_core_nano_seconds
                        .zip(p.usage_core_nano_seconds)
                        .map(|(a, b)| a + b),
                    window_nano_seconds: o.window_nano_seconds.max(p.window_nano_seconds),
                },
            });
        }
        out
    }
}

impl MemoryStats {
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a MemoryStats>) -> Option<MemoryStats> {
        let mut out: Option<MemoryStats> = None;
        for p in parts {
            out = Some(match out {
                None => MemoryStats {
                    available_bytes: None,
                    ..p.clone()
                },
                Some(o) => MemoryStats {
                    time: o.time.max(p.time),
                    available_bytes: None,
                    usage_bytes: o.usage_bytes.zip(p.usage_bytes).map(|(a, b)| a + b),
                    working_set_bytes: o
                        .working_set_bytes
                        .zip(p.working_set_bytes)
                        .map(|(a, b)| a + b),
                },
            });
        }
        out
    }
}
