//! One pod on the runtime: sandbox, init containers in order, containers,
//! restarts by restartPolicy with upstream's back-off, termination, and the
//! status kubectl reads. Everything is found again from CRI labels on
//! every sync, so a restarted agent adopts the containers it left running.

use super::{probes, resources, sandbox, volumes};
use crate::apiclient::Api;
use crate::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const LABEL_UID: &str = "io.kubernetes.pod.uid";
pub(super) const LABEL_NAME: &str = "io.kubernetes.pod.name";
pub(super) const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub(super) const LABEL_CONTAINER: &str = "io.kubernetes.container.name";

/// Upstream's crash-loop back-off: 10 s doubling to 5 min, forgotten after
/// 10 min of clean running.
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What the kubelet remembers of a pod between syncs.
#[derive(Default)]
pub struct Tracked {
    pub start_time: Option<String>,
    /// container name → (not before, current back-off).
    backoff: HashMap<String, (Instant, Duration)>,
    /// The last status sent, to send only changes.
    pub sent: Option<Value>,
    pub volumes: volumes::VolumeState,
    probes: HashMap<String, probes::ContainerProbes>,
    /// container name → (started, ready) from its probes.
    verdicts: HashMap<String, (bool, bool)>,
    /// container id → its last status, reused while its state stays.
    statuses: HashMap<String, cri::ContainerStatus>,
    /// The ready sandbox's id and address.
    sandbox_ip: Option<(String, String)>,
    /// When the containers still running in a dead sandbox were told to
    /// stop, so that it can be replaced.
    replacing: Option<Instant>,
}

/// The node facts a pod needs.
pub struct NodeCtx {
    pub name: String,
    pub ip: String,
    pub log_root: PathBuf,
    /// `<data-dir>/agent/pods`: each pod's volumes under its uid.
    pub pods_root: PathBuf,
}

impl NodeCtx {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_root.join(uid)
    }

    /// `/var/log/pods/<ns>_<name>_<uid>`, as upstream names a pod's logs.
    pub fn log_dir(&self, ns: &str, name: &str, uid: &str) -> PathBuf {
        self.log_root.join(format!("{ns}_{name}_{uid}"))
    }

    /// Remove a finished pod's logs and volumes.
    pub fn remove_pod_files(&self, ns: &str, name: &str, uid: &str) {
        let _ = std::fs::remove_dir_all(self.log_dir(ns, name, uid));
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
    }
}

fn rfc3339_ns(ns: i64) -> String {
    chrono::DateTime::from_timestamp(ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// The sandbox config of `pod`.
fn sandbox_config(pod: &Pod, node: &NodeCtx, attempt: u32) -> cri::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let (ns, name, uid) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
        uid(pod),
    );
    let host_net = spec.host_network.unwrap_or(false);
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: uid.clone(),
            namespace: ns.clone(),
            attempt,
        }),
        // Host-network pods share the host's UTS namespace: runc refuses
        // to set a hostname there (it is the node's already).
        hostname: if host_net {
            String::new()
        } else {
            spec.hostname.clone().unwrap_or_else(|| name.clone())
        },
        log_directory: node.log_dir(&ns, &name, &uid).display().to_string(),
        labels: labels(&[
            (LABEL_UID, &uid),
            (LABEL_NAME, &name),
            (LABEL_NAMESPACE, &ns),
        ]),
        port_mappings: resources::port_mappings(&spec),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(&spec)),
                privileged: resources::privileged(&spec),
                ..Default::default()
            }),
            // Admission let only allowed ones through.
            sysctls: crate::sysctls::of(pod),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's namespaces: its own, or the host's where it asks for them.
fn namespaces(spec: &PodSpec) -> cri::NamespaceOption {
    let mode = |host: Option<bool>, default: cri::NamespaceMode| {
        if host.unwrap_or(false) {
            cri::NamespaceMode::Node as i32
        } else {
            default as i32
        }
    };
    let pid_default = if spec.share_process_namespace.unwrap_or(false) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: mode(spec.host_network, cri::NamespaceMode::Pod),
        pid: mode(spec.host_pid, pid_default),
        ipc: mode(spec.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The value of a pod field an env var names.
fn pod_field(pod: &Pod, node: &NodeCtx, pod_ip: &str, path: &str) -> Option<String> {
    Some(match path {
        "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
        "metadata.uid" => uid(pod),
        "spec.nodeName" => node.name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => node.ip.clone(),
        "status.podIP" => pod_ip.to_string(),
        _ => {
            // `metadata.labels['k']` and `metadata.annotations['k']`; a
            // missing key is an empty value, as upstream's.
            let (map, key) = if let Some(k) = path.strip_prefix("metadata.labels[") {
                (pod.metadata.labels.as_ref(), k)
            } else {
                let k = path.strip_prefix("metadata.annotations[")?;
                (pod.metadata.annotations.as_ref(), k)
            };
            let key = key
                .strip_suffix(']')?
                .trim_matches(|c| c == '\'' || c == '"');
            map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
        }
    })
}

/// Environment variables: envFrom, then env (values, the pod's fields,
/// ConfigMap and Secret keys). An error is the reason the container waits
/// (upstream's CreateContainerConfigError).
async fn envs(ctx: &Ctx<'_>, c: &Container) -> Result<Vec<cri::KeyValue>, String> {
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let mut out: Vec<(String, String)> = vec![];
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &from.config_map_ref {
            (
                volumes::config_map(ctx.api, &ns, &r.name).await?,
                r.optional,
                format!("configmap {:?}", r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                volumes::secret(ctx.api, &ns, &r.name).await?,
                r.optional,
                format!("secret {:?}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Some(d) => out.extend(
                d.into_iter()
                    .map(|(k, v)| (format!("{prefix}{k}"), text(v))),
            ),
            None if optional == Some(true) => {}
            None => return Err(format!("{what} not found")),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, None) => String::new(),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    pod_field(ctx.pod, ctx.node, ctx.pod_ip, &f.field_path)
                        .ok_or_else(|| format!("unsupported fieldRef {:?}", f.field_path))?
                } else if let Some(k) = &from.config_map_key_ref {
                    let d = volumes::config_map(ctx.api, &ns, &k.name).await?;
                    match d.and_then(|mut d| d.remove(&k.key)) {
                        Some(v) => text(v),
                        None if k.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                k.key, k.name
                            ))
                        }
                    }
                } else if let Some(k) = &from.secret_key_ref {
                    let d = volumes::secret(ctx.api, &ns, &k.name).await?;
                    match d.and_then(|mut d| d.remove(&k.key)) {
                        Some(v) => text(v),
                        None if k.optional == Some(true) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                k.key, k.name
                            ))
                        }
                    }
                } else {
                    return Err(format!("env {:?}: unsupported valueFrom", e.name));
                }
            }
        };
        out.push((e.name.clone(), value));
    }
    Ok(out
        .into_iter()
        .map(|(key, value)| cri::KeyValue { key, value })
        .collect())
}

/// The container's volume mounts as CRI mounts.
fn mounts(c: &Container, prepared: &volumes::Prepared) -> Result<Vec<cri::Mount>, String> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let base = prepared
                .get(&m.name)
                .ok_or_else(|| format!("volume mount {:?} names no volume of the pod", m.name))?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) if sub.split('/').any(|p| p == "..") || sub.starts_with('/') => {
                    return Err(format!("subPath {sub:?} must stay inside the volume"))
                }
                Some(sub) => base.join(sub),
                None => base.clone(),
            };
            Ok(cri::Mount {
                container_path: m.mount_path.clone(),
                host_path: host.display().to_string(),
                readonly: m.read_only.unwrap_or(false),
                ..Default::default()
            })
        })
        .collect()
}

/// One container as the runtime has it: its latest attempt, and the one
/// before when that one exited (the container's `lastState`).
struct Seen {
    status: cri::ContainerStatus,
    previous: Option<cri::ContainerStatus>,
}

impl Seen {
    fn state(&self) -> i32 {
        self.status.state
    }
    fn exited(&self) -> bool {
        self.state() == cri::ContainerState::ContainerExited as i32
    }
    fn running(&self) -> bool {
        self.state() == cri::ContainerState::ContainerRunning as i32
    }
    fn attempt(&self) -> u32 {
        self.status
            .metadata
            .as_ref()
            .map(|m| m.attempt)
            .unwrap_or(0)
    }
}

pub(super) type Runtime =
    cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// The containers of the pod with `uid`, every attempt.
pub(super) async fn containers_of(
    rt: &mut Runtime,
    uid: &str,
) -> Result<Vec<cri::Container>, tonic::Status> {
    let filter = cri::ContainerFilter {
        label_selector: labels(&[(LABEL_UID, uid)]),
        ..Default::default()
    };
    let req = cri::ListContainersRequest {
        filter: Some(filter),
    };
    Ok(rt.list_containers(req).await?.into_inner().containers)
}

/// The sandboxes of the pod with `uid`.
pub(super) async fn sandboxes_of(
    rt: &mut Runtime,
    uid: &str,
) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
    let filter = cri::PodSandboxFilter {
        label_selector: labels(&[(LABEL_UID, uid)]),
        ..Default::default()
    };
    let req = cri::ListPodSandboxRequest {
        filter: Some(filter),
    };
    Ok(rt.list_pod_sandbox(req).await?.into_inner().items)
}

/// Every sandbox and container on the node, by pod uid, from one list
/// each (upstream's PLEG relist): a sync pass reads this instead of
/// asking the runtime about each pod.
#[derive(Default)]
pub struct Listing {
    sandboxes: HashMap<String, Vec<cri::PodSandbox>>,
    containers: HashMap<String, Vec<cri::Container>>,
}

impl Listing {
    pub async fn fetch(cri_: &Cri) -> Result<Self, tonic::Status> {
        let mut rt = cri_.runtime.clone();
        let sandboxes = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items;
        let containers = rt
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers;
        Ok(Self::from_parts(sandboxes, containers))
    }

    /// Group what the runtime listed by pod uid; anything without rk3s's
    /// pod labels is not the kubelet's and is left out.
    pub fn from_parts(sandboxes: Vec<cri::PodSandbox>, containers: Vec<cri::Container>) -> Self {
        let mut l = Listing::default();
        for s in sandboxes {
            if let Some(u) = s.labels.get(LABEL_UID).cloned() {
                l.sandboxes.entry(u).or_default().push(s);
            }
        }
        for c in containers {
            if let Some(u) = c.labels.get(LABEL_UID).cloned() {
                l.containers.entry(u).or_default().push(c);
            }
        }
        l
    }

    /// Whether the runtime holds a sandbox or a container of the pod.
    pub fn knows(&self, uid: &str) -> bool {
        self.sandboxes.contains_key(uid) || self.containers.contains_key(uid)
    }

    /// Every container of this node's pods.
    pub fn containers(&self) -> impl Iterator<Item = &cri::Container> {
        self.containers.values().flatten()
    }

    /// The sandboxes of this node's pods, one list per pod.
    pub fn sandboxes(&self) -> impl Iterator<Item = &[cri::PodSandbox]> {
        self.sandboxes.values().map(Vec::as_slice)
    }
}

/// The pod's sandboxes (newest first) and latest container per name, from
/// `listing` when given. A container's status is asked for only when its
/// state differs from the last one seen (a running or exited container's
/// status does not change otherwise).
async fn observe(
    cri_: &Cri,
    uid: &str,
    listing: Option<&Listing>,
    st: &mut Tracked,
) -> Result<(Vec<cri::PodSandbox>, BTreeMap<String, Seen>), tonic::Status> {
    let mut rt = cri_.runtime.clone();
    let (mut sandboxes, containers) = match listing {
        Some(l) => (
            l.sandboxes.get(uid).cloned().unwrap_or_default(),
            l.containers.get(uid).cloned().unwrap_or_default(),
        ),
        None => (
            sandboxes_of(&mut rt, uid).await?,
            containers_of(&mut rt, uid).await?,
        ),
    };
    sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    let mut by_name: BTreeMap<String, Vec<cri::Container>> = BTreeMap::new();
    for c in containers {
        let Some(n) = c.labels.get(LABEL_CONTAINER).cloned() else {
            continue;
        };
        by_name.entry(n).or_default().push(c);
    }
    let mut seen = BTreeMap::new();
    let mut statuses = HashMap::new();
    for (n, mut attempts) in by_name {
        attempts.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        let exited = |c: &&cri::Container| c.state == cri::ContainerState::ContainerExited as i32;
        // Only for lastState: failing to read it must not fail the sync.
        let previous = match attempts.get(1).filter(exited) {
            Some(p) => status_of(&mut rt, p, st, &mut statuses).await.ok(),
            None => None,
        };
        let status = status_of(&mut rt, &attempts[0], st, &mut statuses).await?;
        seen.insert(n, Seen { status, previous });
    }
    st.statuses = statuses;
    Ok((sandboxes, seen))
}

/// A container's status: the one seen last pass while its state is the
/// same (a running or exited container's status does not change), else
/// asked for. Kept in `now` for the next pass.
async fn status_of(
    rt: &mut Runtime,
    c: &cri::Container,
    st: &Tracked,
    now: &mut HashMap<String, cri::ContainerStatus>,
) -> Result<cri::ContainerStatus, tonic::Status> {
    let cached = st
        .statuses
        .get(&c.id)
        .filter(|s| s.state == c.state && c.state != cri::ContainerState::ContainerCreated as i32)
        .cloned();
    let s = match cached {
        Some(s) => s,
        None => rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .unwrap_or_default(),
    };
    now.insert(c.id.clone(), s.clone());
    Ok(s)
}

/// The pod's termination grace period in seconds (upstream's default 30).
pub fn grace_of(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

/// Stop and remove everything of the pod with `uid` (grace in seconds):
/// running containers in parallel, each after its preStop hook when the
/// pod's spec is known.
pub async fn teardown(
    cri_: &Cri,
    uid: &str,
    grace: i64,
    pod: Option<&Pod>,
) -> Result<(), tonic::Status> {
    let mut rt = cri_.runtime.clone();
    let containers = containers_of(&mut rt, uid).await?;
    let pod_ip = pod.and_then(recorded_ip).unwrap_or_default();
    let specs: Vec<Container> = pod
        .and_then(|p| p.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let stops = containers
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .map(|c| {
            let spec = c
                .labels
                .get(LABEL_CONTAINER)
                .and_then(|n| specs.iter().find(|s| &s.name == n));
            super::hooks::stop(cri_, &c.id, spec, &pod_ip, grace)
        });
    for r in futures_util::future::join_all(stops).await {
        r?;
    }
    for c in &containers {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.id.clone(),
        })
        .await?;
    }
    for s in sandboxes_of(&mut rt, uid).await? {
        sandbox::remove(cri_, &s.id).await?;
    }
    Ok(())
}

/// Why a container cannot be created yet: `(reason, message)`.
async fn image_problem(cri_: &Cri, c: &Container) -> Option<(String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let spec = cri::ImageSpec {
        image: image.clone(),
        ..Default::default()
    };
    let present = cri_
        .images
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().image)
        .is_some();
    if present {
        return None;
    }
    let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
    if policy == "Never" {
        return Some((
            "ErrImageNeverPull".into(),
            format!("Container image \"{image}\" is not present with pull policy of Never"),
        ));
    }
    let pulled = tokio::time::timeout(
        Duration::from_secs(30),
        cri_.images.clone().pull_image(cri::PullImageRequest {
            image: Some(spec),
            ..Default::default()
        }),
    )
    .await;
    match pulled {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some((
            "ErrImagePull".into(),
            format!("failed to pull image \"{image}\": {}", e.message()),
        )),
        Err(_) => Some((
            "ErrImagePull".into(),
            format!("pulling image \"{image}\" timed out"),
        )),
    }
}

/// Sync one pod; returns the status to publish.
pub async fn sync(
    cri_: &Cri,
    api: &Api,
    node: &NodeCtx,
    pod: &Pod,
    st: &mut Tracked,
    listing: Option<&Listing>,
) -> Result<Value, String> {
    let uid = uid(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let e = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let (sandboxes, mut seen) = observe(cri_, &uid, listing, st).await.map_err(e)?;
    let terminal = crate::placement::finished(pod);
    st.start_time
        .get_or_insert_with(crate::objects::now_rfc3339);
    let mut waiting: HashMap<String, (String, String)> = HashMap::new();
    let mut early_volumes = None;
    let sandbox = match sandboxes.iter().find(|s| sandbox::ready(s)) {
        _ if terminal => {
            sandbox::finish(cri_, &sandboxes).await;
            None
        }
        Some(s) => Some(s.id.clone()),
        // A dead sandbox is replaced once what still runs in it has
        // stopped (`replaceable` asks it to). Upstream's "Never": a pod
        // whose sandbox died after its containers ran gets no new one;
        // its containers end and so does the pod.
        None if !replaceable(cri_, pod, &seen, st).await => None,
        None if policy == "Never" && !sandboxes.is_empty() && !seen.is_empty() => None,
        None => {
            st.replacing = None;
            // The volumes' API reads (a service-account token, the CA
            // bundle) overlap the runtime building the sandbox instead of
            // adding their round trips to every pod start.
            let dir = node.pod_dir(&uid);
            let (id, prepared) = tokio::join!(
                create_sandbox(cri_, pod, node, &sandboxes, &mut waiting),
                volumes::prepare(api, pod, &dir, &mut st.volumes),
            );
            early_volumes = Some(prepared);
            id
        }
    };
    // A sandbox keeps its address: asked for once per sandbox.
    let known_ip = sandbox
        .as_ref()
        .and_then(|id| st.sandbox_ip.as_ref().filter(|(s, _)| s == id))
        .map(|(_, ip)| ip.clone());
    let pod_ip = match (&sandbox, known_ip) {
        (Some(_), Some(ip)) => ip,
        (Some(id), None) => cri_
            .runtime
            .clone()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().status)
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .inspect(|ip| st.sandbox_ip = Some((id.clone(), ip.clone())))
            .unwrap_or_else(|| {
                if spec.host_network.unwrap_or(false) {
                    node.ip.clone()
                } else {
                    String::new()
                }
            }),
        // A finished pod keeps the address it had, as upstream's status
        // does, though its sandbox is stopped and the address free.
        (None, _) if terminal => st
            .sandbox_ip
            .as_ref()
            .map(|(_, ip)| ip.clone())
            .or_else(|| recorded_ip(pod))
            .unwrap_or_default(),
        (None, _) => String::new(),
    };
    // Init containers one at a time, then the containers.
    let inits = spec.init_containers.clone().unwrap_or_default();
    let mut initialized = true;
    let prepared = match sandbox.as_ref().filter(|_| !terminal) {
        None => None,
        Some(_) => {
            let ready = match early_volumes {
                Some(done) => done,
                None => volumes::prepare(api, pod, &node.pod_dir(&uid), &mut st.volumes).await,
            };
            match ready {
                Ok(p) => Some(p),
                Err(e) => {
                    // Upstream's FailedMount: nothing starts, the containers wait.
                    tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), error = %e, "volumes not ready");
                    for c in spec
                        .init_containers
                        .iter()
                        .flatten()
                        .chain(&spec.containers)
                    {
                        waiting.insert(c.name.clone(), ("ContainerCreating".into(), e.clone()));
                    }
                    None
                }
            }
        }
    };
    if let (Some(sb), Some(prepared)) = (sandbox.as_ref().filter(|_| !terminal), &prepared) {
        let ctx = Ctx {
            cri: cri_,
            api,
            node,
            pod,
            sandbox: sb,
            pod_ip: &pod_ip,
            volumes: prepared,
        };
        for c in &inits {
            let done = seen
                .get(&c.name)
                .is_some_and(|s| s.exited() && s.status.exit_code == 0);
            if done {
                continue;
            }
            initialized = false;
            let restart = policy != "Never";
            start_if_needed(&ctx, c, &mut seen, st, &mut waiting, restart).await;
            break;
        }
        if initialized {
            for c in &spec.containers {
                let restart = match seen.get(&c.name) {
                    Some(s) if s.exited() => match policy.as_str() {
                        "Always" => true,
                        "OnFailure" => s.status.exit_code != 0,
                        _ => false,
                    },
                    _ => true,
                };
                start_if_needed(&ctx, c, &mut seen, st, &mut waiting, restart).await;
                probe(&ctx, c, &seen, st).await;
            }
        }
    } else if !inits.is_empty() {
        // Not started this pass: initialized only if the inits all finished.
        initialized = inits.iter().all(|c| {
            seen.get(&c.name)
                .is_some_and(|s| s.exited() && s.status.exit_code == 0)
        });
    }
    Ok(status(
        pod,
        node,
        st,
        &seen,
        &waiting,
        initialized,
        &pod_ip,
        &policy,
    ))
}

/// A new sandbox for the pod, once every earlier one is stopped (a dead
/// one's address is released only then). None when the runtime refused:
/// the containers then wait with its message.
async fn create_sandbox(
    cri_: &Cri,
    pod: &Pod,
    node: &NodeCtx,
    earlier: &[cri::PodSandbox],
    waiting: &mut HashMap<String, (String, String)>,
) -> Option<String> {
    sandbox::retire(cri_, earlier).await;
    let config = sandbox_config(pod, node, sandbox::next_attempt(earlier));
    let _ = std::fs::create_dir_all(&config.log_directory);
    let r = cri_
        .runtime
        .clone()
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await;
    match r {
        Ok(r) => Some(r.into_inner().pod_sandbox_id),
        Err(s) => {
            for c in pod.spec.iter().flat_map(|s| &s.containers) {
                waiting.insert(
                    c.name.clone(),
                    ("ContainerCreating".into(), s.message().to_string()),
                );
            }
            tracing::warn!(pod = %pod.metadata.name.clone().unwrap_or_default(), error = %s.message(), "pod sandbox not created");
            None
        }
    }
}

/// The address the pod's status last recorded.
fn recorded_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// Whether a pod whose sandbox is not ready can get a new one now: only
/// once none of its containers runs any more. Those still running (in the
/// dead sandbox) are told to stop, within the pod's grace period, in the
/// background so the pass goes on; the pod waits for them.
async fn replaceable(
    cri_: &Cri,
    pod: &Pod,
    seen: &BTreeMap<String, Seen>,
    st: &mut Tracked,
) -> bool {
    let running: Vec<(&String, &Seen)> = seen.iter().filter(|(_, s)| s.running()).collect();
    if running.is_empty() {
        return true;
    }
    let grace = grace_of(pod);
    if sandbox::stop_pending(st.replacing, grace) {
        return false;
    }
    tracing::info!(pod = %pod.metadata.name.clone().unwrap_or_default(), "pod sandbox is gone; stopping its containers to start them in a new one");
    st.replacing = Some(Instant::now());
    let pod_ip = recorded_ip(pod).unwrap_or_default();
    for (name, s) in running {
        let (cri_, id, ip) = (cri_.clone(), s.status.id.clone(), pod_ip.clone());
        let spec = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .find(|c| &c.name == name)
            .cloned();
        tokio::spawn(async move {
            let _ = super::hooks::stop(&cri_, &id, spec.as_ref(), &ip, grace).await;
        });
    }
    false
}

/// Run the container's probes; a failed startup or liveness probe stops
/// it (in the background: it may take its grace period), and the restart
/// policy takes it from there.
async fn probe(ctx: &Ctx<'_>, c: &Container, seen: &BTreeMap<String, Seen>, st: &mut Tracked) {
    let Some(s) = seen.get(&c.name).filter(|s| s.running()) else {
        st.verdicts.remove(&c.name);
        return;
    };
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let ran = Duration::from_nanos((now_ns - s.status.started_at).max(0) as u64);
    let started_at = Instant::now().checked_sub(ran).unwrap_or_else(Instant::now);
    let v = probes::check(
        ctx.cri,
        &mut st.probes,
        c,
        &s.status.id,
        started_at,
        ctx.pod_ip,
    )
    .await;
    st.verdicts.insert(c.name.clone(), (v.started, v.ready));
    if let Some(why) = v.kill {
        tracing::info!(pod = %ctx.pod.metadata.name.clone().unwrap_or_default(), container = %c.name, "{why}");
        let grace = grace_of(ctx.pod);
        let (cri_, id, c, ip) = (
            ctx.cri.clone(),
            s.status.id.clone(),
            c.clone(),
            ctx.pod_ip.to_string(),
        );
        // The tally starts over with the next attempt's id.
        st.probes.remove(&c.name);
        tokio::spawn(async move {
            let _ = super::hooks::stop(&cri_, &id, Some(&c), &ip, grace).await;
        });
    }
}

/// What starting a container of a pod needs.
struct Ctx<'a> {
    cri: &'a Cri,
    api: &'a Api,
    node: &'a NodeCtx,
    pod: &'a Pod,
    sandbox: &'a str,
    pod_ip: &'a str,
    volumes: &'a volumes::Prepared,
}

/// Create and start `c` unless its latest attempt runs, or exited and may
/// not (or may not yet) be restarted.
async fn start_if_needed(
    ctx: &Ctx<'_>,
    c: &Container,
    seen: &mut BTreeMap<String, Seen>,
    st: &mut Tracked,
    waiting: &mut HashMap<String, (String, String)>,
    restart: bool,
) {
    let Ctx {
        cri: cri_,
        node,
        pod,
        sandbox,
        ..
    } = *ctx;
    let spec = pod.spec.clone().unwrap_or_default();
    let attempt = match seen.get(&c.name) {
        None => 0,
        Some(s) if !s.exited() => return,
        Some(_) if !restart => return,
        Some(s) => {
            // Back-off before a restart; a long clean run forgets it.
            let ran =
                Duration::from_nanos((s.status.finished_at - s.status.started_at).max(0) as u64);
            let entry = st
                .backoff
                .entry(c.name.clone())
                .or_insert((Instant::now(), Duration::ZERO));
            if ran > BACKOFF_RESET {
                *entry = (Instant::now(), Duration::ZERO);
            }
            if entry.1.is_zero() {
                *entry = (Instant::now() + BACKOFF_START, BACKOFF_START);
            }
            if Instant::now() < entry.0 {
                waiting.insert(
                    c.name.clone(),
                    (
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off {}s restarting failed container={} pod={}",
                            entry.1.as_secs(),
                            c.name,
                            pod.metadata.name.clone().unwrap_or_default()
                        ),
                    ),
                );
                return;
            }
            let next = (entry.1 * 2).min(BACKOFF_MAX);
            *entry = (Instant::now() + next, next);
            s.attempt() + 1
        }
    };
    if let Some((reason, message)) = image_problem(cri_, c).await {
        waiting.insert(c.name.clone(), (reason, message));
        return;
    }
    let config_error = |e: String| ("CreateContainerConfigError".to_string(), e);
    let envs = match envs(ctx, c).await {
        Ok(e) => e,
        Err(e) => {
            waiting.insert(c.name.clone(), config_error(e));
            return;
        }
    };
    let mounts = match mounts(c, ctx.volumes) {
        Ok(m) => m,
        Err(e) => {
            waiting.insert(c.name.clone(), config_error(e));
            return;
        }
    };
    let uid = uid(pod);
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs,
        mounts,
        labels: labels(&[
            (LABEL_UID, &uid),
            (LABEL_NAME, pod.metadata.name.as_deref().unwrap_or("")),
            (
                LABEL_NAMESPACE,
                pod.metadata.namespace.as_deref().unwrap_or(""),
            ),
            (LABEL_CONTAINER, &c.name),
        ]),
        annotations: labels(&[("io.kubernetes.container.restartCount", &attempt.to_string())]),
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources::linux_resources(c)),
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces(&spec)),
                ..resources::security_context(c, &spec)
            }),
        }),
        ..Default::default()
    };
    let sandbox_config = sandbox_config(pod, node, 0);
    let _ = std::fs::create_dir_all(PathBuf::from(&sandbox_config.log_directory).join(&c.name));
    let mut rt = cri_.runtime.clone();
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await;
    let id = match created {
        Ok(r) => r.into_inner().container_id,
        Err(s) => {
            waiting.insert(
                c.name.clone(),
                ("CreateContainerError".into(), s.message().to_string()),
            );
            return;
        }
    };
    if let Err(s) = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
    {
        waiting.insert(
            c.name.clone(),
            ("RunContainerError".into(), s.message().to_string()),
        );
        return;
    }
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
        // In the background: a slow hook must not hold up the other pods.
        let (cri_, id, c, ip) = (
            ctx.cri.clone(),
            id.clone(),
            c.clone(),
            ctx.pod_ip.to_string(),
        );
        let grace = grace_of(ctx.pod);
        tokio::spawn(async move {
            let limit = Duration::from_secs(grace.max(1) as u64);
            if let Err(e) = super::hooks::run(&cri_, &id, &c, &h, &ip, limit).await {
                tracing::info!(container = %c.name, error = %e, "postStart hook failed; killing the container");
                let _ = super::hooks::stop(&cri_, &id, None, &ip, grace).await;
            }
        });
    }
    if let Ok(r) = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id,
            verbose: false,
        })
        .await
    {
        // The attempt it replaced is now the one before.
        let previous = seen.get(&c.name).and_then(|old| {
            if old.exited() {
                Some(old.status.clone())
            } else {
                old.previous.clone()
            }
        });
        seen.insert(
            c.name.clone(),
            Seen {
                status: r.into_inner().status.unwrap_or_default(),
                previous,
            },
        );
    }
}

fn state_of(s: &Seen) -> Value {
    let st = &s.status;
    if s.running() {
        json!({"running": {"startedAt": rfc3339_ns(st.started_at)}})
    } else if s.exited() {
        terminated(st)
    } else {
        json!({"waiting": {"reason": "ContainerCreating"}})
    }
}

/// An exited container's state as the API shows it.
fn terminated(st: &cri::ContainerStatus) -> Value {
    let reason = if !st.reason.is_empty() {
        st.reason.clone()
    } else if st.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    json!({"terminated": {"exitCode": st.exit_code, "reason": reason,
        "startedAt": rfc3339_ns(st.started_at), "finishedAt": rfc3339_ns(st.finished_at),
        "containerID": format!("containerd://{}", st.id)}})
}

fn container_statuses(
    list: &[Container],
    seen: &BTreeMap<String, Seen>,
    waiting: &HashMap<String, (String, String)>,
    verdicts: &HashMap<String, (bool, bool)>,
) -> Vec<Value> {
    list.iter()
        .map(|c| {
            let s = seen.get(&c.name);
            let mut v = json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": s.map(|s| s.status.image_ref.clone()).unwrap_or_default(),
                "ready": s.is_some_and(|s| s.running())
                    && !waiting.contains_key(&c.name)
                    && verdicts.get(&c.name).is_none_or(|v| v.1),
                "started": s.is_some_and(|s| s.running())
                    && verdicts.get(&c.name).is_none_or(|v| v.0),
                "restartCount": s.map(|s| s.attempt()).unwrap_or(0),
            });
            if let Some(s) = s {
                v["containerID"] = json!(format!("containerd://{}", s.status.id));
            }
            match (waiting.get(&c.name), s) {
                (Some((reason, message)), prev) => {
                    v["state"] = json!({"waiting": {"reason": reason, "message": message}});
                    if let Some(p) = prev.filter(|p| p.exited()) {
                        v["lastState"] = state_of(p);
                    }
                }
                (None, Some(s)) => {
                    v["state"] = state_of(s);
                    if let Some(p) = &s.previous {
                        v["lastState"] = terminated(p);
                    }
                }
                (None, None) => v["state"] = json!({"waiting": {"reason": "ContainerCreating"}}),
            }
            v
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn status(
    pod: &Pod,
    node: &NodeCtx,
    st: &Tracked,
    seen: &BTreeMap<String, Seen>,
    waiting: &HashMap<String, (String, String)>,
    initialized: bool,
    pod_ip: &str,
    policy: &str,
) -> Value {
    let spec = pod.spec.clone().unwrap_or_default();
    let containers = &spec.containers;
    let statuses = container_statuses(containers, seen, waiting, &st.verdicts);
    let inits = container_statuses(
        &spec.init_containers.clone().unwrap_or_default(),
        seen,
        waiting,
        &HashMap::new(),
    );
    let all =
        |f: &dyn Fn(&Seen) -> bool| containers.iter().all(|c| seen.get(&c.name).is_some_and(f));
    let any =
        |f: &dyn Fn(&Seen) -> bool| containers.iter().any(|c| seen.get(&c.name).is_some_and(f));
    let previous = pod.status.as_ref().and_then(|s| s.phase.clone());
    let phase = if matches!(previous.as_deref(), Some("Succeeded" | "Failed")) {
        previous.unwrap_or_default()
    } else if !initialized {
        "Pending".into()
    } else if any(&|s| s.running()) {
        "Running".into()
    } else if all(&|s| s.exited()) {
        let failed = any(&|s| s.status.exit_code != 0);
        match (policy, failed) {
            ("Always", _) | ("OnFailure", true) => "Running".into(),
            (_, true) => "Failed".into(),
            _ => "Succeeded".into(),
        }
    } else {
        "Pending".into()
    };
    let ready = phase == "Running" && statuses.iter().all(|s| s["ready"] == true);
    let now = crate::objects::now_rfc3339();
    let old_conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let cond = |t: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let since = old_conditions
            .iter()
            .find(|c| c.type_ == t && c.status == status)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| now.clone());
        json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
    };
    let mut conditions = vec![
        cond("Initialized", initialized),
        cond("Ready", ready),
        cond("ContainersReady", ready),
        cond("PodScheduled", true),
    ];
    // Conditions others own (DisruptionTarget from an eviction or the
    // taint manager) are carried over: a merge patch replaces the list.
    let others: Vec<Value> = old_conditions
        .iter()
        .filter(|c| !conditions.iter().any(|own| own["type"] == c.type_.as_str()))
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    conditions.extend(others);
    let mut out = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": node.ip,
        "hostIPs": [{"ip": node.ip}],
        "startTime": st.start_time,
        "containerStatuses": statuses,
    });
    if !inits.is_empty() {
        out["initContainerStatuses"] = json!(inits);
    }
    if !pod_ip.is_empty() {
        out["podIP"] = json!(pod_ip);
        out["podIPs"] = json!([{"ip": pod_ip}]);
    }
    out
}
