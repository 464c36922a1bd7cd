//! Starting one container of a pod: restart back-off, the image, its
//! environment and mounts, then create and start through CRI.

use super::backoff::{go_duration, Backoff};
use super::events::{pod_id, Normal, Warning};
use super::listing::{labels, uid, Seen, LABEL_CONTAINER, LABEL_NAME, LABEL_NAMESPACE, LABEL_UID};
use super::node::NodeCtx;
use super::{downward, resources, sandbox, volumes};
use crate::agent::apiclient::Api;
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A pod's back-offs: its containers' restarts (crash loops) by container
/// name, its image pulls by image.
#[derive(Default)]
pub struct Backoffs {
    restarts: HashMap<String, Backoff>,
    pulls: HashMap<String, Backoff>,
}

/// The instant of a wall-clock time in CRI's nanoseconds.
fn instant_of(nanos: i64, now: Instant) -> Instant {
    let wall = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let ago = Duration::from_nanos((wall - nanos).max(0) as u64);
    now.checked_sub(ago).unwrap_or(now)
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
                    downward::env_field(ctx.pod, ctx.node, ctx.pod_ip, &f.field_path)
                        .ok_or_else(|| format!("unsupported fieldRef {:?}", f.field_path))?
                } else if let Some(r) = &from.resource_field_ref {
                    downward::resource(ctx.pod, &c.name, r, &ctx.node.allocatable)?
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

/// The pod's termination grace period in seconds (upstream's default 30).
pub fn grace_of(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

/// What is left at `now` of a deleted pod's grace period, in whole
/// seconds (rounded up): its deadline is the `deletionTimestamp` the API
/// set to the time of deletion plus the grace, so a stop that is tried
/// again never starts the period over, and one past the deadline kills
/// at once. Never more than the grace itself, whatever the clocks say.
pub fn grace_left(pod: &Pod, now: chrono::DateTime<chrono::Utc>) -> i64 {
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .unwrap_or_else(|| grace_of(pod))
        .max(0);
    let Some(deadline) = pod.metadata.deletion_timestamp.as_ref() else {
        return grace;
    };
    let left_ms = deadline.0.as_millisecond() - now.timestamp_millis();
    let left = (left_ms.max(0) + 999) / 1000;
    left.min(grace)
}

/// The container's image on the node, pulled if it must be (upstream's
/// image manager, with its Events); else why the container waits:
/// `(reason, message)`.
async fn ensure_image(
    ctx: &Ctx<'_>,
    c: &Container,
    pulls: &mut HashMap<String, Backoff>,
) -> Result<(), (String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let event = |t, reason: &str, message: String| {
        ctx.node
            .events
            .container(ctx.pod, &c.name, t, reason, message)
    };
    let spec = cri::ImageSpec {
        image: image.clone(),
        ..Default::default()
    };
    let status = |spec: cri::ImageSpec| async move {
        ctx.cri
            .image_status(cri::ImageStatusRequest {
                image: Some(spec),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.image)
    };
    if status(spec.clone()).await.is_some() {
        event(
            Normal,
            "Pulled",
            format!("Container image \"{image}\" already present on machine"),
        );
        return Ok(());
    }
    let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
    if policy == "Never" {
        let m = format!("Container image \"{image}\" is not present with pull policy of Never");
        event(Warning, "ErrImageNeverPull", m.clone());
        return Err(("ErrImageNeverPull".into(), m));
    }
    let backoff = pulls.entry(image.clone()).or_default();
    let now = Instant::now();
    if backoff.waiting(now) {
        let m = format!("Back-off pulling image \"{image}\"");
        event(Normal, "BackOff", m.clone());
        return Err(("ImagePullBackOff".into(), m));
    }
    event(Normal, "Pulling", format!("Pulling image \"{image}\""));
    // No deadline: a pull takes as long as the registry does.
    let pulled = ctx
        .cri
        .pull_image(cri::PullImageRequest {
            image: Some(spec.clone()),
            ..Default::default()
        })
        .await;
    match pulled {
        Ok(_) => {
            let took = go_duration(Duration::from_millis(now.elapsed().as_millis() as u64));
            let size = status(spec).await.map(|i| i.size).unwrap_or(0);
            event(
                Normal,
                "Pulled",
                format!("Successfully pulled image \"{image}\" in {took} ({took} including waiting). Image size: {size} bytes."),
            );
            Ok(())
        }
        Err(e) => {
            event(
                Warning,
                "Failed",
                format!("Failed to pull image \"{image}\": {}", e.message()),
            );
            backoff.next(now);
            Err((
                "ErrImagePull".into(),
                format!("failed to pull image \"{image}\": {}", e.message()),
            ))
        }
    }
}

/// The container's namespaces: the pod's, except that an ephemeral
/// container with a target joins the target's process namespace (unless
/// the pod shares one already), as upstream's kubelet does.
fn namespaces(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    target: Option<String>,
) -> cri::NamespaceOption {
    let mut ns = sandbox::namespaces(spec);
    if let Some(id) = target {
        if ns.pid == cri::NamespaceMode::Container as i32 {
            ns.pid = cri::NamespaceMode::Target as i32;
            ns.target_id = id;
        }
    }
    ns
}

/// An ephemeral container as a container: the same fields, less the
/// target (which only decides its namespaces).
pub fn ephemeral(e: &k8s_openapi::api::core::v1::EphemeralContainer) -> Container {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("targetContainerName");
    }
    serde_json::from_value(v).unwrap_or_default()
}

/// What starting a container of a pod needs.
pub(super) struct Ctx<'a> {
    pub cri: &'a Cri,
    pub api: &'a Api,
    pub node: &'a NodeCtx,
    pub pod: &'a Pod,
    pub sandbox: &'a str,
    pub pod_ip: &'a str,
    pub volumes: &'a volumes::Prepared,
}

/// Create and start `c` unless its latest attempt runs, or exited and may
/// not (or may not yet) be restarted.
/// `pid_target`: for an ephemeral container, the id of the container
/// whose process namespace it joins (`kubectl debug --target`).
pub(super) async fn start_if_needed(
    ctx: &Ctx<'_>,
    c: &Container,
    seen: &mut BTreeMap<String, Seen>,
    backoffs: &mut Backoffs,
    waiting: &mut HashMap<String, (String, String)>,
    restart: bool,
    pid_target: Option<String>,
) {
    let Ctx {
        cri: cri_,
        node,
        pod,
        sandbox,
        ..
    } = *ctx;
    let spec = pod.spec.clone().unwrap_or_default();
    let event =
        |t, reason: &str, message: String| node.events.container(pod, &c.name, t, reason, message);
    let attempt = match seen.get(&c.name) {
        None => 0,
        Some(s) if !s.exited() => return,
        Some(_) if !restart => return,
        Some(s) => {
            // The first restart is at once; then back-off, counted from
            // when the container ended, as upstream's.
            let now = Instant::now();
            let ended = instant_of(s.status.finished_at, now);
            let backoff = backoffs.restarts.entry(c.name.clone()).or_default();
            if backoff.wait(ended, now).is_some() {
                let id = pod_id(pod);
                event(
                    Warning,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {id}",
                        c.name
                    ),
                );
                let m = format!(
                    "back-off {} restarting failed container={} pod={id}",
                    go_duration(backoff.delay()),
                    c.name
                );
                waiting.insert(c.name.clone(), ("CrashLoopBackOff".into(), m));
                return;
            }
            backoff.next(ended);
            s.attempt() + 1
        }
    };
    // Upstream's `Failed` event for every reason a container waits on:
    // an image error by its name, any other by its message.
    let mut wait = |reason: &str, message: String| {
        let image_error = matches!(
            reason,
            "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull"
        );
        let error = if image_error { reason } else { &message };
        event(Warning, "Failed", format!("Error: {error}"));
        waiting.insert(c.name.clone(), (reason.to_string(), message));
    };
    if let Err((reason, message)) = ensure_image(ctx, c, &mut backoffs.pulls).await {
        wait(&reason, message);
        return;
    }
    let envs = match envs(ctx, c).await {
        Ok(e) => e,
        Err(e) => {
            wait("CreateContainerConfigError", e);
            return;
        }
    };
    let mounts = match mounts(c, ctx.volumes) {
        Ok(m) => m,
        Err(e) => {
            wait("CreateContainerConfigError", e);
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
                namespace_options: Some(namespaces(&spec, pid_target)),
                ..resources::security_context(c, &spec)
            }),
        }),
        ..Default::default()
    };
    let sandbox_config = sandbox::config(pod, node, 0);
    let _ = std::fs::create_dir_all(PathBuf::from(&sandbox_config.log_directory).join(&c.name));
    let rt = &cri_;
    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await;
    let id = match created {
        Ok(r) => r.container_id,
        Err(s) => {
            wait("CreateContainerError", s.message().to_string());
            return;
        }
    };
    event(Normal, "Created", format!("Created container: {}", c.name));
    if let Err(s) = rt
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
    {
        wait("RunContainerError", s.message().to_string());
        return;
    }
    event(Normal, "Started", format!("Started container {}", c.name));
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
        // In the background: a slow hook must not hold up the other pods.
        let (cri_, id, c, ip) = (
            ctx.cri.clone(),
            id.clone(),
            c.clone(),
            ctx.pod_ip.to_string(),
        );
        let grace = grace_of(ctx.pod);
        let (events, pod) = (node.events.clone(), pod.clone());
        tokio::spawn(async move {
            let limit = Duration::from_secs(grace.max(1) as u64);
            if let Err(e) = super::hooks::run(&cri_, &id, &c, &h, &ip, limit).await {
                tracing::info!(container = %c.name, error = %e, "postStart hook failed; killing the container");
                // Upstream leaves the hook's output out of the event.
                events.container(
                    &pod,
                    &c.name,
                    Warning,
                    "FailedPostStartHook",
                    "PostStartHook failed",
                );
                events.container(&pod, &c.name, Normal, "Killing", "FailedPostStartHook");
                let _ = super::hooks::stop(&cri_, &id, None, &ip, grace, None).await;
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
                status: r.status.unwrap_or_default(),
                previous,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_stop_gets_what_is_left_of_the_grace_period() {
        let deleted = |at: &str, grace: i64| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "deletionTimestamp": at,
                    "deletionGracePeriodSeconds": grace},
                "spec": {"containers": [], "terminationGracePeriodSeconds": 60},
            }))
            .unwrap()
        };
        let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let pod = deleted("2026-12-07T10:00:15Z", 15);
        assert_eq!(grace_left(&pod, t("2026-12-07T10:00:00Z")), 15);
        // Tried again 11 s in (after a failed attempt): 4 s are left, not 15.
        assert_eq!(grace_left(&pod, t("2026-12-07T10:00:11Z")), 4);
        assert_eq!(
            grace_left(&pod, t("2026-12-07T10:00:11.5Z")),
            4,
            "rounded up"
        );
        // Past the deadline: kill at once.
        assert_eq!(grace_left(&pod, t("2026-12-07T10:01:00Z")), 0);
        // A clock behind the server's never stretches the period.
        assert_eq!(grace_left(&pod, t("2026-12-07T09:59:00Z")), 15);
        // Not being deleted: the spec's grace period.
        let mut live = pod.clone();
        live.metadata.deletion_timestamp = None;
        live.metadata.deletion_grace_period_seconds = None;
        assert_eq!(grace_left(&live, t("2026-12-07T10:00:00Z")), 60);
    }
}
