//! Kinds of the smaller groups: autoscaling, coordination, discovery,
//! events, networking, policy, scheduling, storage.

use super::error::FieldError;
use super::printers::{self, age_cell, age_col, col, column, name_cell, name_col, or_none};
use super::strategy::{FieldLabel, Kind, Strategy, Typed};
use super::validation as v;
use super::validation::NameRule;
use k8s_openapi::api::autoscaling::{v1 as hpa1, v2 as hpa2};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1 as ev1;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::{json, Value};

pub static HPA_V2: Typed<hpa2::HorizontalPodAutoscaler> = Typed::new();
pub static HPA_V1: HpaV1 = HpaV1;
pub static LEASE: Typed<Lease> = Typed::new();
pub static ENDPOINT_SLICE: Typed<EndpointSlice> = Typed::new();
pub static EVENTS_V1: EventsV1 = EventsV1;
pub static INGRESS: Typed<Ingress> = Typed::new();
pub static INGRESS_CLASS: Typed<IngressClass> = Typed::new();
pub static NETWORK_POLICY: Typed<NetworkPolicy> = Typed::new();
pub static PDB: Typed<PodDisruptionBudget> = Typed::new();
pub static PRIORITY_CLASS: Typed<PriorityClass> = Typed::new();
pub static STORAGE_CLASS: Typed<StorageClass> = Typed::new();

impl Kind for hpa2::HorizontalPodAutoscaler {
    fn defaults(&mut self) {
        self.spec
            .get_or_insert_with(Default::default)
            .min_replicas
            .get_or_insert(1);
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        if spec.min_replicas.is_some_and(|m| m < 1) {
            errs.push(FieldError::invalid(
                "spec.minReplicas",
                spec.min_replicas.unwrap_or(0),
                "must be greater than or equal to 1",
            ));
        }
        if spec.max_replicas < spec.min_replicas.unwrap_or(1) {
            errs.push(FieldError::invalid(
                "spec.maxReplicas",
                spec.max_replicas,
                "must be greater than or equal to `minReplicas`",
            ));
        }
        if spec.scale_target_ref.kind.is_empty() {
            errs.push(FieldError::required("spec.scaleTargetRef.kind", ""));
        }
        if spec.scale_target_ref.name.is_empty() {
            errs.push(FieldError::required("spec.scaleTargetRef.name", ""));
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Reference", 0, "Reference to the target resource."),
            col(
                "Targets",
                0,
                "The current and target values of the metrics.",
            ),
            col("MinPods", 0, "The lower limit for the number of pods."),
            column(
                "MaxPods",
                "integer",
                0,
                "The upper limit for the number of pods.",
            ),
            column("Replicas", "integer", 0, "The current number of pods."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let targets: Vec<String> = spec
            .metrics
            .iter()
            .flatten()
            .filter_map(|m| m.resource.as_ref())
            .map(|r| {
                let current = st
                    .current_metrics
                    .iter()
                    .flatten()
                    .filter_map(|c| c.resource.as_ref())
                    .find(|c| c.name == r.name)
                    .and_then(|c| c.current.average_utilization)
                    .map(|u| format!("{u}%"))
                    .unwrap_or_else(|| "<unknown>".into());
                let target = r
                    .target
                    .average_utilization
                    .map(|u| format!("{u}%"))
                    .unwrap_or_else(|| "<unknown>".into());
                format!("{}: {current}/{target}", r.name)
            })
            .collect();
        let r = &spec.scale_target_ref;
        vec![
            name_cell(obj),
            json!(format!("{}/{}", r.kind, r.name)),
            json!(if targets.is_empty() {
                "<none>".into()
            } else {
                targets.join(", ")
            }),
            json!(spec
                .min_replicas
                .map(|m| m.to_string())
                .unwrap_or_else(|| "<unset>".into())),
            json!(spec.max_replicas),
            json!(st.current_replicas.unwrap_or(0)),
            age_cell(obj),
        ]
    }
}

/// autoscaling/v1: the same objects, stored in the v2 form; v1's
/// `targetCPUUtilizationPercentage` is v2's CPU utilization metric.
pub struct HpaV1;

impl Strategy for HpaV1 {
    fn admit(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        errs: &mut Vec<FieldError>,
        unknown: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut typed: hpa1::HorizontalPodAutoscaler = super::strategy::decode(obj)?;
        typed
            .spec
            .get_or_insert_with(Default::default)
            .min_replicas
            .get_or_insert(1);
        let out = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        let mut v2 = self.to_storage(out.clone());
        HPA_V2.admit(
            &mut v2,
            old.map(|o| self.to_storage(o.clone())).as_ref(),
            errs,
            &mut vec![],
        )?;
        let before = obj.clone();
        *obj = out;
        super::strategy::unknown_fields(&before, obj, "", unknown);
        Ok(())
    }

    fn columns(&self) -> Vec<Value> {
        HPA_V2.columns()
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        HPA_V2.row(&self.to_storage(obj.clone()))
    }

    fn to_storage(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!("autoscaling/v2");
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            if let Some(cpu) = spec.remove("targetCPUUtilizationPercentage") {
                spec.insert("metrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}]));
            }
        }
        if let Some(st) = obj.get_mut("status").and_then(Value::as_object_mut) {
            if let Some(cpu) = st.remove("currentCPUUtilizationPercentage") {
                st.insert("currentMetrics".into(), json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cpu}}}]));
            }
        }
        obj
    }

    fn storage_to_version(&self, mut obj: Value) -> Value {
        obj["apiVersion"] = json!("autoscaling/v1");
        let cpu_of = |metrics: Option<Value>, key: &str| {
            metrics?
                .as_array()?
                .iter()
                .find(|m| m.pointer("/resource/name") == Some(&json!("cpu")))?
                .pointer(key)
                .cloned()
        };
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            let metrics = spec.remove("metrics");
            spec.remove("behavior");
            if let Some(cpu) = cpu_of(metrics, "/resource/target/averageUtilization") {
                spec.insert("targetCPUUtilizationPercentage".into(), cpu);
            }
        }
        if let Some(st) = obj.get_mut("status").and_then(Value::as_object_mut) {
            let metrics = st.remove("currentMetrics");
            st.remove("conditions");
            if let Some(cpu) = cpu_of(metrics, "/resource/current/averageUtilization") {
                st.insert("currentCPUUtilizationPercentage".into(), cpu);
            }
        }
        obj
    }

    fn schema(&self, gen: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(gen.subschema_for::<hpa1::HorizontalPodAutoscaler>())
    }

    fn converts(&self) -> bool {
        true
    }
}

impl Kind for Lease {
    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Holder", 0, "The holder of the lease"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let holder = self
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        vec![name_cell(obj), json!(holder), age_cell(obj)]
    }
}

impl Kind for EndpointSlice {
    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let ok = ["IPv4", "IPv6", "FQDN"];
        if !ok.contains(&self.address_type.as_str()) {
            errs.push(FieldError::not_supported(
                "addressType",
                &self.address_type,
                &ok,
            ));
        }
        if let Some(old) = old {
            if old.address_type != self.address_type {
                errs.push(v::immutable("addressType", &self.address_type));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col(
                "AddressType",
                0,
                "The type of address carried by this EndpointSlice.",
            ),
            col("Ports", 0, "Ports present in the EndpointSlice."),
            col("Endpoints", 0, "Endpoints present in the EndpointSlice."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let ports: Vec<String> = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.map(|n| n.to_string()))
            .collect();
        let addrs: Vec<String> = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.clone())
            .collect();
        let n = addrs.len();
        let mut eps = addrs.into_iter().take(3).collect::<Vec<_>>().join(",");
        if n > 3 {
            eps.push_str(&format!(" + {} more...", n - 3));
        }
        vec![
            name_cell(obj),
            json!(self.address_type),
            json!(if ports.is_empty() {
                "<unset>".into()
            } else {
                ports.join(",")
            }),
            json!(if eps.is_empty() {
                "<unset>".into()
            } else {
                eps
            }),
            age_cell(obj),
        ]
    }
}

/// events.k8s.io/v1: the same objects as core Events, with v1's names.
pub struct EventsV1;

const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(mut obj: Value, to_v1: bool, api_version: &str) -> Value {
    obj["apiVersion"] = json!(api_version);
    if let Some(m) = obj.as_object_mut() {
        for (core, v1) in EVENT_RENAMES {
            let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
            if let Some(x) = m.remove(*from) {
                m.insert(to.to_string(), x);
            }
        }
    }
    obj
}

impl Strategy for EventsV1 {
    fn admit(
        &self,
        obj: &mut Value,
        _old: Option<&Value>,
        _errs: &mut Vec<FieldError>,
        unknown: &mut Vec<String>,
    ) -> Result<(), String> {
        let typed: ev1::Event = super::strategy::decode(obj)?;
        let out = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        super::strategy::unknown_fields(obj, &out, "", unknown);
        *obj = out;
        Ok(())
    }

    fn columns(&self) -> Vec<Value> {
        super::core::EVENT.columns()
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        super::core::EVENT.row(&self.to_storage(obj.clone()))
    }

    fn fields(&self) -> &'static [FieldLabel] {
        super::core::EVENT.fields()
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn to_storage(&self, obj: Value) -> Value {
        rename(obj, false, "v1")
    }

    fn storage_to_version(&self, obj: Value) -> Value {
        rename(obj, true, "events.k8s.io/v1")
    }

    fn schema(&self, gen: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(gen.subschema_for::<ev1::Event>())
    }

    fn converts(&self) -> bool {
        true
    }
}

impl Kind for Ingress {
    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        for (i, r) in self
            .spec
            .iter()
            .flat_map(|s| s.rules.iter().flatten())
            .enumerate()
        {
            for (j, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let f = format!("spec.rules[{i}].http.paths[{j}].pathType");
                let ok = ["Exact", "Prefix", "ImplementationSpecific"];
                if p.path_type.is_empty() {
                    errs.push(FieldError::required(&f, "pathType must be specified"));
                } else if !ok.contains(&p.path_type.as_str()) {
                    errs.push(FieldError::not_supported(&f, &p.path_type, &ok));
                }
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col(
                "Class",
                0,
                "The name of the IngressClass resource that should be used for ingress.",
            ),
            col(
                "Hosts",
                0,
                "Hosts that incoming requests are matched against before the ingress rule",
            ),
            col(
                "Address",
                0,
                "Address is a list containing ingress points for the load-balancer",
            ),
            col("Ports", 0, "Ports of TLS configurations that open"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let hosts: Vec<String> = spec
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r.host.clone())
            .collect();
        let addr: Vec<String> = self
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone().or(i.hostname.clone()))
            .collect();
        let ports = if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
            "80, 443"
        } else {
            "80"
        };
        vec![
            name_cell(obj),
            json!(or_none(spec.ingress_class_name.as_deref().unwrap_or(""))),
            json!(if hosts.is_empty() {
                "*".into()
            } else {
                hosts.join(",")
            }),
            json!(addr.join(",")),
            json!(ports),
            age_cell(obj),
        ]
    }
}

impl Kind for IngressClass {
    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col(
                "Controller",
                0,
                "Controller that is responsible for handling this class",
            ),
            col(
                "Parameters",
                0,
                "A reference to a resource with additional parameters",
            ),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let params = spec
            .parameters
            .map(|p| match p.api_group {
                Some(g) if !g.is_empty() => format!("{}.{g}/{}", p.kind, p.name),
                _ => format!("{}/{}", p.kind, p.name),
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            name_cell(obj),
            json!(spec.controller.unwrap_or_default()),
            json!(params),
            age_cell(obj),
        ]
    }
}

impl Kind for NetworkPolicy {
    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col(
                "Pod-Selector",
                0,
                "Selects the pods to which this NetworkPolicy object applies.",
            ),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let sel = self.spec.as_ref().and_then(|s| s.pod_selector.clone());
        let text = match printers::selector(sel.as_ref()).as_str() {
            "<none>" => "<none>".to_string(),
            s => s.to_string(),
        };
        vec![name_cell(obj), json!(text), age_cell(obj)]
    }
}

impl Kind for PodDisruptionBudget {
    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        if let Some(spec) = &self.spec {
            if spec.min_available.is_some() && spec.max_unavailable.is_some() {
                errs.push(FieldError::invalid(
                    "spec",
                    super::error::Raw("policy.PodDisruptionBudgetSpec{...}".into()),
                    "minAvailable and maxUnavailable cannot be both set",
                ));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col(
                "Min Available",
                0,
                "The minimum number of pods that must be available simultaneously",
            ),
            col(
                "Max Unavailable",
                0,
                "The maximum number of pods that may be unavailable simultaneously",
            ),
            column(
                "Allowed Disruptions",
                "integer",
                0,
                "Calculated number of pods that may be disrupted at this time",
            ),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let show = |v: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>| match v {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => {
                i.to_string()
            }
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s,
            None => "N/A".into(),
        };
        let allowed = self.status.as_ref().map_or(0, |s| s.disruptions_allowed);
        vec![
            name_cell(obj),
            json!(show(spec.min_available)),
            json!(show(spec.max_unavailable)),
            json!(allowed),
            age_cell(obj),
        ]
    }
}

/// The highest priority a user-defined class may have.
const MAX_USER_PRIORITY: i32 = 1_000_000_000;

impl Kind for PriorityClass {
    fn defaults(&mut self) {
        self.preemption_policy
            .get_or_insert_with(|| "PreemptLowerPriority".into());
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let name = self.metadata.name.as_deref().unwrap_or("");
        if self.value > MAX_USER_PRIORITY && !name.starts_with("system-") {
            errs.push(FieldError::forbidden(
                "value",
                &format!("maximum allowed value of a user defined priority is {MAX_USER_PRIORITY}"),
            ));
        }
        if let Some(old) = old {
            if old.value != self.value {
                errs.push(FieldError::forbidden(
                    "value",
                    "may not be changed in an update.",
                ));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            column("Value", "integer", 0, "The value of this priority class."),
            column("Global-Default", "boolean", 0, "globalDefault specifies whether this PriorityClass should be considered as the default priority."),
            age_col(),
            col("PreemptionPolicy", 0, "PreemptionPolicy is the Policy for preempting pods with lower priority."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(self.value),
            json!(self.global_default.unwrap_or(false)),
            age_cell(obj),
            json!(self.preemption_policy.clone().unwrap_or_default()),
        ]
    }
}

impl Kind for StorageClass {
    fn defaults(&mut self) {
        self.reclaim_policy.get_or_insert_with(|| "Delete".into());
        self.volume_binding_mode
            .get_or_insert_with(|| "Immediate".into());
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        if self.provisioner.is_empty() {
            errs.push(FieldError::required("provisioner", ""));
        }
        if let Some(old) = old {
            if old.provisioner != self.provisioner {
                errs.push(FieldError::forbidden(
                    "provisioner",
                    "updates to provisioner are forbidden.",
                ));
            }
            if old.parameters != self.parameters {
                errs.push(FieldError::forbidden(
                    "parameters",
                    "updates to parameters are forbidden.",
                ));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Provisioner", 0, "Indicates the type of the provisioner."),
            col("ReclaimPolicy", 0, "Dynamically provisioned PersistentVolumes of this storage class are created with this reclaimPolicy."),
            col("VolumeBindingMode", 0, "VolumeBindingMode indicates how PersistentVolumeClaims should be provisioned and bound."),
            column("AllowVolumeExpansion", "boolean", 0, "AllowVolumeExpansion shows whether the storage class allow volume expand."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let mut name = self.metadata.name.clone().unwrap_or_default();
        let default = self.metadata.annotations.as_ref().is_some_and(|a| {
            a.get("storageclass.kubernetes.io/is-default-class")
                .map(String::as_str)
                == Some("true")
        });
        if default {
            name.push_str(" (default)");
        }
        let _ = obj;
        vec![
            json!(name),
            json!(self.provisioner),
            json!(self.reclaim_policy.clone().unwrap_or_default()),
            json!(self.volume_binding_mode.clone().unwrap_or_default()),
            json!(self.allow_volume_expansion.unwrap_or(false)),
            age_cell(obj),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_v1_round_trips_through_v2() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50}});
        let stored = HPA_V1.to_storage(v1.clone());
        assert_eq!(
            stored["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            50
        );
        let back = HPA_V1.storage_to_version(stored);
        assert_eq!(back["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(back["apiVersion"], "autoscaling/v1");
    }

    #[test]
    fn events_v1_names() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "message": "hi", "involvedObject": {"kind": "Pod"}, "count": 2});
        let v1 = EVENTS_V1.storage_to_version(core.clone());
        assert_eq!(v1["note"], "hi");
        assert_eq!(v1["regarding"]["kind"], "Pod");
        assert_eq!(v1["deprecatedCount"], 2);
        assert_eq!(EVENTS_V1.to_storage(v1), core);
    }
}
