//! Container lifecycle hooks as upstream's kubelet runs them: `postStart`
//! right after the container starts (a failure kills it, and the restart
//! policy takes over), `preStop` before a container is stopped (deleted
//! pod, failed liveness probe), inside the termination grace period, which
//! the stop itself then gets what is left of (at least 2 s, as upstream).
//! A handler is exec (CRI ExecSync), httpGet against the pod, or sleep.

use super::events::{Events, Warning};
use super::probes;
use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod};
use std::time::{Duration, Instant};

/// Least time a container gets to stop after its preStop hook (upstream's
/// `minimumGracePeriodInSeconds`).
const MIN_STOP_GRACE: i64 = 2;

/// Run `h` for container `id`, bounded by `timeout`.
pub async fn run(
    cri_: &Cri,
    id: &str,
    c: &Container,
    h: &LifecycleHandler,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    let work = async {
        if let Some(e) = &h.exec {
            return probes::exec(cri_, id, e.command.clone().unwrap_or_default(), timeout).await;
        }
        if let Some(g) = &h.http_get {
            return probes::http_get(c, g, pod_ip, timeout).await;
        }
        if let Some(s) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
            return Ok(());
        }
        Err("the hook names no handler (exec, httpGet or sleep)".into())
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("did not finish within {timeout:?}")))
}

/// The pod a stop is for, to record a failed preStop hook against.
pub type Report<'a> = Option<(&'a Events, &'a Pod)>;

/// Stop container `id` (spec `c`, when known) the way a kubelet kills one:
/// its preStop hook within `grace` seconds, then StopContainer with the
/// rest (SIGTERM, SIGKILL when that runs out).
pub async fn stop(
    cri_: &Cri,
    id: &str,
    c: Option<&Container>,
    pod_ip: &str,
    grace: i64,
    report: Report<'_>,
) -> Result<(), tonic::Status> {
    let mut left = grace.max(0);
    // Past the deadline there is no time for a hook: the container is
    // killed at once.
    let hook = c
        .filter(|_| grace > 0)
        .and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)));
    if let Some((c, h)) = hook {
        let began = Instant::now();
        let budget = Duration::from_secs(grace.max(0) as u64);
        if let Err(e) = run(cri_, id, c, h, pod_ip, budget).await {
            tracing::info!(container = %c.name, error = %e, "preStop hook failed");
            if let Some((events, pod)) = report {
                events.container(
                    pod,
                    &c.name,
                    Warning,
                    "FailedPreStopHook",
                    "PreStopHook failed",
                );
            }
        }
        left = (grace - began.elapsed().as_secs() as i64).max(MIN_STOP_GRACE);
    }
    cri_.stop_container(cri::StopContainerRequest {
        container_id: id.to_string(),
        timeout: left,
    })
    .await
    .map(|_| ())
}
