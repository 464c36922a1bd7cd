//! The replica count one metric asks for, as upstream's replica
//! calculator computes it: usage against the goal over the ready pods,
//! pods without metrics and not-yet-telling CPU samples filled in in the
//! direction that moves least, and nothing done within the tolerance.

use super::settings::Settings;
use crate::controllers::client::to_utc;
use crate::kube::metrics_api::PodMetrics;
use crate::kube::quantity::milli;
use chrono::{DateTime, Utc};
use k8s_openapi::api::autoscaling::v2::MetricSpec;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::HashMap;
use std::time::Duration;

/// What one metric's usage is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Goal {
    /// Percent of the pods' requests.
    Utilization(i32),
    /// Per pod, in thousandths of the unit (millicores, millibytes).
    AverageMilli(i128),
}

/// Where a per-pod metric comes from.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Source {
    /// metrics.k8s.io, all of the pod's containers.
    Resource,
    /// metrics.k8s.io, one container.
    Container(String),
    /// custom.metrics.k8s.io, per pod (the metric's own label selector).
    Pods(Option<LabelSelector>),
}

/// A metric measured per pod: Resource, ContainerResource or Pods.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResourceMetric {
    /// The resource or metric measured (`cpu`, `memory`, `requests_per_second`).
    pub name: String,
    pub source: Source,
    pub goal: Goal,
}

impl ResourceMetric {
    pub fn from_spec(m: &MetricSpec) -> Result<ResourceMetric, String> {
        let (resource, source, target) = match m.type_.as_str() {
            "Resource" => {
                let r = m
                    .resource
                    .as_ref()
                    .ok_or("a Resource metric without resource")?;
                (r.name.clone(), Source::Resource, &r.target)
            }
            "ContainerResource" => {
                let r = m
                    .container_resource
                    .as_ref()
                    .ok_or("a ContainerResource metric without containerResource")?;
                (
                    r.name.clone(),
                    Source::Container(r.container.clone()),
                    &r.target,
                )
            }
            "Pods" => {
                let p = m.pods.as_ref().ok_or("a Pods metric without pods")?;
                (
                    p.metric.name.clone(),
                    Source::Pods(p.metric.selector.clone()),
                    &p.target,
                )
            }
            other => return Err(format!("unrecognized metric type {other:?}")),
        };
        let goal = match (
            target.type_.as_str(),
            target.average_utilization,
            &target.average_value,
        ) {
            ("Utilization", Some(u), _) => Goal::Utilization(u),
            ("AverageValue", _, Some(v)) => Goal::AverageMilli(
                milli(&v.0).ok_or_else(|| format!("invalid averageValue {:?}", v.0))?,
            ),
            (t, _, _) => {
                return Err(format!(
                    "unsupported target type {t:?} for a resource metric"
                ))
            }
        };
        if matches!(source, Source::Pods(_)) && !matches!(goal, Goal::AverageMilli(_)) {
            return Err("a Pods metric takes only an AverageValue target".into());
        }
        Ok(ResourceMetric {
            name: resource,
            source,
            goal,
        })
    }

    /// Upstream's words for it in conditions and Events.
    pub fn describe(&self) -> String {
        let r = &self.name;
        match (&self.source, self.goal) {
            (Source::Resource, Goal::Utilization(_)) => {
                format!("{r} resource utilization (percentage of request)")
            }
            (Source::Resource, Goal::AverageMilli(_)) => format!("{r} resource"),
            (Source::Container(c), Goal::Utilization(_)) => {
                format!(
                    "{r} container resource utilization (percentage of request) of container {c}"
                )
            }
            (Source::Container(c), Goal::AverageMilli(_)) => {
                format!("{r} container resource of container {c}")
            }
            (Source::Pods(_), _) => format!("pods metric {r}"),
        }
    }

    /// The pod's usage, in thousandths of the unit.
    fn usage(&self, m: &PodMetrics) -> Option<i128> {
        let mut total = 0;
        let mut any = false;
        for c in &m.containers {
            if matches!(&self.source, Source::Container(want) if *want != c.name) {
                continue;
            }
            total += milli(&c.usage.get(&self.name)?.0)?;
            any = true;
        }
        any.then_some(total)
    }

    /// The pod's request, in thousandths; an error names the container
    /// without one.
    fn request(&self, pod: &Pod) -> Result<i128, String> {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut total = 0;
        for c in &spec.containers {
            if matches!(&self.source, Source::Container(want) if *want != c.name) {
                continue;
            }
            let req = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(&self.name))
                .and_then(|q| milli(&q.0));
            match req {
                Some(v) => total += v,
                None => {
                    return Err(format!(
                        "missing request for {} in container {} of Pod {}",
                        self.name,
                        c.name,
                        pod.metadata.name.as_deref().unwrap_or("")
                    ))
                }
            }
        }
        Ok(total)
    }
}

/// An External metric's target: the whole value, or per replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Total {
    Value(i128),
    AverageValue(i128),
}

/// An External metric (external.metrics.k8s.io).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ExternalMetric {
    pub name: String,
    pub selector: Option<LabelSelector>,
    pub goal: Total,
}

impl ExternalMetric {
    pub fn from_spec(m: &MetricSpec) -> Result<ExternalMetric, String> {
        let e = m
            .external
            .as_ref()
            .ok_or("an External metric without external")?;
        let t = &e.target;
        let q = |v: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
            v.as_ref()
                .and_then(|q| milli(&q.0))
                .ok_or_else(|| format!("invalid target for external metric {}", e.metric.name))
        };
        let goal = match t.type_.as_str() {
            "Value" => Total::Value(q(&t.value)?),
            "AverageValue" => Total::AverageValue(q(&t.average_value)?),
            other => {
                return Err(format!(
                    "unsupported target type {other:?} for an External metric"
                ))
            }
        };
        Ok(ExternalMetric {
            name: e.metric.name.clone(),
            selector: e.metric.selector.clone(),
            goal,
        })
    }

    pub fn describe(&self) -> String {
        format!("external metric {}", self.name)
    }
}

/// The replicas an External or Object metric's `total` (thousandths)
/// asks for (upstream's `GetExternalMetricReplicas`,
/// `GetExternalPerPodMetricReplicas` and their Object twins).
pub(super) fn propose_total(
    total: i128,
    goal: Total,
    current: i32,
    ready_pods: usize,
    tolerance: f64,
) -> i32 {
    match goal {
        Total::Value(target) => {
            let ratio = total as f64 / target.max(1) as f64;
            if (1.0 - ratio).abs() <= tolerance {
                current
            } else {
                (ratio * ready_pods as f64).ceil() as i32
            }
        }
        Total::AverageValue(target) => {
            let ratio = total as f64 / (target.max(1) as f64 * current.max(1) as f64);
            if (1.0 - ratio).abs() <= tolerance {
                current
            } else {
                (total as f64 / target.max(1) as f64).ceil() as i32
            }
        }
    }
}

/// What a metric proposes, and what was measured.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Proposal {
    pub replicas: i32,
    /// Percent of requests (utilization targets).
    pub utilization: Option<i32>,
    /// Average per pod, thousandths of the unit.
    pub average_milli: i128,
    pub at: DateTime<Utc>,
}

/// Pods sorted the way upstream's replica calculator sorts them.
struct Grouped<'a> {
    /// Ready pods with metrics: usage by uid.
    usage: HashMap<String, i128>,
    requests: HashMap<String, i128>,
    unready: Vec<&'a Pod>,
    missing: Vec<&'a Pod>,
}

fn condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn parse_window(w: &str) -> Duration {
    humantime::parse_duration(w).unwrap_or_default()
}

/// Is a pod's CPU sample not yet telling (upstream's `groupPods`)?
fn cpu_unready(pod: &Pod, m: &PodMetrics, settings: &Settings, now: DateTime<Utc>) -> bool {
    let ready = condition(pod, "Ready");
    let start = pod.status.as_ref().and_then(|s| s.start_time.as_ref());
    let (Some(ready), Some(start)) = (ready, start) else {
        return true;
    };
    let since = |d: Duration| chrono::Duration::from_std(d).unwrap_or_default();
    let start = to_utc(start);
    let transition = ready.last_transition_time.as_ref().map_or(start, to_utc);
    if start + since(settings.cpu_initialization_period) > now {
        ready.status == "False"
            || to_utc(&m.timestamp) < transition + since(parse_window(&m.window))
    } else {
        ready.status == "False" && start + since(settings.initial_readiness_delay) > transition
    }
}

/// The replicas one resource metric asks for (upstream's
/// `GetResourceReplicas` / `GetRawResourceReplicas`).
pub(super) fn propose(
    metric: &ResourceMetric,
    current: i32,
    pods: &[Pod],
    metrics: &HashMap<String, PodMetrics>,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let mut g = Grouped {
        usage: HashMap::new(),
        requests: HashMap::new(),
        unready: vec![],
        missing: vec![],
    };
    let mut at: Option<DateTime<Utc>> = None;
    for pod in pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.metadata.deletion_timestamp.is_some() || phase == Some("Failed") {
            continue;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Goal::Utilization(_) = metric.goal {
            g.requests.insert(uid.clone(), metric.request(pod)?);
        }
        if phase == Some("Pending") {
            g.unready.push(pod);
            continue;
        }
        let Some((m, used)) = metrics.get(&uid).and_then(|m| Some((m, metric.usage(m)?))) else {
            g.missing.push(pod);
            continue;
        };
        if metric.name == "cpu" && cpu_unready(pod, m, settings, now) {
            g.unready.push(pod);
            continue;
        }
        at = at.max(Some(to_utc(&m.timestamp)));
        g.usage.insert(uid, used);
    }
    if g.usage.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {}: no metrics returned from resource metrics API",
            metric.name
        ));
    }
    let ready = g.usage.len() as f64;
    // The measured ratio to the goal, over whichever pods are in `usage`.
    let ratio_of = |usage: &HashMap<String, i128>| -> (f64, Option<i32>, i128) {
        let total: i128 = usage.values().sum();
        let average = total / usage.len().max(1) as i128;
        match metric.goal {
            Goal::Utilization(target) => {
                let requested: i128 = usage.keys().filter_map(|u| g.requests.get(u)).sum();
                let util = if requested > 0 {
                    (total * 100 / requested) as i32
                } else {
                    0
                };
                (util as f64 / target as f64, Some(util), average)
            }
            Goal::AverageMilli(target) => (
                total as f64 / (target as f64 * usage.len().max(1) as f64),
                None,
                average,
            ),
        }
    };
    let (ratio, utilization, average_milli) = ratio_of(&g.usage);
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average_milli,
        at: at.unwrap_or(now),
    };
    let tolerance = settings.tolerance;
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if (1.0 - ratio).abs() <= tolerance {
            return Ok(proposal(current));
        }
        return Ok(proposal((ratio * ready).ceil() as i32));
    }
    // Fill in what is not known, in the direction that moves least.
    let mut usage = g.usage.clone();
    for pod in &g.missing {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let assumed = if ratio < 1.0 {
            match metric.goal {
                Goal::Utilization(_) => g.requests.get(&uid).copied().unwrap_or(0),
                Goal::AverageMilli(target) => target,
            }
        } else {
            0
        };
        usage.insert(uid, assumed);
    }
    if scale_up_with_unready {
        for pod in &g.unready {
            usage.insert(pod.metadata.uid.clone().unwrap_or_default(), 0);
        }
    }
    let (new_ratio, _, _) = ratio_of(&usage);
    if (1.0 - new_ratio).abs() <= tolerance
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * usage.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::client::time;
    use crate::kube::metrics_api::{self, ContainerMetrics};
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A running, long-ready pod requesting `cpu`.
    fn pod(uid: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "uid": uid},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:10Z"}]}}))
        .unwrap()
    }

    fn used(uid: &str, nano_cores: u64) -> (String, PodMetrics) {
        (
            uid.to_string(),
            PodMetrics {
                api_version: metrics_api::API_VERSION.into(),
                kind: "PodMetrics".into(),
                metadata: Default::default(),
                timestamp: time(at("2026-01-01T01:00:00Z")),
                window: "10s".into(),
                containers: vec![ContainerMetrics {
                    name: "c".into(),
                    usage: metrics_api::usage(nano_cores, 1024),
                }],
            },
        )
    }

    fn cpu_percent(p: i32) -> ResourceMetric {
        ResourceMetric {
            name: "cpu".into(),
            source: Source::Resource,
            goal: Goal::Utilization(p),
        }
    }

    #[test]
    fn utilization_proposes_upstreams_counts() {
        let now = at("2026-01-01T01:00:05Z");
        let s = Settings::default();
        let pods = vec![pod("a", "100m"), pod("b", "100m")];
        // 150 % of a 50 % target over two pods: six.
        let m = HashMap::from([used("a", 150_000_000), used("b", 150_000_000)]);
        let p = propose(&cpu_percent(50), 2, &pods, &m, &s, now).unwrap();
        assert_eq!(
            (p.replicas, p.utilization, p.average_milli),
            (6, Some(150), 150)
        );
        // Within the tolerance (10 %): no change.
        let m = HashMap::from([used("a", 52_000_000), used("b", 52_000_000)]);
        assert_eq!(
            propose(&cpu_percent(50), 2, &pods, &m, &s, now)
                .unwrap()
                .replicas,
            2
        );
        // A pod without metrics, scaling down, counts as at its request:
        // ratio (0 + 100) / 200 = 0.5 of 100 % → still a change, to 1.
        let m = HashMap::from([used("a", 0)]);
        assert_eq!(
            propose(&cpu_percent(100), 2, &pods, &m, &s, now)
                .unwrap()
                .replicas,
            1
        );
        // ...scaling up, it counts as idle: (200 + 0) / 200 = 1.0 → none.
        let m = HashMap::from([used("a", 200_000_000)]);
        assert_eq!(
            propose(&cpu_percent(100), 2, &pods, &m, &s, now)
                .unwrap()
                .replicas,
            2
        );
        // No metrics at all, and a container without a request.
        let e = propose(&cpu_percent(50), 2, &pods, &HashMap::new(), &s, now).unwrap_err();
        assert!(
            e.contains("no metrics returned from resource metrics API"),
            "{e}"
        );
        let bare = vec![pod("a", "100m"), {
            let mut p = pod("b", "1");
            p.spec.as_mut().unwrap().containers[0].resources = None;
            p
        }];
        let e = propose(&cpu_percent(50), 2, &bare, &m, &s, now).unwrap_err();
        assert_eq!(e, "missing request for cpu in container c of Pod b");
    }

    #[test]
    fn external_metrics_as_a_whole_or_per_replica() {
        // 30 against a value of 10 over two ready pods: six.
        assert_eq!(propose_total(30_000, Total::Value(10_000), 2, 2, 0.1), 6);
        assert_eq!(propose_total(10_500, Total::Value(10_000), 2, 2, 0.1), 2);
        // 20 at 5 per replica: four, whatever runs now.
        assert_eq!(
            propose_total(20_000, Total::AverageValue(5_000), 1, 1, 0.1),
            4
        );
        assert_eq!(
            propose_total(20_000, Total::AverageValue(5_000), 4, 4, 0.1),
            4
        );
    }

    #[test]
    fn an_average_value_target_needs_no_request() {
        let now = at("2026-01-01T01:00:05Z");
        let m = ResourceMetric {
            name: "cpu".into(),
            source: Source::Resource,
            goal: Goal::AverageMilli(100),
        };
        let pods = vec![pod("a", "1")];
        let usage = HashMap::from([used("a", 300_000_000)]);
        let p = propose(&m, 1, &pods, &usage, &Settings::default(), now).unwrap();
        assert_eq!((p.replicas, p.utilization), (3, None));
    }
}
