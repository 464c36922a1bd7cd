//! `metrics.k8s.io/v1beta1`, served by the API server itself: what
//! metrics-server serves for upstream (and K3s runs as an add-on behind
//! the aggregation layer), from each kubelet's `/stats/summary` fetched
//! over its tunnel when asked. Nothing is stored or cached: a request
//! reads the nodes it concerns (at most [`SCRAPES_AT_ONCE`] at a time,
//! each within [`SCRAPE_TIMEOUT`]), and a node that does not answer is
//! left out of the answer, as metrics-server leaves it out. A pod is
//! listed once each of its containers has a CPU rate (the kubelet's
//! second sample), as metrics-server lists it.
//!
//! The HorizontalPodAutoscaler reads pods' metrics through [`Scraper`]
//! (by way of `aggregator::Metrics`).

use super::kubelet;
use super::request::{selectors, Target};
use super::response::json_response;
use super::state::{ApiState, Kubelets};
use crate::controllers::client::time;
use crate::kube::metrics_api::{
    self, ContainerMetrics, NodeMetrics, PodMetrics, API_VERSION, GROUP,
};
use crate::kube::stats_summary::{PodStats, Summary};
use crate::registry::error::Subject;
use crate::registry::{kinds, KubeError};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How long one kubelet may take (metrics-server's scrape timeout).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Kubelets read at once for one request.
const SCRAPES_AT_ONCE: usize = 32;
/// The largest summary read (about 100 bytes per container).
const SUMMARY_BYTES: usize = 32 << 20;

async fn summary(kubelets: &dyn Kubelets, node: &str) -> Result<Summary, KubeError> {
    let read = async {
        let resp = kubelet::get(kubelets, node, "/stats/summary").await?;
        let body = http_body_util::Limited::new(resp.into_body(), SUMMARY_BYTES)
            .collect()
            .await
            .map_err(|e| super::state::unreachable(node, e))?
            .to_bytes();
        serde_json::from_slice::<Summary>(&body).map_err(|e| {
            super::state::unreachable(node, format!("its stats summary does not decode: {e}"))
        })
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err(super::state::unreachable(
                node,
                format!("no stats summary within {} s", SCRAPE_TIMEOUT.as_secs()),
            ))
        })
}

/// The summaries of `nodes` that answered; the others are logged.
async fn summaries(kubelets: &dyn Kubelets, nodes: BTreeSet<String>) -> HashMap<String, Summary> {
    futures_util::stream::iter(nodes)
        .map(|node| async move {
            let s = summary(kubelets, &node).await;
            (node, s)
        })
        .buffer_unordered(SCRAPES_AT_ONCE)
        .filter_map(|(node, s)| async move {
            match s {
                Ok(s) => Some((node, s)),
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "metrics: node left out");
                    None
                }
            }
        })
        .collect()
        .await
}

fn window_of(ns: Option<u64>) -> String {
    metrics_api::window(Duration::from_nanos(ns.unwrap_or(0)))
}

fn node_metrics(node: &Node, s: &Summary) -> Option<NodeMetrics> {
    let cpu = s.node.cpu.as_ref()?;
    let memory = s.node.memory.as_ref()?;
    Some(NodeMetrics {
        api_version: API_VERSION.into(),
        kind: "NodeMetrics".into(),
        metadata: ObjectMeta {
            name: node.metadata.name.clone(),
            labels: node.metadata.labels.clone(),
            creation_timestamp: Some(time(chrono::Utc::now())),
            ..Default::default()
        },
        timestamp: time(cpu.time),
        window: window_of(cpu.window_nano_seconds),
        usage: metrics_api::usage(cpu.usage_nano_cores?, memory.working_set_bytes?),
    })
}

/// The pod's metrics from its node's summary: every container the pod
/// declares that the runtime reports must have a CPU rate.
fn pod_metrics(pod: &Pod, stats: &PodStats) -> Option<PodMetrics> {
    let spec = pod.spec.as_ref()?;
    let mut containers = vec![];
    let (mut at, mut window) = (None, None);
    for declared in &spec.containers {
        // A restarted container's earlier instance may still be listed
        // without a rate: the one with a rate counts.
        let c = stats
            .containers
            .iter()
            .filter(|c| c.name == declared.name)
            .find(|c| c.cpu.as_ref().is_some_and(|x| x.usage_nano_cores.is_some()))?;
        let cpu = c.cpu.as_ref()?;
        let memory = c.memory.as_ref()?.working_set_bytes?;
        at = at.max(Some(cpu.time));
        window = window.max(cpu.window_nano_seconds);
        containers.push(ContainerMetrics {
            name: c.name.clone(),
            usage: metrics_api::usage(cpu.usage_nano_cores?, memory),
        });
    }
    Some(PodMetrics {
        api_version: API_VERSION.into(),
        kind: "PodMetrics".into(),
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            creation_timestamp: Some(time(chrono::Utc::now())),
            ..Default::default()
        },
        timestamp: time(at?),
        window: window_of(window),
        containers,
    })
}

fn node_of(pod: &Pod) -> Option<&str> {
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    running
        .then(|| pod.spec.as_ref()?.node_name.as_deref())
        .flatten()
}

/// Reads pods' and nodes' metrics from their kubelets.
#[derive(Clone)]
pub struct Scraper {
    pub kubelets: Arc<dyn Kubelets>,
}

impl Scraper {
    /// The metrics of those `pods` that run and have them, by pod uid.
    pub async fn pods(&self, pods: &[Pod]) -> HashMap<String, PodMetrics> {
        let nodes: BTreeSet<String> = pods
            .iter()
            .filter_map(node_of)
            .map(str::to_string)
            .collect();
        let by_node = summaries(self.kubelets.as_ref(), nodes).await;
        pods.iter()
            .filter_map(|p| {
                let uid = p.metadata.uid.as_deref()?;
                let stats = by_node
                    .get(node_of(p)?)?
                    .pods
                    .iter()
                    .find(|s| s.pod_ref.uid == uid)?;
                Some((uid.to_string(), pod_metrics(p, stats)?))
            })
            .collect()
    }

    /// The metrics of those `nodes` that answer.
    pub async fn nodes(&self, nodes: &[Node]) -> Vec<NodeMetrics> {
        let names = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let by_node = summaries(self.kubelets.as_ref(), names).await;
        nodes
            .iter()
            .filter_map(|n| node_metrics(n, by_node.get(n.metadata.name.as_deref()?)?))
            .collect()
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Option<T> {
    serde_json::from_value(v).ok()
}

fn list_of<T: serde::Serialize>(kind: &str, items: &[T]) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items}),
    )
}

/// The answer to a get (`one`) or a list: JSON, or a Table for kubectl
/// (metrics-server's columns, from the kind's strategy).
fn answer<T: serde::Serialize>(
    t: &Target,
    as_table: bool,
    one: Option<&str>,
    list_kind: &str,
    items: &[T],
) -> Result<Response, KubeError> {
    if let Some(name) = one {
        if items.is_empty() {
            return Err(not_found(&t.rt.resource, name));
        }
    }
    if as_table {
        let values: Vec<Value> = items
            .iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect();
        return Ok(super::table::response(&super::table::table(
            &t.rt, &values, "",
        )));
    }
    Ok(match (one, items.first()) {
        (Some(_), Some(first)) => json_response(StatusCode::OK, first),
        _ => list_of(list_kind, items),
    })
}

fn not_found(resource: &str, name: &str) -> KubeError {
    KubeError::NotFound(Subject::new(GROUP, resource, name))
}

/// `get` or `list` of `nodes` or `pods` (authorized by the caller).
pub async fn serve(
    sv: &ApiState,
    t: &Target,
    q: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, KubeError> {
    let scraper = Scraper {
        kubelets: sv.kubelets.clone(),
    };
    let one = t.name.as_deref();
    if t.rt.is(&kinds::NODE_METRICS) {
        let nodes_rt = kinds::NODES.resource_type();
        let nodes: Vec<Node> = match one {
            Some(name) => vec![decode(sv.registry.get(&nodes_rt, None, name).await?)
                .ok_or_else(|| not_found("nodes", name))?],
            None => {
                let (ls, fs) = selectors(&nodes_rt, q)?;
                let (_, items) = sv.registry.list(&nodes_rt, None).await?;
                items
                    .into_iter()
                    .filter(|o| ls.matches(o) && fs.matches(o))
                    .filter_map(decode)
                    .collect()
            }
        };
        let metrics = scraper.nodes(&nodes).await;
        return answer(t, as_table, one, "NodeMetricsList", &metrics);
    }
    let pods_rt = kinds::PODS.resource_type();
    let pods: Vec<Pod> = match one {
        Some(name) => vec![decode(sv.registry.get(&pods_rt, t.ns(), name).await?)
            .ok_or_else(|| not_found("pods", name))?],
        None => {
            let (ls, fs) = selectors(&pods_rt, q)?;
            let (_, items) = sv.registry.list(&pods_rt, t.ns()).await?;
            items
                .into_iter()
                .filter(|o| ls.matches(o) && fs.matches(o))
                .filter_map(decode)
                .collect()
        }
    };
    let by_uid = scraper.pods(&pods).await;
    let metrics: Vec<&PodMetrics> = pods
        .iter()
        .filter_map(|p| by_uid.get(p.metadata.uid.as_deref()?))
        .collect();
    answer(t, as_table, one, "PodMetricsList", &metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::stats_summary::{ContainerStats, CpuStats, MemoryStats, PodReference};

    fn stats(name: &str, rate: Option<u64>) -> ContainerStats {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        ContainerStats {
            name: name.into(),
            start_time: None,
            cpu: Some(CpuStats {
                time: t,
                usage_nano_cores: rate,
                usage_core_nano_seconds: Some(1),
                window_nano_seconds: rate.map(|_| 10_500_000_000),
            }),
            memory: Some(MemoryStats {
                time: t,
                available_bytes: None,
                usage_bytes: None,
                working_set_bytes: Some(2048),
            }),
        }
    }

    #[test]
    fn a_pod_is_listed_once_each_declared_container_has_a_rate() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}))
        .unwrap();
        let of = |containers| PodStats {
            pod_ref: PodReference {
                name: "p".into(),
                namespace: "d".into(),
                uid: "u".into(),
            },
            start_time: None,
            containers,
            cpu: None,
            memory: None,
        };
        assert!(pod_metrics(&pod, &of(vec![stats("a", Some(5)), stats("b", None)])).is_none());
        // A restarted container's old instance without a rate is passed over.
        let m = pod_metrics(
            &pod,
            &of(vec![
                stats("a", Some(5)),
                stats("b", None),
                stats("b", Some(7)),
            ]),
        )
        .unwrap();
        assert_eq!(m.window, "10.5s");
        assert_eq!(m.metadata.labels.unwrap()["app"], "x");
        let cells: Vec<(String, String)> = m
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.usage["cpu"].0.clone()))
            .collect();
        assert_eq!(
            cells,
            [("a".into(), "5n".into()), ("b".into(), "7n".into())]
        );
        assert_eq!(m.containers[0].usage["memory"].0, "2Ki");
    }
}
