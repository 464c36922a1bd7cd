//! One pod on the runtime: sandbox, init containers in order, containers,
//! restarts by restartPolicy with upstream's back-off, termination, and the
//! status kubectl reads. Everything is found again from CRI labels on
//! every sync, so a restarted agent adopts the containers it left running.

use super::containers::{self, grace_of, start_if_needed, Ctx};
use super::events::{Events, Normal, Warning};
use super::listing::{containers_of, sandboxes_of, uid, Listing, Seen, LABEL_CONTAINER};
use super::node::NodeCtx;
use super::pod_status::{self, Found};
use super::{probes, sandbox, volumes};
use crate::agent::apiclient::Api;
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// What the kubelet remembers of a pod between syncs.
#[derive(Default)]
pub struct Tracked {
    pub start_time: Option<String>,
    backoffs: containers::Backoffs,
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
    let rt = &cri_;
    let (mut sandboxes, containers) = match listing {
        Some(l) => l.of(uid),
        None => (sandboxes_of(rt, uid).await?, containers_of(rt, uid).await?),
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
            Some(p) => status_of(rt, p, st, &mut statuses).await.ok(),
            None => None,
        };
        let status = status_of(rt, &attempts[0], st, &mut statuses).await?;
        seen.insert(n, Seen { status, previous });
    }
    st.statuses = statuses;
    Ok((sandboxes, seen))
}

/// A container's status: the one seen last pass while its state is the
/// same (a running or exited container's status does not change), else
/// asked for. Kept in `now` for the next pass.
async fn status_of(
    rt: &Cri,
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
            .status
            .unwrap_or_default(),
    };
    now.insert(c.id.clone(), s.clone());
    Ok(s)
}

/// Stop and remove everything of the pod with `uid` (grace in seconds):
/// running containers in parallel, each after its preStop hook when the
/// pod's spec is known (and with its Killing events then).
pub async fn teardown(
    cri_: &Cri,
    uid: &str,
    grace: i64,
    known: Option<(&Pod, &Events)>,
) -> Result<(), tonic::Status> {
    let rt = &cri_;
    let pod = known.map(|(p, _)| p);
    let containers = containers_of(rt, uid).await?;
    let pod_ip = pod.and_then(recorded_ip).unwrap_or_default();
    let specs: Vec<Container> = pod
        .and_then(|p| p.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let stops = containers
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .map(|c| {
            let name = c.labels.get(LABEL_CONTAINER);
            let spec = name.and_then(|n| specs.iter().find(|s| &s.name == n));
            if let (Some((pod, events)), Some(n)) = (known, name) {
                events.container(pod, n, Normal, "Killing", format!("Stopping container {n}"));
            }
            let report = known.map(|(p, e)| (e, p));
            super::hooks::stop(cri_, &c.id, spec, &pod_ip, grace, report)
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
    for s in sandboxes_of(rt, uid).await? {
        sandbox::remove(cri_, &s.id).await?;
    }
    Ok(())
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
    let terminal = crate::kube::placement::finished(pod);
    st.start_time
        .get_or_insert_with(crate::datastore::objects::now_rfc3339);
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
        None if !replaceable(cri_, pod, &node.events, &seen, st).await => None,
        None if policy == "Never" && !sandboxes.is_empty() && !seen.is_empty() => None,
        None => {
            st.replacing = None;
            if !sandboxes.is_empty() {
                node.events.pod(
                    pod,
                    Normal,
                    "SandboxChanged",
                    "Pod sandbox changed, it will be killed and re-created.",
                );
            }
            // The volumes' API reads (a service-account token, the CA
            // bundle) overlap the runtime building the sandbox instead of
            // adding their round trips to every pod start.
            let dir = node.pod_dir(&uid);
            let (id, prepared) = tokio::join!(
                create_sandbox(cri_, pod, node, &sandboxes, &mut waiting),
                volumes::prepare(api, pod, &dir, &node.allocatable, &mut st.volumes),
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
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.status)
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
                None => {
                    let dir = node.pod_dir(&uid);
                    volumes::prepare(api, pod, &dir, &node.allocatable, &mut st.volumes).await
                }
            };
            match ready {
                Ok(p) => Some(p),
                Err(e) => {
                    // Upstream's FailedMount: nothing starts, the containers wait.
                    tracing::debug!(pod = %pod.metadata.name.clone().unwrap_or_default(), error = %e, "volumes not ready");
                    node.events.pod(pod, Warning, "FailedMount", e.clone());
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
            start_if_needed(
                &ctx,
                c,
                &mut seen,
                &mut st.backoffs,
                &mut waiting,
                restart,
                None,
            )
            .await;
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
                start_if_needed(
                    &ctx,
                    c,
                    &mut seen,
                    &mut st.backoffs,
                    &mut waiting,
                    restart,
                    None,
                )
                .await;
                probe(&ctx, c, &seen, st).await;
            }
        }
        // Ephemeral containers (`kubectl debug`) start even before the
        // init containers are done, once each: they are never restarted.
        for e in spec.ephemeral_containers.iter().flatten() {
            let target = e
                .target_container_name
                .as_deref()
                .and_then(|t| seen.get(t))
                .map(|s| s.status.id.clone());
            let c = containers::ephemeral(e);
            start_if_needed(
                &ctx,
                &c,
                &mut seen,
                &mut st.backoffs,
                &mut waiting,
                false,
                target,
            )
            .await;
        }
    } else if !inits.is_empty() {
        // Not started this pass: initialized only if the inits all finished.
        initialized = inits.iter().all(|c| {
            seen.get(&c.name)
                .is_some_and(|s| s.exited() && s.status.exit_code == 0)
        });
    }
    let found = Found {
        seen: &seen,
        waiting: &waiting,
        verdicts: &st.verdicts,
        initialized,
        pod_ip: &pod_ip,
        start_time: st.start_time.as_deref(),
        policy: &policy,
    };
    Ok(pod_status::status(pod, node, &found))
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
    let config = sandbox::config(pod, node, sandbox::next_attempt(earlier));
    let _ = std::fs::create_dir_all(&config.log_directory);
    let r = cri_
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await;
    match r {
        Ok(r) => Some(r.pod_sandbox_id),
        Err(s) => {
            for c in pod.spec.iter().flat_map(|s| &s.containers) {
                waiting.insert(
                    c.name.clone(),
                    ("ContainerCreating".into(), s.message().to_string()),
                );
            }
            tracing::debug!(pod = %pod.metadata.name.clone().unwrap_or_default(), error = %s.message(), "pod sandbox not created");
            let m = format!("Failed to create pod sandbox: {}", s.message());
            node.events.pod(pod, Warning, "FailedCreatePodSandBox", m);
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
    events: &Events,
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
        let (events, pod) = (events.clone(), pod.clone());
        tokio::spawn(async move {
            let report = Some((&events, &pod));
            let _ = super::hooks::stop(&cri_, &id, spec.as_ref(), &ip, grace, report).await;
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
    let events = &ctx.node.events;
    for failure in v.failed {
        events.container(ctx.pod, &c.name, Warning, "Unhealthy", failure);
    }
    if let Some(why) = v.kill {
        tracing::info!(pod = %ctx.pod.metadata.name.clone().unwrap_or_default(), container = %c.name, "{why}");
        events.container(ctx.pod, &c.name, Normal, "Killing", why);
        let grace = grace_of(ctx.pod);
        let (cri_, id, c, ip) = (
            ctx.cri.clone(),
            s.status.id.clone(),
            c.clone(),
            ctx.pod_ip.to_string(),
        );
        let (events, pod) = (events.clone(), ctx.pod.clone());
        // The tally starts over with the next attempt's id.
        st.probes.remove(&c.name);
        tokio::spawn(async move {
            let report = Some((&events, &pod));
            let _ = super::hooks::stop(&cri_, &id, Some(&c), &ip, grace, report).await;
        });
    }
}
