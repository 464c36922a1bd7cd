//! The HorizontalPodAutoscaler controller, as upstream's: every sync
//! period it reads the target's scale, its pods' resource metrics (from
//! the API server's own metrics.k8s.io source), proposes a replica count
//! per metric (the largest wins), stabilizes and rate-limits it by the
//! HPA's `behavior`, clamps it to min/max, writes the target's
//! `spec.replicas` and the HPA's status, conditions and Events.
//!
//! Resource and ContainerResource metrics (cpu, memory; Utilization and
//! AverageValue) are computed; Pods, Object and External metrics need a
//! custom or external metrics API, which rk3s does not serve, and are
//! reported as failing, as upstream reports a missing API.

mod behavior;
mod metrics;
mod replicas;
mod settings;

pub use metrics::MetricsSource;
pub use settings::{parse, Settings, NAMES};

use behavior::{decide, scale_down_rules, scale_up_rules, History};

use super::client::{s, time, Client};
use super::predicates::deleting;
use super::runtime::{all, own, Controller, Requeue};
use crate::registry::cache::Cache;
use crate::registry::kinds;
use crate::registry::resource::Builtin;
use crate::registry::validation::selector_matches;
use chrono::{DateTime, Utc};
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

const COMPONENT: &str = "horizontal-pod-autoscaler";
static PREFIX: LazyLock<String> = LazyLock::new(|| kinds::HORIZONTAL_POD_AUTOSCALERS.prefix(None));

/// The kinds an HPA can scale, by `apiVersion` group and kind.
fn target_kind(api_version: &str, kind: &str) -> Option<&'static Builtin> {
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    [
        &kinds::DEPLOYMENTS,
        &kinds::REPLICA_SETS,
        &kinds::STATEFUL_SETS,
        &kinds::REPLICATION_CONTROLLERS,
    ]
    .into_iter()
    .find(|b| b.group() == group && b.kind == kind)
}

/// A target's selector (a ReplicationController's is a plain map).
fn selector_of(target: &Value) -> Option<LabelSelector> {
    let sel = &target["spec"]["selector"];
    let parsed = if sel.get("matchLabels").is_some() || sel.get("matchExpressions").is_some() {
        serde_json::from_value(sel.clone()).ok()?
    } else {
        LabelSelector {
            match_labels: serde_json::from_value(sel.clone()).ok(),
            match_expressions: None,
        }
    };
    let empty = parsed.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && parsed
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    (!empty).then_some(parsed)
}

struct Ctl {
    c: Client,
    cache: Arc<Cache>,
    source: Arc<dyn MetricsSource>,
    settings: Settings,
    history: Mutex<HashMap<String, History>>,
}

/// Conditions with upstream's transition times: a condition whose status
/// did not change keeps its time.
fn set_condition(
    conds: &mut Vec<HorizontalPodAutoscalerCondition>,
    old: &[HorizontalPodAutoscalerCondition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) {
    let status = if status { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time(now));
    conds.retain(|c| c.type_ != type_);
    conds.push(HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(since),
    });
}

impl Ctl {
    async fn sync(&self, key: &str) -> Requeue {
        let again = Requeue::After(self.settings.sync_period);
        let Some(v) = self.cache.get(key) else {
            self.history.lock().expect("history").remove(key);
            return Requeue::Never;
        };
        if deleting(&v) {
            return Requeue::Never;
        }
        let Ok(hpa) = serde_json::from_value::<HorizontalPodAutoscaler>(v.clone()) else {
            return Requeue::Never;
        };
        let now = Utc::now();
        let ns = s(&v, "/metadata/namespace").to_string();
        let name = s(&v, "/metadata/name").to_string();
        let spec = hpa.spec.clone().unwrap_or_default();
        let old = hpa.status.clone().unwrap_or_default();
        let old_conds = old.conditions.clone().unwrap_or_default();
        let mut conds = old_conds.clone();
        let mut status = HorizontalPodAutoscalerStatus {
            observed_generation: hpa.metadata.generation,
            last_scale_time: old.last_scale_time.clone(),
            current_replicas: old.current_replicas,
            desired_replicas: old.desired_replicas,
            current_metrics: old.current_metrics.clone(),
            conditions: None,
        };
        let target_ref = &spec.scale_target_ref;
        let reference = format!("{}/{}", target_ref.kind, target_ref.name);

        let target = target_kind(
            target_ref.api_version.as_deref().unwrap_or(""),
            &target_ref.kind,
        )
        .and_then(|b| Some((b, self.cache.get(&b.key(Some(&ns), &target_ref.name))?)));
        let Some((kind, target)) = target else {
            let msg = format!(
                "the HPA controller was unable to get the target's current scale: {} {:?} not found or not scalable",
                target_ref.kind, target_ref.name
            );
            self.c
                .event(&v, "Warning", "FailedGetScale", &msg, COMPONENT)
                .await;
            set_condition(
                &mut conds,
                &old_conds,
                "AbleToScale",
                false,
                "FailedGetScale",
                msg,
                now,
            );
            self.write(&v, status, conds).await;
            return again;
        };
        let current = target["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
        status.current_replicas = Some(target["status"]["replicas"].as_i64().unwrap_or(0) as i32);
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        set_condition(
            &mut conds,
            &old_conds,
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
            now,
        );
        if current == 0 && min != 0 {
            status.desired_replicas = 0;
            set_condition(
                &mut conds,
                &old_conds,
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero".into(),
                now,
            );
            self.write(&v, status, conds).await;
            return again;
        }

        let pods: Vec<Pod> = match selector_of(&target) {
            Some(sel) => self
                .cache
                .list_where(&kinds::PODS.prefix(Some(&ns)), |p| {
                    let labels: BTreeMap<String, String> =
                        serde_json::from_value(p["metadata"]["labels"].clone()).unwrap_or_default();
                    selector_matches(&sel, Some(&labels))
                })
                .into_iter()
                .filter_map(|(_, p)| serde_json::from_value((*p).clone()).ok())
                .collect(),
            None => vec![],
        };
        let specs = spec
            .metrics
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                // Upstream's default: 80 % of the CPU requested.
                vec![
                    serde_json::from_value(json!({"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80}}}))
                    .expect("a valid MetricSpec"),
                ]
            });
        let needs_resources = specs
            .iter()
            .any(|m| matches!(m.type_.as_str(), "Resource" | "ContainerResource"));
        let resource_usage = if needs_resources {
            self.source.pod_metrics(&pods).await
        } else {
            HashMap::new()
        };
        let selector = selector_of(&target)
            .map(|s| crate::registry::printers::selector_query(&s))
            .unwrap_or_default();
        let resource_of = |api_version: &str, kind: &str| {
            let rt = self.c.reg.by_kind(api_version, kind)?;
            Some(if rt.group.is_empty() {
                rt.resource
            } else {
                format!("{}.{}", rt.resource, rt.group)
            })
        };
        let scope = metrics::Scope {
            source: self.source.as_ref(),
            settings: &self.settings,
            namespace: &ns,
            current,
            pods: &pods,
            resources: &resource_usage,
            selector: &selector,
            resource_of: &resource_of,
            now,
        };
        let mut best: Option<(i32, String)> = None;
        let mut measured = vec![];
        let mut errors: Vec<metrics::Failure> = vec![];
        for m in &specs {
            let outcome = metrics::evaluate(&scope, m).await;
            match outcome {
                Ok((replicas, name, status)) => {
                    measured.push(status);
                    if best.as_ref().is_none_or(|(r, _)| replicas > *r) {
                        best = Some((replicas, name));
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        let Some((proposed, metric_name)) = best else {
            let (first_reason, first) = errors
                .first()
                .cloned()
                .unwrap_or(("FailedGetResourceMetric", String::new()));
            let (reason, msg) = if specs.len() == 1 {
                (
                    first_reason,
                    format!("the HPA was unable to compute the replica count: {first}"),
                )
            } else {
                (
                    "FailedComputeMetricsReplicas",
                    format!(
                        "invalid metrics ({} invalid out of {}), first error is: {first}",
                        errors.len(),
                        specs.len()
                    ),
                )
            };
            self.c.event(&v, "Warning", reason, &first, COMPONENT).await;
            set_condition(
                &mut conds,
                &old_conds,
                "ScalingActive",
                false,
                reason,
                msg,
                now,
            );
            status.desired_replicas = current;
            self.write(&v, status, conds).await;
            return again;
        };
        status.current_metrics = Some(measured);
        set_condition(
            &mut conds,
            &old_conds,
            "ScalingActive",
            true,
            "ValidMetricFound",
            format!(
                "the HPA was able to successfully calculate a replica count from {metric_name}"
            ),
            now,
        );
        let behavior = spec.behavior.clone().unwrap_or_default();
        let up = scale_up_rules(behavior.scale_up.as_ref());
        let down = scale_down_rules(behavior.scale_down.as_ref(), &self.settings);
        let decision = {
            let mut histories = self.history.lock().expect("history");
            let h = histories.entry(key.to_string()).or_default();
            decide(proposed, current, min, max, &up, &down, h, now)
        };
        match decision.limited {
            Some((reason, msg)) => set_condition(
                &mut conds,
                &old_conds,
                "ScalingLimited",
                true,
                reason,
                msg.into(),
                now,
            ),
            None => set_condition(
                &mut conds,
                &old_conds,
                "ScalingLimited",
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range".into(),
                now,
            ),
        }
        status.desired_replicas = decision.replicas;
        if decision.replicas != current {
            let rt = kind.resource_type();
            let want = decision.replicas;
            let written = self
                .c
                .update(&rt, &ns, &target_ref.name, false, |o| {
                    if o["spec"]["replicas"].as_i64() == Some(want as i64) {
                        return false;
                    }
                    o["spec"]["replicas"] = json!(want);
                    true
                })
                .await;
            if let Err(e) = written {
                let msg = format!("the HPA controller was unable to update the target scale: {e}");
                self.c
                    .event(
                        &v,
                        "Warning",
                        "FailedRescale",
                        &format!("New size: {want}; reason: {e}"),
                        COMPONENT,
                    )
                    .await;
                set_condition(
                    &mut conds,
                    &old_conds,
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    msg,
                    now,
                );
                self.write(&v, status, conds).await;
                return again;
            }
            let reason = if want > current {
                format!("{metric_name} above target")
            } else {
                "All metrics below target".to_string()
            };
            tracing::info!(namespace = %ns, hpa = %name, target = %reference, from = current, to = want, "{reason}");
            self.c
                .event(
                    &v,
                    "Normal",
                    "SuccessfulRescale",
                    &format!("New size: {want}; reason: {reason}"),
                    COMPONENT,
                )
                .await;
            self.history
                .lock()
                .expect("history")
                .entry(key.to_string())
                .or_default()
                .scale_events
                .push((now, want - current));
            status.last_scale_time = Some(time(now));
            set_condition(
                &mut conds,
                &old_conds,
                "AbleToScale",
                true,
                "SucceededRescale",
                format!("the HPA controller was able to update the target scale to {want}"),
                now,
            );
        } else {
            let (reason, msg) = decision
                .stabilized
                .unwrap_or(("ReadyForNewScale", "recommended size matches current size"));
            set_condition(
                &mut conds,
                &old_conds,
                "AbleToScale",
                true,
                reason,
                msg.into(),
                now,
            );
        }
        self.write(&v, status, conds).await;
        again
    }

    /// Write the status unless it is what the HPA already has (each
    /// write is a change the controller itself is woken by).
    async fn write(
        &self,
        hpa: &Value,
        mut status: HorizontalPodAutoscalerStatus,
        mut conds: Vec<HorizontalPodAutoscalerCondition>,
    ) {
        let order = |t: &str| {
            ["AbleToScale", "ScalingActive", "ScalingLimited"]
                .iter()
                .position(|x| *x == t)
        };
        conds.sort_by_key(|c| order(&c.type_));
        status.conditions = Some(conds);
        let Ok(value) = serde_json::to_value(&status) else {
            return;
        };
        if hpa["status"] == value {
            return;
        }
        let (ns, name, uid) = (
            s(hpa, "/metadata/namespace"),
            s(hpa, "/metadata/name"),
            s(hpa, "/metadata/uid"),
        );
        self.c
            .write_status(
                &kinds::HORIZONTAL_POD_AUTOSCALERS.resource_type(),
                ns,
                name,
                uid,
                value,
            )
            .await;
    }
}

pub fn controller(
    c: Client,
    cache: Arc<Cache>,
    source: Arc<dyn MetricsSource>,
    settings: Settings,
) -> Controller {
    let every = settings.sync_period;
    let ctl = Arc::new(Ctl {
        c,
        cache,
        source,
        settings,
        history: Mutex::new(HashMap::new()),
    });
    Controller::new(COMPONENT, move |key: String| {
        let ctl = ctl.clone();
        async move { Ok(ctl.sync(&key).await) }
    })
    .watches(own(PREFIX.as_str()))
    .lists(all(PREFIX.as_str()), Some(every))
}
