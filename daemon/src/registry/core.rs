//! core/v1 kinds: defaults, validation, tables and field selectors.

use super::error::FieldError;
use super::printers::{self, age_cell, age_col, col, column, name_cell, name_col, or_none, since};
use super::strategy::{FieldLabel, Kind, Typed};
use super::validation as v;
use super::validation::NameRule;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Endpoints, Event, LimitRange, Namespace, NamespaceSpec, NamespaceStatus,
    Node, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeStatus, Pod, PodSecurityContext, PodSpec, PodStatus, PodTemplate,
    ReplicationController, ResourceQuota, ResourceRequirements, Secret, Service, ServiceAccount,
    ServicePort, ServiceSpec, ServiceStatus, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

pub static NAMESPACE: Typed<Namespace> = Typed::new();
pub static NODE: Typed<Node> = Typed::new();
pub static POD: Typed<Pod> = Typed::new();
pub static POD_TEMPLATE: Typed<PodTemplate> = Typed::new();
pub static REPLICATION_CONTROLLER: Typed<ReplicationController> = Typed::new();
pub static SERVICE: Typed<Service> = Typed::new();
pub static ENDPOINTS: Typed<Endpoints> = Typed::new();
pub static SERVICE_ACCOUNT: Typed<ServiceAccount> = Typed::new();
pub static SECRET: Typed<Secret> = Typed::new();
pub static CONFIG_MAP: Typed<ConfigMap> = Typed::new();
pub static EVENT: Typed<Event> = Typed::new();
pub static PERSISTENT_VOLUME: Typed<PersistentVolume> = Typed::new();
pub static PERSISTENT_VOLUME_CLAIM: Typed<PersistentVolumeClaim> = Typed::new();
pub static RESOURCE_QUOTA: Typed<ResourceQuota> = Typed::new();
pub static LIMIT_RANGE: Typed<LimitRange> = Typed::new();

/// Upstream's pull policy rule: `:latest` or no tag pulls Always.
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container_defaults(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = Some(default_pull_policy(c.image.as_deref().unwrap_or("")).into());
    }
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    c.resources
        .get_or_insert_with(ResourceRequirements::default);
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}

/// Defaults of every pod spec, in a Pod or a template.
pub fn pod_spec_defaults(s: &mut PodSpec) {
    s.restart_policy.get_or_insert_with(|| "Always".into());
    s.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    s.termination_grace_period_seconds.get_or_insert(30);
    s.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    s.security_context
        .get_or_insert_with(PodSecurityContext::default);
    s.enable_service_links.get_or_insert(true);
    for c in s.init_containers.iter_mut().flatten() {
        container_defaults(c);
    }
    for c in &mut s.containers {
        container_defaults(c);
    }
    for c in s.ephemeral_containers.iter_mut().flatten() {
        if c.image_pull_policy.is_none() {
            c.image_pull_policy =
                Some(default_pull_policy(c.image.as_deref().unwrap_or("")).into());
        }
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
    }
}

/// What admission adds to a Pod (not a template): its service account,
/// priority, and the 300 s tolerations of unreachable/not-ready nodes.
fn pod_admission(s: &mut PodSpec) {
    if s.service_account_name.as_deref().unwrap_or("").is_empty() {
        s.service_account_name = Some("default".into());
    }
    s.service_account = s.service_account_name.clone();
    s.priority.get_or_insert(0);
    s.preemption_policy
        .get_or_insert_with(|| "PreemptLowerPriority".into());
    let tolerations = s.tolerations.get_or_insert_with(Vec::new);
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let covered = tolerations.iter().any(|t| {
            (t.key.as_deref() == Some(key)
                || (t.key.is_none() && t.operator.as_deref() == Some("Exists")))
                && t.effect.as_deref().is_none_or(|e| e == "NoExecute")
        });
        if !covered {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(300),
                value: None,
            });
        }
    }
}

/// Guaranteed, Burstable or BestEffort, from requests and limits.
pub fn qos_class(s: &PodSpec) -> &'static str {
    let all: Vec<&Container> = s
        .containers
        .iter()
        .chain(s.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        any |= req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty());
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(res));
            let q = req.and_then(|m| m.get(res)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        _ => "Burstable",
    }
}

/// Pod spec fields an update may change (upstream's list).
/// Upstream's rules for ephemeral containers (`kubectl debug`): none on
/// create; later only added, never removed or changed; named uniquely;
/// targeting a container of the pod; without what a container that is
/// never restarted or probed cannot have.
fn ephemeral_containers(spec: &PodSpec, old: Option<&PodSpec>, errs: &mut Vec<FieldError>) {
    let path = "spec.ephemeralContainers";
    let new = spec.ephemeral_containers.as_deref().unwrap_or_default();
    let Some(old) = old else {
        if !new.is_empty() {
            errs.push(FieldError::forbidden(path, "cannot be set on create"));
        }
        return;
    };
    for o in old.ephemeral_containers.iter().flatten() {
        match new.iter().find(|n| n.name == o.name) {
            None => errs.push(FieldError::forbidden(
                path,
                &format!(
                    "existing ephemeral containers {:?} may not be removed\n",
                    o.name
                ),
            )),
            Some(n) if n != o => errs.push(FieldError::forbidden(
                path,
                &format!(
                    "existing ephemeral containers {:?} may not be changed\n",
                    o.name
                ),
            )),
            Some(_) => {}
        }
    }
    let regular: Vec<&str> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str())
        .collect();
    let mut seen: Vec<&str> = vec![];
    for (i, c) in new.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        if c.name.is_empty() {
            errs.push(FieldError::required(&at("name"), ""));
        } else if regular.contains(&c.name.as_str()) || seen.contains(&c.name.as_str()) {
            errs.push(FieldError::duplicate(&at("name"), &c.name));
        }
        seen.push(&c.name);
        if c.image.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(&at("image"), ""));
        }
        if let Some(t) = c.target_container_name.as_deref() {
            if !regular.contains(&t) {
                errs.push(FieldError::not_found(&at("targetContainerName"), t));
            }
        }
        let set = [
            ("ports", c.ports.as_ref().is_some_and(|p| !p.is_empty())),
            (
                "resources",
                c.resources.as_ref().is_some_and(|r| {
                    r.limits.as_ref().is_some_and(|m| !m.is_empty())
                        || r.requests.as_ref().is_some_and(|m| !m.is_empty())
                }),
            ),
            ("lifecycle", c.lifecycle.is_some()),
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
            ("restartPolicy", c.restart_policy.is_some()),
        ];
        for (field, _) in set.iter().filter(|(_, s)| *s) {
            errs.push(FieldError::forbidden(
                &at(field),
                "cannot be set for an Ephemeral Container",
            ));
        }
    }
}

fn mutable_part_cleared(s: &PodSpec, from: &PodSpec) -> PodSpec {
    let mut s = s.clone();
    for (c, o) in s.containers.iter_mut().zip(&from.containers) {
        c.image = o.image.clone();
    }
    for (c, o) in s
        .init_containers
        .iter_mut()
        .flatten()
        .zip(from.init_containers.iter().flatten())
    {
        c.image = o.image.clone();
    }
    s.active_deadline_seconds = from.active_deadline_seconds;
    s.termination_grace_period_seconds = from.termination_grace_period_seconds;
    // Written through their own subresource, checked on their own.
    s.ephemeral_containers = from.ephemeral_containers.clone();
    // Tolerations may only be added to.
    let old_t = from.tolerations.clone().unwrap_or_default();
    if old_t
        .iter()
        .all(|t| s.tolerations.iter().flatten().any(|n| n == t))
    {
        s.tolerations = from.tolerations.clone();
    }
    s
}

impl Kind for Pod {
    /// `kubectl debug` adds ephemeral containers through their subresource.
    const PARTS: &'static [(&'static str, &'static str)] =
        &[("ephemeralcontainers", "/spec/ephemeralContainers")];

    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        pod_spec_defaults(spec);
        pod_admission(spec);
        let qos = qos_class(spec).to_string();
        let status = self.status.get_or_insert_with(PodStatus::default);
        status.phase.get_or_insert_with(|| "Pending".into());
        status.qos_class.get_or_insert(qos);
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        v::pod_spec("spec", spec, errs);
        let old_spec = old.and_then(|o| o.spec.as_ref());
        ephemeral_containers(spec, old_spec, errs);
        if let Some(old_spec) = old_spec {
            if mutable_part_cleared(spec, old_spec) != *old_spec {
                errs.push(FieldError::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Ready", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age_col(),
            col("IP", 1, "The IP address assigned to the pod"),
            col("Node", 1, "The name of the node hosting the pod"),
            col("Nominated Node", 1, "The name of the node where the pod is nominated for scheduling"),
            col("Readiness Gates", 1, "The readiness gates of the pod"),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let (ready, status, restarts) = pod_summary(self);
        let spec = self.spec.as_ref();
        let st = self.status.as_ref();
        let ip = st
            .and_then(|s| s.pod_ips.as_ref())
            .and_then(|ips| ips.first())
            .map(|i| i.ip.clone())
            .or_else(|| st.and_then(|s| s.pod_ip.clone()))
            .unwrap_or_default();
        let gates = spec.and_then(|s| s.readiness_gates.as_ref()).map(|g| {
            let conds = st.and_then(|s| s.conditions.as_ref());
            let ok = g
                .iter()
                .filter(|g| {
                    conds.is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == g.condition_type && c.status == "True")
                    })
                })
                .count();
            format!("{ok}/{}", g.len())
        });
        vec![
            name_cell(obj),
            json!(ready),
            json!(status),
            json!(restarts),
            age_cell(obj),
            json!(or_none(&ip)),
            json!(or_none(
                spec.and_then(|s| s.node_name.as_deref()).unwrap_or("")
            )),
            json!(or_none(
                st.and_then(|s| s.nominated_node_name.as_deref())
                    .unwrap_or("")
            )),
            json!(gates.unwrap_or_else(|| "<none>".into())),
        ]
    }

    const FIELDS: &'static [FieldLabel] = &[
        ("spec.nodeName", "/spec/nodeName", ""),
        ("spec.restartPolicy", "/spec/restartPolicy", ""),
        ("spec.schedulerName", "/spec/schedulerName", ""),
        ("spec.serviceAccountName", "/spec/serviceAccountName", ""),
        ("spec.hostNetwork", "/spec/hostNetwork", "false"),
        ("status.phase", "/status/phase", ""),
        ("status.podIP", "/status/podIP", ""),
        ("status.nominatedNodeName", "/status/nominatedNodeName", ""),
    ];

    /// A pod on a node ends through its kubelet; unscheduled or finished
    /// pods go at once.
    fn graceful_delete(&self) -> Option<i64> {
        let spec = self.spec.as_ref()?;
        spec.node_name.as_ref().filter(|n| !n.is_empty())?;
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        Some(spec.termination_grace_period_seconds.unwrap_or(30))
    }
}

/// READY, STATUS and RESTARTS of a pod, as `kubectl get pods` shows them.
pub fn pod_summary(p: &Pod) -> (String, String, String) {
    let spec = p.spec.as_ref();
    let st = p.status.clone().unwrap_or_default();
    let total = spec.map_or(0, |s| s.containers.len());
    let mut reason = st.reason.clone().or(st.phase.clone()).unwrap_or_default();
    let mut restarts = 0;
    let mut ready = 0;
    let mut last_restart: Option<i64> = None;
    let mut note_restart = |cs: &k8s_openapi::api::core::v1::ContainerStatus| {
        if let Some(t) = cs
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .and_then(|t| t.finished_at.as_ref())
        {
            let s = t.0.as_second();
            if last_restart.is_none_or(|l| s > l) {
                last_restart = Some(s);
            }
        }
    };
    let mut initializing = false;
    let n_init = spec
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, Vec::len);
    for (i, c) in st.init_container_statuses.iter().flatten().enumerate() {
        restarts += c.restart_count;
        note_restart(c);
        let state = c.state.clone().unwrap_or_default();
        match (&state.terminated, &state.waiting) {
            (Some(t), _) if t.exit_code == 0 => continue,
            (Some(t), _) => {
                reason = match t.reason.as_deref() {
                    Some(r) if !r.is_empty() => format!("Init:{r}"),
                    _ if t.signal.unwrap_or(0) != 0 => {
                        format!("Init:Signal:{}", t.signal.unwrap_or(0))
                    }
                    _ => format!("Init:ExitCode:{}", t.exit_code),
                };
            }
            (None, Some(w))
                if w.reason
                    .as_deref()
                    .is_some_and(|r| !r.is_empty() && r != "PodInitializing") =>
            {
                reason = format!("Init:{}", w.reason.clone().unwrap_or_default());
            }
            _ => reason = format!("Init:{i}/{n_init}"),
        }
        initializing = true;
        break;
    }
    let conditions = st.conditions.clone().unwrap_or_default();
    let initialized = conditions
        .iter()
        .any(|c| c.type_ == "Initialized" && c.status == "True");
    if !initializing || initialized {
        let mut has_running = false;
        for c in st.container_statuses.iter().flatten().rev() {
            restarts += c.restart_count;
            note_restart(c);
            let state = c.state.clone().unwrap_or_default();
            if let Some(r) = state
                .waiting
                .as_ref()
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty())
            {
                reason = r;
            } else if let Some(t) = &state.terminated {
                reason = match t.reason.as_deref() {
                    Some(r) if !r.is_empty() => r.to_string(),
                    _ if t.signal.unwrap_or(0) != 0 => format!("Signal:{}", t.signal.unwrap_or(0)),
                    _ => format!("ExitCode:{}", t.exit_code),
                };
            } else if c.ready && state.running.is_some() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    let terminal = matches!(st.phase.as_deref(), Some("Succeeded" | "Failed"));
    if p.metadata.deletion_timestamp.is_some() {
        if st.reason.as_deref() == Some("NodeLost") {
            reason = "Unknown".into();
        } else if !terminal {
            reason = "Terminating".into();
        }
    }
    let restarts = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            printers::human_duration((chrono::Utc::now().timestamp() - t).max(0))
        ),
        _ => restarts.to_string(),
    };
    (format!("{ready}/{total}"), reason, restarts)
}

/// Namespaces the cluster needs: never deleted (upstream's
/// NamespaceLifecycle admission).
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

impl Kind for Namespace {
    const NAME_RULE: NameRule = NameRule::Label;

    fn refuse_delete(&self) -> Option<String> {
        let name = self.metadata.name.as_deref()?;
        SYSTEM_NAMESPACES
            .contains(&name)
            .then(|| "this namespace may not be deleted".to_string())
    }

    /// A deleted namespace is Terminating while its contents go.
    fn begin_delete(&mut self) {
        self.status
            .get_or_insert_with(NamespaceStatus::default)
            .phase = Some("Terminating".into());
    }

    /// Its `kubernetes` finalizer, until the namespace controller is done.
    fn held(&self) -> bool {
        self.spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| !f.is_empty())
    }

    /// The namespace controller removes its finalizer through `finalize`.
    const PARTS: &'static [(&'static str, &'static str)] = &[("finalize", "/spec/finalizers")];
    const FIELDS: &'static [FieldLabel] = &[("status.phase", "/status/phase", "")];

    fn prepare_for_create(&mut self) {
        self.spec
            .get_or_insert_with(NamespaceSpec::default)
            .finalizers = Some(vec!["kubernetes".into()]);
    }

    fn defaults(&mut self) {
        self.status
            .get_or_insert_with(NamespaceStatus::default)
            .phase
            .get_or_insert_with(|| "Active".into());
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Status", 0, "The status of the namespace"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        vec![name_cell(obj), json!(phase), age_cell(obj)]
    }
}

/// A node's roles from its `node-role.kubernetes.io/<role>` labels.
pub fn node_roles(node: &Value) -> Vec<String> {
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(r) if !r.is_empty() => Some(r.to_string()),
                    _ if k == "kubernetes.io/role" => v.as_str().map(str::to_string),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    roles.dedup();
    roles
}

impl Kind for Node {
    /// An agent registers its node with a status.
    const STATUS_ON_CREATE: bool = true;

    const FIELDS: &'static [FieldLabel] = &[("spec.unschedulable", "/spec/unschedulable", "false")];

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Status", 0, "The status of the node"),
            col("Roles", 0, "The roles of the node"),
            age_col(),
            col("Version", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", 1, "List of internal IPs."),
            col("External-IP", 1, "List of external IPs."),
            col("OS-Image", 1, "OS Image reported by the node."),
            col("Kernel-Version", 1, "Kernel Version reported by the node."),
            col(
                "Container-Runtime",
                1,
                "Container Runtime Version reported by the node.",
            ),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let st = self.status.clone().unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.as_str());
        let mut status = match ready {
            Some("True") => "Ready",
            Some("False") => "NotReady",
            _ => "Unknown",
        }
        .to_string();
        if self.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let roles = node_roles(obj);
        let addr = |t: &str| {
            st.addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == t)
                .map(|a| a.address.clone())
                .unwrap_or_else(|| "<none>".into())
        };
        let info = st.node_info.clone().unwrap_or_default();
        vec![
            name_cell(obj),
            json!(status),
            json!(if roles.is_empty() {
                "<none>".into()
            } else {
                roles.join(",")
            }),
            age_cell(obj),
            json!(info.kubelet_version),
            json!(addr("InternalIP")),
            json!(addr("ExternalIP")),
            json!(info.os_image),
            json!(info.kernel_version),
            json!(info.container_runtime_version),
        ]
    }
}

impl Kind for PodTemplate {
    fn defaults(&mut self) {
        if let Some(s) = self.template.as_mut().and_then(|t| t.spec.as_mut()) {
            pod_spec_defaults(s);
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        match &self.template {
            Some(t) => v::pod_template(t, &["Always", "OnFailure", "Never"], errs),
            None => errs.push(FieldError::required("template", "")),
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Containers", 0, "Names of each container in the template."),
            col(
                "Images",
                0,
                "Images referenced by each container in the template.",
            ),
            col("Pod Labels", 0, "The labels for the pod template."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let t = self.template.as_ref();
        let (c, i) = printers::containers_images(t.and_then(|t| t.spec.as_ref()));
        let labels = printers::map_selector(
            t.and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
        );
        vec![name_cell(obj), json!(c), json!(i), json!(labels)]
    }
}

impl Kind for ReplicationController {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        if let Some(t) = spec.template.as_mut() {
            // An empty selector means the template's labels.
            let labels = t.metadata.as_ref().and_then(|m| m.labels.clone());
            if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
                spec.selector = labels;
            }
            if let Some(s) = t.spec.as_mut() {
                pod_spec_defaults(s);
            }
        }
    }

    fn validate(&self, _old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return };
        v::non_negative("spec.replicas", spec.replicas, errs);
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            errs.push(FieldError::required("spec.selector", ""));
        }
        match &spec.template {
            Some(t) => {
                let labels = t
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                if spec
                    .selector
                    .iter()
                    .flatten()
                    .any(|(k, val)| labels.get(k) != Some(val))
                {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        format!("{labels:?}"),
                        "`selector` does not match template `labels`",
                    ));
                }
                v::pod_template(t, &["Always"], errs);
            }
            None => errs.push(FieldError::required("spec.template", "")),
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
            printers::map_selector(spec.selector.as_ref()),
        )
    }

    const FIELDS: &'static [FieldLabel] = &[("status.replicas", "/status/replicas", "0")];
}

/// DESIRED CURRENT READY AGE (+ CONTAINERS IMAGES SELECTOR): ReplicaSets and
/// ReplicationControllers.
/// A row for [`replica_columns`]: (desired, current, ready) counts, the pod
/// template and the selector as printed.
pub fn replica_row(
    obj: &Value,
    (desired, current, ready): (Option<i32>, i32, Option<i32>),
    template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
    selector: String,
) -> Vec<Value> {
    let (c, i) = printers::containers_images(template.and_then(|t| t.spec.as_ref()));
    vec![
        name_cell(obj),
        json!(desired.unwrap_or(1)),
        json!(current),
        json!(ready.unwrap_or(0)),
        age_cell(obj),
        json!(c),
        json!(i),
        json!(selector),
    ]
}

pub fn replica_columns() -> Vec<Value> {
    vec![
        name_col(),
        column("Desired", "integer", 0, "Number of desired pods."),
        column("Current", "integer", 0, "Number of actually running pods."),
        column("Ready", "integer", 0, "Number of ready pods."),
        age_col(),
        col("Containers", 1, "Names of each container in the template."),
        col(
            "Images",
            1,
            "Images referenced by each container in the template.",
        ),
        col("Selector", 1, "Label selector for pods."),
    ]
}

fn service_port_defaults(p: &mut ServicePort) {
    p.protocol.get_or_insert_with(|| "TCP".into());
    p.target_port.get_or_insert(IntOrString::Int(p.port));
}

/// Whether a Service of this type has node ports.
pub fn wants_node_ports(spec: &ServiceSpec) -> bool {
    match spec.type_.as_deref() {
        Some("NodePort") => true,
        Some("LoadBalancer") => spec.allocate_load_balancer_node_ports != Some(false),
        _ => false,
    }
}

/// Whether a Service of this type and clusterIP gets an allocated IP.
pub fn wants_cluster_ip(spec: &ServiceSpec) -> bool {
    spec.type_.as_deref() != Some("ExternalName") && spec.cluster_ip.as_deref() != Some("None")
}

impl Kind for Service {
    const NAME_RULE: NameRule = NameRule::Dns1035;

    /// Upstream's patchAllocatedValues and dropTypeDependentFields: an
    /// update that leaves out what was allocated keeps it (a PUT of the
    /// original manifest does not move the Service), and a type change
    /// drops what the new type does not use, unless the user changed it.
    fn prepare_for_update(&mut self, old: &Self) {
        let (Some(spec), Some(old_spec)) = (self.spec.as_mut(), old.spec.as_ref()) else {
            return;
        };
        let ext = |s: &ServiceSpec| s.type_.as_deref() == Some("ExternalName");
        if !ext(spec) && !ext(old_spec) && spec.cluster_ip.as_deref().unwrap_or("").is_empty() {
            spec.cluster_ip = old_spec.cluster_ip.clone();
            if spec.cluster_ips.as_ref().is_none_or(|v| v.is_empty()) {
                spec.cluster_ips = old_spec.cluster_ips.clone();
            }
        }
        if ext(spec) && !ext(old_spec) && spec.cluster_ip == old_spec.cluster_ip {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
        let old_ports = old_spec.ports.clone().unwrap_or_default();
        let wants = wants_node_ports(spec);
        for p in spec.ports.iter_mut().flatten() {
            let before = old_ports.iter().find(|o| {
                o.port == p.port
                    && o.protocol.as_deref().unwrap_or("TCP")
                        == p.protocol.as_deref().unwrap_or("TCP")
            });
            match (wants, p.node_port, before.and_then(|o| o.node_port)) {
                (true, None | Some(0), Some(np)) => p.node_port = Some(np),
                (false, Some(np), Some(was)) if np == was => p.node_port = None,
                _ => {}
            }
        }
    }

    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(ServiceSpec::default);
        let type_ = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
        spec.session_affinity.get_or_insert_with(|| "None".into());
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        if type_ != "ExternalName" {
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".into());
            spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
        }
        if matches!(type_.as_str(), "NodePort" | "LoadBalancer") {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        if let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty()) {
            spec.cluster_ips.get_or_insert_with(|| vec![ip]);
        }
        for p in spec.ports.iter_mut().flatten() {
            service_port_defaults(p);
        }
        self.status.get_or_insert_with(|| ServiceStatus {
            load_balancer: Some(Default::default()),
            ..Default::default()
        });
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else { return };
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
        if !types.contains(&type_) {
            errs.push(FieldError::not_supported("spec.type", type_, &types));
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if ports.is_empty() && type_ != "ExternalName" && !headless {
            errs.push(FieldError::required("spec.ports", ""));
        }
        if type_ == "ExternalName" && spec.external_name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let f = format!("spec.ports[{i}]");
            match p.name.as_deref() {
                Some(n) if !n.is_empty() => {
                    v::dns_label(&format!("{f}.name"), n, errs);
                    if !names.insert(n) {
                        errs.push(FieldError::duplicate(&format!("{f}.name"), n));
                    }
                }
                _ if ports.len() > 1 => errs.push(FieldError::required(&format!("{f}.name"), "")),
                _ => {}
            }
            if !(1..=65535).contains(&p.port) {
                errs.push(FieldError::invalid(
                    &format!("{f}.port"),
                    p.port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(np) = p.node_port {
                if type_ == "ClusterIP" {
                    errs.push(FieldError::forbidden(
                        &format!("{f}.nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                } else if !(1..=65535).contains(&np) {
                    errs.push(FieldError::invalid(
                        &format!("{f}.nodePort"),
                        np,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            if let Some(proto) = p.protocol.as_deref() {
                if !["TCP", "UDP", "SCTP"].contains(&proto) {
                    errs.push(FieldError::not_supported(
                        &format!("{f}.protocol"),
                        proto,
                        &["SCTP", "TCP", "UDP"],
                    ));
                }
            }
        }
        if let Some(sa) = spec.session_affinity.as_deref() {
            if !["None", "ClientIP"].contains(&sa) {
                errs.push(FieldError::not_supported(
                    "spec.sessionAffinity",
                    sa,
                    &["ClientIP", "None"],
                ));
            }
        }
        if let Some(old_ip) = old
            .and_then(|o| o.spec.as_ref())
            .and_then(|s| s.cluster_ip.as_deref())
            .filter(|ip| !ip.is_empty())
        {
            let new_ip = spec.cluster_ip.as_deref().unwrap_or("");
            if new_ip != old_ip && type_ != "ExternalName" {
                errs.push(v::immutable("spec.clusterIPs[0]", new_ip));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Type", 0, "The type of the service."),
            col("Cluster-IP", 0, "The cluster IP of the service."),
            col("External-IP", 0, "The external IP of the service."),
            col("Port(s)", 0, "The ports of the service."),
            age_col(),
            col("Selector", 1, "The selector of the service."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let cluster_ip = match spec.cluster_ip.as_deref() {
            None | Some("") => "<none>".to_string(),
            Some(ip) => ip.to_string(),
        };
        let lb: Vec<String> = self
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone().or(i.hostname.clone()))
            .collect();
        let mut ext: Vec<String> = spec.external_ips.clone().unwrap_or_default();
        let external = match type_.as_str() {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" => {
                ext.extend(lb);
                if ext.is_empty() {
                    "<pending>".into()
                } else {
                    ext.join(",")
                }
            }
            _ if !ext.is_empty() => ext.join(","),
            _ => "<none>".into(),
        };
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                match p.node_port {
                    Some(np) => format!("{}:{np}/{proto}", p.port),
                    None => format!("{}/{proto}", p.port),
                }
            })
            .collect();
        let ports = if ports.is_empty() {
            "<none>".into()
        } else {
            ports.join(",")
        };
        vec![
            name_cell(obj),
            json!(type_),
            json!(cluster_ip),
            json!(external),
            json!(ports),
            age_cell(obj),
            json!(printers::map_selector(spec.selector.as_ref())),
        ]
    }

    const FIELDS: &'static [FieldLabel] = &[
        ("spec.clusterIP", "/spec/clusterIP", ""),
        ("spec.type", "/spec/type", ""),
    ];
}

impl Kind for Endpoints {
    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Endpoints", 0, "Endpoints of the service"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let mut eps = vec![];
        for s in self.subsets.iter().flatten() {
            for a in s.addresses.iter().flatten() {
                match s.ports.as_deref() {
                    Some(ps) if !ps.is_empty() => {
                        eps.extend(ps.iter().map(|p| format!("{}:{}", a.ip, p.port)))
                    }
                    _ => eps.push(a.ip.clone()),
                }
            }
        }
        let n = eps.len();
        let mut text = eps.into_iter().take(3).collect::<Vec<_>>().join(",");
        if n > 3 {
            text.push_str(&format!(" + {} more...", n - 3));
        }
        vec![name_cell(obj), json!(or_none(&text)), age_cell(obj)]
    }
}

impl Kind for ServiceAccount {
    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            column(
                "Secrets",
                "integer",
                0,
                "The number of secrets of the service account",
            ),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(self.secrets.as_ref().map_or(0, Vec::len)),
            age_cell(obj),
        ]
    }
}

impl Kind for Secret {
    const FIELDS: &'static [FieldLabel] = &[("type", "/type", "")];
    const WRITE_ONLY: &'static [&'static str] = &["stringData"];

    fn defaults(&mut self) {
        // stringData is a write-only convenience, folded into data.
        if let Some(sd) = self.string_data.take() {
            let data = self.data.get_or_insert_with(Default::default);
            for (k, val) in sd {
                data.insert(k, k8s_openapi::ByteString(val.into_bytes()));
            }
        }
        self.type_.get_or_insert_with(|| "Opaque".into());
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        if let Some(old) = old {
            if old.type_ != self.type_ {
                errs.push(v::immutable("type", self.type_.clone().unwrap_or_default()));
            }
            if old.immutable == Some(true)
                && (old.data != self.data || self.immutable != Some(true))
            {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Type", 0, "The type of the secret"),
            column("Data", "string", 0, "The number of entries in the data"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![
            name_cell(obj),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.data.as_ref().map_or(0, |d| d.len())),
            age_cell(obj),
        ]
    }
}

impl Kind for ConfigMap {
    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        if let Some(old) = old {
            if old.immutable == Some(true)
                && (old.data != self.data
                    || old.binary_data != self.binary_data
                    || self.immutable != Some(true))
            {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            column("Data", "string", 0, "The number of entries in the data"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, |d| d.len())
            + self.binary_data.as_ref().map_or(0, |d| d.len());
        vec![name_cell(obj), json!(n), age_cell(obj)]
    }
}

impl Kind for Event {
    const NAME_RULE: NameRule = NameRule::PathSegment;
    const FIELDS: &'static [FieldLabel] = &[
        ("involvedObject.kind", "/involvedObject/kind", ""),
        ("involvedObject.namespace", "/involvedObject/namespace", ""),
        ("involvedObject.name", "/involvedObject/name", ""),
        ("involvedObject.uid", "/involvedObject/uid", ""),
        (
            "involvedObject.apiVersion",
            "/involvedObject/apiVersion",
            "",
        ),
        (
            "involvedObject.resourceVersion",
            "/involvedObject/resourceVersion",
            "",
        ),
        ("involvedObject.fieldPath", "/involvedObject/fieldPath", ""),
        ("reason", "/reason", ""),
        ("reportingComponent", "/reportingComponent", ""),
        ("source", "/source/component", ""),
        ("type", "/type", ""),
    ];

    fn columns() -> Vec<Value> {
        vec![
            col("Last Seen", 0, "Time when last this event was observed."),
            col("Type", 0, "Type of this event (Normal, Warning), new types could be added in the future."),
            col("Reason", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            col("Object", 0, "The object that this event is about."),
            col("Subobject", 1, "The subobject that this event is about."),
            col("Source", 1, "The component reporting this event."),
            col("Message", 0, "A human-readable description of the status of this operation."),
            col("First Seen", 1, "The time at which the event was first recorded."),
            col("Count", 1, "The number of times this event has occurred."),
            column("Name", "string", 1, "Name must be unique within a namespace."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let last = self
            .last_timestamp
            .as_ref()
            .map(|t| since(Some(t)))
            .or_else(|| {
                self.event_time.as_ref().map(|t| {
                    printers::human_duration(chrono::Utc::now().timestamp() - t.0.as_second())
                })
            })
            .unwrap_or_else(|| "<unknown>".into());
        let first = self
            .first_timestamp
            .as_ref()
            .map(|t| since(Some(t)))
            .unwrap_or_else(|| "<unknown>".into());
        let io = &self.involved_object;
        let object = format!(
            "{}/{}",
            io.kind.clone().unwrap_or_default().to_lowercase(),
            io.name.clone().unwrap_or_default()
        );
        let source = self
            .source
            .as_ref()
            .map(|s| match &s.host {
                Some(h) if !h.is_empty() => {
                    format!("{}, {h}", s.component.clone().unwrap_or_default())
                }
                _ => s.component.clone().unwrap_or_default(),
            })
            .or_else(|| self.reporting_component.clone())
            .unwrap_or_default();
        vec![
            json!(last),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.reason.clone().unwrap_or_default()),
            json!(object),
            json!(io.field_path.clone().unwrap_or_default()),
            json!(source),
            json!(self.message.clone().unwrap_or_default().trim()),
            json!(first),
            json!(self.count.unwrap_or(1)),
            name_cell(obj),
        ]
    }
}

fn access_modes(m: Option<&Vec<String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Kind for PersistentVolume {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.persistent_volume_reclaim_policy
            .get_or_insert_with(|| "Retain".into());
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        self.status
            .get_or_insert_with(PersistentVolumeStatus::default)
            .phase
            .get_or_insert_with(|| "Pending".into());
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Capacity", 0, "capacity is the description of the persistent volume's resources and capacity."),
            col("Access Modes", 0, "accessModes contains all ways the volume can be mounted."),
            col("Reclaim Policy", 0, "persistentVolumeReclaimPolicy defines what happens to a persistent volume when released from its claim."),
            col("Status", 0, "phase indicates if a volume is available, bound to a claim, or released by a claim."),
            col("Claim", 0, "claimRef is part of a bi-directional binding between PersistentVolume and PersistentVolumeClaim."),
            col("StorageClass", 0, "storageClassName is the name of StorageClass to which this persistent volume belongs."),
            col("VolumeAttributesClass", 0, "Name of VolumeAttributesClass to which this persistent volume belongs."),
            col("Reason", 0, "reason is a brief CamelCase string that describes any failure."),
            age_col(),
            col("VolumeMode", 1, "volumeMode defines if a volume is intended to be used with a formatted filesystem or to remain in raw block state."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let claim = spec
            .claim_ref
            .as_ref()
            .map(|c| {
                format!(
                    "{}/{}",
                    c.namespace.clone().unwrap_or_default(),
                    c.name.clone().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        let cap = spec
            .capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        vec![
            name_cell(obj),
            json!(cap),
            json!(access_modes(spec.access_modes.as_ref())),
            json!(spec.persistent_volume_reclaim_policy.unwrap_or_default()),
            json!(st.phase.unwrap_or_default()),
            json!(claim),
            json!(spec.storage_class_name.unwrap_or_default()),
            json!(or_none(
                spec.volume_attributes_class_name.as_deref().unwrap_or("")
            )),
            json!(st.reason.unwrap_or_default()),
            age_cell(obj),
            json!(spec.volume_mode.unwrap_or_default()),
        ]
    }
}

impl Kind for PersistentVolumeClaim {
    fn defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
        self.status
            .get_or_insert_with(PersistentVolumeClaimStatus::default)
            .phase
            .get_or_insert_with(|| "Pending".into());
    }

    fn validate(&self, old: Option<&Self>, errs: &mut Vec<FieldError>) {
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required("spec", ""));
            return;
        };
        if spec.access_modes.as_ref().is_none_or(Vec::is_empty) {
            errs.push(FieldError::required(
                "spec.accessModes",
                "at least 1 access mode is required",
            ));
        }
        if spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .is_none()
        {
            errs.push(FieldError::required("spec.resources[storage]", ""));
        }
        if let Some(old_spec) = old.and_then(|o| o.spec.as_ref()) {
            let mut a = spec.clone();
            let mut b = old_spec.clone();
            a.resources = None;
            b.resources = None;
            if a.volume_name.is_none() {
                b.volume_name = None;
            }
            if a != b {
                errs.push(FieldError::forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
            }
        }
    }

    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            col("Status", 0, "phase represents the current phase of PersistentVolumeClaim."),
            col("Volume", 0, "volumeName is the binding reference to the PersistentVolume backing this claim."),
            col("Capacity", 0, "capacity represents the actual resources of the underlying volume."),
            col("Access Modes", 0, "accessModes contains the desired access modes the volume should have."),
            col("StorageClass", 0, "storageClassName is the name of the StorageClass required by the claim."),
            col("VolumeAttributesClass", 0, "volumeAttributesClassName may be used to set the VolumeAttributesClass used by this claim."),
            age_col(),
            col("VolumeMode", 1, "volumeMode defines what type of volume is required by the claim."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let cap = st
            .capacity
            .as_ref()
            .and_then(|c| c.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        vec![
            name_cell(obj),
            json!(st.phase.unwrap_or_default()),
            json!(spec.volume_name.unwrap_or_default()),
            json!(cap),
            json!(access_modes(st.access_modes.as_ref())),
            json!(spec.storage_class_name.unwrap_or_default()),
            json!(or_none(
                spec.volume_attributes_class_name.as_deref().unwrap_or("")
            )),
            age_cell(obj),
            json!(spec.volume_mode.unwrap_or_default()),
        ]
    }
}

impl Kind for ResourceQuota {
    fn columns() -> Vec<Value> {
        vec![
            name_col(),
            age_col(),
            col("Request", 0, "Request represents a minimum amount of cpu/memory that a container may consume."),
            col("Limit", 0, "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."),
        ]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        let hard = self
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let used = self
            .status
            .as_ref()
            .and_then(|s| s.used.clone())
            .unwrap_or_default();
        let (mut req, mut lim) = (vec![], vec![]);
        for (k, q) in &hard {
            let u = used
                .get(k)
                .map(|q| q.0.clone())
                .unwrap_or_else(|| "0".into());
            let cell = format!("{k}: {u}/{}", q.0);
            if k.starts_with("limits.") {
                lim.push(cell);
            } else {
                req.push(cell);
            }
        }
        vec![
            name_cell(obj),
            age_cell(obj),
            json!(req.join(", ")),
            json!(lim.join(", ")),
        ]
    }
}

impl Kind for LimitRange {
    fn columns() -> Vec<Value> {
        vec![name_col(), column("Created At", "date", 0, "CreationTimestamp is a timestamp representing the server time when this object was created.")]
    }

    fn row(&self, obj: &Value) -> Vec<Value> {
        vec![name_cell(obj), obj["metadata"]["creationTimestamp"].clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::strategy::Strategy;

    #[test]
    fn secret_string_data_is_folded_into_data_and_never_stored() {
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="}, "stringData": {"a": "new", "b": "two"}});
        let (mut errs, mut unknown) = (vec![], vec![]);
        Typed::<Secret>::new()
            .admit(&mut s, None, &mut errs, &mut unknown)
            .unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        // A known field: strict field validation accepts it.
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(s.get("stringData").is_none(), "{s}");
        // stringData wins over data for the same key.
        assert_eq!(s["data"], json!({"a": "bmV3", "b": "dHdv", "keep": "eA=="}));
        assert_eq!(s["type"], "Opaque");
    }

    #[test]
    fn pod_defaults_and_validation() {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}, {"name": "d", "image": "busybox"}]}});
        let (mut errs, mut unknown) = (vec![], vec![]);
        POD.admit(&mut p, None, &mut errs, &mut unknown).unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(p["spec"]["schedulerName"], "default-scheduler");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(
            p["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(p["spec"]["containers"][1]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "BestEffort");

        let mut bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}, {"name": "c", "image": "x", "bogus": 1}]}});
        let (mut errs, mut unknown) = (vec![], vec![]);
        POD.admit(&mut bad, None, &mut errs, &mut unknown).unwrap();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"spec.containers[0].image: Required value".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"spec.containers[1].name: Duplicate value: \"c\"".to_string()),
            "{text:?}"
        );
        assert_eq!(unknown, ["spec.containers[1].bogus"]);
    }

    #[test]
    fn pod_updates_only_change_images() {
        let mut old = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}});
        let (mut e, mut u) = (vec![], vec![]);
        POD.admit(&mut old, None, &mut e, &mut u).unwrap();
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("busybox:2");
        POD.admit(&mut new, Some(&old), &mut e, &mut u).unwrap();
        assert!(e.is_empty());
        new["spec"]["restartPolicy"] = json!("Never");
        POD.admit(&mut new, Some(&old), &mut e, &mut u).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0]
            .to_string()
            .starts_with("spec: Forbidden: pod updates may not change fields"));
    }

    #[test]
    fn pod_status_column() {
        let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "image": "", "imageID": "", "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 3, "image": "", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}))
        .unwrap();
        let (ready, status, restarts) = pod_summary(&p);
        assert_eq!(
            (ready.as_str(), status.as_str(), restarts.as_str()),
            ("1/2", "CrashLoopBackOff", "3")
        );
    }

    #[test]
    fn service_defaults() {
        let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
        let (mut e, mut u) = (vec![], vec![]);
        SERVICE.admit(&mut s, None, &mut e, &mut u).unwrap();
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
    }
}

/// What became of a binding (`pods/binding`, the scheduler).
#[derive(Debug, PartialEq)]
pub enum Bound {
    Yes,
    Missing,
    /// Being deleted or already bound: upstream's message.
    Refused(String),
}

/// Set `node` and the PodScheduled condition on `p`, or say why not
/// (upstream's messages).
fn assign_node(p: &mut Value, node: &str, now: &str) -> Result<(), String> {
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        return Err("pod is being deleted, cannot be assigned to a host".to_string());
    }
    if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str) {
        if !n.is_empty() {
            let name = p
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(format!("pod {name} is already assigned to node \"{n}\""));
        }
    }
    p["spec"]["nodeName"] = json!(node);
    let conds = p["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conds: Vec<Value> = conds
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}));
    p["status"]["conditions"] = json!(conds);
    Ok(())
}

/// Bind the pod at `r` to `node` once, with its PodScheduled condition.
pub async fn bind_pod(
    objects: &crate::datastore::objects::Objects,
    r: &crate::datastore::objects::Ref,
    node: &str,
) -> crate::datastore::objects::Result<Bound> {
    let mut refused = None;
    let now = crate::datastore::objects::now_rfc3339();
    let res = objects
        .modify(r, |p| match assign_node(p, node, &now) {
            Ok(()) => true,
            Err(m) => {
                refused = Some(m);
                false
            }
        })
        .await?;
    Ok(match (res, refused) {
        (_, Some(m)) => Bound::Refused(m),
        (None, None) => Bound::Missing,
        (Some(_), None) => Bound::Yes,
    })
}

/// Bind as `bind_pod` does, starting from `p` (the pod as the caller's
/// cache has it) instead of reading it again: the write is made at that
/// revision, and only a conflict costs the read.
pub async fn bind_pod_from(
    objects: &crate::datastore::objects::Objects,
    r: &crate::datastore::objects::Ref,
    mut p: Value,
    node: &str,
) -> crate::datastore::objects::Result<Bound> {
    let now = crate::datastore::objects::now_rfc3339();
    if let Err(m) = assign_node(&mut p, node, &now) {
        return Ok(Bound::Refused(m));
    }
    match objects.update(r, p).await {
        Ok(_) => Ok(Bound::Yes),
        Err(crate::datastore::objects::ObjectError::Store(
            crate::datastore::DatastoreError::Conflict { .. },
        )) => bind_pod(objects, r, node).await,
        Err(crate::datastore::objects::ObjectError::Store(
            crate::datastore::DatastoreError::NotFound(_),
        )) => Ok(Bound::Missing),
        Err(e) => Err(e),
    }
}
