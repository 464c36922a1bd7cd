//! apps/v1 kinds: Deployment, ReplicaSet, StatefulSet, DaemonSet,
//! ControllerRevision.

use super::core::{pod_spec_defaults, replica_columns, replica_row};
use super::error::{FieldError, Raw};
use super::printers::{self, age_cell, age_col, col, column, name_cell, name_col};
use super::strategy::{FieldLabel, Kind, Typed};
use super::validation as v;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy,
    ReplicaSet, RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy,
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

pub static DEPLOYMENT: Typed<Deployment> = Typed::new();
pub static REPLICA_SET: Typed<ReplicaSet> = Typed::new();
pub static STATEFUL_SET: Typed<StatefulSet> = Typed::new();
pub static DAEMON_SET: Typed<DaemonSet> = Typed::new();
pub static CONTROLLER_REVISION: Typed<ControllerRevision> = Typed::new();

fn template_defaults(t: Option<&mut PodTemplateSpec>) {
    if let Some(s) = t.and_then(|t| t.spec.as_mut()) {
        pod_spec_defaults(s);
    }
}

/// Go's rendering of a LabelSelector, as upstream's immutability error shows it.
fn go_selector(s: Option<&LabelSelector>) -> Raw {
    let Some(s) = s else {
        return Raw("(*v1.LabelSelector)(nil)".into());
    };
    let labels: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k:?}:{v:?}"))
        .collect();
    Raw(format!(
        "v1.LabelSelector{{MatchLabels:map[string]string{{{}}}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}}",
        labels.join(", ")
    ))
}

fn selector_immutable(
    new: Option<&LabelSelector>,
    old: Option<&LabelSelector>,
    errs: &mut Vec<FieldError>,
) {
    if new != old {
        errs.push(v::immutable("spec.selector", go_selector(new)));
    }
}

fn percent(p: &str) -> IntOrString {
    IntOrString::String(p.into())
}

impl Kind for Deployment {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec
            .strategy
            .get_or_insert_with(DeploymentStrategy::default);
        let type_ = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if type_ == "RollingUpdate" {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            ru.max_surge.get_or_insert_with(|| percent("25%"));
            ru.max_unavailable.get_or_insert_with(|| percent("25%"));
        }
        template_defaults(Some(&mut spec.template));
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        v::non_negative("spec.replicas", spec.replicas, errs);
        v::selector_and_template(
            Some(&spec.selector),
            Some(&spec.template),
            &["Always"],
            errs,
        );
        let st = spec.strategy.as_ref();
        match st.and_then(|s| s.type_.as_deref()) {
            Some("Recreate") if st.and_then(|s| s.rolling_update.as_ref()).is_some() => {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ))
            }
            Some("Recreate" | "RollingUpdate") | None => {}
            Some(other) => errs.push(FieldError::not_supported(
                "spec.strategy.type",
                other,
                &["Recreate", "RollingUpdate"],
            )),
        }
        if let Some(ru) = st.and_then(|s| s.rolling_update.as_ref()) {
            let zero = |v: &Option<IntOrString>| {
                matches!(v, Some(IntOrString::Int(0)))
                    || matches!(v, Some(IntOrString::String(s)) if s == "0%")
            };
            if zero(&ru.max_surge) && zero(&ru.max_unavailable) {
                errs.push(FieldError::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    Raw("0".into()),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            selector_immutable(Some(&spec.selector), Some(&old.selector), errs);
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Ready", 0, "Number of the pod with ready state"),
            column("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            column("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            age_col(),
            col("Containers", 1, "Names of each container in the template."),
            col("Images", 1, "Images referenced by each container in the template."),
            col("Selector", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (c, i) = printers::containers_images(spec.template.spec.as_ref());
        vec![
            name_cell(obj),
            json!(format!(
                "{}/{}",
                st.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )),
            json!(st.updated_replicas.unwrap_or(0)),
            json!(st.available_replicas.unwrap_or(0)),
            age_cell(obj),
            json!(c),
            json!(i),
            json!(printers::selector(Some(&spec.selector))),
        ]
    }
}

impl Kind for ReplicaSet {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        template_defaults(spec.template.as_mut());
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        v::non_negative("spec.replicas", spec.replicas, errs);
        v::selector_and_template(
            Some(&spec.selector),
            spec.template.as_ref(),
            &["Always"],
            errs,
        );
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            selector_immutable(Some(&spec.selector), Some(&old.selector), errs);
        }
    }

    fn columns() -> Vec<Value> {
        replica_columns()
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        replica_row(
            obj,
            (spec.replicas, st.replicas, st.ready_replicas),
            spec.template.as_ref(),
            printers::selector(Some(&spec.selector)),
        )
    }

    const FIELDS: &'static [FieldLabel] = &[("status.replicas", "/status/replicas", "0")];
}

impl Kind for StatefulSet {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.pod_management_policy
            .get_or_insert_with(|| "OrderedReady".into());
        let us = spec
            .update_strategy
            .get_or_insert_with(StatefulSetUpdateStrategy::default);
        if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            us.rolling_update
                .get_or_insert_with(RollingUpdateStatefulSetStrategy::default)
                .partition
                .get_or_insert(0);
        }
        let rp = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
        rp.when_deleted.get_or_insert_with(|| "Retain".into());
        rp.when_scaled.get_or_insert_with(|| "Retain".into());
        template_defaults(Some(&mut spec.template));
        for pvc in spec.volume_claim_templates.iter_mut().flatten() {
            if let Some(s) = pvc.spec.as_mut() {
                s.volume_mode.get_or_insert_with(|| "Filesystem".into());
            }
        }
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        v::non_negative("spec.replicas", spec.replicas, errs);
        v::selector_and_template(
            Some(&spec.selector),
            Some(&spec.template),
            &["Always"],
            errs,
        );
        if let Some(p) = spec.pod_management_policy.as_deref() {
            if !["OrderedReady", "Parallel"].contains(&p) {
                errs.push(FieldError::not_supported(
                    "spec.podManagementPolicy",
                    p,
                    &["OrderedReady", "Parallel"],
                ));
            }
        }
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            let (mut a, mut b) = (spec.clone(), old.clone());
            for s in [&mut a, &mut b] {
                s.replicas = None;
                s.ordinals = None;
                s.template = Default::default();
                s.update_strategy = None;
                s.persistent_volume_claim_retention_policy = None;
                s.min_ready_seconds = None;
                s.revision_history_limit = None;
            }
            if a != b {
                errs.push(FieldError::forbidden("spec", "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Ready", 0, "Number of the pod with ready state"),
            age_col(),
            col("Containers", 1, "Names of each container in the template."),
            col(
                "Images",
                1,
                "Images referenced by each container in the template.",
            ),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (c, i) = printers::containers_images(spec.template.spec.as_ref());
        vec![
            name_cell(obj),
            json!(format!(
                "{}/{}",
                st.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )),
            age_cell(obj),
            json!(c),
            json!(i),
        ]
    }
}

impl Kind for DaemonSet {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.revision_history_limit.get_or_insert(10);
        let us = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        if us.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate" {
            let ru = us
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        template_defaults(Some(&mut spec.template));
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        v::selector_and_template(
            Some(&spec.selector),
            Some(&spec.template),
            &["Always"],
            errs,
        );
        if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
            selector_immutable(Some(&spec.selector), Some(&old.selector), errs);
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            column("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
            column("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            column("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            column("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
            column("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
            col("Node Selector", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
            age_col(),
            col("Containers", 1, "Names of each container in the template."),
            col("Images", 1, "Images referenced by each container in the template."),
            col("Selector", 1, "A label query over pods that are managed by the daemon set."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (c, i) = printers::containers_images(spec.template.spec.as_ref());
        let ns = printers::map_selector(
            spec.template
                .spec
                .as_ref()
                .and_then(|s| s.node_selector.as_ref()),
        );
        vec![
            name_cell(obj),
            json!(st.desired_number_scheduled),
            json!(st.current_number_scheduled),
            json!(st.number_ready),
            json!(st.updated_number_scheduled.unwrap_or(0)),
            json!(st.number_available.unwrap_or(0)),
            json!(ns),
            age_cell(obj),
            json!(c),
            json!(i),
            json!(printers::selector(Some(&spec.selector))),
        ]
    }
}

impl Kind for ControllerRevision {
    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        if let Some(old) = old {
            if old.data != self.data {
                errs.push(v::immutable(
                    "data",
                    Raw("runtime.RawExtension{...}".into()),
                ));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Controller", 0, "Controller of the object"),
            column(
                "Revision",
                "integer",
                0,
                "Revision indicates the revision of the state represented by Data.",
            ),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let controller = self
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| {
                let group = o.api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
                let kind = o.kind.to_lowercase();
                if group.is_empty() {
                    format!("{kind}/{}", o.name)
                } else {
                    format!("{kind}.{group}/{}", o.name)
                }
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_cell(obj),
            json!(controller),
            json!(self.revision),
            age_cell(obj),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::strategy::Strategy;

    fn deployment(labels: Value, selector: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}})
    }

    #[test]
    fn deployment_defaults() {
        let mut d = deployment(json!({"app": "web"}), json!({"app": "web"}));
        let (mut e, mut u) = (vec![], vec![]);
        DEPLOYMENT.admit(&mut d, None, &mut e, &mut u).unwrap();
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn selector_must_match_and_is_immutable() {
        let mut d = deployment(json!({"app": "x"}), json!({"app": "web"}));
        let (mut e, mut u) = (vec![], vec![]);
        DEPLOYMENT.admit(&mut d, None, &mut e, &mut u).unwrap();
        assert_eq!(
            e[0].to_string(),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"x\"}: `selector` does not match template `labels`"
        );
        let mut old = deployment(json!({"app": "web"}), json!({"app": "web"}));
        DEPLOYMENT
            .admit(&mut old, None, &mut vec![], &mut u)
            .unwrap();
        let mut new = deployment(
            json!({"app": "web", "v": "2"}),
            json!({"app": "web", "v": "2"}),
        );
        let mut e = vec![];
        DEPLOYMENT
            .admit(&mut new, Some(&old), &mut e, &mut u)
            .unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().starts_with("spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}"), "{}", e[0]);
        assert!(e[0].to_string().ends_with("field is immutable"));
    }
}
