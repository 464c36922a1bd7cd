//! Where each metric comes from and what it proposes: resource metrics
//! from the kubelets, Pods and Object metrics from custom.metrics.k8s.io
//! and External ones from external.metrics.k8s.io (both served by an
//! extension API server through the aggregation layer), and the status
//! entries `kubectl describe hpa` shows for them.

use super::replicas::{
    propose, propose_total, ExternalMetric, Proposal, ResourceMetric, Source, Total,
};
use super::settings::Settings;
use crate::kube::metrics_api::PodMetrics;
use crate::kube::quantity::milli;
use crate::registry::printers::selector_query as selector_string;
use chrono::{DateTime, Utc};
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricStatus, ExternalMetricStatus, MetricIdentifier, MetricSpec,
    MetricStatus, MetricValueStatus, ObjectMetricStatus, PodsMetricStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;

/// Where the HPA reads metrics.
pub trait MetricsSource: Send + Sync {
    /// Pods' resource metrics by pod uid, for those of `pods` that have them.
    fn pod_metrics<'a>(
        &'a self,
        pods: &'a [Pod],
    ) -> Pin<Box<dyn Future<Output = HashMap<String, PodMetrics>> + Send + 'a>>;

    /// A GET of the custom or external metrics API (served by an
    /// extension API server through the aggregation layer), as the HPA.
    fn get<'a>(
        &'a self,
        path: String,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + 'a>>;
}

fn query(pairs: &[(&str, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() {
        q
    } else {
        format!("?{q}")
    }
}

/// A failed metric: upstream's Event reason, and why.
pub(super) type Failure = (&'static str, String);

/// What one metric asks for: replicas, upstream's name for it, and its
/// current value for the status.
pub(super) type Evaluation = (i32, String, MetricStatus);

fn metric_status(m: &ResourceMetric, p: &Proposal) -> MetricStatus {
    let current = MetricValueStatus {
        average_utilization: p.utilization,
        average_value: Some(Quantity(milli_quantity(p.average_milli, &m.name))),
        value: None,
    };
    match &m.source {
        Source::Resource => MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: m.name.clone(),
                current,
            }),
            ..Default::default()
        },
        Source::Container(c) => MetricStatus {
            type_: "ContainerResource".into(),
            container_resource: Some(ContainerResourceMetricStatus {
                name: m.name.clone(),
                container: c.clone(),
                current,
            }),
            ..Default::default()
        },
        Source::Pods(selector) => MetricStatus {
            type_: "Pods".into(),
            pods: Some(PodsMetricStatus {
                metric: MetricIdentifier {
                    name: m.name.clone(),
                    selector: selector.clone(),
                },
                current: MetricValueStatus {
                    average_utilization: None,
                    ..current
                },
            }),
            ..Default::default()
        },
    }
}

/// Thousandths as a quantity: CPU in millicores (`250m`), anything else
/// in whole units when exact (`52428800`), else thousandths.
fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A custom metrics MetricValueList as per-pod metrics (one unnamed
/// container holding the metric), by pod uid, for [`propose`].
fn pod_values(list: &Value, metric: &str, pods: &[Pod]) -> HashMap<String, PodMetrics> {
    let uid_of = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.metadata.uid.clone())
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let uid = uid_of(i["describedObject"]["name"].as_str()?)?;
            let value = i["value"].as_str()?.to_string();
            let timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
                serde_json::from_value(i["timestamp"].clone()).ok()?;
            let window = i["windowSeconds"]
                .as_i64()
                .map_or("0s".into(), |s| format!("{s}s"));
            Some((
                uid,
                PodMetrics {
                    api_version: "custom.metrics.k8s.io/v1beta2".into(),
                    kind: "MetricValue".into(),
                    metadata: Default::default(),
                    timestamp,
                    window,
                    containers: vec![crate::kube::metrics_api::ContainerMetrics {
                        name: String::new(),
                        usage: BTreeMap::from([(metric.to_string(), Quantity(value))]),
                    }],
                },
            ))
        })
        .collect()
}

fn namespace_or(ns: &str) -> &str {
    if ns.is_empty() {
        "default"
    } else {
        ns
    }
}

/// An Object metric's target, in thousandths.
fn total_goal(t: &k8s_openapi::api::autoscaling::v2::MetricTarget) -> Result<Total, String> {
    let q = |v: &Option<Quantity>| {
        v.as_ref()
            .and_then(|q| milli(&q.0))
            .ok_or_else(|| "an invalid target value".to_string())
    };
    match t.type_.as_str() {
        "Value" => Ok(Total::Value(q(&t.value)?)),
        "AverageValue" => Ok(Total::AverageValue(q(&t.average_value)?)),
        other => Err(format!(
            "unsupported target type {other:?} for an Object metric"
        )),
    }
}

fn milli_quantity(v: i128, name: &str) -> String {
    if name != "cpu" && v % 1000 == 0 {
        (v / 1000).to_string()
    } else {
        format!("{v}m")
    }
}

/// What every metric of one HPA is evaluated in.
pub(super) struct Scope<'a> {
    pub source: &'a dyn MetricsSource,
    pub settings: &'a Settings,
    pub namespace: &'a str,
    /// The target's `spec.replicas`.
    pub current: i32,
    /// The target's pods.
    pub pods: &'a [Pod],
    /// Their resource metrics, by uid (empty unless a metric needs them).
    pub resources: &'a HashMap<String, PodMetrics>,
    /// The target's pod selector, as a query writes it.
    pub selector: &'a str,
    /// The resource of an `apiVersion` and `kind`, as the custom metrics
    /// API names it (`deployments.apps`, `services`).
    pub resource_of: &'a (dyn Fn(&str, &str) -> Option<String> + Sync),
    pub now: DateTime<Utc>,
}

/// One metric's proposal (upstream's `computeReplicasForMetric`).
pub(super) async fn evaluate(scope: &Scope<'_>, m: &MetricSpec) -> Result<Evaluation, Failure> {
    let Scope {
        source,
        settings,
        namespace: ns,
        current,
        pods,
        resources,
        selector,
        resource_of,
        now,
    } = *scope;
    match m.type_.as_str() {
        "Resource" | "ContainerResource" => {
            let rm = ResourceMetric::from_spec(m).map_err(|e| ("FailedGetResourceMetric", e))?;
            let p = propose(&rm, current, pods, resources, settings, now).map_err(|e| {
                (
                    "FailedGetResourceMetric",
                    format!("failed to get {} utilization: {e}", rm.name),
                )
            })?;
            Ok((p.replicas, rm.describe(), metric_status(&rm, &p)))
        }
        "Pods" => {
            let rm = ResourceMetric::from_spec(m).map_err(|e| ("FailedGetPodsMetric", e))?;
            let Source::Pods(metric_selector) = &rm.source else {
                unreachable!("a Pods spec gives a Pods source")
            };
            let path = format!(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{}{}",
                rm.name,
                query(&[
                    ("labelSelector", selector.to_string()),
                    (
                        "metricLabelSelector",
                        metric_selector
                            .as_ref()
                            .map(selector_string)
                            .unwrap_or_default()
                    ),
                ])
            );
            let failed = |e: String| {
                (
                    "FailedGetPodsMetric",
                    format!(
                        "failed to get pods metric value: unable to get metric {}: {e}",
                        rm.name
                    ),
                )
            };
            let list = source.get(path).await.map_err(failed)?;
            let per_pod = pod_values(&list, &rm.name, pods);
            let p = propose(&rm, current, pods, &per_pod, settings, now).map_err(failed)?;
            Ok((p.replicas, rm.describe(), metric_status(&rm, &p)))
        }
        "External" => {
            let em = ExternalMetric::from_spec(m).map_err(|e| ("FailedGetExternalMetric", e))?;
            let path = format!(
                "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{}{}",
                em.name,
                query(&[(
                    "labelSelector",
                    em.selector
                        .as_ref()
                        .map(selector_string)
                        .unwrap_or_default()
                )])
            );
            let failed = |e: String| {
                (
                    "FailedGetExternalMetric",
                    format!("failed to get external metric {}: {e}", em.name),
                )
            };
            let list = source.get(path).await.map_err(failed)?;
            let values: Vec<i128> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| milli(i["value"].as_str()?))
                .collect();
            if values.is_empty() {
                return Err(failed(
                    "no metrics returned from external metrics API".into(),
                ));
            }
            let total: i128 = values.iter().sum();
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            let replicas = propose_total(total, em.goal, current, ready, settings.tolerance);
            let current_value = match em.goal {
                Total::Value(_) => MetricValueStatus {
                    value: Some(Quantity(milli_quantity(total, &em.name))),
                    ..Default::default()
                },
                Total::AverageValue(_) => MetricValueStatus {
                    average_value: Some(Quantity(milli_quantity(
                        total / current.max(1) as i128,
                        &em.name,
                    ))),
                    ..Default::default()
                },
            };
            let status = MetricStatus {
                type_: "External".into(),
                external: Some(ExternalMetricStatus {
                    metric: MetricIdentifier {
                        name: em.name.clone(),
                        selector: em.selector.clone(),
                    },
                    current: current_value,
                }),
                ..Default::default()
            };
            Ok((replicas, em.describe(), status))
        }
        "Object" => {
            let o = m.object.as_ref().ok_or((
                "FailedGetObjectMetric",
                "an Object metric without object".to_string(),
            ))?;
            let target = &o.described_object;
            let api_version = target.api_version.clone().unwrap_or_default();
            let metric = &o.metric.name;
            let failed = |e: String| {
                (
                    "FailedGetObjectMetric",
                    format!(
                        "failed to get object metric value: unable to get metric {metric}: {} on {} {}: {e}",
                        target.kind, namespace_or(ns), target.name
                    ),
                )
            };
            let resource = resource_of(&api_version, &target.kind)
                .ok_or_else(|| failed(format!("no kind {} in {api_version}", target.kind)))?;
            let goal = total_goal(&o.target).map_err(failed)?;
            let path = format!(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/{resource}/{}/{metric}{}",
                target.name,
                query(&[(
                    "metricLabelSelector",
                    o.metric
                        .selector
                        .as_ref()
                        .map(selector_string)
                        .unwrap_or_default()
                )])
            );
            let answer = source.get(path).await.map_err(failed)?;
            // A MetricValueList of one, or the MetricValue itself.
            let item = answer["items"].get(0).unwrap_or(&answer);
            let value = item["value"]
                .as_str()
                .and_then(milli)
                .ok_or_else(|| failed("no value returned from custom metrics API".into()))?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            let replicas = propose_total(value, goal, current, ready, settings.tolerance);
            let current_value = match goal {
                Total::Value(_) => MetricValueStatus {
                    value: Some(Quantity(milli_quantity(value, metric))),
                    ..Default::default()
                },
                Total::AverageValue(_) => MetricValueStatus {
                    average_value: Some(Quantity(milli_quantity(
                        value / current.max(1) as i128,
                        metric,
                    ))),
                    ..Default::default()
                },
            };
            let status = MetricStatus {
                type_: "Object".into(),
                object: Some(ObjectMetricStatus {
                    described_object: target.clone(),
                    metric: o.metric.clone(),
                    current: current_value,
                }),
                ..Default::default()
            };
            let name = format!("{} metric {metric}", target.kind.to_lowercase());
            Ok((replicas, name, status))
        }
        other => Err((
            "FailedGetExternalMetric",
            format!("unrecognized metric type {other:?}"),
        )),
    }
}
