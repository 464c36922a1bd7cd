//! Container probes with upstream's timing fields: startup, liveness and
//! readiness, each exec (CRI ExecSync), httpGet (2xx/3xx) or tcpSocket,
//! run from the node against the pod's IP. Liveness and readiness wait for
//! the startup probe; a startup or liveness probe past its failure
//! threshold has the container killed, so the restart policy takes over.

use crate::agent::runtime::cri::Cri;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One probe's running tally.
#[derive(Default, Clone)]
struct Tally {
    last: Option<Instant>,
    successes: i32,
    failures: i32,
    /// Past its success threshold (and not since failed past the failure one).
    passing: bool,
}

/// Probe state of one container attempt.
#[derive(Default, Clone)]
pub struct ContainerProbes {
    /// The container id these tallies belong to (a restart starts afresh).
    id: String,
    startup: Tally,
    liveness: Tally,
    readiness: Tally,
}

/// What the probes say about a running container.
pub struct Verdict {
    pub started: bool,
    pub ready: bool,
    /// Kill it (startup or liveness failed past the threshold).
    pub kill: Option<String>,
    /// Each probe that failed this time, as upstream's Unhealthy event
    /// says it: `Liveness probe failed: <output>`.
    pub failed: Vec<String>,
}

fn port(c: &Container, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// Run `cmd` in the container (CRI ExecSync): success when it exits 0.
pub(super) async fn exec(
    cri_: &Cri,
    id: &str,
    cmd: Vec<String>,
    timeout: Duration,
) -> Result<(), String> {
    let r = cri_
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd,
            timeout: timeout.as_secs().max(1) as i64,
        })
        .await
        .map_err(|s| s.message().to_string())?;
    if r.exit_code == 0 {
        return Ok(());
    }
    // What the command wrote, as upstream reports a failed exec probe
    // (stdout, then stderr, at most 10 KiB).
    let mut out = r.stdout;
    out.extend(r.stderr);
    out.truncate(10 * 1024);
    Err(String::from_utf8_lossy(&out).into_owned())
}

/// GET the action's URL (the pod's IP unless it names a host): success on
/// 2xx/3xx.
pub(super) async fn http_get(
    c: &Container,
    h: &HTTPGetAction,
    pod_ip: &str,
    timeout: Duration,
) -> Result<(), String> {
    let p = port(c, &h.port).ok_or("unknown port")?;
    let host = h
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    let url = format!("{scheme}://{host}:{p}{path}");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        // Upstream's kubelet does not verify probe certificates either.
        .danger_accept_invalid_certs(true)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client.get(&url).header("User-Agent", "kube-probe/1.32");
    for hd in h.http_headers.iter().flatten() {
        req = req.header(hd.name.as_str(), hd.value.as_str());
    }
    let r = req.send().await.map_err(|e| format!("Get {url:?}: {e}"))?;
    let code = r.status().as_u16();
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Run `probe` once: success or why not.
async fn run(
    cri_: &Cri,
    id: &str,
    c: &Container,
    probe: &Probe,
    pod_ip: &str,
) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(e) = &probe.exec {
        return exec(cri_, id, e.command.clone().unwrap_or_default(), timeout).await;
    }
    if let Some(h) = &probe.http_get {
        return http_get(c, h, pod_ip, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let p = port(c, &t.port).ok_or("unknown probe port")?;
        let host = t
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), p)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{p}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{p}: i/o timeout")),
        };
    }
    Ok(())
}

/// Run `probe` if it is due; update `t`. `started_at` is the container's start.
async fn step(
    cri_: &Cri,
    id: &str,
    c: &Container,
    probe: &Probe,
    pod_ip: &str,
    started_at: Instant,
    t: &mut Tally,
) -> Option<String> {
    let initial = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    if started_at.elapsed() < initial || t.last.is_some_and(|l| l.elapsed() < period) {
        return None;
    }
    t.last = Some(Instant::now());
    match run(cri_, id, c, probe, pod_ip).await {
        Ok(()) => {
            t.failures = 0;
            t.successes += 1;
            if t.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                t.passing = true;
            }
            None
        }
        Err(e) => {
            tracing::debug!(container = %c.name, error = %e, "probe failed");
            t.successes = 0;
            t.failures += 1;
            if t.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                t.passing = false;
            }
            Some(e)
        }
    }
}

/// Probe a running container (id `id`, started `started_at`).
pub async fn check(
    cri_: &Cri,
    state: &mut HashMap<String, ContainerProbes>,
    c: &Container,
    id: &str,
    started_at: Instant,
    pod_ip: &str,
) -> Verdict {
    let s = state.entry(c.name.clone()).or_default();
    if s.id != id {
        *s = ContainerProbes {
            id: id.to_string(),
            ..Default::default()
        };
    }
    let threshold = |p: &Probe| p.failure_threshold.unwrap_or(3).max(1);
    let mut failed = vec![];
    let mut note = |kind: &str, r: Option<String>| {
        if let Some(out) = r {
            failed.push(format!("{kind} probe failed: {out}"));
        }
    };
    let kill = |why: &str| {
        Some(format!(
            "Container {} failed {why} probe, will be restarted",
            c.name
        ))
    };
    let started = match &c.startup_probe {
        None => true,
        Some(p) => {
            if !s.startup.passing {
                note(
                    "Startup",
                    step(cri_, id, c, p, pod_ip, started_at, &mut s.startup).await,
                );
            }
            if !s.startup.passing && s.startup.failures >= threshold(p) {
                return Verdict {
                    started: false,
                    ready: false,
                    kill: kill("startup"),
                    failed,
                };
            }
            s.startup.passing
        }
    };
    if !started {
        return Verdict {
            started,
            ready: false,
            kill: None,
            failed,
        };
    }
    if let Some(p) = &c.liveness_probe {
        note(
            "Liveness",
            step(cri_, id, c, p, pod_ip, started_at, &mut s.liveness).await,
        );
        if s.liveness.failures >= threshold(p) {
            return Verdict {
                started,
                ready: false,
                kill: kill("liveness"),
                failed,
            };
        }
    }
    let ready = match &c.readiness_probe {
        None => true,
        Some(p) => {
            note(
                "Readiness",
                step(cri_, id, c, p, pod_ip, started_at, &mut s.readiness).await,
            );
            s.readiness.passing
        }
    };
    Verdict {
        started,
        ready,
        kill: None,
        failed,
    }
}
